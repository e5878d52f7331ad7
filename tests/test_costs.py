"""Cost formulas against model.count_params() and TensorFlow's own op statistics."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_flops import CALL_OPS, tf_macs

from lrf_optuna.costs import conv_output_length, model_costs
from lrf_optuna.decompose import get_method
from lrf_optuna.rewrite import find_layers, rewrite_model

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


# -- convolutions Keras runs inside a function call (grouped, channels-first 3-D) and the
# -- other conv kinds, each as the original and rewritten by every method that applies ---
CONV_KINDS = {
    "grouped2d": ((10, 10, 6), lambda: L.Conv2D(8, 3, groups=2, padding="same", name="t")),
    "grouped1d_s2": ((11, 9), lambda: L.Conv1D(6, 5, strides=2, padding="same", groups=3,
                                               name="t")),
    # TensorFlow runs a dilated conv on space_to_batch blocks, padded to a multiple of the
    # rate: even sizes and "same" padding need no such padding, so the counts compare
    "dilated": ((12, 12, 4), lambda: L.Conv2D(6, 3, dilation_rate=2, padding="same",
                                              name="t")),
    "strided_21": ((9, 10, 4), lambda: L.Conv2D(6, (3, 5), strides=(2, 1), padding="same",
                                                name="t")),
    "causal": ((12, 5), lambda: L.Conv1D(6, 3, padding="causal", dilation_rate=2, name="t")),
    "conv3d_s121": ((5, 6, 5, 3), lambda: L.Conv3D(4, 3, strides=(1, 2, 1), padding="same",
                                                   name="t")),
    "conv3d_grouped": ((5, 5, 5, 4), lambda: L.Conv3D(4, 3, groups=2, name="t")),
    "transposed_same": ((5, 5, 4), lambda: L.Conv2DTranspose(6, 3, strides=2, padding="same",
                                                             name="t")),
    "depthwise_s2": ((9, 9, 3), lambda: L.DepthwiseConv2D(3, strides=2, padding="same",
                                                          depth_multiplier=2, name="t")),
    "separable_s2": ((9, 9, 4), lambda: L.SeparableConv2D(8, 3, strides=2, padding="same",
                                                          name="t")),
    "dense_tokens": ((5, 12), lambda: L.Dense(6, name="t")),
}


def _kind_model(kind: str) -> keras.Model:
    """The layer ``t`` of ``kind``, then a Dense head: ops after a function call count too."""
    shape, make = CONV_KINDS[kind]
    x_in = keras.Input(shape)
    out = L.Dense(3, name="head")(L.Flatten()(make()(x_in)))
    model = keras.Model(x_in, out)
    for w in model.weights:
        w.assign(np.random.default_rng(0).standard_normal(tuple(w.shape)).astype("float32"))
    return model


@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
def test_function_call_and_conv_kind_macs_match_tensorflow(kind) -> None:
    """Originals and every applicable method at rank 1 and at full rank: our MACs are
    TensorFlow's (grouped convs are counted inside Keras' XLA function)."""
    model = _kind_model(kind)
    assert model_costs(model).macs == _counted(model)
    entry = find_layers(model)["t"]
    assert entry.info is not None and entry.methods
    for name in entry.methods:
        if get_method(name).needs_inputs:
            continue  # the stages of its plain twin (tests/decompose_tests/aware.py)
        for rank in sorted({1, get_method(name).max_rank(entry.info)}):
            new = rewrite_model(model, {"t": (name, rank)})
            costs = model_costs(new)
            assert costs.params == new.count_params(), (name, rank)
            assert costs.macs == _counted(new), (name, rank)


def test_grouped_conv_runs_in_a_function_call_that_is_counted() -> None:
    """The premise of the test above: the grouped conv's op is inside a call's body."""
    model = _kind_model("grouped2d")
    spec = tf.TensorSpec((1, 10, 10, 6), tf.float32)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    top = [op.type for op in fn.graph.get_operations()]
    assert "Conv2D" not in top and any(t in CALL_OPS for t in top)
    assert tf_macs(model)["Conv2D"] == 10 * 10 * 8 * 9 * 3


def test_strided_dilated_depthwise_rewrite_is_counted_exactly() -> None:
    """Keras runs a depthwise conv with stride and dilation at stride 1 (4x the MACs), so
    only the rewritten layer, which never does, is compared with TensorFlow."""
    x_in = keras.Input((11, 11, 4))
    y = L.DepthwiseConv2D(3, strides=2, dilation_rate=2, padding="same", name="t")(x_in)
    model = keras.Model(x_in, L.Conv2D(6, 3, name="c")(y))
    new = rewrite_model(model, {"t": ("spatial_svd", 2)})
    costs = model_costs(new).by_path()
    assert costs["t"].macs == get_method("spatial_svd").macs(find_layers(model)["t"].info, 2)
    assert costs["c"].macs == 4 * 4 * 6 * 9 * 4
    assert model_costs(new).macs == _counted(new)


def test_loaded_sequential_counts_each_call_once(tmp_path) -> None:
    """Loading a Sequential model leaves each layer with older calls from the rebuilds;
    only the calls of the model's graph count."""
    model = keras.Sequential([keras.Input((10, 10, 3)), L.Conv2D(4, 3, name="c1"),
                              L.Conv2D(5, 3, name="c2"), L.Flatten(), L.Dense(2, name="fc")])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert len(loaded.get_layer("c1")._inbound_nodes) > 1  # the premise
    assert model_costs(loaded).macs == model_costs(model).macs == _counted(loaded)
    new = rewrite_model(loaded, {"c1": ("tucker2", 2)})
    assert model_costs(new).macs == _counted(new)
