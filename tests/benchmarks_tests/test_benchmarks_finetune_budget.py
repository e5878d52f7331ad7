"""benchmarks.finetune_budget: the recipe comparison runs end to end (tiny mode)."""

from __future__ import annotations

import json

import pytest

from benchmarks import finetune_budget as FB


def test_recipes_are_the_library_config_with_overrides() -> None:
    from lrf_optuna.finetune import FinetuneConfig

    assert FB.recipe("kd600").recipe_key() == FinetuneConfig(verbose=0).recipe_key()
    assert FB.recipe("steps600").distill == 0.0  # every CE recipe says so: not the default
    old = FB.recipe("old")
    assert (old.epochs, old.patience, old.monitor, old.bn_images) == (3, 1, "val_accuracy", 0)
    longer = FinetuneConfig().longer()
    assert FB.recipe("longer").recipe_key() == longer.recipe_key()
    assert longer.distill == 0.9 and FinetuneConfig(distill=0).longer().distill == 0.9


@pytest.mark.slow
def test_tiny_mode_compares_recipes_on_the_same_images(tmp_path) -> None:
    assert FB.main(["--tiny", "--out", str(tmp_path), "--cache-dir",
                    str(tmp_path / "cache")]) == 0
    results = json.loads((tmp_path / "results_finetune_budget.json").read_text())
    (run,) = results["runs"]
    assert run["net"] == "mobile" and run["train"] + run["val"] == 200
    assert set(run["recipes"]) == {"old", "steps600"}
    for name, r in run["recipes"].items():
        assert r["plans"], name
        for p in r["plans"]:
            drop, se = p["val_drop"]
            # a drop of whole images of the validation split, with a positive uncertainty
            assert se > 0 and abs(drop * run["val"] / 100 - round(drop * run["val"] / 100)) < 1e-6
            assert 0 < p["reduction"] < 1
    assert run["spearman"]["plans"] >= 1
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Fine-tuning budget (tiny mode)" in md and "steps600" in md
