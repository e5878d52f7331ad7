"""What can be pruned, what cannot and why; groups; bad ratios name the layer."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from lrf_optuna.prune import PruneGraph, find_prunable, kept_channels, prune_model

from .graphs import CASES

L = keras.layers


@keras.saving.register_keras_serializable(package="lrf_optuna_tests")
class Twice(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def _reasons(model: keras.Model) -> dict[str, str | None]:
    return {p: e.reason for p, e in find_prunable(model, include_unprunable=True).items()}


def _conv_net(*middle: keras.layers.Layer, channels_out: bool = False) -> keras.Model:
    x_in = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="c")(x_in)
    for layer in middle:
        x = layer(x)
    if not channels_out:
        x = L.Conv2D(4, 3, name="next")(x)
        x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(x_in, L.Dense(2, name="fc")(x) if not channels_out else x, name="m")


@pytest.mark.parametrize("middle,words", [
    ((), None),
    ((L.Reshape((8, 48, 1), name="r"),), ["'r' (Reshape)", "cannot adjust"]),
    ((Twice(name="custom"),), ["'custom' (Twice)", "cannot adjust"]),
    ((L.Lambda(lambda t: t + 1.0, name="lam"),), ["'lam' (Lambda)"]),
    ((L.Softmax(name="sm"),), ["'sm' (Softmax)"]),
    ((L.LayerNormalization(name="ln"),), ["'ln' (LayerNormalization)"]),
    ((L.BatchNormalization(axis=1, name="bn"),), ["'bn' (BatchNormalization)", "axis 3",
                                                  "channel axis 1"]),
    ((L.Activation("softmax", name="act"),), ["'act' (Activation)"]),
    ((L.PReLU(name="pr"),), ["'pr' (PReLU)"]),
    ((L.Conv2D(6, 1, groups=3, name="g"),), ["grouped convolution 'g'", "groups=3"]),
])
def test_what_stops_a_conv_from_being_prunable(middle, words) -> None:
    reason = _reasons(_conv_net(*middle))["c"]
    if words is None:
        assert reason is None
    else:
        assert reason is not None and all(w in reason for w in words), reason


def test_model_output_shared_layer_and_own_activation() -> None:
    assert "output of model 'm'" in _reasons(_conv_net(channels_out=True))["c"]
    x_in = keras.Input((8, 8, 4))
    shared = L.Conv2D(4, 1, name="shared")
    y = L.Conv2D(4, 3, padding="same", name="feeds_shared")(x_in)
    z = L.Add(name="add")([shared(y), shared(x_in)])
    z = L.GlobalAveragePooling2D()(z)
    z = L.Dense(8, activation="softmax", name="probs")(z)
    z = L.Dense(1, name="single")(z)
    out = L.Dense(2, name="fc")(z)
    reasons = _reasons(keras.Model(x_in, out))
    assert "shared layer (called 2 times)" in reasons["shared"]
    assert "shared layer 'shared'" in reasons["feeds_shared"]
    assert "activation 'softmax' is not known to act on each channel" in reasons["probs"]
    assert "single output channel" in reasons["single"]


def test_shared_weightless_layer_is_followed_per_call(rng) -> None:
    relu = L.ReLU(name="relu")
    x_in = keras.Input((8, 8, 3))
    a = relu(L.Conv2D(6, 3, name="a")(x_in))
    b = relu(L.Conv2D(5, 3, name="b")(a))
    out = L.Dense(2, name="fc")(L.Flatten()(b))
    model = keras.Model(x_in, out)
    assert _reasons(model)["a"] is None and _reasons(model)["b"] is None
    small = prune_model(model, {"a": 0.5, "b": 0.4})
    assert tuple(small.get_layer("fc").kernel.shape) == (4 * 4 * 3, 2)
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    assert np.isfinite(np.asarray(small(x))).all()


def test_merge_with_unprunable_tensor_and_bad_concatenate() -> None:
    x_in = keras.Input((8, 8, 3))
    a = L.Conv2D(3, 3, padding="same", name="a")(x_in)
    s = L.Add(name="add_input")([a, x_in])                 # the input cannot lose channels
    b = L.Conv2D(4, 3, padding="same", name="b")(s)
    c = L.Conv2D(4, 3, padding="same", name="c")(s)
    cat_h = L.Concatenate(axis=1, name="cat_rows")([b, c])   # along height
    d = L.Conv2D(4, 3, padding="same", name="d")(s)
    e = L.Conv2D(2, 3, padding="same", name="e")(s)
    f = L.Conv2D(6, 3, padding="same", name="f")(s)
    mixed = L.Add(name="add_cat")([L.Concatenate(name="cat")([d, e]), f])
    gap = L.GlobalAveragePooling2D
    out = L.Dense(2, name="fc")(L.Concatenate()([gap()(cat_h), gap()(mixed)]))
    reasons = _reasons(keras.Model(x_in, out))
    assert "meets, at 'add_input' (Add), a tensor from 'input" in reasons["a"]
    assert "'cat_rows' (Concatenate) concatenates it along axis 1" in reasons["b"]
    assert "concatenated, flattened or repeated" in reasons["d"]
    assert "concatenated, flattened or repeated" in reasons["f"]


def test_nested_model_boundaries() -> None:
    reasons = _reasons(CASES["nested"]().model)
    assert reasons["block/ic1"] is None and reasons["post"] is None
    assert "enters nested model 'block'" in reasons["pre"]
    assert "output of nested model 'block'" in reasons["block/ic2"]
    assert "output of model 'outer'" in reasons["fc"]
    reasons = _reasons(CASES["nested_sequential"]().model)
    assert reasons["mlp/h1"] is None
    assert "enters nested model 'mlp'" in reasons["fc0"]


def test_nested_model_called_twice(rng) -> None:
    inner_in = keras.Input((6,))
    h = L.Dense(5, activation="relu", name="h1")(inner_in)
    inner = keras.Model(inner_in, L.Dense(6, name="h2")(h), name="twice")
    x_in = keras.Input((4,))
    x = L.Dense(6, activation="relu", name="pre")(x_in)
    x = inner(inner(x))
    out = L.Dense(2, name="fc")(L.Dense(7, activation="relu", name="post")(x))
    model = keras.Model(x_in, out)
    reasons = _reasons(model)
    assert "inside nested model 'twice', which is called 2 times" in reasons["twice/h1"]
    assert reasons["post"] is None
    small = prune_model(model, {"post": 0.5})
    assert tuple(small.get_layer("fc").kernel.shape) == (4, 2)
    x_val = rng.standard_normal((3, 4)).astype("float32")
    assert np.isfinite(np.asarray(small(x_val))).all()


def test_dense_on_channels_first_conv_is_not_prunable() -> None:
    x_in = keras.Input((3, 4, 4, 4))
    x = L.Conv3D(5, 1, data_format="channels_first", name="c")(x_in)
    out = L.Flatten()(L.Dense(2, name="d")(x))
    reason = _reasons(keras.Model(x_in, out))["c"]
    assert "'d' (Dense) on axis 1, not that layer's input-channel axis 4" in reason


def test_entries_describe_consumers_carriers_and_groups() -> None:
    graph = PruneGraph(CASES["depthwise_separable"]().model)
    c1 = graph.entries["c1"]
    assert c1.channels == 8 and c1.group == ("c1",)
    assert c1.consumers == ("sep",) and set(c1.carriers) == {"bn1", "dw", "dw_bn"}
    res = PruneGraph(CASES["residual"]().model)
    assert set(res.entries["stem"].group) == {"stem", "b1_conv2"}
    assert set(res.entries["stem"].consumers) == {"b1_conv1", "b2_conv1", "b2_proj"}
    assert set(res.entries["stem"].carriers) == {"stem_bn", "b1_bn"}
    assert graph.activation_layers(["c1"]) == ["sep"]


@pytest.mark.parametrize("ratio,error,words", [
    (-0.1, ValueError, "in [0, 1)"), (1.0, ValueError, "in [0, 1)"),
    (1.5, ValueError, "in [0, 1)"), (math.nan, ValueError, "nan"),
    (math.inf, ValueError, "inf"), ("0.5", TypeError, "must be a number"),
    (True, TypeError, "must be a number"), (None, TypeError, "must be a number"),
])
def test_bad_ratios_name_the_layer(ratio, error, words) -> None:
    model = CASES["sequential_flatten"]().model
    with pytest.raises(error, match="'c2'") as info:
        prune_model(model, {"c1": 0.5, "c2": ratio})
    assert words in str(info.value)
    with pytest.raises(error, match="'c2'"):
        kept_channels(model, "c2", ratio)


def test_bad_layer_names_and_unprunable_layers() -> None:
    model = CASES["residual"]().model
    with pytest.raises(KeyError, match=r"no layer 'nope'.*prunable layers"):
        prune_model(model, {"nope": 0.5})
    with pytest.raises(KeyError, match=r"'stem_bn' \(BatchNormalization\).*no filters"):
        prune_model(model, {"stem_bn": 0.5})
    with pytest.raises(ValueError, match="layer 'fc' cannot be pruned: its output reaches"):
        prune_model(model, {"fc": 0.5})
    assert prune_model(model, {"fc": 0.0}).count_params() == model.count_params()
    with pytest.raises(ValueError, match=r"'stem' and 'b1_conv2' are pruned alike.*0.5.*0.25"):
        prune_model(model, {"stem": 0.5, "b1_conv2": 0.25})


def test_importance_arguments_are_checked() -> None:
    model = CASES["sequential_flatten"]().model
    graph = PruneGraph(model)
    with pytest.raises(ValueError, match=r"importance must be one of.*'l3'"):
        graph.prune({"c1": 0.5}, importance="l3")
    with pytest.raises(ValueError, match="needs activations="):
        graph.kept_channels("c1", 0.5, importance="activation")
    with pytest.raises(KeyError, match=r"needs the captured inputs of \['c2'\]"):
        graph.kept_channels("c1", 0.5, importance="activation", activations={})
    bad = {"c2": np.zeros((2, 5, 5, 3))}
    with pytest.raises(ValueError, match="captured input of 'c2' has shape"):
        graph.kept_channels("c1", 0.5, importance="activation", activations=bad)


def test_rounding_keeps_at_least_one_filter() -> None:
    graph = PruneGraph(CASES["sequential_flatten"]().model)       # c1 has 8 filters
    assert len(graph.kept_channels("c1", 0.3)) == 6       # floor(2.4) = 2 removed
    assert len(graph.kept_channels("c1", 0.99)) == 1
    assert graph.channels("c1", {"c1": 0.99}) == (3, 1)
    assert graph.channels("c2", {"c1": 0.99}) == (1, 12)
