"""Shared test set-up: quiet TensorFlow, deterministic seeds, small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))


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


def quadrant_images(n: int, size: int, *, classes: int = 4, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy data: ``n`` uint8 images ``size x size``, labels ``0..3`` cycling;
    the class decides which quadrant is bright."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.uniform(0, 60, (n, size, size)).astype(np.uint8)
    half = size // 2
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, r * half:(r + 1) * half, q * half:(q + 1) * half] += 150
    return x, y


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A study made by ``lrf-optuna search`` on a tiny CNN and a tiny random dataset.

    Returns a dict with ``storage`` (SQLite URL), ``study_name``, ``dir`` (the folder with
    ``net.keras``, ``data.npz``, the cache and the database) and ``argv`` (the search
    command's arguments, to run more trials).
    """
    import keras

    from lrf_optuna.cli import main

    d = tmp_path_factory.mktemp("tiny_study")
    x, y = quadrant_images(400, 16)
    np.savez(d / "data.npz", x_train=x[:320], y_train=y[:320], x_test=x[320:],
             y_test=y[320:])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Conv2D(12, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(32, activation="relu", name="fc1"),
        keras.layers.Dense(4, name="fc2"),
    ], name="tiny")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:320, ..., None] / 255.0, y[:320], epochs=3, batch_size=32, verbose=0)
    model.save(d / "net.keras")
    storage = f"sqlite:///{d / 'study.db'}"
    argv = ["search", "--model", str(d / "net.keras"), "--dataset", str(d / "data.npz"),
            "--calibration-size", "64", "--storage", storage, "--study-name", "tiny",
            "--cache-dir", str(d / "cache"), "--population-size", "10", "-q"]
    assert main([*argv, "--n-trials", "40"]) == 0
    return {"storage": storage, "study_name": "tiny", "dir": d, "argv": argv}


@pytest.fixture
def postgres_url():
    """The SQLAlchemy URL of a throwaway PostgreSQL cluster (database ``postgres``), from
    :func:`benchmarks._postgres.throwaway_postgres` (a temporary directory, a unix socket
    only, stopped and deleted afterwards). Skipped when the PostgreSQL server binaries or
    the ``psycopg`` (v3) driver are missing, or when running as root without a
    ``postgres`` user.
    """
    from benchmarks._postgres import PostgresUnavailableError, throwaway_postgres

    cluster = throwaway_postgres()
    try:
        url = cluster.__enter__()
    except PostgresUnavailableError as err:
        pytest.skip(str(err))
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)
