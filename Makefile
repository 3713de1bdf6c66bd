# mimic-runner — common tasks. `make install` creates .venv (unless a virtualenv is active)
# and installs the package with its dev extras; every other target uses that environment.
PYTHON ?= python3
VENV ?= .venv
ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := $(VENV)/bin
endif
ARGS ?=

.PHONY: install browser test test-fast test-all lint format smoke run table1 table2 report bench clean

install:
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x $(VENV)/bin/python ]; then $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"

# Debian's Chromium for the browser test of the feedback page (needs root; never downloads a browser).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The whole suite: slow tests included, GPU tests skip without a GPU, browser tests skip without Chromium.
test:
	$(BIN)/python -m pytest -q $(ARGS)

test-fast:
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint:
	$(BIN)/ruff check mimic_runner tests scripts

format:
	$(BIN)/ruff format mimic_runner tests scripts

# A tiny end-to-end run (about a minute on 2 CPU cores, data generation included).
smoke:
	$(BIN)/mimic-run trainer=smoke $(ARGS)

run:
	$(BIN)/mimic-run $(ARGS)

table1:
	$(BIN)/mimic-run -m sweep=table1 $(ARGS)

table2:
	$(BIN)/mimic-run -m sweep=table2 $(ARGS)

report:
	$(BIN)/mimic-report runs --compare-paper $(ARGS)

bench:
	$(BIN)/mimic-bench $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache test-artifacts
