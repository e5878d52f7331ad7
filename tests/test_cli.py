"""The lrf-optuna command line, end to end on a tiny model and dataset."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from lrf_optuna.cli import main

L = keras.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (300, 28, 28), dtype=np.uint8)
    y = np.arange(300) % 10
    np.savez(d / "data.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:],
             y_test=y[240:])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)),
                              L.Conv2D(6, 5, strides=2, activation="relu", name="conv1"),
                              L.Flatten(), L.Dense(24, activation="relu", name="fc1"),
                              L.Dense(10, name="fc2")])
    model.save(d / "net.keras")
    return d


def _search(files, *extra: str) -> list[str]:
    return ["search", "--model", str(files / "net.keras"), "--dataset",
            str(files / "data.npz"), "--calibration-size", "64",
            "--storage", f"sqlite:///{files / 'net.db'}", "--cache-dir",
            str(files / "cache"), "--population-size", "8", "-q", *extra]


def test_search_then_resume_then_show(files, capsys) -> None:
    assert main(_search(files, "--n-trials", "20")) == 0
    out = capsys.readouterr().out
    assert "0 finished trial(s)" in out and "Pareto front of study 'net'" in out
    assert "(original model)" in out
    assert main(_search(files, "--n-trials", "30")) == 0
    out = capsys.readouterr().out
    assert "20 finished trial(s), 0 strategy plan(s) enqueued" in out
    assert main(["show", "--study-name", "net", "--storage",
                 f"sqlite:///{files / 'net.db'}", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "of 3" in out or "trial(s) of" in out
    lines = [ln for ln in out.splitlines() if ln[:1].isdigit() or ln.startswith("orig")]
    assert 2 <= len(lines) <= 6


def test_clear_errors(files, capsys) -> None:
    assert main(_search(files, "--methods", "svd", "magic")) == 2
    assert "unknown --methods ['magic']" in capsys.readouterr().err
    assert main(["search", "--model", "nothing.keras", "--dataset", str(files / "data.npz"),
                 "-q"]) == 2
    assert "neither a reference model" in capsys.readouterr().err
    assert main(["search", "--model", "lenet5", "--dataset", "data.csv", "-q"]) == 2
    assert "dataset must be 'fashion-mnist' or an existing .npz" in capsys.readouterr().err
    assert main(["show", "--study-name", "x", "--storage",
                 f"sqlite:///{files / 'missing.db'}"]) == 2
    assert "no study database" in capsys.readouterr().err
    assert main(["show", "--study-name", "other", "--storage",
                 f"sqlite:///{files / 'net.db'}"]) == 2
    assert "no study 'other'" in capsys.readouterr().err


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "lrf_optuna.cli", "search", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--dataset", "--storage", "--n-trials", "--methods", "--metric"):
        assert flag in out


def test_ctrl_c_says_how_to_resume(files, capsys, monkeypatch) -> None:
    import lrf_optuna.search as search_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_mod, "run_remaining", interrupted)
    assert main(_search(files, "--n-trials", "50")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Rerun the same command to continue" in err
    assert "finished trial(s) are stored in sqlite:///" in err
