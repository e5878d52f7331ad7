"""The pruning part of the similarity cache: group scores through the consumers, LRF of
the pruned kernels, resuming, and building what was scored."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import lrf_optuna.prune.cache as prune_cache_mod
from lrf_optuna.decompose import layer_weights
from lrf_optuna.plan import CompressionPlan
from lrf_optuna.prune import (
    PruneCache,
    PruneConfig,
    PruneGraph,
    build_plan_model,
    build_pruned_model,
)
from lrf_optuna.prune.cache import output_sliced_weights
from lrf_optuna.rewrite import find_layers
from lrf_optuna.scoring.build import progress_bar
from lrf_optuna.scoring.cache import batchnorm_view, run_batched, score_candidates
from lrf_optuna.scoring.similarity import METRICS

from .conftest import CONFIG


def test_groups_and_tables_cover_the_prunable_layers(built) -> None:
    _, _, _, pruning, _ = built
    assert pruning.complete
    assert pruning.group_names == ["c1", "c2", "fc1"]  # fc2 feeds the output
    assert pruning.group("c2").consumers == ("fc1",)
    for name, group in pruning.groups.items():
        # 8 filters at 0.25 / 0.5 / 0.75 keep 6, 4, 2; ratio 0 keeps all: not stored
        assert sorted(group.scores, reverse=True) == [
            group.channels - int(r * group.channels) for r in CONFIG.ratios[1:]]
        assert group.score(group.channels, "cosine") == 1.0  # ratio 0: nothing lost
        sims = [group.score(k, "cosine") for k in sorted(group.scores, reverse=True)]
        assert all(np.isfinite(sims)) and all(-1.0 <= s <= 1.0 for s in sims)
        assert sims[0] > sims[-1], (name, sims)  # removing more filters costs more
        assert set(pruning.layers[name]) == set(group.scores)
    with pytest.raises(KeyError, match="no pruning to 5 of 8"):
        pruning.group_score("c1", kept=5, metric="cosine")
    with pytest.raises(KeyError, match="no group 'fc2'"):
        pruning.group("fc2")


def test_group_score_is_the_consumer_of_the_real_pruned_model(built) -> None:
    """Zeroing the removed channels in the consumer's captured input (the cache) gives
    exactly what the pruned model's smaller consumer computes on the kept channels."""
    model, _, _, pruning, acts = built
    graph = PruneGraph(model)
    for name, consumer, ratio in (("c1", "c2", 0.5), ("c2", "fc1", 0.25),
                                  ("fc1", "fc2", 0.75)):
        pruned = graph.prune({name: ratio}, importance="l1")
        kept = graph.kept_channels(name, ratio)
        x_in = acts[consumer].inputs
        if name == "c2":  # Flatten rows: (h, w, c) with c fastest
            h = x_in.reshape(len(x_in), -1, 12)[..., kept].reshape(len(x_in), -1)
        else:
            h = x_in[..., kept]
        y = run_batched(pruned.get_layer(consumer), h, 64)
        expected = METRICS["cosine"](acts[consumer].outputs, y)
        got = pruning.group_score(name, kept=len(kept), metric="cosine")
        assert got == pytest.approx(expected, abs=1e-5)


def test_unpruned_kernel_scores_equal_the_lrf_cache_exactly(built) -> None:
    """The pruned-table scoring path with no filter removed reproduces the LRF cache's
    candidates bit for bit (ratio 0 is the unpruned candidate)."""
    model, _, base, _, acts = built
    found = find_layers(model)
    for path in ("c2", "fc1"):
        layer = model.get_layer(path)
        mask = np.ones(found[path].info.out_channels, dtype=bool)
        weights = output_sliced_weights(layer, mask)
        ref = layer_weights(layer)
        assert set(weights) == set(ref)
        for k in ref:
            np.testing.assert_array_equal(weights[k], ref[k])
        table = base.layer(path)
        ranks = {m: [c.rank for c in table.for_method(m)] for m in table.methods}
        with threadpool_limits(limits=1, user_api="blas"):  # as the cache's workers
            again, _ = score_candidates(path, found[path].info, weights, acts[path].inputs,
                                        acts[path].outputs, ranks, ["cosine"], 64,
                                        progress_bar(0, False),
                                        view=batchnorm_view(model, path))
        for a, b in zip(table.candidates, again.candidates, strict=True):
            assert (a.method, a.rank, a.params, a.macs) == (b.method, b.rank, b.params, b.macs)
            if a.method != "cp":  # CP's ALS is not deterministic across calls
                assert a.scores["cosine"] == b.scores["cosine"]


