"""The compression benchmark harness: recipe names, and a smoke run of its tiny mode that
checks the results' schema and that every selection produced a row."""

from __future__ import annotations

import json

import pytest

from benchmarks import compression as C


def test_recipe_names() -> None:
    ce = C.parse_recipe("ce10")
    assert (ce.epochs, ce.distill, ce.keep_epoch) == (10, 0.0, "best")
    kd = C.parse_recipe("kd3-last-p2-lr3e-4-a0.5-t2")
    assert (kd.epochs, kd.distill, kd.temperature, kd.keep_epoch, kd.patience,
            kd.learning_rate) == (3, 0.5, 2.0, "last", 2, 3e-4)
    for bad in ("adam10", "ce", "ce10-fast"):
        with pytest.raises(ValueError, match="recipe"):
            C.parse_recipe(bad)


def test_quick_mode_holds_out_2000_validation_images() -> None:
    from types import SimpleNamespace

    quick = C.MODES["quick"]
    data = SimpleNamespace(x_train=range(quick.train_images))
    frac = C.val_fraction(data, quick.val_images)
    assert round(frac * quick.train_images) == 2000
    assert quick.train_images - 2000 == 3600  # the training part it had before
    assert C.val_fraction(data, None) == 0.1
    for bad in (0, quick.train_images):
        with pytest.raises(ValueError, match="--val-images"):
            C.val_fraction(data, bad)


def test_probe_strategy_simulation_is_reproducible() -> None:
    a = C.simulate_probe_strategies(50, seed=3)
    assert a == C.simulate_probe_strategies(50, seed=3)
    assert a["bisect"]["max_probes"] <= 6  # ceil(log2(61 + 1))
    assert set(a) == {"bisect", "interpolate", "fronts"}


@pytest.mark.slow
def test_tiny_mode_writes_every_selection(tmp_path) -> None:
    assert C.main(["--tiny", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "tiny" and set(results["models"]) == {"tiny_vgg"}
    m = results["models"]["tiny_vgg"]
    assert 0 <= m["fair_reference_test_accuracy"] <= 1
    rows = m["best_within_1pp"]
    expected = {"search", "tau", "energy", "vbmf", "random", "tpe", "narrow",
                "uniform:channel_svd+svd"}
    assert set(rows) == expected
    for row in rows.values():
        assert 0.0 <= row["param_reduction"] <= 1.0 and "flops_reduction" in row
        assert "test_drop_pp" in row and row["probes"] >= 1 and row["candidates"] >= 1
    assert set(m["curves"]) == expected
    assert {"finetuned", "without_finetuning"} <= set(m["proxy_quality"])
    assert set(m["hypervolume"]) == {"nsga2", "tpe", "random"}
    assert {"conv", "fc"} == set(m["claims"]) and "hybrid" in m["claims"]["conv"]["rows"]
    assert set(m["levers"]["recipes"]) == {"ce1", "kd1-last"}
    assert m["stage_seconds"]["train original"] >= 0
    assert set(results["probe_strategies"]) == {"bisect", "interpolate", "fronts"}
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Compression benchmark (tiny mode)" in md and "| search " in md
    assert "plotly" in (tmp_path / "compression_tiny.html").read_text().lower()
    # a rerun resumes from the caches: nothing is fine-tuned again
    assert C.main(["--tiny", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())["models"]["tiny_vgg"]
    assert again["finetunings_run"] == 0
    assert again["best_within_1pp"] == {k: {**v, "seconds": again["best_within_1pp"][k]
                                            ["seconds"]} for k, v in rows.items()}


@pytest.mark.slow
def test_extreme_budget_tiny_compares_plans_under_the_budget(tmp_path) -> None:
    from benchmarks import extreme_budget as E

    md = tmp_path / "RESULTS.md"
    args = E.parse_args(["--tiny", "--cache-dir", str(tmp_path), "--results-md", str(md)])
    out = E.run(args)
    assert out["rows"], "no plan within the budget"
    limit = args.budget * out["original"]["params"]
    for row in out["rows"]:
        assert row["params"] <= limit and row["reference"] == "fair"
        assert row["val_drop_pp"] == pytest.approx(
            100 * (out["references"]["ce1"]["val_after"] - row["val"]))
    assert {r["plan"].split(" #")[0] for r in out["rows"]} >= {"focused nsga2", "focused tpe"}
    assert E.main(["--tiny", "--cache-dir", str(tmp_path), "--results-md", str(md)]) == 0
    assert "## Extreme budget (tiny_vgg)" in md.read_text()
    lower = E.run(E.parse_args(["--tiny", "--cache-dir", str(tmp_path), "--references", "none"]))
    assert lower["references"] == {"ce1": None}
    for row in lower["rows"]:  # against the untouched original, a lower bound of the fair one
        assert row["reference"].startswith("untouched")
        assert row["val_drop_pp"] == pytest.approx(100 * (lower["original"]["val"] - row["val"]))


def test_extreme_budget_refuses_bad_arguments() -> None:
    from benchmarks import extreme_budget as E

    for bad in (["--budget", "1.5"], ["--recipes", "adam3"]):
        with pytest.raises(SystemExit):
            E.parse_args(bad)
