# sclake: common tasks. `make demo` and `make test` are what a new machine runs.
UV ?= uv
export UV_LINK_MODE ?= copy

.PHONY: setup demo test test-fast lint format bench clean

setup:  ## create .venv from uv.lock (Python 3.11); installs uv first when it is missing
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	@# Our own modules too: every step starts fresh Python processes (Dask workers, Airflow
	@# tasks), and where PYTHONDONTWRITEBYTECODE is set they would recompile on each start.
	$(UV) run --frozen --no-sync python -m compileall -q pipelines dags

demo: setup  ## the main job on the embedded stack
	$(UV) run --frozen sclake demo

test: setup  ## the whole test suite
	$(UV) run --frozen pytest -q

test-fast: setup  ## everything except tests marked slow
	$(UV) run --frozen pytest -q -m "not slow"

lint:
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

format:
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

clean:
	-$(UV) run --frozen sclake stack down
	rm -rf .sclake .pytest_cache

# ---- the compose stack (docs/deployment.md) -------------------------------------------
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_FILE_ARGS = -f compose/docker-compose.yml
COMPOSE_ENV = $(if $(wildcard compose/.env),compose/.env,.env.example)

.PHONY: compose-env compose-config compose-up compose-down

compose-env:  ## compose/.env with generated secrets (existing values are kept)
	python3 -m pipelines.envgen

compose-config:  ## validate the compose file with compose/.env (.env.example when there is none)
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --env-file $(COMPOSE_ENV) config -q

compose-up: compose-env  ## build the images and start the stack
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --env-file compose/.env up -d --build

compose-down:  ## stop the stack (volumes are kept)
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --env-file $(COMPOSE_ENV) down
