"""Test graphs for pruning, and a way to zero channels that does not use the pruner.

Each builder returns ``(model, zeroed)``: ``zeroed`` is ``{producer: channels}``, the
filters :func:`zero_channels` silences (with ``also``: the BatchNorm / depthwise layers
whose outputs for those channels must be zeroed too) so that pruning exactly those
filters must leave the model's outputs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

L = keras.layers


@dataclass
class Case:
    model: keras.Model
    #: ``{producer path: filters silenced}``; ratio = len / filters prunes exactly them.
    zeroed: dict[str, list[int]]
    #: ``{layer path: output channels to zero}`` for BatchNorm / DepthwiseConv layers.
    also: dict[str, list[int]] = field(default_factory=dict)
    #: groups expected (each a sorted tuple of member paths)
    groups: tuple[tuple[str, ...], ...] = ()

    @property
    def ratios(self) -> dict[str, float]:
        out = {}
        for path, idx in self.zeroed.items():
            out[path] = len(idx) / _get(self.model, path).get_config().get(
                "filters", _get(self.model, path).get_config().get("units"))
        return out


def _get(model: keras.Model, path: str) -> keras.layers.Layer:
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def zero_channels(case: Case) -> None:
    """Silence ``case.zeroed`` filters: weights, bias, and downstream BN / depthwise."""
    for path, idx in {**case.zeroed, **case.also}.items():
        layer = _get(case.model, path)
        idx = list(idx)
        for var in layer.weights:
            value = keras.ops.convert_to_numpy(var).copy()
            name = var.name
            if isinstance(layer, L.BatchNormalization):
                if name in ("beta", "moving_mean"):
                    value[idx] = 0.0
            elif isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
                if name == "bias":
                    value[idx] = 0.0
            elif name == "bias":
                value[idx] = 0.0
            elif name in ("kernel", "pointwise_kernel"):
                axis = -2 if "Transpose" in type(layer).__name__ else -1
                np.moveaxis(value, axis, 0)[idx] = 0.0
            else:
                continue
            var.assign(value)


def sequential_flatten() -> Case:
    model = keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(8, 3, activation="relu", name="c1"),
        L.MaxPooling2D(name="pool"),
        L.Conv2D(12, 3, activation="relu", name="c2"),
        L.Flatten(name="flat"),
        L.Dense(16, activation="relu", name="fc1"),
        L.Dropout(0.3, name="drop"),
        L.Dense(5, name="fc2"),
    ], name="seq")
    return Case(model, {"c1": [1, 4, 6], "c2": [0, 5, 7, 11], "fc1": [2, 3, 9]})


def batchnorm() -> Case:
    x_in = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x_in)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.Conv2D(6, 3, use_bias=False, name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Activation("relu", name="r2")(x)
    x = L.UpSampling2D(name="up")(x)
    x = L.AveragePooling2D(2, name="avg")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(4, name="fc")(x)
    model = keras.Model(x_in, out, name="bn_net")
    return Case(model, {"c1": [0, 3, 7], "c2": [2, 5]}, also={"bn1": [0, 3, 7], "bn2": [2, 5]})


def residual() -> Case:
    """Two residual blocks (identity and projection shortcuts) and keras.ops in the graph."""
    x_in = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x_in)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(6, 3, padding="same", activation="relu", name="b1_conv1")(x)
    y = L.Conv2D(8, 3, padding="same", use_bias=False, name="b1_conv2")(y)
    y = L.BatchNormalization(name="b1_bn")(y)
    x = L.Add(name="b1_add")([x, y])
    x = keras.ops.relu(x * 1.5)
    y = L.Conv2D(10, 3, strides=2, padding="same", activation="relu", name="b2_conv1")(x)
    y = L.Conv2D(12, 3, padding="same", name="b2_conv2")(y)
    s = L.Conv2D(12, 1, strides=2, name="b2_proj")(x)
    x = L.Add(name="b2_add")([y, s])
    x = L.Activation("relu", name="b2_relu")(x)
    x = L.GlobalMaxPooling2D(name="gmp")(x)
    out = L.Dense(3, name="fc")(x)
    model = keras.Model(x_in, out, name="resnet")
    return Case(
        model,
        {"stem": [1, 2, 6], "b1_conv2": [1, 2, 6], "b1_conv1": [0, 4],
         "b2_conv2": [3, 4, 8, 11], "b2_proj": [3, 4, 8, 11], "b2_conv1": [5]},
        also={"stem_bn": [1, 2, 6], "b1_bn": [1, 2, 6]},
        groups=(("b1_conv2", "stem"), ("b2_conv2", "b2_proj")))


def concatenating() -> Case:
    """Concatenate with the input between two pruned branches, then a dense-net style one."""
    x_in = keras.Input((10, 10, 3))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="a")(x_in)
    b = L.Conv2D(6, 1, activation="relu", name="b")(x_in)
    cat = L.Concatenate(name="cat")([a, x_in, b])              # 8 + 3 + 6 channels
    c = L.Conv2D(5, 3, padding="same", activation="relu", name="c")(cat)
    cat2 = L.Concatenate(axis=-1, name="cat2")([cat, c])        # dense-net style growth
    d = L.Conv2D(7, 1, activation="relu", name="d")(cat2)
    g = L.Concatenate(name="cat3")([L.GlobalAveragePooling2D(name="gap1")(cat2),
                                    L.GlobalAveragePooling2D(name="gap2")(d)])
    out = L.Dense(4, name="fc")(g)
    model = keras.Model(x_in, out, name="concat_net")
    return Case(model, {"a": [0, 5, 6], "b": [1, 2], "c": [4], "d": [0, 3, 6]})


def depthwise_separable() -> Case:
    x_in = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x_in)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(6.0, name="r1")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)   # 16 ch.
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.ReLU(6.0, name="dw_relu")(x)
    x = L.SeparableConv2D(10, 3, depth_multiplier=2, padding="same", activation="relu",
                          name="sep")(x)
    x = L.Conv2D(6, 1, activation="relu", name="pw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(3, name="fc")(x)
    model = keras.Model(x_in, out, name="mobile")
    dw_out = [2 * c + j for c in (2, 5) for j in range(2)]
    return Case(model, {"c1": [2, 5], "sep": [0, 3, 9], "pw": [1]},
                also={"bn1": [2, 5], "dw": dw_out, "dw_bn": dw_out})


def channels_first() -> Case:
    """Conv3D / pooling / BatchNorm / depthwise in channels_first (plain CPU kernels run
    these), flattened in both orders."""
    x_in = keras.Input((3, 6, 6, 6))
    x = L.Conv3D(8, 3, padding="same", activation="relu", data_format="channels_first",
                 name="c1")(x_in)
    x = L.BatchNormalization(axis=1, name="bn1")(x)
    x = L.MaxPooling3D(2, data_format="channels_first", name="pool")(x)       # (8, 3, 3, 3)
    a = L.Flatten(name="flat_cl")(x)                           # channel-major order
    b = L.Flatten(data_format="channels_first", name="flat_cf")(x)   # channel-minor order
    y = L.Concatenate(name="cat")([L.Dense(6, name="fa")(a), L.Dense(5, name="fb")(b)])
    out = L.Dense(2, name="fc")(L.ReLU(name="r")(y))
    model = keras.Model(x_in, out, name="cf_net")
    return Case(model, {"c1": [1, 4, 5], "fa": [2], "fb": [0, 4]}, also={"bn1": [1, 4, 5]})


def nested() -> Case:
    """A Functional block nested in a Functional model: pruning stays on each side."""
    inner_in = keras.Input((10, 10, 8))
    h = L.Conv2D(6, 3, padding="same", name="ic1")(inner_in)
    h = L.BatchNormalization(name="ibn")(h)
    h = L.ReLU(name="ir")(h)
    h = L.Conv2D(8, 3, padding="same", name="ic2")(h)
    inner = keras.Model(inner_in, h, name="block")
    x_in = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", name="pre")(x_in)
    x = inner(x)
    x = L.Conv2D(9, 3, activation="relu", name="post")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(3, name="fc")(x)
    model = keras.Model(x_in, out, name="outer")
    return Case(model, {"block/ic1": [0, 5], "post": [2, 3, 8]}, also={"block/ibn": [0, 5]})


def nested_sequential() -> Case:
    inner = keras.Sequential([keras.Input((16,)), L.Dense(12, activation="relu", name="h1"),
                              L.Dense(8, name="h2")], name="mlp")
    x_in = keras.Input((4, 4, 1))
    x = L.Flatten(name="flat")(x_in)
    x = L.Dense(16, activation="tanh", name="fc0")(x)
    x = inner(x)
    out = L.Dense(2, name="fc")(x)
    model = keras.Model(x_in, out, name="outer_mlp")
    return Case(model, {"mlp/h1": [3, 7, 11]})


CASES = {f.__name__: f for f in (sequential_flatten, batchnorm, residual, concatenating,
                                 depthwise_separable, channels_first, nested,
                                 nested_sequential)}


def sequence_transpose() -> Case:
    """Conv1D, Conv1DTranspose, Conv2DTranspose and a Dense on the time axis' features."""
    x_in = keras.Input((16, 4))
    x = L.Conv1D(8, 3, activation="relu", name="c1")(x_in)
    x = L.MaxPooling1D(name="pool")(x)
    x = L.Conv1DTranspose(6, 3, strides=2, activation="relu", name="t1")(x)
    x = L.Dense(7, activation="relu", name="tok")(x)            # per time step
    x = L.Reshape((15, 7, 1), name="to_2d")(x)
    y = L.Conv2DTranspose(5, 3, activation="relu", name="t2")(x)
    y = L.Conv2D(4, 3, activation="relu", name="c2")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    out = L.Dense(2, name="fc")(y)
    model = keras.Model(x_in, out, name="seq_net")
    return Case(model, {"c1": [2, 7], "t1": [0, 3], "t2": [1, 4], "c2": [0]})


CASES["sequence_transpose"] = sequence_transpose
