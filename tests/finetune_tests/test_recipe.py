"""The fine-tuning recipe: distillation loss, teacher logits, which epoch is kept."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from conftest import quadrant_images

from lrf_optuna.data import from_arrays, prepare_splits
from lrf_optuna.finetune import FinetuneConfig
from lrf_optuna.finetune import recipe as R


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _brute_force_kd(labels, teacher, student_logits, weight, T) -> np.ndarray:
    """Per-example KD loss written out term by term (float64)."""
    out = []
    for y, t, s in zip(labels, teacher, student_logits):
        p = _softmax(np.asarray(s, np.float64))
        ce = -math.log(p[int(y)])
        pt, ps = _softmax(np.asarray(t, np.float64) / T), _softmax(np.asarray(s, np.float64) / T)
        kl = sum(pt[i] * (math.log(pt[i]) - math.log(ps[i])) for i in range(len(pt)))
        out.append((1 - weight) * ce + weight * T * T * kl)
    return np.array(out)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize(("weight", "T"), [(0.9, 4.0), (0.5, 1.0), (0.0, 2.0), (1.0, 3.0)])
def test_kd_loss_equals_brute_force(rng, from_logits, weight, T) -> None:
    labels = np.array([0, 2, 1, 2, 0], np.float32)
    teacher = rng.normal(0, 3, (5, 3)).astype(np.float32)
    student = rng.normal(0, 2, (5, 3)).astype(np.float32)
    y_pred = student if from_logits else np.exp(student) / np.exp(student).sum(1, keepdims=True)
    loss = R.distillation_loss(weight=weight, temperature=T, from_logits=from_logits)
    got = np.asarray(loss(np.concatenate([labels[:, None], teacher], 1), y_pred.astype("float32")))
    np.testing.assert_allclose(got, _brute_force_kd(labels, teacher, student, weight, T),
                               rtol=2e-5, atol=2e-6)


def test_logits_of_probability_and_logit_models(rng) -> None:
    x = rng.random((7, 4)).astype("float32")
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    probs = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.Softmax()])
    probs.layers[0].set_weights(dense.layers[0].get_weights())
    z = np.asarray(dense(x))
    from_probs = R.logits_of(probs, x)
    np.testing.assert_allclose(R.logits_of(dense, x), z, rtol=1e-6)
    # the log-probabilities differ from the logits by a constant per row: same softmax
    shift = from_probs - z
    np.testing.assert_allclose(shift, shift[:, :1].repeat(3, 1), atol=1e-5)


def _splits():
    x, y = quadrant_images(240, 12)
    return prepare_splits(from_arrays(x[:200], y[:200], x[200:], y[200:], name="q"),
                          val_fraction=0.2, calibration_size=16, seed=0)


def _net(out_softmax: bool = False) -> keras.Model:
    keras.utils.set_random_seed(1)
    layers = [keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
              keras.layers.Flatten(), keras.layers.Dense(4)]
    if out_softmax:
        layers.append(keras.layers.Softmax())
    return keras.Sequential(layers)


def _copy(model: keras.Model) -> keras.Model:
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


QUICK = FinetuneConfig(epochs=2, batch_size=16, verbose=0, revert_if_worse=False,
                       distill=0.0)


def test_distill_zero_is_plain_cross_entropy() -> None:
    """``distill=0`` trains exactly like a hand-written Keras fit with cross-entropy."""
    splits = _splits()
    model = _net()
    twin = _copy(model)
    config = FinetuneConfig(epochs=2, batch_size=16, verbose=0, revert_if_worse=False,
                            keep_epoch="last", distill=0.0)
    R.finetune_model(model, splits, config, seed=7)
    steps = 2 * math.ceil(len(splits.x_train) / 16)
    twin.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                     1e-3, steps, alpha=0.01)),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    keras.utils.set_random_seed(7)
    twin.fit(splits.x_train, splits.y_train, batch_size=16, epochs=2,
             validation_data=(splits.x_val, splits.y_val), shuffle=True, verbose=0)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_kd_weight_zero_path_trains_like_cross_entropy() -> None:
    """The packed-target distillation path with weight 0 follows the CE path."""
    splits = _splits()
    model = _net()
    twin = _copy(model)
    R.finetune_model(model, splits, QUICK, seed=3)
    steps = QUICK.epochs * math.ceil(len(splits.x_train) / 16)
    twin.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                     1e-3, steps, alpha=0.01)),
                 loss=R.distillation_loss(weight=0.0, temperature=4.0, from_logits=True),
                 metrics=[keras.metrics.MeanMetricWrapper(R._label_accuracy,
                                                          name="accuracy")])
    teacher = np.zeros((len(splits.x_train), 4), np.float32)
    keras.utils.set_random_seed(3)
    twin.fit(splits.x_train, R._pack(splits.y_train, teacher), batch_size=16,
             epochs=QUICK.epochs, shuffle=True, verbose=0)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("out_softmax", [False, True])
def test_distillation_trains_with_logit_or_probability_models(out_softmax) -> None:
    splits = _splits()
    teacher = _net(out_softmax)
    R.finetune_model(teacher, splits, FinetuneConfig(epochs=3, batch_size=16, verbose=0,
                                                     distill=0.0))
    student = _copy(teacher)
    student.layers[-2 if out_softmax else -1].set_weights(
        [w * 0.5 for w in student.layers[-2 if out_softmax else -1].get_weights()])
    outcome = R.finetune_model(student, splits,
                               FinetuneConfig(epochs=2, batch_size=16, verbose=0, distill=0.9),
                               teacher=teacher)
    assert outcome.from_logits is (not out_softmax)
    assert all(math.isfinite(v) for v in outcome.history["loss"])
    assert "val_accuracy" in outcome.history and 0 <= outcome.val_acc_after <= 1
    with pytest.raises(ValueError, match="needs a teacher"):
        R.finetune_model(student, splits, FinetuneConfig(distill=0.5, verbose=0))


def test_teacher_logits_are_computed_once_and_cached_on_disk(tmp_path, monkeypatch) -> None:
    splits = _splits()
    teacher = _net()
    R._MEMORY.clear()
    first = R.teacher_outputs(teacher, splits, cache_dir=tmp_path)
    assert first.train.shape == (len(splits.x_train), 4)
    np.testing.assert_allclose(first.val, np.asarray(teacher(splits.x_val)), rtol=1e-5,
                               atol=1e-6)
    assert (tmp_path / f"{first.key}.npz").exists()
    calls = []
    monkeypatch.setattr(R, "logits_of", lambda *a, **k: calls.append(1))
    assert R.teacher_outputs(teacher, splits, cache_dir=tmp_path) is first  # memory
    R._MEMORY.clear()
    again = R.teacher_outputs(teacher, splits, cache_dir=tmp_path)  # disk
    assert calls == [] and again.key == first.key
    np.testing.assert_array_equal(again.train, first.train)
    other = _copy(teacher)
    other.layers[-1].set_weights([w + 1 for w in other.layers[-1].get_weights()])
    monkeypatch.undo()
    assert R.teacher_outputs(other, splits, cache_dir=tmp_path).key != first.key


def test_keep_last_epoch_runs_every_epoch_and_keeps_it() -> None:
    splits = _splits()
    model = _net()
    outcome = R.finetune_model(model, splits, FinetuneConfig(
        epochs=3, batch_size=16, verbose=0, keep_epoch="last", patience=0,
        revert_if_worse=False, distill=0.0))
    assert outcome.epochs_run == 3
    assert outcome.val_acc_after == pytest.approx(outcome.history["val_accuracy"][-1],
                                                  abs=1e-6)


def test_recipe_key_and_validation() -> None:
    base = FinetuneConfig()
    assert base.recipe_key() == FinetuneConfig(latency_repeats=2, verbose=0).recipe_key()
    assert base.recipe_key() != FinetuneConfig(distill=0.5).recipe_key()
    assert base.recipe_key() != FinetuneConfig(keep_epoch="last").recipe_key()
    assert base.with_recipe(FinetuneConfig(epochs=9).recipe()).epochs == 9
    for bad in ({"distill": 1.5}, {"temperature": 0}, {"keep_epoch": "first"},
                {"patience": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FinetuneConfig(**bad)  # type: ignore[arg-type]
