"""Benchmarks for lrf_optuna (run from the repository root: ``python -m benchmarks.<name>``)."""
