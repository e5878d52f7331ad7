# Two entry points (see README.md):
#   make demo   set up everything and run the main job (baseline -> compression pipeline)
#   make test   set up everything and run the test suite (lint, types, unit + slow tests)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup data test-deps demo test lint unit unit-noonednn bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data

# Debian packages, installed with apt when we can (root or password-less sudo); otherwise
# the script says what to run and the build goes on.
ENSURE_APT = bash scripts/ensure_apt_packages.sh

# The offline Fashion-MNIST copy.
data:
	@$(ENSURE_APT) --otherwise "the loader will try keras' downloader or LRF_OPTUNA_DATA" \
		dataset-fashion-mnist

# Also Chromium + chromedriver (dashboard test) and PostgreSQL (multi-worker test).
test-deps:
	@$(ENSURE_APT) --otherwise "the tests needing them will skip" \
		dataset-fashion-mnist chromium chromium-driver postgresql

demo: setup
	$(PY) -m lrf_optuna.demo

lint: $(STAMP)
	$(PY) -m ruff check lrf_optuna tests benchmarks studies
	$(PY) -m mypy

# Everything but the rewrite-everything test over keras.applications (~6 min), which runs
# once, in unit-noonednn, on the stricter kernels.
unit: $(STAMP)
	$(PY) -m pytest -q --durations=15 --ignore=tests/test_keras_applications.py

# The engine's tests again without oneDNN, as TensorFlow runs on CPUs without AVX-512 (most
# laptops and CI runners): its plain CPU kernels refuse ops that oneDNN accepts.
ENGINE_TESTS = tests/decompose_tests tests/test_rewrite.py tests/test_costs.py \
	tests/test_keras_applications.py lrf_optuna/decompose lrf_optuna/rewrite.py \
	lrf_optuna/costs.py "tests/scoring_tests/test_cache.py::test_cache_builds_on_a_strided_conv_with_every_method"
unit-noonednn: $(STAMP)
	TF_ENABLE_ONEDNN_OPTS=0 $(PY) -m pytest -q --durations=10 $(ENGINE_TESTS)

test: setup test-deps lint unit unit-noonednn

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
