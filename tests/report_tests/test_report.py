"""The HTML + Markdown report, on the tiny search study and a faked fine-tuning study."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest

from lrf_optuna.cli import main
from lrf_optuna.errors import UserError
from lrf_optuna.report import write_report
from lrf_optuna.study import load_study, readable_plan

#: The fine-tuning study's ``original`` attribute, as ``lrf_optuna.finetune`` records it.
FAKE_ORIGINAL = {"val_acc": 0.9, "test_acc": 0.9125, "params": 10720, "flops": 90880,
                 "keras_bytes": 150_000, "tflite_bytes": 48_000, "latency_ms_keras": 2.5,
                 "latency_ms_tflite": 0.5}
FAKE_RECIPE = "abc123"


def copy_study(tiny_study: dict, dest: Path) -> str:
    """A private copy of the tiny study's database (tests here add studies and notes)."""
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(tiny_study["storage"][len("sqlite:///"):])
    shutil.copy(src, dest / "study.db")
    return f"sqlite:///{dest / 'study.db'}"


def fake_finetune_study(storage: str, study_name: str = "tiny", n: int = 3, *,
                        artifact_dir: str | None = None) -> list[dict]:
    """Add ``"<study_name>:finetune"`` with ``n`` COMPLETE jobs on Pareto-front trials
    (and the fair reference of their recipe, then one failed job), shaped like
    ``lrf_optuna.finetune``'s.

    Jobs are on the ``n`` smallest non-original Pareto-front trials; returns their user
    attributes (``source_trial`` ... ``finetune_seconds``), in the order added.
    """
    study = optuna.load_study(study_name=study_name, storage=storage)
    front = sorted((t for t in study.best_trials if t.user_attrs.get("strategy") != "original"),
                   key=lambda t: (t.user_attrs["params"], t.number))[:n]
    ft = optuna.create_study(study_name=f"{study_name}:finetune", storage=storage,
                             directions=["minimize", "maximize"])
    ft.set_user_attr("original", FAKE_ORIGINAL)
    ft.set_user_attr("source_study", study_name)
    if artifact_dir is not None:
        ft.set_user_attr("artifact_dir", artifact_dir)
    source = {"source_trial": optuna.distributions.IntDistribution(0, 10**9)}
    out = []
    for i, src in enumerate(front):
        attrs = {"source_trial": src.number, "plan": src.user_attrs["plan"],
                 "lrf_plan": src.user_attrs["lrf_plan"],
                 "val_acc_before": round(0.40 + 0.05 * i, 4),
                 "val_acc_after": round(0.80 + 0.03 * i, 4),
                 "test_acc": round(0.7912 + 0.031 * i, 4),
                 "params": src.user_attrs["params"], "flops": src.user_attrs["flops"],
                 "keras_bytes": 60_000 + 10_000 * i, "tflite_bytes": 16_000 + 4_000 * i,
                 "latency_ms_keras": 2.0 + 0.1 * i, "latency_ms_tflite": 0.25 + 0.05 * i,
                 "epochs_run": 3 + i, "finetune_seconds": 12.5 + i,
                 "recipe": FAKE_RECIPE, "recipe_text": "CE, 3 epochs"}
        ft.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, values=[attrs["params"], attrs["test_acc"]],
            params={"source_trial": src.number}, distributions=source, user_attrs=attrs))
        out.append(attrs)
    original = next(t for t in study.trials if t.user_attrs.get("lrf_plan") == {})
    ft.add_trial(optuna.trial.create_trial(  # the fair reference of the jobs' recipe
        state=optuna.trial.TrialState.COMPLETE, values=[10720, 0.915],
        params={"source_trial": original.number}, distributions=source,
        user_attrs={**FAKE_ORIGINAL, "source_trial": original.number, "val_acc_before": 0.9,
                    "val_acc_after": 0.91, "test_acc_before": 0.9125, "test_acc": 0.915,
                    "epochs_run": 3, "finetune_seconds": 30.0, "recipe": FAKE_RECIPE,
                    "recipe_text": "CE, 3 epochs", "fair_reference": True, "plan": {},
                    "lrf_plan": {}}))
    ft.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, params={"source_trial": front[0].number},
        distributions=source, user_attrs={"source_trial": front[0].number,
                                          "error": "RuntimeError: fake"}))
    return out


@pytest.fixture
def with_finetune(tiny_study, tmp_path):
    storage = copy_study(tiny_study, tmp_path / "db")
    jobs = fake_finetune_study(storage)
    return optuna.load_study(study_name="tiny", storage=storage), jobs


