"""lrf_optuna.compress and `lrf-optuna compress`: one call to the smallest model within an
accuracy budget, written as .keras and .tflite."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quadrant_images

import lrf_optuna
from lrf_optuna import cli
from lrf_optuna.compression import compress_detailed
from lrf_optuna.data import from_arrays
from lrf_optuna.deploy.files import load_model
from lrf_optuna.deploy.measure import tflite_predict
from lrf_optuna.errors import UserError
from lrf_optuna.finetune import FinetuneConfig, budget_candidates

FAST = FinetuneConfig(epochs=1, batch_size=32, latency_repeats=2, latency_warmup=0,
                      verbose=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import keras

    x, y = quadrant_images(240, 12)
    data = from_arrays(x[:200], y[:200], x[200:], y[200:], name="quad")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(24, activation="relu", name="fc1"),
        keras.layers.Dense(4, activation="softmax", name="fc2")], name="quadnet")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=4, batch_size=32, verbose=0)
    return model, data, tmp_path_factory.mktemp("compress")


def _run(tiny, **kwargs):
    model, data, d = tiny
    return compress_detailed(model, data, kwargs.pop("max_drop", 5.0), out_dir=d / "out",
                             n_trials=20, config=FAST, calibration_size=32,
                             cache_dir=d / "cache", show_progress_bar=False, **kwargs)


def test_compress_writes_the_chosen_model_and_resumes(tiny, monkeypatch) -> None:
    model, data, d = tiny
    done = _run(tiny)
    answer = done.answer
    assert answer.chosen is not None and answer.job is not None
    assert done.keras_path.parent == d / "out" and done.keras_path.exists()
    assert done.tflite_path.exists() and (d / "out" / "compress_quadnet.db").exists()
    assert done.model.count_params() == answer.job.measured.params < model.count_params()
    assert answer.chosen.number in [t.number for t in budget_candidates(done.study)]
    assert answer.drops_pp()["val_vs_reference"] <= 5.0 + 1e-6
    restored = load_model(done.keras_path)
    x = data.x_test[:8]
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(done.model(x)), atol=1e-6)
    np.testing.assert_allclose(tflite_predict(done.tflite_path, x), np.asarray(done.model(x)),
                               atol=1e-4)
    # the fine-tuned weights, not the compressed model before fine-tuning
    from lrf_optuna.models.training import evaluate

    assert evaluate(done.model, data.x_test, data.y_test) == pytest.approx(
        answer.job.measured.test_acc, abs=1e-6)

    # a second call resumes: no search trial and no fine-tuning is run again
    from lrf_optuna.finetune import jobs

    monkeypatch.setattr(jobs, "finetune_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    n_trials = len(done.study.trials)
    again = lrf_optuna.compress(model, data, 5.0, out_dir=d / "out", n_trials=20, config=FAST,
                                calibration_size=32, cache_dir=d / "cache",
                                show_progress_bar=False)
    assert again.count_params() == done.model.count_params()
    assert len(done.study.trials) == n_trials


def test_compress_errors(tiny) -> None:
    with pytest.raises(UserError, match="max_drop must be >= 0"):
        _run(tiny, max_drop=-1.0)
    model, data, d = tiny
    with pytest.raises(UserError, match="n_trials"):
        lrf_optuna.compress(model, data, 1.0, out_dir=d / "x", n_trials=0)


@pytest.mark.slow
def test_cli_compress_end_to_end(tiny_study, tmp_path, capsys) -> None:
    d = tiny_study["dir"]
    argv = ["compress", "--model", str(d / "net.keras"), "--dataset", str(d / "data.npz"),
            "--calibration-size", "64", "--cache-dir", str(d / "cache"), "--out",
            str(tmp_path / "out"), "--n-trials", "40", "--epochs", "1", "--batch-size", "32",
            "--max-drop", "100", "-q"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "smallest model within 100 pp" in out and "fair reference" in out
    keras_files = list((tmp_path / "out").glob("*.keras"))
    assert len(keras_files) == 1 and keras_files[0].with_suffix(".tflite").exists()
    # with a 100 pp budget every candidate passes: the smallest one is chosen
    import optuna

    study = optuna.load_study(study_name="compress_net",
                              storage=f"sqlite:///{tmp_path / 'out' / 'compress_net.db'}")
    smallest = budget_candidates(study)[0]
    assert keras_files[0].name.endswith(f"_trial{smallest.number}.keras")
    assert load_model(keras_files[0]).count_params() == smallest.user_attrs["params"]
    assert cli.main([*argv[:-3], "--max-drop", "-2"]) == 2
    assert "max_drop must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_compress_quantized_with_the_bytes_objective(tiny) -> None:
    from lrf_optuna.deploy import read_tflite

    model, data, d = tiny
    done = compress_detailed(model, data, 5.0, out_dir=d / "q", n_trials=20, config=FAST,
                             calibration_size=32, cache_dir=d / "cache",
                             show_progress_bar=False, quantize="int8", int8_io=True,
                             memory="bytes")
    assert done.study.metric_names[0] == "bytes"
    q = done.quantized_path
    assert q is not None and q == done.tflite_path.with_name(
        f"{done.tflite_path.stem}_int8.tflite")
    f = read_tflite(q)
    assert f.tensors[f.inputs[0]].type == "INT8" and f.float_ops() == []
    assert f.weight_bytes() < read_tflite(done.tflite_path).weight_bytes()
    x = data.x_test[:16]
    agree = tflite_predict(q, x).argmax(-1) == np.asarray(done.model(x)).argmax(-1)
    assert agree.mean() >= 0.8
    with pytest.raises(UserError, match="int8_io needs"):
        _run(tiny, int8_io=True)
