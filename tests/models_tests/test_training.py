"""Tests for the reference-model training cache (tiny fake data, 1 epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from lrf_optuna.data import Dataset, from_arrays, prepare_splits
from lrf_optuna.models import training
from lrf_optuna.models.training import (
    TrainingRecord,
    default_model_cache_dir,
    evaluate,
    train_or_load,
    train_reference_model,
)


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(80) % 4, np.arange(24) % 4
    # Class-dependent brightness so one epoch learns something.
    x_train = rng.random((80, 16, 16, 1)) * 0.3 + y_train[:, None, None, None] * 0.2
    x_test = rng.random((24, 16, 16, 1)) * 0.3 + y_test[:, None, None, None] * 0.2
    return from_arrays(x_train, y_train, x_test, y_test, name="tiny")


def _no_fit(*args: object, **kwargs: object) -> None:
    raise AssertionError("keras.Model.fit must not be called on a cache hit")


def test_second_call_loads_from_cache(
    tiny: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train_or_load(
        "lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    assert not first.cached
    assert first.path.parent == tmp_path / "models"
    assert first.path.is_file() and first.path.suffix == ".keras"
    assert first.path.name.startswith("lenet5_16x16x1_k4_e1_b32_s0_")
    # Nothing left behind by the atomic writes.
    assert sorted(p.name for p in first.path.parent.iterdir()) == sorted(
        [first.path.name, first.path.with_suffix(".json").name]
    )
    sidecar = json.loads(first.path.with_suffix(".json").read_text())
    assert sidecar["params"] == first.model.count_params()
    assert sidecar["epochs"] == 1 and sidecar["seed"] == 0
    assert 0.0 <= sidecar["test_accuracy"] <= 1.0
    assert sidecar["train_seconds"] > 0
    assert sidecar["test_accuracy"] == pytest.approx(
        evaluate(first.model, tiny.x_test, tiny.y_test)
    )

    monkeypatch.setattr(keras.Model, "fit", _no_fit)
    second = train_or_load(
        "lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    assert second.cached
    assert second.path == first.path
    assert second.record == first.record
    for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        second.model.predict(tiny.x_test, verbose=0),
        first.model.predict(tiny.x_test, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )
    # The thin wrapper goes through the same cache.
    model = train_reference_model(
        "lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    assert isinstance(model, keras.Model)


def test_key_changes_with_data_seed_and_epochs(tiny: Dataset, tmp_path: Path) -> None:
    base = train_or_load("lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path,
                         verbose=False)
    other_seed = train_or_load(
        "lenet5", tiny, epochs=1, batch_size=32, seed=1, model_cache_dir=tmp_path, verbose=False
    )
    changed = from_arrays(tiny.x_train * 0.5, tiny.y_train, tiny.x_test, tiny.y_test)
    other_data = train_or_load(
        "lenet5", changed, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    assert not other_seed.cached and not other_data.cached
    assert len({base.path, other_seed.path, other_data.path}) == 3
    assert "_s1_" in other_seed.path.name


def test_seed_makes_training_reproducible(tiny: Dataset, tmp_path: Path) -> None:
    a = train_or_load(
        "lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path / "a", verbose=False
    )
    b = train_or_load(
        "lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path / "b", verbose=False
    )
    assert a.path.name == b.path.name
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)


def test_splits_input_and_missing_sidecar(
    tiny: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = prepare_splits(tiny, val_fraction=0.25, calibration_size=8, seed=0)
    first = train_or_load(
        "lenet5", splits, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    assert first.record.val_fraction == pytest.approx(0.25)
    # Same split as a Dataset with val_fraction=0.25 and the same seed -> same cache entry.
    monkeypatch.setattr(keras.Model, "fit", _no_fit)
    same = train_or_load(
        "lenet5",
        tiny,
        epochs=1,
        batch_size=32,
        val_fraction=0.25,
        model_cache_dir=tmp_path,
        verbose=False,
    )
    assert same.cached and same.path == first.path
    # A lost sidecar is rebuilt from the cached model, without training.
    first.path.with_suffix(".json").unlink()
    again = train_or_load(
        "lenet5", splits, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    assert again.cached
    assert again.record.train_seconds is None
    assert again.record.test_accuracy == pytest.approx(first.record.test_accuracy)
    assert TrainingRecord.from_json(again.path.with_suffix(".json").read_text()) == again.record


def test_corrupt_cache_file_is_retrained(tiny: Dataset, tmp_path: Path) -> None:
    first = train_or_load(
        "lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    first.path.write_bytes(b"not a zip file")
    again = train_or_load(
        "lenet5", tiny, epochs=1, batch_size=32, model_cache_dir=tmp_path, verbose=False
    )
    assert not again.cached
    assert keras.saving.load_model(again.path).count_params() == first.model.count_params()


def test_default_model_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(training.ENV_CACHE_DIR, str(tmp_path / "c"))
    assert default_model_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(training.ENV_CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_model_cache_dir() == tmp_path / "xdg" / "lrf_optuna"


def test_evaluate_and_argument_errors(tiny: Dataset, tmp_path: Path) -> None:
    class Oracle(keras.Model):
        def call(self, x: object) -> object:
            return keras.ops.one_hot(keras.ops.cast(x[:, 0, 0, 0] > 0.5, "int32"), 2)

    x = np.zeros((4, 2, 2, 1), np.float32)
    x[2:] = 1.0
    assert evaluate(Oracle(), x, np.array([0, 0, 1, 1])) == 1.0
    assert evaluate(Oracle(), x, np.array([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="4 examples but y has 3"):
        evaluate(Oracle(), x, np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_or_load("lenet5", tiny, epochs=0, model_cache_dir=tmp_path)
    with pytest.raises(KeyError, match="valid choices"):
        train_or_load("nope", tiny, epochs=1, model_cache_dir=tmp_path, verbose=False)
    with pytest.raises(TypeError, match="Dataset or Splits"):
        train_or_load("lenet5", (tiny.x_train, tiny.y_train), model_cache_dir=tmp_path)  # type: ignore[arg-type]
