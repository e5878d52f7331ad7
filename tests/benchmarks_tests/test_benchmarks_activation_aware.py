"""The activation-aware benchmark's measurements on a tiny model (the full run needs the
trained reference models: ``python -m benchmarks.activation_aware``)."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
from conftest import randomize_weights

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))

from benchmarks.activation_aware import (  # noqa: E402
    Problem,
    _Layers,
    _summary,
    layer_points,
    uniform_plans,
)

L = keras.layers


def test_layer_points_and_uniform_plans_on_a_tiny_model(rng) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(6, 3, name="c1"),
                              L.Flatten(), L.Dense(10, activation="softmax", name="fc")])
    randomize_weights(model, rng, scale=0.3)
    # correlated channels, as real activations have: the aware variant must win on them
    x = (rng.standard_normal((96, 8, 8, 3)) @ np.diag([1.0, 0.3, 0.05])).astype("float32")
    y = rng.integers(0, 10, 32)
    layers = _Layers(Problem("tiny", model, x[:64], x[64:], x[64:], y))
    points = layer_points(layers, points=3)
    assert {q.layer for q in points} == {"c1", "fc"}
    for q in points:
        assert q.plain == ("channel_svd" if q.layer == "c1" else "svd")
        assert 1 <= q.rank < q.max_rank
        assert all(e >= 0.0 for e in (*q.held, *q.cal))
        assert all(0.0 <= a <= 1.0 for a in q.acc)
    conv = [q for q in points if q.layer == "c1"]  # linear conv: the aware fit is optimal
    assert all(q.cal[1] <= q.cal[0] * (1 + 1e-5) for q in conv)
    assert all(q.held[1] < q.held[0] for q in conv)
    heavy = layer_points(layers, points=3, extremes=1, damping=1e9)  # ~ the plain SVD
    assert {(q.layer, q.rank) for q in heavy} <= {(q.layer, q.rank) for q in points}
    assert len(heavy) >= 2 and all(abs(q.cal[1] - q.cal[0]) < 1e-3 for q in heavy)
    assert all(abs(q.model_err[1] - q.model_err[0]) < 1e-3 for q in heavy)
    summary = _summary(points)
    assert summary[0] == str(len(points)) and float(summary[1]) < 1.0
    (ratio, kept, acc_p, acc_a), = uniform_plans(layers, (0.5,))
    assert ratio == 0.5 and 0.3 < kept <= 0.5 + 1e-9 and 0 <= acc_p <= 1 and 0 <= acc_a <= 1
    (_, kept_dense, _, _), = uniform_plans(layers, (0.5,), keep=("c1",))
    assert kept < kept_dense < 1
