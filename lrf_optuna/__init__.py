"""lrf_optuna: per-layer low-rank factorization of Keras CNNs, searched with Optuna."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
