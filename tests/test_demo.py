"""The main job (``python -m lrf_optuna.demo``) end to end on a tiny stand-in dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import quadrant_images

from lrf_optuna import data, demo


@pytest.fixture
def tiny_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    x, y = quadrant_images(240, 16)
    dataset = data.from_arrays(x[:200], y[:200], x[200:], y[200:], name="tiny")
    monkeypatch.setattr(data, "load_fashion_mnist", lambda path=None: dataset)
    monkeypatch.setenv("LRF_OPTUNA_CACHE", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_baselines_train_then_load(tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--models", "lenet5", "--search", "--epochs", "1", "-q"]
    assert demo.main(args) == 0
    first = capsys.readouterr().out
    assert "lenet5" in first and "test accuracy" in first and "trained in" in first
    assert demo.main(args) == 0
    assert "cached" in capsys.readouterr().out


@pytest.mark.slow
def test_whole_pipeline_and_resume(tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--models", "lenet5", "--search", "lenet5", "--epochs", "1", "--n-trials", "25",
            "--finetune-k", "1", "--finetune-epochs", "1", "--max-probes", "2", "-q"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    for text in ("Baselines", "similarity cache", "scored candidates", "NSGA-II search",
                 "Pareto front of study 'demo_lenet5'", "(original model)",
                 "fine-tuning done", "lrf-optuna dashboard --storage",
                 "the smallest model within 1 pp of the fair reference", "Max-drop search",
                 "fair reference (the original fine-tuned the same way): val"):
        assert text in out, text
    # the demo ends with the answer (then only the total time)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[-1].startswith("total") and out.index("the answer ===") > out.index("what next")
    assert lines[-2].startswith(("smallest model within 1 pp", "no compressed trial"))
    assert lines[-3].startswith("fair reference (the original fine-tuned the same way)")
    assert (tiny_data / "studies" / "demo_lenet5.db").exists()
    assert (tiny_data / "reports" / "demo_lenet5" / "report.html").exists()
    assert demo.main(args) == 0  # rerun: everything resumes, nothing is recomputed
    again = capsys.readouterr().out
    assert "0 new trial(s)" in again and "cached" in again
    assert "(0 probe(s) fine-tuned now)" in again
