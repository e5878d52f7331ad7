"""Deployable files (lrf_optuna.deploy): every LRF method and a pruned plan convert to
full-integer builtin ops in a static batch-1 graph inside the TFLite Micro op set; the
deployed-bytes model against real files; the arena planner; LiteRT; the entry point."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from conftest import quadrant_images, randomize_weights

from lrf_optuna.costs import PlanBytes, deployed_bytes
from lrf_optuna.decompose import describe_layer, get_method, layer_weights
from lrf_optuna.deploy import (
    LITERT,
    TF_LITE,
    TFLM_OPS,
    OpInfo,
    TensorInfo,
    TFLiteFile,
    convert,
    deploy_model,
    micro_unsupported,
    plan_offsets,
    planned_arena_bytes,
    predict,
    read_tflite,
    runtime_name,
    tflm_arena,
)
from lrf_optuna.deploy import runtime as runtime_module
from lrf_optuna.prune import PruneGraph
from lrf_optuna.rewrite import graph_nodes, rewrite_model

L = keras.layers

#: Which layer of :func:`_net` each method replaces, at which rank.
PLANS = {
    "tucker2": {"c1": ("tucker2", 6), "c2": ("tucker2", 6)},
    # c3 is strided: cp and spatial_svd carry its stride on one axis of a (k, 1) stage
    "cp": {"c1": ("cp", 6), "c2": ("cp", 6), "c3": ("cp", 6)},
    "channel_svd": {"c1": ("channel_svd", 6), "c2": ("channel_svd", 6),
                    "c3": ("channel_svd", 6)},
    "channel_svd_aware": {"c1": ("channel_svd_aware", 6), "c2": ("channel_svd_aware", 6)},
    "spatial_svd": {"c1": ("spatial_svd", 6), "c2": ("spatial_svd", 6),
                    "c3": ("spatial_svd", 6)},
    "svd": {"c4": ("svd", 6), "d1": ("svd", 12), "d2": ("svd", 4)},
    "svd_aware": {"c4": ("svd_aware", 6), "d1": ("svd_aware", 12)},
    "qr": {"c4": ("qr", 6), "d1": ("qr", 12)},
    "tt": {"c4": ("tt", 4), "d1": ("tt", 4)},
}
METHODS = sorted(PLANS)
PRECISIONS = ("none", "dynamic", "float16", "int8", "int8_fc_per_tensor")
INTEGER = ("int8", "int8_fc_per_tensor")
#: The deployed-bytes model counts weights, biases and their quantization parameters;
#: a file's constant tensors also hold the int32 shapes of RESHAPE / TRANSPOSE (a few
#: dozen bytes per factorized layer). Measured: 8-40 bytes over on every method but TT
#: (its reshapes: 180-540 bytes, 0.6-1.7 %). Stated margin: the model is never above the
#: file and at most 2 % + 64 bytes below it.
MARGIN_REL, MARGIN_ABS = 0.02, 64


def _net() -> keras.Model:
    """Every layer kind the methods act on, BatchNorm after a bias-free conv (folded by
    the converter) and a strided conv."""
    return keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(24, 3, padding="same", activation="relu", name="c1"),
        L.Conv2D(24, 3, padding="same", use_bias=False, name="c2"),
        L.BatchNormalization(name="bn2"), L.ReLU(name="r2"),
        L.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="c3"),
        L.Conv2D(32, 1, activation="relu", name="c4"),
        L.Flatten(name="flat"),
        L.Dense(48, activation="relu", name="d1"),
        L.Dense(10, name="d2"),
    ], name="net")


@pytest.fixture(scope="module")
def base():
    keras.utils.set_random_seed(0)
    model = _net()
    randomize_weights(model, np.random.default_rng(0), scale=0.3)  # non-zero biases too
    x = np.random.default_rng(1).random((48, 12, 12, 3)).astype("float32")
    return model, x


def _aware_factors(model: keras.Model, plan, x) -> dict:
    """Factors of the data-aware methods, fitted to each layer's inputs on ``x``."""
    nodes = graph_nodes(model)
    out = {}
    for path, (method, rank) in plan.items():
        m = get_method(method)
        if not m.needs_inputs:
            continue
        layer = model.get_layer(path)
        inputs = np.asarray(keras.Model(model.inputs, layer.input)([x]))
        info = describe_layer(layer, nodes=nodes)
        prepared = m.prepare_with_inputs(info, layer_weights(layer), inputs)
        out[(path, method, rank)] = m.factorize(info, prepared, rank)
    return out


