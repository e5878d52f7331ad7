"""Shared test set-up: quiet TensorFlow, deterministic seeds, small helpers."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

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


def _pg_bin() -> Path | None:
    """The directory of the PostgreSQL server binaries (``initdb``, ``pg_ctl``), if any."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres_url():
    """The SQLAlchemy URL of a throwaway PostgreSQL cluster (database ``postgres``).

    The cluster lives in a temporary directory, listens on a unix socket only (on a free
    port number) and is stopped and deleted afterwards. As root, ``initdb`` / ``pg_ctl`` run
    as the ``postgres`` user through ``runuser``. Skipped when the PostgreSQL server
    binaries or the ``psycopg`` (v3) driver are missing, or when running as root without a
    ``postgres`` user.
    """
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg", reason="the psycopg (v3) driver is not installed")
    root = Path(tempfile.mkdtemp(prefix="lrf_pg_"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)

    run(str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run(str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses='' -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