@pytest.mark.parametrize("method", ["svd", "channel_svd_aware", "cp"])
def test_built_pruned_layer_reproduces_its_scored_candidate(built, method) -> None:
    """The layer built from a plan (prune, then factorize the pruned kernel) scores what
    the cache stored for it, and the model has the costs the graph computes."""
    model, _, base, pruning, acts = built
    graph = PruneGraph(model)
    path = "fc1" if method == "svd" else "c2"
    ratio = 0.5
    kept = graph.kept_channels(path, ratio)
    table = pruning.table(path, len(kept))
    if method not in table.methods:
        pytest.skip(f"{method} not applicable to {path}")
    cand = table.for_method(method)[len(table.for_method(method)) // 2]
    plan = {path: (method, cand.rank)}
    small = build_pruned_model(model, plan, {path: ratio}, cache=base, pruning=pruning)
    y = run_batched(small.get_layer(path), acts[path].inputs, 64)
    axis = -1
    got = METRICS["cosine"](np.take(acts[path].outputs, kept, axis=axis), y)
    assert got == pytest.approx(cand.scores["cosine"], abs=1e-5)
    assert small.count_params() == graph.model_costs({path: ratio}, plan).params
    # the producer's pruning too: cached factors lose the removed input rows
    both = build_pruned_model(model, plan, {path: ratio, "c1": 0.25}, cache=base,
                              pruning=pruning)
    assert both.count_params() == graph.model_costs({path: ratio, "c1": 0.25}, plan).params
    assert np.isfinite(keras.ops.convert_to_numpy(both(acts["c1"].inputs[:4]))).all()


def test_build_plan_model_prunes_only_plans_that_prune(built) -> None:
    model, _, base, pruning, _ = built
    plan = {"fc1": ("svd", 4)}
    pruned = CompressionPlan(plan, ratios={"c2": 0.5})
    expected = build_pruned_model(model, plan, {"c2": 0.5}, cache=base, pruning=pruning)
    got = build_plan_model(model, pruned, base, pruning=pruning)
    assert got.count_params() == expected.count_params() < model.count_params()
    assert got.get_layer("c2").filters == expected.get_layer("c2").filters
    plain = build_plan_model(model, plan, base, pruning=pruning)
    assert plain.count_params() == base.build_model(model, plan).count_params()
    assert plain.count_params() > got.count_params()
    with pytest.raises(ValueError, match="build_plan_model"):
        base.build_model(model, pruned)  # the LRF cache alone cannot prune


def test_cache_resumes_and_reloads(built, monkeypatch) -> None:
    model, x, base, pruning, _ = built
    directory = pruning.directory
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["config"] == CONFIG.to_json() and manifest["base"] == base.fingerprint
    # a killed build: one group and one layer file missing
    group_files = sorted((directory / "groups").glob("*.json"))
    layer_files = sorted((directory / "layers").glob("*.json"))
    group_files[1].unlink()
    layer_files[0].unlink()
    calls = {"group": 0, "layer": 0}
    real_group, real_cands = prune_cache_mod._score_group, prune_cache_mod.score_candidates

    def count_group(*a, **k):
        calls["group"] += 1
        return real_group(*a, **k)

    def count_cands(*a, **k):
        calls["layer"] += 1
        return real_cands(*a, **k)

    monkeypatch.setattr(prune_cache_mod, "_score_group", count_group)
    monkeypatch.setattr(prune_cache_mod, "score_candidates", count_cands)
    again = PruneCache.build(model, x, base, config=CONFIG, progress=False)
    assert calls["group"] == 1
    assert calls["layer"] == len(pruning.layers["c1"])  # one table per kept count
    assert again.directory == directory and again.complete
    reloaded = PruneCache.load(directory)
    for name, group in pruning.groups.items():
        assert reloaded.group(name).scores.keys() == group.scores.keys()
        for kept in group.scores:
            assert reloaded.group_score(name, kept=kept, metric="cosine") == pytest.approx(
                group.score(kept, "cosine"), abs=1e-6)
    # nothing left to do: nothing scored
    calls.update(group=0, layer=0)
    PruneCache.build(model, x, base, config=CONFIG, progress=False)
    assert calls == {"group": 0, "layer": 0}
    # another config is another cache
    other = PruneCache.build(model, x, base, config=PruneConfig(ratios=(0.0, 0.5), points=2),
                             progress=False)
    assert other.directory != directory


def test_wrong_model_or_config_refused(built) -> None:
    model, x, base, _, _ = built
    with pytest.raises(ValueError, match="was not built from this model"):
        PruneCache.build(model, x[:10], base, config=CONFIG, progress=False)
    with pytest.raises(ValueError, match="ratios must start at 0"):
        PruneConfig(ratios=(0.25, 0.5))
    with pytest.raises(ValueError, match="importance must be one of"):
        PruneConfig(importance="l3")
