"""Model rewriting: Sequential, Functional with branches/skips, nested, shared, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import randomize_weights, rel_err

from lrf_optuna.costs import model_costs
from lrf_optuna.decompose import (
    DecompositionError,
    FactorizedLayer,
    UnsupportedLayerError,
    get_method,
)
from lrf_optuna.rewrite import find_layers, iter_layers, rewrite_model

L = keras.layers


def _branchy_model() -> keras.Model:
    inner_in = keras.Input((8, 8, 16))
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="ic")(inner_in)
    inner = keras.Model(inner_in, h, name="block")
    x_in = keras.Input((8, 8, 3))
    a = L.Conv2D(16, 3, padding="same", name="c1")(x_in)
    a = L.BatchNormalization(name="bn")(a)
    left = inner(a)
    right = L.Conv2D(16, 1, name="side")(a)
    c = L.Add(name="add")([a, left, right])
    c = L.Conv2D(8, 3, strides=2, padding="same", name="down")(c)
    f = L.GlobalAveragePooling2D()(c)
    out = L.Dense(10, name="fc")(f)
    return keras.Model(x_in, out, name="branchy")


def test_find_layers_lists_paths_and_methods() -> None:
    found = find_layers(_branchy_model())
    assert sorted(found) == ["block/ic", "c1", "down", "fc", "side"]
    assert "svd" in found["fc"].methods and "tucker2" not in found["fc"].methods
    assert "channel_svd" in found["c1"].methods and "svd" not in found["c1"].methods
    assert "svd" in found["side"].methods  # a 1x1 conv is a matrix


def test_rewrite_full_rank_reproduces_branchy_model(rng) -> None:
    model = _branchy_model()
    randomize_weights(model, rng)
    x = rng.standard_normal((4, 8, 8, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    plan = {"c1": ("channel_svd", 16), "block/ic": ("channel_svd", 16),
            "side": ("svd", 16), "down": ("channel_svd", 8), "fc": ("svd", 8)}
    new = rewrite_model(model, plan)
    assert rel_err(new.predict(x, verbose=0), y) < 1e-4
    # names kept, graph shape kept, replacements where planned
    assert [lay.name for lay in new.layers] == [lay.name for lay in model.layers]
    replaced = {p for p, lay in iter_layers(new) if isinstance(lay, FactorizedLayer)}
    assert replaced == set(plan)


def test_rewrite_keeps_other_weights_identical_and_unshared(rng) -> None:
    model = _branchy_model()
    randomize_weights(model, rng)
    new = rewrite_model(model, {"fc": ("svd", 3)})
    old_layers, new_layers = dict(iter_layers(model)), dict(iter_layers(new))
    for path, layer in old_layers.items():
        if path == "fc":
            continue
        for a, b in zip(layer.get_weights(), new_layers[path].get_weights()):
            np.testing.assert_array_equal(a, b)
    old_ids = {id(v) for v in model.weights}
    assert not old_ids & {id(v) for v in new.weights}
    # training the new model leaves the original untouched
    before = [w.copy() for w in model.get_weights()]
    new.compile("sgd", "mse")
    new.fit(rng.standard_normal((8, 8, 8, 3)), rng.standard_normal((8, 10)), verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_rewrite_low_rank_changes_output_and_params(rng) -> None:
    model = _branchy_model()
    randomize_weights(model, rng)
    new = rewrite_model(model, {"c1": ("channel_svd", 2)})
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    assert rel_err(new.predict(x, verbose=0), model.predict(x, verbose=0)) > 1e-3
    assert new.count_params() < model.count_params()


def test_sequential_and_shared_layer(rng) -> None:
    seq = keras.Sequential([keras.Input((6,)), L.Dense(5, name="d1"), L.Dense(3, name="d2")])
    new = rewrite_model(seq, {"d1": ("svd", 5), "d2": None})
    assert isinstance(new, keras.Sequential)
    assert isinstance(new.get_layer("d1"), FactorizedLayer)
    assert isinstance(new.get_layer("d2"), L.Dense)
    x = rng.standard_normal((3, 6)).astype("float32")
    assert rel_err(new(x), seq(x)) < 1e-5

    shared = L.Dense(4, name="shared")
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], L.Add()([shared(a), shared(b)]))
    new = rewrite_model(model, {"shared": ("svd", 4)})
    xa, xb = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    assert rel_err(new([xa, xb]), model([xa, xb])) < 1e-5
    factorized = [lay for lay in new.layers if isinstance(lay, FactorizedLayer)]
    assert len(factorized) == 1  # still one shared layer


def test_nested_sequential_model(rng) -> None:
    inner = keras.Sequential([keras.Input((10,)), L.Dense(8, activation="relu", name="h")],
                             name="inner")
    x_in = keras.Input((10,))
    model = keras.Model(x_in, L.Dense(2, name="out")(inner(x_in)))
    assert sorted(find_layers(model)) == ["inner/h", "out"]
    new = rewrite_model(model, {"inner/h": ("qr", 8)})
    x = rng.standard_normal((3, 10)).astype("float32")
    assert rel_err(new(x), model(x)) < 1e-5


def test_subclassed_model_is_rejected_clearly() -> None:
    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.d = L.Dense(3)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 4), "float32"))
    with pytest.raises(TypeError, match=r"subclassed.*Functional"):
        find_layers(net)
    with pytest.raises(TypeError, match="subclassed"):
        rewrite_model(net, {})


def test_bad_plans_name_the_layer() -> None:
    model = _branchy_model()
    with pytest.raises(KeyError, match="nope"):
        rewrite_model(model, {"nope": ("svd", 2)})
    with pytest.raises(UnsupportedLayerError, match="'c1'"):
        rewrite_model(model, {"c1": ("svd", 2)})
    with pytest.raises(DecompositionError, match=r"'fc'.*\[1, 8\]"):
        rewrite_model(model, {"fc": ("svd", 99)})
    with pytest.raises(KeyError, match="unknown LRF method 'magic'"):
        rewrite_model(model, {"fc": ("magic", 2)})


def test_nonfinite_weights_rejected_with_layer_name() -> None:
    model = _branchy_model()
    fc = model.get_layer("fc")
    k = fc.kernel.numpy()
    k[0, 0] = np.nan
    fc.kernel.assign(k)
    with pytest.raises(DecompositionError, match=r"'fc'.*NaN"):
        rewrite_model(model, {"fc": ("svd", 2)})


def test_rewritten_model_roundtrips_safe_mode(tmp_path, rng) -> None:
    model = _branchy_model()
    randomize_weights(model, rng)
    new = rewrite_model(model, {"c1": ("channel_svd", 5), "fc": ("svd", 3)})
    path = tmp_path / "m.keras"
    new.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), new.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert isinstance(loaded.get_layer("c1"), FactorizedLayer)


# -- what real architectures contain (issue 9): each defect's repro is a regression test --
def test_keras_operations_between_layers_are_cloned(rng) -> None:
    """Defect 1: ``y + 3.0`` and other ``keras.ops`` between layers (MobileNetV3's
    hard-swish) once broke rewrite_model ('Add' object has no attribute 'set_weights')."""
    x = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3, name="c")(x)
    y = y * keras.ops.relu6(y + 3.0) * (1.0 / 6.0)
    model = keras.Model(x, L.Dense(2, name="fc")(y))
    randomize_weights(model, rng)
    new = rewrite_model(model, {"c": ("channel_svd", 4), "fc": ("svd", 2)})
    assert isinstance(new.get_layer("c"), FactorizedLayer)
    xs = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    assert rel_err(new(xs), model(xs)) < 1e-5


def _strided_pair() -> keras.Model:
    x = keras.Input((9, 9, 4))
    y = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)
    return keras.Model(x, L.Conv2D(6, 3, strides=2, padding="same", name="c")(y))


@pytest.mark.parametrize("plan", [{"dw": "spatial_svd"}, {"c": "cp"},
                                  {"dw": "spatial_svd", "c": "cp"}], ids=str)
def test_strided_depthwise_stages_run_and_are_exact(plan, rng) -> None:
    """Defect 2: spatial_svd on a strided DepthwiseConv2D and cp on a strided Conv2D built
    a model that failed when called without oneDNN (unequal depthwise strides)."""
    model = _strided_pair()
    randomize_weights(model, rng)
    found = find_layers(model)
    full = {p: (m, get_method(m).max_rank(found[p].info)) for p, m in plan.items()}
    new = rewrite_model(model, full)
    xs = rng.standard_normal((3, 9, 9, 4)).astype("float32")
    assert rel_err(new(xs), model(xs)) < 1e-4
    low = rewrite_model(model, {p: (m, 1) for p, m in plan.items()})
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(low(xs))))


@keras.saving.register_keras_serializable(package="lrf_optuna_tests")
class Scale(L.Layer):
    """Weights and no compute_output_shape, as ConvNeXt's layer scale or a user's layer."""

    def build(self, shape) -> None:
        self.g = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.g


def test_custom_layer_without_output_shape_does_not_stop_find_layers(rng) -> None:
    """Defect 3: find_layers raised NotImplementedError on a layer with weights and no
    compute_output_shape; so did it on rewritten models (FactorizedLayer had none)."""
    x = keras.Input((8, 8, 3))
    y = Scale(name="scale")(L.Conv2D(4, 3, name="c")(x))
    model = keras.Model(x, L.Dense(2, name="fc")(Scale(name="scale2")(y)))
    assert sorted(find_layers(model)) == ["c", "fc"]
    listed = find_layers(model, include_unsupported=True)
    assert listed["scale"].info is None and "not a decomposable kind" in listed["scale"].reason
    new = rewrite_model(model, {"c": ("channel_svd", 2)})
    assert sorted(find_layers(new)) == ["fc"]
    assert "FactorizedLayer" in find_layers(new, include_unsupported=True)["c"].reason
    assert new.get_layer("c").compute_output_shape((None, 8, 8, 3)) == (None, 6, 6, 4)
    assert model_costs(new).params == new.count_params()


def test_strided_dilated_depthwise_keeps_static_shapes(rng) -> None:
    """Defect 4: spatial_svd on a DepthwiseConv2D with strides 2 and dilation 2 gave
    (None, None, None, 4); the next layer then cost 0 MACs or model_costs raised."""
    x = keras.Input((11, 11, 4))
    y = L.DepthwiseConv2D(3, strides=2, dilation_rate=2, padding="same", name="dw")(x)
    model = keras.Model(x, L.Conv2D(6, 3, name="c")(y))
    randomize_weights(model, rng)
    new = rewrite_model(model, {"dw": ("spatial_svd", 2)})
    assert tuple(new.get_layer("dw").output.shape) == (None, 6, 6, 4)
    assert model_costs(new).by_path()["c"].macs == 4 * 4 * 6 * 9 * 4
    both = rewrite_model(model, {"dw": ("spatial_svd", 3), "c": ("channel_svd", 6)})
    assert model_costs(both).by_path()["c"].macs == get_method("channel_svd").macs(
        find_layers(model)["c"].info, 6)
    xs = rng.standard_normal((2, 11, 11, 4)).astype("float32")
    assert rel_err(both(xs), model(xs)) < 1e-4


def test_replacement_with_another_output_shape_is_refused_at_rewrite_time(monkeypatch) -> None:
    """A replacement that cannot run, or whose output shape differs, is refused when the
    model is rewritten, naming the layer and the method, never when it is called."""
    from lrf_optuna.decompose.conv_spatial_svd import SpatialSVD

    model = _strided_pair()
    stages = SpatialSVD.stages
    monkeypatch.setattr(SpatialSVD, "stages", lambda self, info, rank: [
        {**s, "padding": "valid"} for s in stages(self, info, rank)])
    wrong_shape = r"'spatial_svd' on layer 'dw'.*outputs shape \(4, 4, 4\).*\(5, 5, 4\)"
    with pytest.raises(UnsupportedLayerError, match=wrong_shape):
        rewrite_model(model, {"dw": ("spatial_svd", 2)})
    monkeypatch.setattr(SpatialSVD, "stages", stages)

    def refuse(self, inputs):
        raise RuntimeError("this kernel is not available")

    monkeypatch.setattr(FactorizedLayer, "call", refuse)
    with pytest.raises(UnsupportedLayerError,
                       match=r"'cp' on layer 'c'.*does not run.*not available"):
        rewrite_model(model, {"c": ("cp", 2)})


def test_subclass_that_computes_differently_is_not_decomposable(rng) -> None:
    """A subclass of Dense that overrides call() is listed with the reason; one that only
    renames is decomposed like Dense."""

    class Shifted(L.Dense):
        def call(self, x):
            return super().call(x) + 1.0

    class Renamed(L.Dense):
        pass

    x = keras.Input((6,))
    model = keras.Model(x, Renamed(3, name="renamed")(Shifted(4, name="shifted")(x)))
    listed = find_layers(model, include_unsupported=True)
    assert listed["shifted"].info is None and "overrides call()" in listed["shifted"].reason
    assert "svd" in listed["renamed"].methods


def test_shared_layer_macs_count_every_call() -> None:
    shared = L.Conv2D(4, 3, name="shared")
    a, b = keras.Input((6, 6, 2)), keras.Input((8, 8, 2))
    model = keras.Model([a, b], [shared(a), shared(b)])
    assert model_costs(model).macs == (4 * 4 + 6 * 6) * 4 * 9 * 2
    new = rewrite_model(model, {"shared": ("channel_svd", 4)})
    info = find_layers(model)["shared"].info
    assert info.input_shape == (6, 6, 2)  # the first call's
    expected = get_method("channel_svd").macs(info, 4) * (1 + 36 / 16)
    assert model_costs(new).macs == expected


def test_unknown_spatial_size_is_an_error_not_zero_macs() -> None:
    x = keras.Input((None, None, 3))
    model = keras.Model(x, L.Conv2D(4, 3, name="c")(x))
    with pytest.raises(ValueError, match=r"'c'.*fixed input shape"):
        model_costs(model)
    assert "unknown" in find_layers(model, include_unsupported=True)["c"].reason


def test_shapes_come_from_the_models_own_graph(rng) -> None:
    """A layer first called in another graph, on another shape, is described (and
    costed, and rewritten) by its call in this model."""
    conv = L.Conv2D(4, 3, name="c")
    conv(keras.Input((20, 20, 3)))  # an earlier, unrelated graph
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, conv(x))
    info = find_layers(model)["c"].info
    assert info.input_shape == (8, 8, 3) and info.output_shape == (6, 6, 4)
    assert model_costs(model).macs == 6 * 6 * 4 * 27
    new = rewrite_model(model, {"c": ("channel_svd", 4)})
    xs = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    assert rel_err(new(xs), model(xs)) < 1e-5
