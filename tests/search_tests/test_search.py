"""The Optuna objective: search space, objectives, constraints, seeding, resuming."""

from __future__ import annotations

import keras
import numpy as np
import optuna
import pytest

import lrf_optuna.rewrite as rewrite_mod
import lrf_optuna.scoring.cache as cache_mod
from lrf_optuna.costs import model_costs
from lrf_optuna.data import Dataset, from_arrays, prepare_splits
from lrf_optuna.errors import UserError
from lrf_optuna.scoring.cache import GridConfig, SimilarityCache
from lrf_optuna.search import (
    AGGREGATIONS,
    LRFObjective,
    create_lrf_study,
    finished_trials,
    run_remaining,
)
from lrf_optuna.search.strategies import SimilarityThreshold

L = keras.layers
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((10, 10, 2)),
        L.Conv2D(8, 3, activation="relu", name="c1"),
        L.Conv2D(12, 3, activation="relu", name="c2"),
        L.Flatten(),
        L.Dense(32, activation="relu", name="fc1"),
        L.Dense(4, name="fc2"),
    ], name="small")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = _model()
    x = np.random.default_rng(0).uniform(0, 1, (64, 10, 10, 2)).astype("float32")
    cache = SimilarityCache.build(model, x, cache_dir=tmp_path_factory.mktemp("cache"),
                                  grid=GridConfig(points=6), extra_metrics=("nmse",),
                                  progress=False)
    return model, x, cache


def _study(objective: LRFObjective, storage=None, name="s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                               directions=objective.directions,
                               sampler=optuna.samplers.NSGAIISampler(seed=0,
                                                                     population_size=10))


def test_space_is_two_params_per_layer_in_every_trial(setup) -> None:
    model, x, cache = setup
    objective = LRFObjective(model, x, cache=cache)
    assert objective.directions == ["minimize", "minimize", "maximize"]
    space = objective.search_space()
    assert set(space) == {f"{p}:{k}" for p in cache.layers for k in ("method", "rank")}
    assert space["c1:method"].choices[0] == "keep"
    study = _study(objective)
    objective.describe_study(study)
    objective.seed_study(study)
    study.optimize(objective, n_trials=40)
    assert study.metric_names == ["params", "flops", "proxy"]
    for t in study.trials:
        assert set(t.params) == set(space)
        assert set(t.distributions) == set(space)


def test_objective_values_are_real_costs_and_cached_proxy(setup) -> None:
    model, x, cache = setup
    objective = LRFObjective(model, x, cache=cache, aggregation="mean")
    study = _study(objective)
    study.optimize(objective, n_trials=12)
    for t in study.trials[:6]:
        params, flops, proxy = t.values
        built = objective.build_model(t)
        costs = model_costs(built)
        assert params == costs.params == t.user_attrs["params"] == built.count_params()
        assert flops == costs.flops == t.user_attrs["flops"]
        plan = objective.plan_of(t)
        sims = [cache.layer(p).lookup(*plan[p]).scores["cosine"] if p in plan else 1.0
                for p in cache.layers]
        assert proxy == pytest.approx(np.mean(sims))
        assert t.user_attrs["compression_ratio"] == pytest.approx(
            model.count_params() / params, rel=1e-3)
        assert set(t.user_attrs["plan"]) == set(cache.layers)
        for path, text in t.user_attrs["plan"].items():
            assert text == ("keep" if path not in plan else f"{plan[path][0]} r={plan[path][1]}")


def test_aggregations(setup) -> None:
    model, x, cache = setup
    plan = {p: (cache.layer(p).candidates[0].method, cache.layer(p).candidates[0].rank)
            for p in cache.layers}
    sims = [cache.layer(p).candidates[0].scores["cosine"] for p in cache.layers]
    expected = {"mean": np.mean(sims), "product": np.prod(np.clip(sims, 0, None)),
                "min": np.min(sims)}
    for name in AGGREGATIONS:
        score = LRFObjective(model, x, cache=cache, aggregation=name).score(plan)
        assert score.proxy == pytest.approx(expected[name])
    nmse = LRFObjective(model, x, cache=cache, metric="nmse").score(plan)
    assert nmse.similarities["c1"] == cache.layer("c1").candidates[0].scores["nmse"]


def test_trials_never_touch_tensorflow(setup, monkeypatch) -> None:
    model, x, cache = setup
    objective = LRFObjective(model, x, cache=cache)

    def boom(*a, **k):
        raise AssertionError("a trial must not run TensorFlow")

    monkeypatch.setattr(keras.Model, "__call__", boom)
    monkeypatch.setattr(keras.layers.Layer, "__call__", boom)
    monkeypatch.setattr(rewrite_mod, "rewrite_model", boom)
    study = _study(objective)
    study.optimize(objective, n_trials=15)
    assert finished_trials(study) == 15


