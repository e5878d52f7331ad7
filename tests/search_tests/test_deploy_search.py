"""The deployed-bytes memory objective (memory="bytes") of the search: values equal to the
built models' deployed bytes (pruned ones too), bound to the study."""

from __future__ import annotations

import keras
import numpy as np
import optuna
import pytest

from lrf_optuna.costs import deployed_bytes
from lrf_optuna.data import from_arrays
from lrf_optuna.errors import UserError
from lrf_optuna.scoring.cache import GridConfig, SimilarityCache
from lrf_optuna.search import LRFObjective, create_lrf_study, memory_objectives

L = keras.layers
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((10, 10, 2)),
        L.Conv2D(8, 3, activation="relu", name="c1"),
        L.Conv2D(12, 3, use_bias=False, name="c2"),
        L.BatchNormalization(name="bn"), L.ReLU(),
        L.Flatten(),
        L.Dense(32, activation="relu", name="fc1"),
        L.Dense(4, name="fc2"),
    ], name="small")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = _model()
    x = np.random.default_rng(0).uniform(0, 1, (48, 10, 10, 2)).astype("float32")
    cache = SimilarityCache.build(model, x, cache_dir=tmp_path_factory.mktemp("cache"),
                                  grid=GridConfig(points=4), progress=False)
    return model, x, cache


@pytest.mark.parametrize("quantize", ["int8", "int8_fc_per_tensor", "float16", "none"])
def test_bytes_objective_is_the_built_models_deployed_bytes(setup, quantize) -> None:
    model, x, cache = setup
    objective = LRFObjective(model, x, cache=cache, memory="bytes", quantize=quantize)
    assert objective.objectives == ["bytes", "flops", "proxy"]
    assert objective.original_bytes == deployed_bytes(model, quantize)
    study = optuna.create_study(directions=objective.directions,
                                sampler=optuna.samplers.NSGAIISampler(seed=0,
                                                                      population_size=8))
    study.optimize(objective, n_trials=12)
    for trial in study.trials:
        built = objective.build_model(trial)
        assert trial.values[0] == deployed_bytes(built, quantize), trial.params
        assert trial.user_attrs["deployed_bytes"] == trial.values[0]
        assert trial.user_attrs["params"] == built.count_params()


def test_params_stay_the_default_and_bad_settings_are_refused(setup) -> None:
    model, x, cache = setup
    plain = LRFObjective(model, x, cache=cache)
    assert plain.objectives == ["params", "flops", "proxy"] and plain.plan_bytes is None
    assert memory_objectives(["params", "proxy"], "bytes") == ["bytes", "proxy"]
    with pytest.raises(UserError, match="unknown memory count"):
        LRFObjective(model, x, cache=cache, memory="kb")
    with pytest.raises(UserError, match="unknown quantize mode"):
        LRFObjective(model, x, cache=cache, memory="bytes", quantize="int4")


@pytest.mark.parametrize("quantize", ["int8", "none"])
def test_bytes_objective_with_pruning_is_the_built_models_deployed_bytes(setup, quantize
                                                                        ) -> None:
    model, x, cache = setup
    objective = LRFObjective(model, x, cache=cache, memory="bytes", quantize=quantize,
                             prune=True)
    assert objective.objectives[0] == "bytes"
    study = optuna.create_study(directions=objective.directions,
                                sampler=optuna.samplers.NSGAIISampler(seed=1,
                                                                      population_size=8))
    study.optimize(objective, n_trials=16)
    pruned = 0
    for trial in study.trials:
        built = objective.build_model(trial)
        pruned += built.count_params() < model.count_params() and any(
            v > 0 for k, v in trial.params.items() if k.endswith(":prune"))
        assert trial.values[0] == deployed_bytes(built, quantize), trial.params
    assert pruned > 0  # the check saw pruned models, not only factorized ones


def test_memory_setting_is_part_of_the_binding(setup, tmp_path) -> None:
    model, _, _ = setup
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 256, (120, 10, 10, 2), dtype=np.uint8)
    data = from_arrays(xs[:100], np.arange(100) % 4, xs[100:], np.arange(20) % 4, name="toy")
    kwargs = dict(study_name="m", storage=f"sqlite:///{tmp_path / 'm.db'}",
                  cache_dir=tmp_path / "c", grid=GridConfig(points=4), population_size=8,
                  calibration_size=32, show_progress_bar=False, progress=False)
    study, _ = create_lrf_study(model, data, n_trials=10, memory="bytes",
                                quantize="int8", **kwargs)
    assert study.directions[0].name == "MINIMIZE"
    assert study.metric_names[0] == "bytes"
    again, _ = create_lrf_study(model, data, n_trials=12, memory="bytes", quantize="int8",
                                **kwargs)  # same settings: resumes
    assert len([t for t in again.trials if t.state.is_finished()]) >= 12
    with pytest.raises(UserError, match=r"search settings differ.*memory"):
        create_lrf_study(model, data, n_trials=12, **kwargs)
    with pytest.raises(UserError, match=r"search settings differ.*memory"):
        create_lrf_study(model, data, n_trials=12, memory="bytes", quantize="float16",
                         **kwargs)
