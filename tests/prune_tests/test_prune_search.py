"""Searching pruning with LRF (``prune=``): parameters in every trial, exact costs, built
models, FBP-alone seeds, studies bound to their prune setting."""

from __future__ import annotations

import keras
import numpy as np
import optuna
import pytest

from lrf_optuna.costs import model_costs
from lrf_optuna.data import from_arrays
from lrf_optuna.errors import UserError
from lrf_optuna.plan import CompressionPlan, decode_plan
from lrf_optuna.prune import kept_count
from lrf_optuna.scoring.cache import GridConfig
from lrf_optuna.search import LRFObjective, create_lrf_study
from lrf_optuna.search.strategies import PruningThreshold, UniformPruning, all_plans
from lrf_optuna.study.models import StudyModels

from .conftest import CONFIG

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(objective: LRFObjective) -> optuna.Study:
    study = optuna.create_study(directions=objective.directions,
                                sampler=optuna.samplers.NSGAIISampler(seed=0,
                                                                      population_size=10))
    objective.describe_study(study)
    return study


def test_every_trial_has_the_prune_params_and_exact_costs(built) -> None:
    model, x, cache, pruning, _ = built
    objective = LRFObjective(model, x, cache=cache, prune=CONFIG, pruning=pruning)
    space = objective.search_space()
    assert {k for k in space if k.endswith(":prune")} == {"c1:prune", "c2:prune",
                                                          "fc1:prune"}
    assert space["c1:prune"].high == len(CONFIG.ratios) - 1
    study = _study(objective)
    added = objective.seed_study(study)
    study.optimize(objective, n_trials=added + 30)
    pruned_and_factorized = 0
    for t in study.trials:
        assert set(t.params) == set(space)
        plan = decode_plan(t)
        assert plan == objective.plan_of(t)  # stored plan = decoded parameters
        compressed = objective.build_model(t)
        assert compressed.count_params() == t.user_attrs["params"] == t.values[0]
        assert 2 * model_costs(compressed).macs == t.user_attrs["flops"] == t.values[1]
        out = keras.ops.convert_to_numpy(compressed(x[:4]))
        assert out.shape == (4, 4) and np.isfinite(out).all()
        pruned_and_factorized += bool(set(plan.ratios) & set(plan))
    assert pruned_and_factorized > 0  # some trials prune a layer and factorize it
    labels = {t.user_attrs.get("strategy", "").split(":")[0] for t in study.trials}
    assert {"original", "fbp", "fbp-tau", "tau"} <= labels


def test_scores_of_the_unpruned_plan_equal_the_lrf_search(built) -> None:
    """Ratio 0 everywhere: the same costs and proxy as the search without pruning."""
    model, x, cache, pruning, _ = built
    plain = LRFObjective(model, x, cache=cache)
    pruned = LRFObjective(model, x, cache=cache, prune=CONFIG, pruning=pruning)
    for plan in ({}, {"c2": ("tucker2", 4), "fc1": ("svd", 4)}):
        a, b = plain.score(plan), pruned.score(plan)
        assert (a.params, a.macs, a.proxy) == (b.params, b.macs, b.proxy)
    fbp = CompressionPlan(ratios={"c1": 0.5})
    score = pruned.score(fbp)
    assert score.similarities["c1:prune"] == pruning.group_score("c1", kept=4,
                                                                  metric="cosine")
    assert score.proxy == pytest.approx(score.similarities["c1:prune"])
    with pytest.raises(UserError, match="does not search pruning"):
        plain.score(fbp)
    with pytest.raises(UserError, match="which this search does not prune"):
        pruned.score(CompressionPlan(ratios={"fc2": 0.5}))
    with pytest.raises(UserError, match="use one of the search's ratios"):
        pruned.score(CompressionPlan(ratios={"c1": 0.4}))  # keeps 5 of 8: not scored


def test_plans_round_trip_through_parameters(built) -> None:
    model, x, cache, pruning, _ = built
    objective = LRFObjective(model, x, cache=cache, prune=CONFIG, pruning=pruning)
    space = objective.spaces["c2"]
    for ratio in CONFIG.ratios[1:]:
        kept = objective.prune.kept("c2", {"c2": ratio})[0]
        for method, grid in objective.prune.grids["c2"][kept].items():
            for cand in grid:
                plan = CompressionPlan({"c2": (method, cand.rank)}, ratios={"c2": ratio})
                params = objective.params_for_plan(plan)
                assert params["c2:prune"] == CONFIG.ratios.index(ratio)
                assert objective.plan_from_params(params) == plan, (ratio, method)
                assert space.n_levels > 1