def test_constraints_mark_infeasible_trials(setup) -> None:
    model, x, cache = setup
    limit = model.count_params() // 3
    objective = LRFObjective(model, x, cache=cache, max_params=limit, min_proxy=0.2)
    study = _study(objective)
    objective.describe_study(study)
    objective.seed_study(study)
    study.optimize(objective, n_trials=40)

    def constraints(t):  # Optuna 5 stores them as "constraints:<key>" system attrs
        return {k.split(":", 1)[1]: v for k, v in t.system_attrs.items()
                if k.startswith("constraints:")}

    feasible = [t for t in study.trials if all(c <= 0 for c in constraints(t).values())]
    assert feasible and len(feasible) < len(study.trials)
    for t in study.trials:
        assert constraints(t)["max_params"] == t.values[0] - limit
        assert constraints(t)["min_proxy"] == pytest.approx(0.2 - t.values[2])
    for t in study.best_trials:
        assert t.values[0] <= limit and t.values[2] >= 0.2


def test_seed_study_enqueues_once_and_plans_round_trip(setup) -> None:
    model, x, cache = setup
    objective = LRFObjective(model, x, cache=cache)
    study = _study(objective)
    with pytest.raises(UserError, match="not described yet"):
        objective.seed_study(study)  # describing is a step of its own, never implicit
    assert "lrf_optuna:original" not in study.user_attrs
    objective.describe_study(study)
    assert study.user_attrs["lrf_optuna:original"]["params"] == model.count_params()
    added = objective.seed_study(study, [SimilarityThreshold(taus=(0.5, 0.9, 0.99))])
    assert 1 <= added <= 4
    assert objective.seed_study(study, [SimilarityThreshold(taus=(0.5, 0.9, 0.99))]) == 0
    study.optimize(objective, n_trials=added)
    labels = [t.user_attrs.get("strategy") for t in study.trials]
    assert labels[0] == "original" and all(labels)
    assert objective.seed_study(study, [SimilarityThreshold(taus=(0.5, 0.9, 0.99))]) == 0
    # grid ranks round-trip exactly through the parameter encoding
    for path, space in objective.spaces.items():
        for method, grid in space.grids.items():
            for cand in grid:
                params = objective.params_for_plan({path: (method, cand.rank)})
                assert objective.plan_from_params(params)[path] == (method, cand.rank)


def test_restrictions(setup) -> None:
    model, x, cache = setup
    objective = LRFObjective(model, x, cache=cache, layers=["c2", "fc1"],
                             methods={"c2": ["tucker2"], "fc1": ["svd", "tt"]},
                             ranks={"fc1": (2, 8)})
    space = objective.search_space()
    assert set(space) == {"c2:method", "c2:rank", "fc1:method", "fc1:rank"}
    assert space["c2:method"].choices == ("keep", "tucker2")
    assert set(space["fc1:method"].choices) == {"keep", "svd", "tt"}
    study = _study(objective)
    study.optimize(objective, n_trials=30)
    for t in study.trials:
        plan = objective.plan_of(t)
        if "fc1" in plan:
            assert 2 <= plan["fc1"][1] <= 8
    with pytest.raises(UserError, match=r"\['nope'\] are not factorizable layers"):
        LRFObjective(model, x, cache=cache, layers=["nope"])
    with pytest.raises(ValueError, match="unknown aggregation"):
        LRFObjective(model, x, cache=cache, aggregation="median")
    with pytest.raises(ValueError, match="unknown objectives"):
        LRFObjective(model, x, cache=cache, objectives=("accuracy",))


def _dataset() -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (120, 10, 10, 2), dtype=np.uint8)
    return from_arrays(x[:100], np.arange(100) % 4, x[100:], np.arange(20) % 4, name="toy")


def test_resume_from_sqlite_continues_without_rework(setup, tmp_path, monkeypatch) -> None:
    model, _, _ = setup
    x = _dataset()
    storage = f"sqlite:///{tmp_path / 'new_dir' / 'study.db'}"  # the directory is created
    kwargs = dict(study_name="r", storage=storage, cache_dir=tmp_path / "c",
                  grid=GridConfig(points=4), population_size=10, show_progress_bar=False,
                  progress=False, calibration_size=32)
    study, _ = create_lrf_study(model, x, n_trials=25, **kwargs)
    assert finished_trials(study) == 25
    done = optuna.trial.TrialState.COMPLETE
    first = {t.number: t.values for t in study.trials if t.state == done}

    calls: list[str] = []
    real = cache_mod.score_candidates
    monkeypatch.setattr(cache_mod, "score_candidates",
                        lambda p, *a, **k: (calls.append(p), real(p, *a, **k))[1])
    study2, _ = create_lrf_study(model, x, n_trials=40, **kwargs)
    assert calls == []  # the cache was reused
    assert finished_trials(study2) == 40
    for number, values in first.items():
        assert study2.trials[number].values == values
    # same command again: nothing left to do, nothing re-enqueued
    before = len(study2.trials)
    study3, _ = create_lrf_study(model, x, n_trials=40, **kwargs)
    assert len(study3.trials) == before and finished_trials(study3) == 40
    # a different search space on the same study is refused
    with pytest.raises(UserError, match="the search settings differ"):
        create_lrf_study(model, x, n_trials=40, methods=["svd"], **kwargs)


