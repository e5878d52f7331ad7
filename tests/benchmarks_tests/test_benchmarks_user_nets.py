"""The user-nets benchmark: the nets, the one pass/fail decision, the validation split it
shares with ``compress``, and a smoke run of its tiny mode checking the results' structure
and invariants."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from benchmarks import user_nets as U
from lrf_optuna.data import resolve_val_fraction


def test_nets_have_the_issue_sizes_and_scale_with_width() -> None:
    expected = {"plain": 914_698, "residual": 309_418, "mobile": 139_146}
    for net, params in expected.items():
        assert U.build_net(net, (28, 28, 1), 10).count_params() == params
        assert U.build_net(net, (28, 28, 1), 10, 0.5).count_params() < params / 2
    # seeded: the same width and seed give the same weights
    a, b = (U.build_net("residual", (12, 12, 1), 4, 0.25, seed=3) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_passes_is_a_point_estimate_on_the_same_images() -> None:
    ref = np.array([True] * 99 + [False])  # 99 %
    assert U.passes(ref, ref, 0.0)
    assert U.passes(np.array([True] * 98 + [False] * 2), ref, 1.0)  # exactly 1 pp below
    assert not U.passes(np.array([True] * 97 + [False] * 3), ref, 1.0)  # 2 pp below
    assert not U.passes(np.array([True] * 98 + [False] * 2), ref, 0.99)
    assert U.passes(np.ones(100, bool), ref, 0.0)  # better than the reference
    # 400 images: one image is 0.25 pp, so 1 pp is 4 images
    ref = np.ones(400, bool)
    assert U.passes(np.r_[np.zeros(4, bool), np.ones(396, bool)], ref, 1.0)
    assert not U.passes(np.r_[np.zeros(5, bool), np.ones(395, bool)], ref, 1.0)
    with pytest.raises(ValueError, match="same validation images"):
        U.passes(np.ones(10, bool), np.ones(11, bool), 1.0)


def test_val_fraction_and_seed_default_to_compress_s() -> None:
    from lrf_optuna.compression import compress_detailed

    params = inspect.signature(compress_detailed).parameters
    args, _, _ = U.parse_args([])
    assert args.val_fraction == params["val_fraction"].default
    assert args.seed == params["seed"].default
    args, _, name = U.parse_args(["--quick", "--nets", "plain", "--ratios", "1/2,1/8"])
    assert (name, args.nets, args.sizes, args.ratios) == ("quick", ["plain"], [4000],
                                                         [0.5, 0.125])
    for bad in (["--nets", "vgg"], ["--widths", "1.5"], ["--val-fraction", "0"]):
        with pytest.raises(SystemExit):
            U.parse_args(bad)


def test_narrow_net_distilled_from_the_original_is_its_own_cached_run(tmp_path) -> None:
    """narrow + KD: the distillation loss on [label, teacher logits] targets; a different
    cache entry from the plain narrow run, and a different model."""
    from conftest import quadrant_images

    from lrf_optuna.data import from_arrays, prepare_splits
    from lrf_optuna.finetune.recipe import teacher_outputs

    x, y = quadrant_images(240, 12)
    splits = prepare_splits(from_arrays(x[:200], y[:200], x[200:], y[200:]), seed=0)
    original = U.train_net("plain", 0.25, splits, epochs=2, seed=0, cache_dir=tmp_path)
    teacher = teacher_outputs(original.model, splits)
    plain = U.train_net("plain", 0.125, splits, epochs=2, seed=0, cache_dir=tmp_path)
    kd = U.train_net("plain", 0.125, splits, epochs=2, seed=0, cache_dir=tmp_path,
                     teacher=teacher)
    assert "_kd_" in kd.key and kd.key != plain.key and not kd.cached
    assert kd.history["loss"] and "accuracy" not in kd.history  # the KD loss, not CE
    assert not all(np.array_equal(a, b) for a, b in zip(plain.model.get_weights(),
                                                        kd.model.get_weights()))
    assert 0 <= kd.val_acc <= 1 and len(kd.val_correct) == len(splits.x_val)
    again = U.train_net("plain", 0.125, splits, epochs=2, seed=0, cache_dir=tmp_path,
                        teacher=teacher)
    assert again.cached and again.val_acc == kd.val_acc


@pytest.mark.slow
def test_tiny_mode_runs_every_net_end_to_end(tmp_path) -> None:
    results_md = tmp_path / "RESULTS.md"
    assert U.main(["--tiny", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results_user_nets.json").read_text())
    assert results["mode"] == "tiny" and results["max_drop_pp"] == 1.0
    runs = {r["net"]: r for r in results["runs"]}
    assert set(runs) == set(U.NETS) and len(results["runs"]) == len(U.NETS)
    for net, r in runs.items():
        o = r["original"]
        # a narrow net at width 1 is the original
        assert U.build_net(net, (12, 12, 1), 4, o["width"]).count_params() == o["params"]
        fraction = resolve_val_fraction(results["val_fraction"], 400)  # None: automatic
        assert 0 <= o["test_acc"] <= 1 and r["val_images"] == round(400 * fraction)
        assert r["train_images"] + r["val_images"] == 400
        c = r["compress"]
        assert c["probes"] >= 1 and c["seconds"] > 0 and c["max_probe_epochs_run"] >= 1
        if c["within"]:
            assert 0 <= c["param_reduction"] < 1 and c["val_drop_pp"] <= 1.0 + 1e-9
        else:
            assert c["param_reduction"] is None
        assert r["baselines"]["narrow"]["epochs"] == o["epochs"] + c["max_probe_epochs_run"]
        assert set(r["baselines"]) == {"narrow", "narrow_kd", "uniform", "tau"}
        assert r["baselines"]["narrow_kd"]["epochs"] == r["baselines"]["narrow"]["epochs"]
        for name, b in r["baselines"].items():
            assert 0 <= b["param_reduction"] < 1, name
            assert b["probes"] == len(b["evaluated"]) <= b["candidates"]
            if b["within"]:  # decided on validation: the pick passed there
                assert b["val_drop_pp"] <= 1.0 + 1e-9
                assert any(e["passed"] and e["label"] == b["label"] for e in b["evaluated"])
            best = max(x["param_reduction"] for x in r["baselines"].values())
            assert r["targets"]["best_baseline_reduction"] == best
        assert r["baselines"]["narrow"]["reference"] == "untouched original"
        assert r["baselines"]["narrow_kd"]["reference"] == "untouched original"
    md = results_md.read_text()
    assert "## User nets benchmark (tiny mode)" in md and "| residual " in md
    # a rerun reads everything back: the same answers
    assert U.main(["--tiny", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results_user_nets.json").read_text())
    assert [(r["compress"], r["baselines"]) for r in again["runs"]] == [
        (r["compress"], r["baselines"]) for r in results["runs"]]
