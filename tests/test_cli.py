"""The lrf-optuna command line, end to end on a tiny model and dataset."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import optuna
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


def model_params(files) -> int:
    return keras.saving.load_model(files / "net.keras").count_params()


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
    study = optuna.load_study(study_name="net", storage=f"sqlite:///{files / 'net.db'}")
    front = sorted(study.best_trials, key=lambda t: (t.user_attrs["params"], t.number))
    # strategy plans beyond the trial budget stay enqueued (WAITING) for a later run
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 30 and len(front) > 5
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert out.startswith(f"Pareto front of study 'net': {len(front)} trial(s) of "
                          f"{len(complete)}, 5 shown\n")
    lines = out.splitlines()
    assert lines[3].split()[:2] == ["original", f"{model_params(files):,}"]
    rows = [ln.split()[0] for ln in lines[4:] if ln.strip()]
    # the smallest and the largest model of the front, 3 more spread between them
    assert len(rows) == 5 and rows[0] == str(front[0].number)
    assert rows[-1] == str(front[-1].number)
    assert all(int(n) in {t.number for t in front} for n in rows)


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


def test_library_modules_never_import_the_cli() -> None:
    """The CLI owns the command line: no library module imports it or argparse."""
    import ast
    from pathlib import Path

    import lrf_optuna

    root = Path(lrf_optuna.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] in ("cli", "demo.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n in ("argparse", "lrf_optuna.cli")]
    assert offenders == []


def test_ctrl_c_says_how_to_resume(files, capsys, monkeypatch) -> None:
    import lrf_optuna.search.wiring as search_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_mod, "run_remaining", interrupted)
    assert main(_search(files, "--n-trials", "50")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Rerun the same command to continue" in err
    assert "finished trial(s) are stored in sqlite:///" in err


def test_search_with_pruning_then_export_a_pruned_trial(files, tmp_path, capsys) -> None:
    """``--prune`` adds a ratio level per prunable group to every trial; a pruned and
    factorized trial exports to .keras / .tflite from the study alone."""
    storage = f"sqlite:///{files / 'pnet.db'}"
    argv = _search(files, "--n-trials", "50", "--prune", "--study-name", "pnet")
    argv[argv.index("--storage") + 1] = storage
    assert main(argv) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="pnet", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all({"conv1:prune", "fc1:prune"} <= set(t.params) for t in done)
    both = [t for t in done if any(v.startswith("prune ") and "+" in v
                                   for v in t.user_attrs["plan"].values())]
    assert both, "no trial pruned and factorized a layer"
    trial = min(both, key=lambda t: t.user_attrs["params"])
    assert main(["export", "--study-name", "pnet", "--storage", storage, "--trial",
                 str(trial.number), "--out", str(tmp_path / "out")]) == 0
    exported = keras.saving.load_model(next((tmp_path / "out").glob("*.keras")),
                                       safe_mode=True)
    assert exported.count_params() == trial.user_attrs["params"]
    assert main(["show", "--study-name", "pnet", "--storage", storage]) == 0
    assert "prune " in capsys.readouterr().out
    assert main(["report", "--study-name", "pnet", "--storage", storage, "--out",
                 str(tmp_path / "report")]) == 0
    assert "prune " in (tmp_path / "report" / "report.md").read_text()
    # the prune setting binds the study
    argv.remove("--prune")
    assert main(argv) == 2
    assert "search settings differ (prune:" in capsys.readouterr().err
    assert main([*argv, "--prune-importance", "l2"]) == 2
    assert "--prune-importance needs --prune" in capsys.readouterr().err
