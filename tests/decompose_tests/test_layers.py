"""The replacement layer's engine: exact on every stride / dilation / padding, static shapes,
and only operations that every TensorFlow CPU kernel runs (with or without oneDNN).

TensorFlow's plain CPU kernels refuse a depthwise convolution with unequal row / column
strides (or a stride together with a dilation) and any convolution in channels-first
layout. :func:`test_replacements_use_only_plain_cpu_ops` inspects the traced graph of every
contract replacement, so it fails on any machine, AVX-512 or not, if the engine emits one.
"""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from tf_flops import graph_ops

from lrf_optuna.decompose import FactorizedLayer, get_method
from lrf_optuna.decompose.layers import _depthwise, stage_output_shape

from .contract import CASES, Case, build

KERNELS = [(3, 1), (1, 3), (3, 3), (2, 3)]
STRIDES = [(1, 1), (2, 1), (1, 2), (2, 2), (3, 2)]
DILATIONS = [(1, 1), (2, 1), (1, 2), (2, 2), (3, 1)]


def direct_depthwise(x: np.ndarray, k: np.ndarray, strides: tuple[int, int], padding: str,
                     dilation: tuple[int, int]) -> np.ndarray:
    """Depthwise conv as the textbook sum over taps (float64), TensorFlow's "same" rule."""
    kh, kw, c, m = k.shape
    if padding == "same":
        pads = []
        for n, kk, s, d in zip(x.shape[1:3], (kh, kw), strides, dilation):
            total = max((math.ceil(n / s) - 1) * s + (kk - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(n - (kk - 1) * d - 1) // s + 1
           for n, kk, s, d in zip(x.shape[1:3], (kh, kw), strides, dilation)]
    y = np.zeros((x.shape[0], *out, c, m))
    for i, j in itertools.product(range(kh), range(kw)):
        patch = x[:, i * dilation[0]::strides[0], j * dilation[1]::strides[1]]
        y += patch[:, :out[0], :out[1], :, None] * k[i, j]
    return y.reshape(x.shape[0], *out, c * m)


def _refused_by_plain_kernels(op: tf.Operation) -> str | None:
    """Why TensorFlow's plain CPU kernels would refuse ``op`` (``None``: they accept it)."""
    if op.type in ("DepthwiseConv2dNative", "Conv2D", "Conv3D", "Conv2DBackpropInput",
                   "Conv3DBackpropInputV2"):
        fmt = op.get_attr("data_format").decode()
        if fmt not in ("NHWC", "NDHWC"):
            return f"{op.type} in {fmt}"
    if op.type == "DepthwiseConv2dNative":
        s, d = op.get_attr("strides"), op.get_attr("dilations")
        if s[1] != s[2]:
            return f"depthwise strides {s}"
        if max(s) > 1 and max(d) > 1:
            return f"depthwise strides {s} with dilations {d}"
    return None


@pytest.mark.parametrize(("kernel", "padding"),
                         list(itertools.product(KERNELS, ["valid", "same"])))
def test_depthwise_is_exact_for_every_stride_and_dilation(kernel, padding) -> None:
    rng = np.random.default_rng(0)
    for strides, dilation, mult in itertools.product(STRIDES, DILATIONS, (1, 2)):
        x = rng.standard_normal((2, 11, 12, 3))
        k = rng.standard_normal((*kernel, 3, mult))
        got = ops.convert_to_numpy(_depthwise(x.astype("float32"), k.astype("float32"),
                                              strides, padding, dilation))
        want = direct_depthwise(x, k, strides, padding, dilation)
        where = str((strides, dilation, mult))
        assert got.shape == want.shape, where
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=where)


@pytest.mark.parametrize("kernel", KERNELS[:3])
def test_depthwise_graph_has_only_ops_plain_kernels_run(kernel) -> None:
    """Every stride / dilation pair traced as a graph: no op is one the plain kernels
    refuse, and the native depthwise op is still used wherever it can be."""
    native = 0
    for strides, dilation in itertools.product(STRIDES, DILATIONS):
        fn = tf.function(lambda x, s=strides, d=dilation: _depthwise(
            x, tf.ones((*kernel, 3, 1)), s, "same", d))
        for op in graph_ops(fn.get_concrete_function(tf.TensorSpec((1, 11, 12, 3)))):
            assert _refused_by_plain_kernels(op) is None, (strides, dilation)
            native += op.type == "DepthwiseConv2dNative"
    assert native > 0