@pytest.fixture(scope="module")
def variants(base):
    model, x = base
    out = {name: rewrite_model(model, plan, factors=_aware_factors(model, plan, x))
           for name, plan in PLANS.items()}
    graph = PruneGraph(model)
    out["pruned"] = graph.prune({e.group[0]: 0.5 for e in graph.prunable.values()})
    return out


_FILES: dict[tuple[str, str], bytes] = {}


def _file(variants, base, name: str, precision: str) -> bytes:
    if (name, precision) not in _FILES:
        _FILES[name, precision] = convert(
            variants[name], quantize=precision,
            representative=base[1] if precision in INTEGER else None)
    return _FILES[name, precision]


@pytest.mark.parametrize("mode", INTEGER)
@pytest.mark.parametrize("name", [*METHODS, "pruned"])
def test_every_method_and_a_pruned_plan_convert_to_integer_builtins(variants, base, name,
                                                                    mode):
    f = read_tflite(_file(variants, base, name, mode))
    assert not [op.name for op in f.ops if op.name.startswith(("FLEX:", "CUSTOM:"))]
    assert f.float_ops() == [], name            # only the boundary QUANTIZE / DEQUANTIZE
    assert f.ops[0].name == "QUANTIZE" and f.ops[-1].name == "DEQUANTIZE"
    inner = {t.type for op in f.ops[1:-1] for i in (*op.inputs, *op.outputs) if i >= 0
             for t in [f.tensors[i]]}
    assert inner <= {"INT8", "INT32"}, (name, inner)
    assert f.shape_ops() == [] and f.is_static(), name
    assert micro_unsupported(f) == [], name
    assert {"CONV_2D", "FULLY_CONNECTED"} & set(f.op_report())
    # and it still computes the model: int8 logits follow the float ones
    x = base[1][:8]
    want = np.asarray(variants[name](x, training=False))
    got = predict(_file(variants, base, name, mode), x)
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.98, name