def test_create_lrf_study_records_the_problem_it_can_rebuild(setup, tmp_path) -> None:
    """A model and data that exist only in memory are saved beside the study, so the
    problem can be rebuilt from the study alone (what fine-tuning does)."""
    from lrf_optuna.study import problem_spec
    from lrf_optuna.study.models import StudyModels

    model, _, _ = setup
    data = _dataset()
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study, _ = create_lrf_study(model, data, study_name="p", storage=storage,
                                        n_trials=12, cache_dir=tmp_path / "c",
                                        grid=GridConfig(points=4), population_size=10,
                                        calibration_size=32, show_progress_bar=False,
                                        progress=False)
    spec = problem_spec(study)
    assert spec.model == str((tmp_path / "p_artifacts" / "problems" / "p" /
                              "model.keras").resolve())
    assert spec.calibration_size == 32 and spec.seed == 0
    rebuilt = spec.load(verbose=False)
    expected = prepare_splits(data, calibration_size=32, seed=0)
    np.testing.assert_array_equal(rebuilt.splits.x_cal, expected.x_cal)
    np.testing.assert_array_equal(rebuilt.splits.x_test, data.x_test)  # uint8 round trip
    x = data.x_test[:4]
    np.testing.assert_allclose(rebuilt.model(x), model(x), atol=1e-6)
    trial = next(t for t in study.best_trials if t.user_attrs["lrf_plan"])
    built = StudyModels(study).build(trial)  # in a fresh context: from the study alone
    assert built.count_params() == trial.user_attrs["params"]
    with pytest.raises(UserError, match="not calibration images"):
        create_lrf_study(model, data.x_train, study_name="p", storage=storage)


def test_interrupt_leaves_consistent_study(setup, tmp_path) -> None:
    model, x, cache = setup
    storage = f"sqlite:///{tmp_path / 'i.db'}"
    objective = LRFObjective(model, x, cache=cache)
    count = {"n": 0}

    def flaky(trial):
        count["n"] += 1
        if count["n"] == 8:
            raise KeyboardInterrupt
        return objective(trial)

    study = _study(objective, storage)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(flaky, n_trials=20)
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 7
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    resumed = _study(objective, storage)
    assert run_remaining(resumed, objective, 20, show_progress_bar=False) == 13
    assert finished_trials(resumed) == 20


def test_open_storage_uses_wal_for_sqlite(tmp_path) -> None:
    import sqlite3

    from lrf_optuna.study import open_storage

    url = f"sqlite:///{tmp_path / 'w.db'}"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="w")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    with sqlite3.connect(tmp_path / "w.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(optuna.load_study(study_name="w", storage=url).trials) == 3
    assert open_storage(storage) is storage
    assert open_storage("not-a-db-url") == "not-a-db-url"


def test_seeded_plans_are_parents_of_the_next_generation() -> None:
    """Optuna's NSGA-II never gives a trial enqueued with all parameters fixed a generation,
    so the seeded strategy plans were never chosen as parents (ResNet-20: the search's
    hypervolume equalled random search's). With SeededNSGAIISampler they join the first
    generation and the best of them are parents of the second."""
    from lrf_optuna.search import SeededNSGAIISampler

    sampler = SeededNSGAIISampler(seed=0, population_size=4)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for x in (0.0, 0.1, 0.2):  # seeds that dominate every random trial below
        study.enqueue_trial({"x": x, "y": 0.0})

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return x + 5 * y, 1 - x + 5 * y

    study.optimize(objective, n_trials=12)
    key = SeededNSGAIISampler._get_generation_key()
    assert key == "NSGAIISampler:generation"  # plain NSGA-II studies resume unchanged
    generations = [t.system_attrs.get(key) for t in study.trials]
    assert generations[:4] == [0, 0, 0, 0] and None not in generations
    parents = study._storage.get_study_system_attrs(study._study_id)[
        SeededNSGAIISampler._get_parent_cache_key_prefix() + "1"]
    seeded = {t._trial_id for t in study.trials[:3]}
    assert seeded <= set(parents)