def test_fbp_strategies(built) -> None:
    model, _, cache, pruning, _ = built
    uniform = UniformPruning(ratios=(0.25, 0.5)).plans(model, cache)
    assert [p.label for p in uniform] == ["fbp:ratio=0.25", "fbp:ratio=0.5"]
    assert all(dict(p.plan) == {} for p in uniform)  # nothing factorized
    assert uniform[1].plan.ratios == {"c1": 0.5, "c2": 0.5, "fc1": 0.5}
    tau = PruningThreshold(pruning, taus=(0.999, 0.5)).plans(model, cache)
    loose = tau[-1].plan.ratios
    assert loose
    for g, r in loose.items():
        kept = kept_count(pruning.group(g).channels, r)
        assert pruning.group_score(g, kept=kept, metric="cosine") >= 0.5
    strict = tau[0].plan.ratios if len(tau) == 2 else {}
    assert all(strict.get(g, 0) <= loose.get(g, 0) for g in pruning.groups)
    # FBP plans differ only by their ratios: none is dropped as a duplicate
    assert len(all_plans(model, cache, [UniformPruning(ratios=(0.25, 0.5))])) == 2


def _dataset(x: np.ndarray):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (120, *x.shape[1:]), dtype=np.uint8)
    return from_arrays(images[:100], np.arange(100) % 4, images[100:], np.arange(20) % 4,
                       name="toy")


def test_study_is_bound_to_its_prune_setting_and_rebuilds_pruned_trials(built,
                                                                        tmp_path) -> None:
    model, x, _, _, _ = built
    data = _dataset(x)
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    kwargs = dict(study_name="p", storage=storage, cache_dir=tmp_path / "c",
                  grid=GridConfig(points=4), population_size=10, calibration_size=32,
                  show_progress_bar=False, progress=False)
    study, _ = create_lrf_study(model, data, n_trials=80, prune=CONFIG, **kwargs)
    assert study.user_attrs["lrf_optuna:binding"]["search"]["prune"] == CONFIG.to_json()
    trial = next(t for t in study.trials if t.state.name == "COMPLETE"
                 and decode_plan(t).ratios)
    rebuilt = StudyModels(study).build(trial)  # from the study alone
    assert rebuilt.count_params() == trial.user_attrs["params"]
    with pytest.raises(UserError, match=r"cannot resume .*prune"):
        create_lrf_study(model, data, n_trials=90, **kwargs)
    with pytest.raises(UserError, match=r"cannot resume .*prune"):
        create_lrf_study(model, data, n_trials=90, prune=True, **kwargs)
    # a study without pruning records no prune setting (older bindings stay valid)
    plain, _ = create_lrf_study(model, data, n_trials=2, **{**kwargs, "study_name": "q"})
    assert "prune" not in plain.user_attrs["lrf_optuna:binding"]["search"]
    assert all(":prune" not in k for t in plain.trials for k in t.params)


def test_ranks_fit_layers_whose_producers_are_pruned(tmp_path) -> None:
    """A rank scored on the layer with every input can exceed what the layer takes once
    its producer is pruned (SVD of 16 -> 16 at rank 12, with 4 inputs left): the plan
    falls back to the largest scored rank that fits, and the model builds."""
    from lrf_optuna.prune import PruneConfig

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, "relu", name="a"),
                              keras.layers.Dense(16, "relu", name="b"),
                              keras.layers.Dense(4, name="out")], name="mlp")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    objective = LRFObjective(model, x, cache_dir=tmp_path, grid=GridConfig(points=6),
                             methods=["svd"], prune=PruneConfig(ratios=(0.0, 0.75)),
                             progress=False)
    high = max(c.rank for c in objective.cache.layer("b").for_method("svd"))
    assert high > 4
    assert objective.prune.max_rank("b", "svd", {"a": 0.75}) == 4
    plan = CompressionPlan({"b": ("svd", high)}, ratios={"a": 0.75})
    score = objective.score(plan)
    method, rank = score.plan["b"]
    assert method == "svd" and rank <= 4
    compressed = objective.build_model(score.plan)
    assert compressed.count_params() == score.params
    params = objective.params_for_plan({"b": ("svd", high)})
    params["a:prune"] = 1
    decoded = objective.plan_from_params(params)
    assert decoded.ratios == {"a": 0.75} and decoded["b"] == (method, rank)
    assert objective.build_model(decoded).count_params() == score.params


def test_activation_importance_builds_the_filters_it_scored(built) -> None:
    """With ``importance="activation"`` the pruning cache stores each group's channel
    scores; the built model keeps exactly the filters those scores choose."""
    from lrf_optuna.prune import PruneConfig, PruneGraph
    from lrf_optuna.scoring.calibration import capture_activations

    model, x, cache, _, _ = built
    config = PruneConfig(ratios=(0.0, 0.5), importance="activation", points=2)
    objective = LRFObjective(model, x, cache=cache, prune=config, progress=False)
    graph = PruneGraph(model)
    acts = capture_activations(model, x, graph.activation_layers())
    kept = graph.kept_channels("c1", 0.5, importance="activation", activations=acts)
    assert not np.array_equal(kept, graph.kept_channels("c1", 0.5))  # not the L1 choice
    plan = CompressionPlan({"fc1": ("svd", 4)}, ratios={"c1": 0.5}, importance="activation")
    score = objective.score(plan)
    compressed = objective.build_model(score.plan)
    assert compressed.count_params() == score.params
    original = keras.ops.convert_to_numpy(model.get_layer("c1").kernel)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(compressed.get_layer("c1").kernel), original[..., kept])