def test_report_with_finetune(with_finetune, tmp_path) -> None:
    study, jobs = with_finetune
    html_path, md_path = write_report(study, tmp_path / "out")
    assert html_path.exists() and md_path.exists()
    html = html_path.read_text()
    md = md_path.read_text()
    # self-contained: plotly.js inline, nothing fetched from the network
    assert re.search(r"<script[^>]+src=[\"']?https?:", html) is None
    assert "<script src=\"http" not in html
    assert html.count("plotly.js v") >= 1 and len(html) > 1_000_000
    assert html.count('class="plotly-graph-div"') == 3  # Pareto, accuracy, similarity
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        assert layer in html and f"| {layer} |" in md
    assert "10,720" in html and "10,720" in md  # the original's params
    for job in jobs:
        assert f"#{job['source_trial']}" in html
        assert f"| #{job['source_trial']} |" in md
    assert "fine-tuned" in html and "original model" in html
    # (d) the results table, right numbers and ratios against the original
    table = md.split("## Fine-tuning results against the original model")[1].split("##")[0]
    assert "| trial | job | params | params ratio |" in table
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in table.splitlines()
            if ln.startswith("| ")}
    orig = rows["original"]
    assert "| 10,720 | 1.00x | 90,880 | 1.00x | 0.9000 | 0.9000 | 0.9125 |" in orig
    assert "| 2.500 | 1.00x | 0.500 | 1.00x | 150,000 | 1.00x | 48,000 | 1.00x |" in orig
    j = jobs[1]
    row = rows[f"#{j['source_trial']}"]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{j['params']:,}"
    assert cells[3] == f"{10720 / j['params']:.2f}x"
    assert cells[4] == f"{j['flops']:,}" and cells[5] == f"{90880 / j['flops']:.2f}x"
    assert cells[6:9] == ["0.4500", "0.8300", "0.8222"]
    # drops in pp: val and test against the fair reference, test against the original
    assert cells[9:12] == ["+8.00", "+9.28", "+9.03"]
    assert cells[12:16] == ["2.100", f"{2.5 / 2.1:.2f}x", "0.300", f"{0.5 / 0.3:.2f}x"]
    assert cells[16:20] == ["70,000", f"{150_000 / 70_000:.2f}x", "20,000", "2.40x"]
    assert cells[20:] == ["", "4", "13.5", "CE, 3 epochs"]  # no deployed file: no quantize
    ref = [c.strip() for c in rows["fair reference"].strip("|").split("|")]
    assert ref[6:12] == ["0.9000", "0.9100", "0.9150", "", "", "-0.25"]
    assert "fair reference val / test accuracy (CE, 3 epochs) | 0.9100 / 0.9150" in md
    assert "4 complete, 1 fail" in md  # with the fair reference
    # (b) the per-layer plan table: layers x fine-tuned trials
    plans = md.split("## Per-layer plans")[1].split("##")[0]
    header = next(ln for ln in plans.splitlines() if ln.startswith("| layer"))
    assert header == "| layer | type | " + " | ".join(
        f"#{j['source_trial']}" for j in sorted(jobs, key=lambda a: (a["params"],
                                                                    a["source_trial"]))) + " |"
    src = study.trials[jobs[0]["source_trial"]]
    for layer, choice in src.user_attrs["plan"].items():
        assert choice in next(ln for ln in plans.splitlines() if ln.startswith(f"| {layer} |"))


def test_report_without_finetune(tiny_study, tmp_path) -> None:
    study = optuna.load_study(study_name="tiny", storage=tiny_study["storage"])
    html_path, md_path = write_report(study, tmp_path / "out")
    md = md_path.read_text()
    assert "No fine-tuning study `tiny:finetune` yet" in md
    assert "No fine-tuned trial yet" in md
    assert "| trial | job |" not in md
    html = html_path.read_text()
    assert "No fine-tuning study" in html and 'src="http' not in html
    assert html.count('class="plotly-graph-div"') == 2
    assert "10,720" in md and "## Similarity cache" in md


def test_report_errors(tiny_study, tmp_path) -> None:
    with pytest.raises(UserError, match="no study 'nope'"):
        load_study("nope", tiny_study["storage"])
    with pytest.raises(UserError, match="no study database"):
        load_study("x", f"sqlite:///{tmp_path / 'missing.db'}")
    bare = optuna.create_study(study_name="bare", storage=f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(UserError, match="not described by lrf_optuna"):
        write_report(bare, tmp_path / "out")
    study = optuna.load_study(study_name="tiny", storage=tiny_study["storage"])
    with pytest.raises(UserError, match=r"similarity cache .* is missing"):
        write_report(study, tmp_path / "out", cache_dir=tmp_path / "nowhere")
    # the search's --cache-dir (the cache's parent) is accepted too
    html_path, _ = write_report(study, tmp_path / "out2",
                                cache_dir=tiny_study["dir"] / "cache")
    assert html_path.exists()


def test_report_command(tiny_study, tmp_path, capsys) -> None:
    assert main(["report", "--storage", tiny_study["storage"],
                 "--out", str(tmp_path / "r")]) == 0
    assert f"wrote {tmp_path / 'r' / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "r" / "report.md").read_text().startswith(
        "# LRF compression report: `tiny`")
    assert main(["report", "--study-name", "zzz", "--storage", tiny_study["storage"]]) == 2
    assert "no study 'zzz'" in capsys.readouterr().err


def test_plan_forms() -> None:
    """Plans are shown the same whether stored readable, as [method, rank] or as dicts."""
    assert readable_plan({"plan": {"a": "svd r=3", "b": ["tt", 4], "c": ["keep", 0], "d": None,
                           "e": {"method": "cp", "rank": 2}}}) == {
        "a": "svd r=3", "b": "tt r=4", "c": "keep", "d": "keep", "e": "cp r=2"}
    assert readable_plan({"plan": None}) == {}
    assert readable_plan({"lrf_plan": {"a": ["svd", 3]}}) == {"a": "svd r=3"}
