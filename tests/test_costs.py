"""Cost formulas against model.count_params() and TensorFlow's own op statistics."""

from __future__ import annotations

import keras
import pytest
from tf_flops import tf_macs

from lrf_optuna.costs import conv_output_length, model_costs
from lrf_optuna.rewrite import rewrite_model

L = keras.layers


def _zoo() -> keras.Model:
    x_in = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", name="c1")(x_in)
    x = L.BatchNormalization()(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="valid", name="dw")(x)
    x = L.SeparableConv2D(12, 3, padding="same", name="sep")(x)
    x = L.Conv2D(6, 3, dilation_rate=2, padding="same", name="dil")(x)
    x = L.Conv2D(6, 1, strides=2, name="pw")(x)
    x = L.Reshape((-1, 6))(x)
    x = L.Dense(5, name="tok")(x)
    x = L.Flatten()(x)
    out = L.Dense(4, name="fc")(x)
    return keras.Model(x_in, out)


def _counted(model: keras.Model) -> int:
    return sum(tf_macs(model).values())


def test_params_and_bytes_match_keras() -> None:
    model = _zoo()
    costs = model_costs(model)
    assert costs.params == model.count_params()
    assert costs.bytes == 4 * model.count_params()
    by_path = costs.by_path()
    for layer in model.layers:
        if layer.weights:
            assert by_path[layer.name].params == layer.count_params()


def test_macs_match_tensorflow_op_statistics() -> None:
    model = _zoo()
    assert model_costs(model).macs == _counted(model)


@pytest.mark.parametrize("plan", [
    {"c1": ("channel_svd", 3), "fc": ("svd", 2), "tok": ("qr", 3)},
    {"dil": ("channel_svd", 6), "pw": ("svd", 2), "sep": ("svd", 4)},
    {"c1": ("tucker2", 4), "dw": ("spatial_svd", 2), "dil": ("cp", 5), "fc": ("tt", 2)},
    {"dil": ("spatial_svd", 3), "sep": ("tt", 2), "tok": ("tt", 1)},
])
def test_rewritten_macs_match_tensorflow_op_statistics(plan) -> None:
    new = rewrite_model(_zoo(), plan)
    costs = model_costs(new)
    assert costs.params == new.count_params()
    assert costs.macs == _counted(new)
    assert costs.flops == 2 * costs.macs


def test_nested_model_costs_are_flattened() -> None:
    inner = keras.Sequential([keras.Input((10,)), L.Dense(8, name="h")], name="inner")
    x_in = keras.Input((10,))
    model = keras.Model(x_in, L.Dense(2, name="out")(inner(x_in)))
    costs = model_costs(model)
    assert set(costs.by_path()) == {"inner/h", "out"}
    assert costs.macs == 10 * 8 + 8 * 2 == _counted(model)
    assert costs.params == model.count_params()


@pytest.mark.parametrize("n,k,s,d,padding", [
    (28, 5, 1, 1, "valid"), (28, 3, 2, 1, "same"), (15, 3, 1, 2, "valid"), (15, 3, 2, 1, "valid"),
    (9, 4, 3, 1, "same"), (7, 3, 1, 3, "causal"),
])
def test_conv_output_length_matches_keras(n, k, s, d, padding) -> None:
    if padding == "causal":
        layer = L.Conv1D(1, k, strides=s, dilation_rate=d, padding=padding)
        shape = layer.compute_output_shape((1, n, 1))[1]
    else:
        layer = L.Conv2D(1, k, strides=s, dilation_rate=d, padding=padding)
        shape = layer.compute_output_shape((1, n, n, 1))[1]
    assert conv_output_length(n, k, stride=s, dilation=d, padding=padding) == shape


@pytest.mark.parametrize("n,k,s,padding,op", [
    (5, 3, 2, "same", None), (5, 3, 2, "valid", None), (5, 3, 2, "valid", 1),
    (4, 4, 3, "same", 2), (6, 2, 1, "valid", 0),
])
def test_transpose_output_length_matches_keras(n, k, s, padding, op) -> None:
    layer = L.Conv2DTranspose(1, k, strides=s, padding=padding, output_padding=op)
    shape = layer.compute_output_shape((1, n, n, 1))[1]
    got = conv_output_length(n, k, stride=s, padding=padding, transpose=True,
                             output_padding=op)
    assert got == shape
