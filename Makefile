# pushplan's entry points. Every target makes or reuses the virtual environment it needs.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

help: ## Show the targets and what they do
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pushplan needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Create or update the virtual environment (.venv)

demo: $(STAMP) ## Run the tour end to end on the local profile (no servers)
	$(BIN)/pushplan demo

test: $(STAMP) ## Run the tests (unit, integration against Redis/PostgreSQL, end to end)
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

notebooks: $(STAMP) ## Open the data scientists' notebooks in JupyterLab (after `make demo`)
	$(BIN)/python -m pip install --quiet -e '.[dev,notebooks]'
	$(BIN)/jupytext --sync notebooks/[0-9]*.py
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP) ## Run the benchmarks (figures go in docs/benchmarks.md)
	$(BIN)/python -m benchmarks.run

format: $(STAMP) ## Format and autofix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## Remove the virtual environment and local data
	rm -rf $(VENV) .pushplan .pytest_cache .mypy_cache .ruff_cache

.PHONY: help venv demo test lint notebooks bench format clean