@pytest.mark.parametrize("method", ["cp", "spatial_svd"])
def test_strided_one_axis_stages_of_a_wide_map_stay_inside_the_micro_set(method):
    """A (k, 1) depthwise stage with a stride on a wide map (ResNet-20's stage2_block1_conv1
    under cp r=35: 28 columns x 35 channels): its kernel must not be tiled at run time
    (the converter folds a TILE of a constant only while it is small, and TILE is outside
    TFLite Micro), and the file still computes the layer."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 16)),
                              L.Conv2D(32, 3, strides=2, padding="same", name="s")])
    randomize_weights(model, np.random.default_rng(0), scale=0.3)
    small = rewrite_model(model, {"s": (method, 32)})
    x = np.random.default_rng(1).random((16, 28, 28, 16)).astype("float32")
    for mode in ("none", "int8"):
        f = read_tflite(convert(small, quantize=mode, representative=x))
        assert "TILE" not in f.op_report() and micro_unsupported(f) == [], (mode,
                                                                         f.op_report())
    np.testing.assert_allclose(predict(convert(small), x[:4]), np.asarray(small(x[:4])),
                               atol=1e-4)


@pytest.mark.parametrize("name", ["svd", "channel_svd", "tt"])
def test_fc_per_tensor_mode_gives_fully_connected_weights_one_scale(variants, base, name):
    """Only FULLY_CONNECTED weights and biases lose their per-channel scales; convolutions
    keep them; the file shrinks by those scales."""
    def scales(mode):
        f = read_tflite(_file(variants, base, name, mode))
        out = {}
        for op in f.ops:
            if op.name in ("FULLY_CONNECTED", "CONV_2D"):
                for i in op.inputs[1:]:
                    if i >= 0 and f.tensors[i].constant:
                        out.setdefault(op.name, []).append(f.tensors[i].n_scales)
        return f, out

    per_channel, pc = scales("int8")
    per_tensor, pt = scales("int8_fc_per_tensor")
    assert pt["FULLY_CONNECTED"] and set(pt["FULLY_CONNECTED"]) == {1}, pt
    assert max(pc["FULLY_CONNECTED"]) > 1                    # int8 is per channel
    assert pt.get("CONV_2D") == pc.get("CONV_2D")            # convolutions untouched
    assert per_tensor.size < per_channel.size


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", [*METHODS, "original"])
def test_deployed_bytes_equal_the_files_tensor_bytes(variants, base, name, precision):
    model = base[0] if name == "original" else variants[name]
    if name == "original":
        variants = {**variants, "original": model}
    real = read_tflite(_file(variants, base, name, precision)).weight_bytes()
    counted = deployed_bytes(model, precision)
    assert 0 <= real - counted <= MARGIN_REL * real + MARGIN_ABS, (name, precision, real,
                                                                   counted)


def test_plan_bytes_is_deployed_bytes_of_the_built_model(base, variants):
    model = base[0]
    for precision in PRECISIONS:
        plans = PlanBytes(model, precision)
        assert plans.original == deployed_bytes(model, precision)
        for name, plan in PLANS.items():
            assert plans.of_plan(plan) == deployed_bytes(variants[name], precision), name


def test_float_file_is_a_static_graph_unlike_the_dynamic_batch_route(variants, tmp_path):
    import tensorflow as tf

    model = variants["tt"]
    static = read_tflite(convert(model))
    assert static.shape_ops() == [] and static.is_static()
    assert static.tensors[static.inputs[0]].shape == (1, 12, 12, 3)
    dynamic = read_tflite(bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert()))
    assert {"SHAPE", "PACK"} <= set(dynamic.shape_ops())  # what the check would catch
    x = np.random.default_rng(3).random((5, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(predict(convert(model), x), np.asarray(model(x)), atol=1e-4)


@pytest.mark.parametrize("mode", INTEGER)
def test_int8_io_file_has_integer_ends_and_predict_quantizes(variants, base, mode):
    data = convert(variants["svd"], quantize=mode, representative=base[1], int8_io=True)
    f = read_tflite(data)
    assert f.tensors[f.inputs[0]].type == "INT8" and f.tensors[f.outputs[0]].type == "INT8"
    assert "QUANTIZE" not in f.op_report() and f.float_ops() == []
    x = base[1][:6]
    float_out = predict(_file({"svd": variants["svd"]}, base, "svd", mode), x)
    np.testing.assert_allclose(predict(data, x), float_out, atol=0.1 * np.abs(float_out).max())


def test_micro_check_names_ops_outside_the_set() -> None:
    t = TensorInfo(0, "x", (1, 4), (1, 4), "FLOAT32", False, 0, 0, 0)
    ops = (OpInfo("FULLY_CONNECTED", (0,), (0,)), OpInfo("RFFT2D", (0,), (0,)),
           OpInfo("FLEX:Erf", (0,), (0,)))
    f = TFLiteFile(10, ops, (t,), (0,), (0,), 1)
    assert micro_unsupported(f) == ["FLEX:Erf", "RFFT2D"]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "RESHAPE", "TRANSPOSE",
            "QUANTIZE", "DEQUANTIZE", "MEAN"} <= TFLM_OPS


def test_planner_on_a_hand_made_graph() -> None:
    # a -> op0 -> b -> op1 -> c ; a also read by op2 with c -> d (a lives 0..2)
    offsets, peak = plan_offsets([(64, 0, 2), (128, 0, 1), (32, 1, 2), (16, 2, 2)])
    # largest first: b at 0; a beside b (alive together); c reuses nothing of b (op1
    # overlaps) -> after a; d overlaps a and c, b is free by op 2 -> d at 0
    assert offsets == [128, 0, 192, 0] and peak == 224
    assert plan_offsets([]) == ([], 0)
    assert plan_offsets([(1, 0, 0)]) == ([0], 16)   # 16-byte alignment


@pytest.mark.skipif(not __import__("lrf_optuna.deploy.micro", fromlist=["x"]).tflm_available(),
                    reason="tflite-micro is not installed")
@pytest.mark.parametrize("precision", ["none", "int8"])
def test_planned_activations_equal_tflite_micro(variants, base, tmp_path, precision):
    """A known case: TFLM's own planner (its arena head) on real files."""
    path = tmp_path / "m.tflite"
    path.write_bytes(_file(variants, base, "tucker2", precision))
    measured, note = tflm_arena(path)
    assert measured is not None, note
    assert planned_arena_bytes(path) == measured["head"]
    assert measured["total"] > measured["head"]


