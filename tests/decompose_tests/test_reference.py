"""The contract's reference is the original layer: where the twin stands in for it (layers
plain CPU kernels refuse), the twin computes what the layer computes wherever the layer
itself runs (on this machine's oneDNN kernels; skipped where nothing can compare)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from .contract import CASES, Case
from .reference import needs_twin, reference_output


def _twinned() -> dict[str, Case]:
    """The contract cases whose reference goes through the twin, by id."""
    out = {}
    for cases in CASES.values():
        for case in cases:
            layer = case.make()
            layer.build((None, *case.input_shape))
            if needs_twin(layer):
                out[case.id] = case
    return out


TWINNED = _twinned()


def test_some_cases_need_the_twin() -> None:
    assert {"conv2d_s2_valid_channels_first", "dw_m1_5x5_s12_same_channels_first"} <= set(TWINNED)


@pytest.mark.parametrize("case", list(TWINNED.values()), ids=list(TWINNED))
def test_twin_matches_the_layer_where_the_layer_runs(case: Case) -> None:
    rng = np.random.default_rng(0)
    layer = case.make()
    layer.build((None, *case.input_shape))
    for w in layer.weights:
        w.assign(rng.standard_normal(tuple(w.shape)).astype("float32"))
    x = rng.standard_normal((3, *case.input_shape)).astype("float32")
    try:
        native = keras.ops.convert_to_numpy(layer(x))
    except Exception as err:  # plain CPU kernels: the reason the twin exists
        pytest.skip(f"the layer itself does not run here ({type(err).__name__})")
    np.testing.assert_allclose(reference_output(layer, x), native, rtol=1e-4, atol=1e-4)
