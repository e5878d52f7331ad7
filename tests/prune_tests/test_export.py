"""Pruned and pruned+factorized models save, reload with safe_mode=True and export to
TFLite with matching outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import randomize_weights, rel_err

from lrf_optuna.decompose import get_method
from lrf_optuna.deploy.files import ExportError, to_tflite
from lrf_optuna.deploy.measure import tflite_predict
from lrf_optuna.prune import PruneGraph, prune_and_factorize
from lrf_optuna.rewrite import find_layers, iter_layers

from .graphs import CASES


@pytest.mark.slow
def test_original_channels_first_conv3d_does_not_convert(tmp_path) -> None:
    """Why the channels_first case skips TFLite: the converter fails before any pruning."""
    with pytest.raises(ExportError):
        to_tflite(CASES["channels_first"]().model, tmp_path / "cf.tflite")


def _variants(name: str, rng: np.random.Generator) -> dict[str, keras.Model]:
    model = CASES[name]().model
    randomize_weights(model, rng)
    graph = PruneGraph(model)
    ratios = {e.group[0]: 0.5 for e in graph.prunable.values()}
    pruned = graph.prune(ratios)
    choices: dict = {p: (r, None, None) for p, r in ratios.items()}
    for path, entry in list(find_layers(pruned).items())[:3]:
        method = "svd" if "svd" in entry.methods else entry.methods[0]
        rank = max(1, get_method(method).max_rank(entry.info) // 2)
        choices[path] = (choices.get(path, (0.0,))[0], method, rank)
    both = prune_and_factorize(model, choices)
    assert any(type(layer).__name__ == "FactorizedLayer" for _, layer in iter_layers(both))
    return {"pruned": pruned, "pruned+factorized": both}


#: Graph kinds the issue names (residual, concatenating, nested) plus depthwise run in
#: every test run; the others are in the slow set.
QUICK = {"residual", "concatenating", "nested", "depthwise_separable"}


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CASES)])
def test_pruned_models_roundtrip_and_export(name, rng, tmp_path) -> None:
    for kind, model in _variants(name, rng).items():
        x = rng.standard_normal((5, *model.inputs[0].shape[1:])).astype("float32")
        want = np.asarray(model(x))
        path = tmp_path / f"{kind}.keras"
        model.save(path)
        again = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_allclose(np.asarray(again(x)), want, rtol=1e-5, atol=1e-6,
                                   err_msg=kind)
        assert again.count_params() == model.count_params()
        if name == "channels_first":
            continue   # the TFLite converter rejects the *original* channels_first Conv3D
        lite = to_tflite(model, tmp_path / f"{kind}.tflite")
        assert rel_err(tflite_predict(lite, x), want) < 1e-4, kind