def test_litert_runs_files_without_the_deprecation_warning(variants, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(variants["qr"]))
    assert runtime_name() == LITERT
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lat = runtime_module.latency(path, repeats=3, warmup=1)
        predict(path, np.zeros((2, 12, 12, 3), np.float32))
    assert lat.runtime == LITERT and lat.ms > 0
    assert not [w for w in caught if "deprecated" in str(w.message)]


def test_tf_lite_is_the_fallback_where_litert_cannot_be_imported(monkeypatch, variants,
                                                                 tmp_path):
    import sys

    path = tmp_path / "m.tflite"
    path.write_bytes(convert(variants["qr"]))
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    runtime_module._interpreter_class.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert runtime_module.latency(path, repeats=2, warmup=0).runtime == TF_LITE
    finally:
        monkeypatch.undo()
        runtime_module._interpreter_class.cache_clear()
    assert runtime_name() == LITERT


def test_deploy_model_entry_point(tmp_path) -> None:
    from lrf_optuna.data import from_arrays, prepare_splits

    x, y = quadrant_images(240, 12)
    splits = prepare_splits(from_arrays(x[:200], y[:200], x[200:], y[200:]),
                            calibration_size=32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(splits.input_shape),
                              L.Conv2D(8, 3, activation="relu", name="c"),
                              L.GlobalAveragePooling2D(), L.Dense(4, name="fc")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(splits.x_train, splits.y_train, epochs=3, verbose=0)
    small = rewrite_model(model, {"c": ("channel_svd", 4)})
    d = deploy_model(small, splits, "int8", out_dir=tmp_path, stem="s", representative=32,
                     latency_repeats=3, latency_warmup=1)
    assert d.path == tmp_path / "s_int8.tflite" and d.file_bytes == d.path.stat().st_size
    assert d.correct.shape == splits.y_val.shape and d.split == "val"
    assert d.accuracy == pytest.approx(float(d.correct.mean()))
    want = (np.asarray(small(splits.x_val)).argmax(-1) == splits.y_val).mean()
    assert abs(d.accuracy - want) <= 0.05
    assert d.ops["CONV_2D"] >= 1 and d.float_ops == [] and d.micro_unsupported == []
    assert d.arena.bytes >= d.arena.activations > 0
    assert d.latency.runtime == LITERT and d.latency.ms > 0
    assert d.to_json()["runtime"] == LITERT
    t = deploy_model(small, splits, "none", split="test", latency_repeats=2,
                     latency_warmup=0, use_tflm=False)
    assert t.path is None and t.correct.shape == splits.y_test.shape
    assert t.arena.source == "planned" and t.quantize == "none" and t.float_ops
