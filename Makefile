# sinkwatch: `make run` serves the embedded default model, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: setup run test lint format bench

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## setup: install into .venv and fetch + convert the default model (once)
setup: $(INSTALLED)
	$(BIN)/sinkwatch fetch

## run: serve the embedded default model on http://127.0.0.1:8000/v1
run: setup
	$(BIN)/sinkwatch serve

## lint: ruff checks and formatting
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## test: lint, then the whole test suite against the real model
test: setup lint
	$(BIN)/pytest

## bench: engine throughput (capture off/on, 1/4/8 streams); results go in docs/BENCHMARKS.md
bench: setup
	$(BIN)/sinkwatch bench engine
