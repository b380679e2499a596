# sclake: common tasks. `make demo` and `make test` are what a new machine runs.
UV ?= uv
export UV_LINK_MODE ?= copy

.PHONY: setup demo test test-fast lint format bench clean

setup:  ## create .venv from uv.lock (Python 3.11)
	$(UV) sync --frozen

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
