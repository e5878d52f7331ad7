"""An independent multiplication counter for :class:`FactorizedLayer` stages.

It shares no cost formula with the methods: it walks the layer's stages on a concrete
one-sample input, RUNS each stage in TensorFlow to learn the intermediate shapes, and counts
the multiplications a naive loop implementation of that stage performs on those actual
tensors. One small counter per stage op (``COUNTERS``); add one for a new op.

Conventions (those of ``LayerInfo.original_macs``): bias and activation excluded, padded
zeros counted (a naive conv multiplies them too), subsampling and sums free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from keras import ops

from lrf_optuna.decompose.layers import FactorizedLayer, _apply_stage

Stage = dict[str, Any]
Counter = Callable[[Stage, np.ndarray, np.ndarray, Sequence[np.ndarray]], int]


def _positions(t: np.ndarray) -> int:
    """All axes but the channel axis (batch included; the walk uses batch 1)."""
    return math.prod(t.shape[:-1])


def count_dense(stage: Stage, x: np.ndarray, y: np.ndarray, ws: Sequence[np.ndarray]) -> int:
    """``for each row: for each out: for each in: y += x * w``."""
    n_in, n_out = ws[0].shape
    assert x.shape[-1] == n_in and y.shape[-1] == n_out
    return _positions(x) * n_in * n_out


def count_conv(stage: Stage, x: np.ndarray, y: np.ndarray, ws: Sequence[np.ndarray]) -> int:
    """Every output position and channel: one product per kernel tap and group channel."""
    k = ws[0].shape
    return _positions(y) * math.prod(k[:-2]) * k[-2] * y.shape[-1]


def count_depthwise(stage: Stage, x: np.ndarray, y: np.ndarray,
                    ws: Sequence[np.ndarray]) -> int:
    """Every output position and channel: one product per kernel tap."""
    return _positions(y) * math.prod(ws[0].shape[:-2]) * y.shape[-1]


def count_conv_transpose(stage: Stage, x: np.ndarray, y: np.ndarray,
                         ws: Sequence[np.ndarray]) -> int:
    """Every input position and channel scatters a ``k x c_out`` patch."""
    k = ws[0].shape
    return _positions(x) * math.prod(k[:-2]) * k[-2] * k[-1]


def count_free(stage: Stage, x: np.ndarray, y: np.ndarray, ws: Sequence[np.ndarray]) -> int:
    return 0


def count_tt(stage: Stage, x: np.ndarray, y: np.ndarray, ws: Sequence[np.ndarray]) -> int:
    """Naive core-by-core contraction on the multi-index layout, checked against ``y``.

    The state is ``T[p, j_1..j_{k-1}, a, i_k..i_d]``; core ``k`` does
    ``T'[p, j_<k, j_k, b, i_>k] = sum_{a, i_k} T[p, j_<k, a, i_k, i_>k] G_k[a, i_k, j_k, b]``,
    i.e. ``size(T') * r_{k-1} * m_k`` multiplications.
    """
    in_modes = [int(m) for m in stage["in_modes"]]
    p = _positions(x)
    state = np.asarray(x, np.float64).reshape(p, 1, *in_modes)  # j-part empty, a = 1
    macs = 0
    for k, g in enumerate(ws):
        g = np.asarray(g, np.float64)
        a, m, n, b = g.shape
        j = math.prod(state.shape[1:k + 1])                        # prod(n_<k)
        rest = math.prod(in_modes[k + 1:])                         # prod(m_>k)
        t = state.reshape(p, j, a, m, rest)
        out = np.zeros((p, j, n, b, rest))
        for ai in range(a):                                        # explicit sums
            for mi in range(m):
                out += t[:, :, None, None, ai, mi, :] * g[ai, mi][None, None, :, :, None]
        macs += out.size * a * m
        state = out.reshape(p, *state.shape[1:k + 1], n, b, *in_modes[k + 1:])
    full = state.reshape(*x.shape[:-1], -1)
    np.testing.assert_allclose(full, np.asarray(y, np.float64), rtol=1e-3, atol=1e-3 * (
        1 + float(np.abs(full).max(initial=0.0))))
    return macs


COUNTERS: dict[str, Counter] = {
    "dense": count_dense,
    "conv": count_conv,
    "depthwise": count_depthwise,
    "conv_transpose": count_conv_transpose,
    "subsample": count_free,
    "group_sum": count_free,
    "tt": count_tt,
}


def stage_macs(layer: FactorizedLayer, input_shape: Sequence[int]) -> list[int]:
    """Multiplications of each stage for one sample of ``input_shape`` (no batch axis).

    ``input_shape`` is what the layer receives (channels-first if its data_format is).
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, *input_shape)).astype("float32")
    if layer.data_format == "channels_first" and len(input_shape) > 1:
        x = np.moveaxis(x, 1, -1)
    counts = []
    for stage, ws in zip(layer.stages, layer._stage_weights, strict=True):
        y = ops.convert_to_numpy(_apply_stage(stage, ops.convert_to_tensor(x), ws))
        w_np = [ops.convert_to_numpy(w) for w in ws]
        counts.append(COUNTERS[stage["op"]](stage, x, y, w_np))
        x = y
    return counts


def brute_force_macs(layer: FactorizedLayer, input_shape: Sequence[int]) -> int:
    """Total multiplications of the layer's stages for one sample (bias excluded)."""
    return sum(stage_macs(layer, input_shape))
