# sclake: common tasks. `make demo` and `make test` are what a new machine runs.
UV ?= uv
export UV_LINK_MODE ?= copy
# Targets run in the environment `make setup` made, as it is (a plain `uv run` would sync it
# back to the lock's torch build).
RUN = $(UV) run --frozen --no-sync

# Which torch build `make setup` installs (docs/install.md):
#   locked  the lock's: PyPI's torch, on Linux x86_64 a CUDA build with its CUDA runtime wheels
#   cpu     the CPU build of the same version: TORCH_WHEELS/torch-<version>+cpu-*.whl when there,
#           else from TORCH_INDEX_URL (PyTorch's CPU index, or a mirror of it)
# Default: cpu when TORCH_WHEELS holds a CPU wheel of torch, else locked.
TORCH_WHEELS ?= /opt/wheels
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH ?= $(if $(wildcard $(TORCH_WHEELS)/torch-*+cpu-*.whl),cpu,locked)

.PHONY: setup demo test test-fast lint format bench clean

setup:  ## create .venv from uv.lock (Python 3.11); installs uv first when it is missing
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet uv
ifeq ($(TORCH),cpu)
	$(UV) sync --frozen --compile-bytecode $$(python3 tools/torch_build.py no-install-args)
	TORCH_WHEELS=$(TORCH_WHEELS) TORCH_INDEX_URL=$(TORCH_INDEX_URL) UV="$(UV)" tools/install-torch-cpu.sh .venv/bin/python
else ifeq ($(TORCH),locked)
	$(UV) sync --frozen --compile-bytecode
else
	$(error TORCH=$(TORCH) is not one of: locked, cpu)
endif
	@# Our own modules too, and torch (installed before this recipe compiled it, it may lack
	@# them): every step starts fresh Python processes (Dask workers, Airflow tasks), and where
	@# PYTHONDONTWRITEBYTECODE is set they would recompile on each start (torch: about 3 s).
	$(RUN) python -m compileall -q pipelines dags
	@# (a file torch keeps for newer Pythons does not compile, and need not: quiet=2)
	$(RUN) python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'] + '/torch', quiet=2)"

demo: setup  ## the main job on the embedded stack
	$(RUN) sclake demo

test: setup test-images  ## the whole test suite
	$(RUN) pytest -q --durations=30

# The tests marked `docker` use the project's images and the local stack's stand-ins: built
# (or found in Docker's layer cache) before pytest starts, so that a cold build does not run
# inside one test's time limit. Nothing is built where no Docker engine answers (those tests
# are then skipped, or fail when CI is set).
test-images:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		start=$$(date +%s); $(MAKE) --no-print-directory images && compose/local/build.sh && \
		echo "test-images: images ready after $$(( $$(date +%s) - start )) s"; \
	else echo "test-images: no Docker engine answers; the tests marked docker will not find images"; fi

test-fast: setup  ## everything except tests marked slow
	$(RUN) pytest -q -m "not slow"

lint:
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format:
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

clean:
	-$(RUN) sclake stack down
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

compose-up:  ## build the images and start the stack (refused on volumes made with another compose/.env)
	@if [ -f compose/.env ]; then new=; else new=--new; fi; \
	    python3 -m pipelines.envgen && compose/check-volumes.sh compose/.env $$new
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --env-file compose/.env up -d --build

compose-down:  ## stop the stack (volumes are kept)
	$(COMPOSE) $(COMPOSE_FILE_ARGS) --env-file $(COMPOSE_ENV) down

# ---- the local compose stack: no image registry (docs/deployment.md, "The local stack") ----
# compose/docker-compose.yml + compose/docker-compose.local.yml: stand-ins built here for the
# third-party images, the project's images from `make images`.
VOLUMES ?= 0

.PHONY: compose-up-local compose-demo compose-down-local

compose-up-local:  ## build what is missing, start the local stack, wait until every service is healthy
	MAKE="$(MAKE)" COMPOSE="$(COMPOSE)" compose/local/up.sh

compose-demo: compose-up-local  ## a sample .h5ad through the local stack's DAGs to embeddings; prints `N rows`
	$(RUN) python compose/local/demo.py

compose-down-local:  ## stop the local stack and every step container; VOLUMES=1 also removes the volumes
	COMPOSE="$(COMPOSE)" VOLUMES="$(VOLUMES)" compose/local/down.sh

# ---- images, built offline (docs/deployment.md, "Air-gapped builds") -------------------
# `make images` builds sclake-worker:<version>-cpu, sclake-airflow:<version> and, where the CUDA
# base is here or can be pulled, sclake-worker:<version>-cuda, with --network none. A public base
# that cannot be pulled is replaced by the local Debian base ($(BASE_IMAGE), `make base-image`).
WHEELHOUSE ?= build/wheelhouse
BASE_IMAGE ?= sclake-base:bookworm
PYTHON_IMAGE ?= python:3.11.13-slim-bookworm
AIRFLOW_IMAGE ?= apache/airflow:slim-3.3.2-python3.11
CUDA_IMAGE ?= nvidia/cuda:13.0.2-base-ubuntu24.04
# auto: build the CUDA image where its base is available; yes: fail where it is not; no: skip it
CUDA ?= auto
IMAGES ?= worker-cpu airflow cuda

.PHONY: images wheelhouse base-image test-images

base-image:  ## the local Debian base (debootstrap; root), rebuilt only when tools/base-image.sh changes
	tools/base-image.sh $(BASE_IMAGE)

wheelhouse:  ## every pinned requirement as a Linux x86_64 CPython 3.11 wheel in $(WHEELHOUSE) (needs PyPI)
	TORCH_WHEELS=$(TORCH_WHEELS) TORCH_INDEX_URL=$(TORCH_INDEX_URL) .venv/bin/python tools/wheelhouse.py $(WHEELHOUSE)

images: wheelhouse  ## all images, no network inside any build step
	WHEELHOUSE=$(WHEELHOUSE) BASE_IMAGE=$(BASE_IMAGE) PYTHON_IMAGE=$(PYTHON_IMAGE) AIRFLOW_IMAGE=$(AIRFLOW_IMAGE) \
	CUDA_IMAGE=$(CUDA_IMAGE) CUDA=$(CUDA) IMAGES="$(IMAGES)" TORCH_WHEELS=$(TORCH_WHEELS) \
	TORCH_INDEX_URL=$(TORCH_INDEX_URL) tools/build-images.sh
