"""Rank-selection strategies: each returns valid plans with its defining property."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lrf_optuna.costs import model_costs
from lrf_optuna.decompose import get_method
from lrf_optuna.rewrite import find_layers, rewrite_model
from lrf_optuna.scoring.cache import GridConfig, SimilarityCache
from lrf_optuna.search.strategies import (
    EnergyThreshold,
    SimilarityThreshold,
    UniformRatio,
    VBMFRanks,
    all_plans,
    default_strategies,
)

L = keras.layers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    model = keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(12, 3, activation="relu", name="c1"),
        L.Conv2D(16, 3, activation="relu", name="c2"),
        L.Flatten(),
        L.Dense(48, activation="relu", name="fc1"),
        L.Dense(6, name="fc2"),
    ])
    # fc1 gets a planted rank-4 structure plus a little noise: weight-based methods see it
    w = model.get_layer("fc1").kernel
    planted = rng.standard_normal((w.shape[0], 4)) @ rng.standard_normal((4, w.shape[1]))
    w.assign((0.05 * planted + 0.002 * rng.standard_normal(w.shape)).astype("float32"))
    x = rng.uniform(0, 1, (64, 10, 10, 3)).astype("float32")
    cache = SimilarityCache.build(model, x, cache_dir=tmp_path_factory.mktemp("c"),
                                  grid=GridConfig(points=6), progress=False)
    return model, cache


def _valid(model, plan) -> None:
    found = find_layers(model)
    for path, (method, rank) in plan.items():
        m = get_method(method)
        m.check(found[path].info, rank)
        assert m.saves(found[path].info, rank)


def test_tau_plans_meet_threshold_and_cost_grows_with_tau(setup) -> None:
    model, cache = setup
    plans = SimilarityThreshold(taus=(0.5, 0.8, 0.9, 0.99)).plans(model, cache)
    assert [p.label for p in plans] == ["tau:0.5", "tau:0.8", "tau:0.9", "tau:0.99"]
    costs = []
    for named, tau in zip(plans, (0.5, 0.8, 0.9, 0.99)):
        _valid(model, named.plan)
        total = 0
        for path in cache.layers:
            table = cache.layer(path)
            if path in named.plan:
                cand = table.lookup(*named.plan[path])
                assert cand.scores["cosine"] >= tau
                # nothing cheaper in the cache reaches tau
                assert all(c.params >= cand.params for c in table.candidates
                           if c.scores["cosine"] >= tau)
                total += cand.params
            else:
                assert all(c.scores["cosine"] < tau for c in table.candidates)
                total += table.original_params
        costs.append(total)
    assert costs == sorted(costs)


def test_energy_plans_grow_with_energy(setup) -> None:
    model, _ = setup
    plans = EnergyThreshold(energies=(0.5, 0.9, 0.99)).plans(model, None)
    ranks = [dict(p.plan).get("fc1", ("svd", 10**9))[1] for p in plans]
    assert ranks == sorted(ranks)
    for p in plans:
        _valid(model, p.plan)


def test_vbmf_finds_planted_rank(setup) -> None:
    model, _ = setup
    (plan,) = VBMFRanks().plans(model, None)
    assert plan.plan["fc1"] == ("svd", 4)
    _valid(model, plan.plan)


def test_uniform_ratio_respects_budget(setup) -> None:
    model, _ = setup
    plans = UniformRatio(methods=("channel_svd", "svd"), ratios=(0.5, 0.2)).plans(model, None)
    assert {p.label for p in plans} == {"uniform:channel_svd@0.5", "uniform:channel_svd@0.2",
                                        "uniform:svd@0.5", "uniform:svd@0.2"}
    found = find_layers(model)
    for p in plans:
        ratio = float(p.label.split("@")[1])
        for path, (method, rank) in p.plan.items():
            info = found[path].info
            m = get_method(method)
            assert m.params(info, rank) <= ratio * info.original_params
            if rank < m.max_rank(info):
                assert m.params(info, rank + 1) > ratio * info.original_params


def test_all_plans_dedup_and_build(setup) -> None:
    model, cache = setup
    plans = all_plans(model, cache)
    keys = [tuple(sorted(p.plan.items())) for p in plans]
    assert len(keys) == len(set(keys))
    assert {p.strategy for p in plans} == {"tau", "energy", "vbmf", "uniform"}
    assert len(default_strategies()) == 4
    aware = [p for p in plans if any(get_method(m).needs_inputs for m, _ in p.plan.values())]
    assert aware  # uniform plans of the activation-aware methods
    for named in plans[:: max(1, len(plans) // 6)] + aware[:1]:
        if named in aware:  # their factors exist at the cache's ranks: snap as the search does
            small = cache.build_model(model, {
                p: (m, cache.layer(p).lookup(m, r).rank) for p, (m, r) in named.plan.items()})
        else:
            small = rewrite_model(model, named.plan)
        assert model_costs(small).params <= model_costs(model).params
