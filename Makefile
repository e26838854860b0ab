# The two commands of the quick start: `make demo` and `make test`.
# Each creates the virtual environment in .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-pipeline bench-realtime clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cyclerctl demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-pipeline: $(STAMP)
	$(BIN)/python bench/pipeline.py

bench-realtime: $(STAMP)
	$(BIN)/python bench/realtime.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
