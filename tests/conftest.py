"""Shared test set-up: quiet TensorFlow, deterministic seeds, small helpers."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def randomize_weights(model_or_layer, rng: np.random.Generator, scale: float = 0.5) -> None:
    """Give every weight random values (trained-like, not the zero biases of init)."""
    for w in model_or_layer.weights:
        value = rng.standard_normal(tuple(w.shape)) * scale
        if "variance" in w.path:  # BatchNorm moving variance must stay positive
            value = np.abs(value) + 0.5
        w.assign(value.astype(w.dtype))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
