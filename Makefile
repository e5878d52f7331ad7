# Two entry points (see README.md):
#   make demo   set up everything and run the main job (baseline -> compression pipeline)
#   make test   set up everything and run the test suite (lint, types, unit + slow tests)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup data test-deps demo test lint unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data

# Installs the offline Fashion-MNIST Debian package when it can (root or sudo).
data:
	@bash scripts/ensure_data.sh

# Chromium + chromedriver (dashboard test) and PostgreSQL (multi-worker test), via apt.
test-deps:
	@bash scripts/ensure_test_deps.sh

demo: setup
	$(PY) -m lrf_optuna.demo

lint: $(STAMP)
	$(PY) -m ruff check lrf_optuna tests benchmarks studies
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest -q --durations=15

test: setup test-deps lint unit

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
