"""TFLite export of factorized models, latency helpers and export_trial."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import optuna
import pytest

from lrf_optuna.cli import main
from lrf_optuna.decompose import FactorizedLayer
from lrf_optuna.deploy.files import load_model, save_keras, to_tflite
from lrf_optuna.deploy.measure import keras_latency_ms, tflite_latency_ms, tflite_predict
from lrf_optuna.export import export_trial
from lrf_optuna.rewrite import rewrite_model

L = keras.layers

#: One layer per method kind: conv tucker2 / cp / spatial_svd / channel_svd, dense (and
#: 1x1 conv) svd / tt / qr.
PLAN = {"c1": ("tucker2", 4), "c2": ("cp", 6), "c3": ("spatial_svd", 4),
        "c4": ("channel_svd", 4), "c5": ("svd", 4), "d1": ("svd", 8), "d2": ("tt", 4),
        "d3": ("qr", 8)}


@pytest.fixture(scope="module")
def factorized():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        L.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c3"),
        L.Conv2D(16, 3, padding="valid", activation="relu", name="c4"),
        L.Conv2D(16, 1, name="c5"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(64, activation="relu", name="d1"),
        L.Dense(64, activation="relu", name="d2"),
        L.Dense(10, name="d3"),
    ], name="all_methods")
    small = rewrite_model(model, PLAN)
    kinds = {layer.name: layer.method for layer in small.layers
             if isinstance(layer, FactorizedLayer)}
    assert kinds == {k: m for k, (m, _) in PLAN.items()}
    return small


def test_tflite_matches_keras_for_every_method(factorized, tmp_path) -> None:
    path = to_tflite(factorized, tmp_path / "m.tflite")
    assert path.exists() and path.stat().st_size > 0
    x = np.random.default_rng(1).standard_normal((7, 12, 12, 3)).astype("float32")
    want = np.asarray(factorized(x, training=False))
    got = tflite_predict(path, x, batch_size=3)  # 3 + 3 + 1: resizes the input tensor
    assert got.shape == want.shape == (7, 10)
    assert np.max(np.abs(got - want)) < 1e-4


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_is_float32_without_quantization(factorized, tmp_path) -> None:
    import tensorflow as tf

    path = to_tflite(factorized, tmp_path / "m.tflite")
    interp = tf.lite.Interpreter(model_path=str(path))
    assert interp.get_input_details()[0]["dtype"] == np.float32
    assert all(d["dtype"] in (np.float32, np.int32) for d in interp.get_tensor_details())
    # the factors are stored as they are: the file is about 4 bytes per parameter
    assert path.stat().st_size < 4 * factorized.count_params() + 40_000


def test_latency_helpers_return_positive_medians(factorized, tmp_path) -> None:
    path = to_tflite(factorized, tmp_path / "m.tflite")
    k = keras_latency_ms(factorized, (12, 12, 3), repeats=5, warmup=1)
    t = tflite_latency_ms(path, repeats=5, warmup=1)
    assert 0 < k < 1000 and 0 < t < 1000
    assert keras_latency_ms(factorized, repeats=3, warmup=0) > 0  # default input shape
    with pytest.raises(ValueError):
        tflite_latency_ms(path, repeats=0)


def test_save_keras_drops_the_optimizer_and_reloads(factorized, tmp_path) -> None:
    model = keras.models.clone_model(factorized)
    model.set_weights(factorized.get_weights())
    model.compile("adam", "mse")
    x = np.random.default_rng(2).standard_normal((4, 12, 12, 3)).astype("float32")
    model.fit(x, np.zeros((4, 10)), epochs=1, verbose=0)  # creates Adam's slots
    model.save(tmp_path / "with_opt.keras")
    path = save_keras(model, tmp_path / "m.keras")
    assert path.stat().st_size < (tmp_path / "with_opt.keras").stat().st_size
    back = keras.saving.load_model(path)
    np.testing.assert_allclose(back(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"\.keras"):
        save_keras(model, tmp_path / "m.h5")


def test_export_trial_without_finetuning_warns_and_writes_both(tiny_study, tmp_path) -> None:
    # a private copy of the database: other tests fine-tune the shared one
    shutil.copy(tiny_study["dir"] / "study.db", tmp_path / "study.db")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    trial = next(t for t in study.best_trials if t.user_attrs.get("lrf_plan"))
    with pytest.warns(UserWarning, match="WITHOUT fine-tuning"):
        keras_path, tflite_path = export_trial(study, trial.number, tmp_path / "out")
    assert keras_path.name == f"tiny_trial{trial.number}.keras"
    assert keras_path.exists() and tflite_path.exists()
    model = load_model(keras_path)
    assert model.count_params() == trial.user_attrs["params"]
    x = np.random.default_rng(0).random((5, 16, 16, 1)).astype("float32")
    assert np.max(np.abs(tflite_predict(tflite_path, x) - np.asarray(model(x)))) < 1e-4


def test_load_model_registers_the_factorized_layers(factorized, tmp_path) -> None:
    """lrf_optuna.load_model works in a fresh interpreter that never imported
    lrf_optuna.decompose, where plain keras.saving.load_model fails."""
    import subprocess
    import sys

    path = save_keras(factorized, tmp_path / "m.keras")
    code = ("import sys, keras\n"
            "try:\n    keras.saving.load_model(sys.argv[1])\n"
            "except Exception:\n    print('plain keras fails')\n"
            "import lrf_optuna\n"
            "print(lrf_optuna.load_model(sys.argv[1]).count_params())\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out[-1] == str(factorized.count_params())
    assert "fails" in out
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_model(tmp_path / "missing.keras")


def test_export_cli_and_clear_errors(tiny_study, tmp_path, capsys) -> None:
    shutil.copy(tiny_study["dir"] / "study.db", tmp_path / "study.db")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    number = next(t.number for t in study.best_trials if t.user_attrs.get("lrf_plan"))
    assert main(["export", "--study-name", "tiny", "--storage", storage,
                 "--trial", str(number), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "WITHOUT fine-tuning" in out and f"tiny_trial{number}.tflite" in out
    assert "lrf_optuna.load_model" in out
    assert main(["export", "--study-name", "tiny", "--storage", storage,
                 "--trial", "999", "--out", str(tmp_path / "cli")]) == 2
    assert "study 'tiny' has no trial 999" in capsys.readouterr().err
    assert main(["export", "--study-name", "nope", "--storage", storage,
                 "--trial", "1", "--out", str(tmp_path)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_export_trial_and_cli_write_quantized_files(tiny_study, tmp_path, capsys) -> None:
    from lrf_optuna.deploy import read_tflite

    shutil.copy(tiny_study["dir"] / "study.db", tmp_path / "study.db")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    number = next(t.number for t in study.best_trials if t.user_attrs.get("lrf_plan"))
    with pytest.warns(UserWarning, match="WITHOUT fine-tuning"):
        keras_path, int8_path = export_trial(study, number, tmp_path / "q", quantize="int8",
                                             representative=32)
    assert int8_path.name == f"tiny_trial{number}_int8.tflite"
    assert (tmp_path / "q" / f"tiny_trial{number}.tflite").exists()  # the float32 beside
    f = read_tflite(int8_path)
    assert f.float_ops() == [] and f.shape_ops() == [] and f.is_static()
    model = load_model(keras_path)
    x = np.random.default_rng(0).random((16, 16, 16, 1)).astype("float32")
    assert (tflite_predict(int8_path, x).argmax(-1) == np.asarray(model(x)).argmax(-1)
            ).mean() >= 0.8
    assert main(["export", "--study-name", "tiny", "--storage", storage, "--trial",
                 str(number), "--out", str(tmp_path / "cli"), "--quantize", "float16"]) == 0
    out = capsys.readouterr().out
    assert f"tiny_trial{number}_float16.tflite" in out and "TFLite Micro" in out
    assert read_tflite(tmp_path / "cli" / f"tiny_trial{number}_float16.tflite"
                       ).op_report()["DEQUANTIZE"] >= 1
    assert main(["export", "--study-name", "tiny", "--storage", storage, "--trial",
                 str(number), "--out", str(tmp_path / "cli"), "--int8-io"]) == 2
    assert "--int8-io needs --quantize int8" in capsys.readouterr().err
    # int8 with per-tensor FULLY_CONNECTED weights, integer ends: accepted by the CLI
    assert main(["export", "--study-name", "tiny", "--storage", storage, "--trial",
                 str(number), "--out", str(tmp_path / "cli"), "--quantize",
                 "int8_fc_per_tensor", "--int8-io"]) == 0
    pt = read_tflite(tmp_path / "cli" / f"tiny_trial{number}_int8_fc_per_tensor.tflite")
    assert pt.float_ops() == [] and pt.tensors[pt.inputs[0]].type == "INT8"
    fc_weights = [pt.tensors[op.inputs[1]] for op in pt.ops if op.name == "FULLY_CONNECTED"]
    assert fc_weights and {t.n_scales for t in fc_weights} == {1}


def test_measure_model_records_the_runtime(factorized, tmp_path) -> None:
    from lrf_optuna.data import from_arrays, prepare_splits
    from lrf_optuna.deploy import read_tflite
    from lrf_optuna.study.artifacts import measure_model

    x = np.random.default_rng(0).random((240, 12, 12, 3)).astype("float32")
    y = np.arange(240) % 10
    splits = prepare_splits(from_arrays(x[:200], y[:200], x[200:], y[200:]),
                            calibration_size=20)
    files = measure_model(factorized, splits, tmp_path, "m", latency_repeats=3,
                          latency_warmup=1)
    assert files.measured.tflite_runtime == "litert" and files.measured.latency_ms_tflite > 0
    assert read_tflite(files.tflite_path).is_static()
