"""Keras applications, every decomposable layer rewritten at full rank: same outputs,
and the same again after a ``.keras`` round trip with ``safe_mode=True``."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from conftest import rel_err

from lrf_optuna.costs import model_costs
from lrf_optuna.decompose import get_method
from lrf_optuna.rewrite import find_layers, rewrite_model

# Methods exact at their maximum rank at a size worth testing on big layers; CP's exact
# rank (k^2 min(c_in, c_out)) is far too large there and is tested on small layers.
CONV_METHODS = ("channel_svd", "tucker2", "spatial_svd")
MATRIX_METHODS = ("svd", "qr", "tt")


def _full_rank_plan(model: keras.Model) -> dict[str, tuple[str, int]]:
    """Round-robin over the applicable methods, so every method meets real layers."""
    conv_cycle = itertools.cycle(CONV_METHODS)
    matrix_cycle = itertools.cycle(MATRIX_METHODS)
    plan = {}
    for path, entry in find_layers(model).items():
        cycle = matrix_cycle if entry.info is not None and entry.info.is_matrix else conv_cycle
        for _ in range(3):
            name = next(cycle)
            if name in entry.methods:
                break
        else:
            name = entry.methods[0]
        assert entry.info is not None
        plan[path] = (name, get_method(name).max_rank(entry.info))
    return plan


APPS = {
    "ResNet50": lambda: keras.applications.ResNet50(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None),
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35,
        classifier_activation=None),
    "VGG16": lambda: keras.applications.VGG16(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPS))
def test_application_full_rank_roundtrip(name, tmp_path) -> None:
    keras.utils.set_random_seed(0)
    model = APPS[name]()
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    plan = _full_rank_plan(model)
    assert len(plan) >= 14
    used = {method for method, _ in plan.values()}
    assert {"svd"} <= used or {"qr"} <= used or {"tt"} <= used
    new = rewrite_model(model, plan)
    y_new = new.predict(x, verbose=0)
    assert rel_err(y_new, y) < 1e-4, name
    path = tmp_path / f"{name}.keras"
    new.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert rel_err(loaded.predict(x, verbose=0), y) < 1e-4
    assert model_costs(loaded).params == loaded.count_params()