@pytest.mark.parametrize("kernel", [1, 3, 4])
def test_depthwise_1d_is_exact(kernel) -> None:
    rng = np.random.default_rng(1)
    for stride, dilation, padding in itertools.product((1, 2, 3), (1, 2, 3), ("valid", "same")):
        x = rng.standard_normal((2, 13, 3))
        k = rng.standard_normal((kernel, 3, 2))
        got = ops.convert_to_numpy(_depthwise(x.astype("float32"), k.astype("float32"),
                                              (stride,), padding, (dilation,)))
        want = direct_depthwise(x[:, None], k[None], (1, stride), padding, (1, dilation))[:, 0]
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=str((stride, dilation)))


def _replacements(case: Case, method: str) -> list[tuple[int, FactorizedLayer]]:
    b = build(case)
    m = get_method(method)
    return [(r, m.decompose(b.info, b.weights, r, inputs=b.x))
            for r in sorted({1, m.max_rank(b.info) // 2 or 1, m.max_rank(b.info)})]


@pytest.mark.parametrize(("method", "case"), [
    pytest.param(m, c, id=f"{m}-{c.id}") for m, cases in CASES.items() for c in cases])
def test_replacements_use_only_plain_cpu_ops(method: str, case: Case) -> None:
    """Every op of every contract replacement (function bodies included) is one the plain
    kernels run: channels-last convs, depthwise convs with equal strides, never a stride
    with a dilation. The static output shape is the layer's own ``compute_output_shape``."""
    for rank, layer in _replacements(case, method):
        spec = tf.TensorSpec((1, *case.input_shape), tf.float32)
        fn = tf.function(lambda x, layer=layer: layer(x)).get_concrete_function(spec)
        for op in graph_ops(fn):
            assert _refused_by_plain_kernels(op) is None, (rank, op.type, op.name)
        assert tuple(fn.structured_outputs.shape) == tuple(
            layer.compute_output_shape((1, *case.input_shape))), rank


def test_static_shapes_on_symbolic_inputs() -> None:
    """The stride + dilation depthwise keeps every dimension known (it once came out
    ``(None, None, None, 4)``, and the next layer cost 0 MACs)."""
    stage = {"op": "depthwise", "kernel_shape": [3, 1, 4, 1], "strides": [2, 1],
             "padding": "same", "dilation_rate": [2, 1]}
    layer = FactorizedLayer([stage, {**stage, "kernel_shape": [1, 3, 4, 1], "strides": [1, 2],
                                     "dilation_rate": [1, 2]}], method="spatial_svd", rank=1)
    out = layer(keras.Input((11, 11, 4)))
    assert tuple(out.shape) == (None, 6, 6, 4)
    assert stage_output_shape(stage, (11, 11, 4)) == (6, 11, 4)


@pytest.mark.parametrize("stages", [
    [{"op": "depthwise", "kernel_shape": [3, 1, 4, 1], "strides": [2, 1], "padding": "same"},
     {"op": "depthwise", "kernel_shape": [1, 3, 4, 1], "strides": [1, 2], "padding": "same"}],
    [{"op": "depthwise", "kernel_shape": [3, 3, 4, 1], "strides": [2, 1], "padding": "same",
      "dilation_rate": [1, 2]}],
], ids=["fold", "taps"])
def test_unknown_spatial_size_runs_on_several_sizes(stages) -> None:
    """A replacement in a model with a free spatial size runs on inputs of any size."""
    rng = np.random.default_rng(2)
    layer = FactorizedLayer(stages, method="spatial_svd", rank=1, use_bias=False)
    model = keras.Sequential([keras.Input((None, None, 4)), layer])
    kernels = [ops.convert_to_numpy(w) for w in layer.weights]
    for size in ((9, 9), (10, 7)):
        x = rng.standard_normal((2, *size, 4)).astype("float32")
        want = x.astype(np.float64)
        for stage, k in zip(stages, kernels):
            want = direct_depthwise(want, k.astype(np.float64), tuple(stage["strides"]),
                                    stage["padding"], tuple(stage.get("dilation_rate", (1, 1))))
        np.testing.assert_allclose(ops.convert_to_numpy(model(x)), want, atol=1e-4)
