"""Training one compressed model: the fine-tuning recipe (cross-entropy or distillation).

With ``FinetuneConfig.distill > 0`` the original model teaches: its logits on the training
and validation images are computed once (:func:`teacher_outputs`, cached in memory and,
given a directory, on disk under a digest of the teacher's weights and of the images) and
travel with the labels through ``model.fit`` (one ``(label, logits...)`` row per image), so
shuffling keeps them aligned and no epoch runs the teacher again.

Example:
    >>> outcome = finetune_model(compressed, splits, FinetuneConfig(epochs=2))  # doctest: +SKIP
    >>> outcome.val_acc_before <= outcome.val_acc_after  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.finetune.batchnorm import batchnorm_layers, reestimate_batchnorm
from lrf_optuna.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Splits

__all__ = ["FinetuneOutcome", "TeacherOutputs", "distillation_loss", "finetune_model",
           "logits_of", "model_digest", "outputs_probabilities", "teacher_outputs"]

logger = logging.getLogger(__name__)

#: Probabilities are clipped to this before their log is taken (a float32 softmax can
#: underflow to 0; log(1e-30) = -69 stays finite).
PROB_FLOOR = 1e-30


@dataclass(frozen=True)
class FinetuneOutcome:
    """What :func:`finetune_model` did.

    ``val_acc_built`` is the model's validation accuracy as given, ``val_acc_before`` after
    the BatchNorm re-estimation (equal when there was none or it was undone:
    ``bn_reestimated`` False), ``val_acc_after`` after training.
    """

    val_acc_before: float
    val_acc_after: float
    epochs_run: int
    seconds: float
    reverted: bool
    from_logits: bool
    history: dict[str, list[float]]
    val_acc_built: float | None = None
    bn_reestimated: bool = False
    steps: int = 0


def outputs_probabilities(model: keras.Model, x: np.ndarray) -> bool:
    """Whether ``model`` ends in a softmax: its outputs on ``x[:64]`` are non-negative and
    sum to 1 per row. (The zoo models output probabilities; user models may output
    logits.)"""
    y = np.asarray(model(np.asarray(x[:64], dtype="float32"), training=False))
    y = y.reshape(len(y), -1)
    return bool(np.all(y >= -1e-6) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


# -- the teacher --------------------------------------------------------------------------------

def logits_of(model: keras.Model, x: np.ndarray, *, from_logits: bool | None = None,
              batch_size: int = 512) -> np.ndarray:
    """The logits of ``model`` on ``x`` as float32 ``(n, classes)``: its outputs when it
    outputs logits, else the log of its probabilities (the same softmax up to a constant
    per row, which no softmax sees)."""
    if from_logits is None:
        from_logits = not outputs_probabilities(model, x)
    y = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)
    y = y.reshape(len(y), -1)
    if not from_logits:
        y = np.log(np.clip(y, PROB_FLOOR, None))
    return y.astype(np.float32)


@dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's logits on the training and validation images, row-aligned with
    ``splits.x_train`` / ``splits.x_val``."""

    train: np.ndarray
    val: np.ndarray
    key: str


_MEMORY: dict[str, TeacherOutputs] = {}


def model_digest(model: keras.Model) -> str:
    """A digest of a model's architecture and weights (16 hex digits): the same for the
    model and its ``.keras`` file reloaded
    (:func:`lrf_optuna.problem.model_fingerprint`)."""
    from lrf_optuna.problem import model_fingerprint

    return model_fingerprint(model)


def teacher_outputs(teacher: keras.Model, splits: Splits, *,
                    cache_dir: str | os.PathLike[str] | None = None) -> TeacherOutputs:
    """The teacher's logits on ``splits``' training and validation images, computed once.

    Kept in memory for the process (every job of a worker reuses them) and, with
    ``cache_dir``, in ``<cache_dir>/<key>.npz`` where the key digests the teacher's
    architecture and weights and the images: a changed model or dataset never reuses
    stale logits. (On Fashion-MNIST the VGG-style teacher takes about as long as one
    tenth of a training epoch; the file is 2 MB.)
    """
    from lrf_optuna.data import fingerprint_arrays

    key = hashlib.blake2b(
        f"{model_digest(teacher)}:{fingerprint_arrays(splits.x_train, splits.x_val)}".encode(),
        digest_size=8).hexdigest()
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    out: TeacherOutputs | None = None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                out = TeacherOutputs(z["train"], z["val"], key)
            if len(out.train) != len(splits.x_train) or len(out.val) != len(splits.x_val):
                out = None
        except (OSError, ValueError, KeyError):
            logger.warning("ignoring unreadable teacher logits %s", path)
            out = None
    if out is None:
        start = time.perf_counter()
        from_logits = not outputs_probabilities(teacher, splits.x_val)
        out = TeacherOutputs(logits_of(teacher, splits.x_train, from_logits=from_logits),
                             logits_of(teacher, splits.x_val, from_logits=from_logits), key)
        logger.info("teacher logits on %d + %d images in %.1f s", len(out.train),
                    len(out.val), time.perf_counter() - start)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
            np.savez(tmp, train=out.train, val=out.val)
            os.replace(tmp, path)
    _MEMORY[key] = out
    return out


# -- the loss -----------------------------------------------------------------------------------

def distillation_loss(*, weight: float, temperature: float, from_logits: bool
                      ) -> Callable[[Any, Any], Any]:
    """The distillation loss on packed targets ``y_true = [label, teacher logits...]``.

    ``(1 - weight) * CE(label, student) + weight * T^2 * KL(softmax(t / T) ||
    softmax(s / T))`` per example, where ``s`` are the student's logits (the log of its
    outputs when ``from_logits`` is False) and ``t`` the teacher's. The ``T^2`` keeps the
    gradient scale of the KL term independent of ``T``.
    """
    import keras
    from keras import ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.reshape(y_pred, (ops.shape(y_pred)[0], -1))
        student = y_pred if from_logits else ops.log(ops.clip(y_pred, PROB_FLOOR, 1.0))
        labels = ops.cast(y_true[:, 0], "int32")
        ce = keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True)
        log_t = ops.log_softmax(y_true[:, 1:] / temperature, axis=-1)
        log_s = ops.log_softmax(student / temperature, axis=-1)
        kl = ops.sum(ops.exp(log_t) * (log_t - log_s), axis=-1)
        return (1.0 - weight) * ce + weight * temperature**2 * kl

    return loss


def _label_accuracy(y_true: Any, y_pred: Any) -> Any:
    from keras import ops

    y_pred = ops.reshape(y_pred, (ops.shape(y_pred)[0], -1))
    hit = ops.equal(ops.argmax(y_pred, axis=-1), ops.cast(y_true[:, 0], "int64"))
    return ops.cast(hit, "float32")


def _pack(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(labels, np.float32).reshape(-1, 1), logits], axis=1)


# -- training -----------------------------------------------------------------------------------

def finetune_model(model: keras.Model, splits: Splits, config: FinetuneConfig | None = None, *,
                   from_logits: bool | None = None, seed: int | None = None,
                   teacher: keras.Model | TeacherOutputs | None = None) -> FinetuneOutcome:
    """Fine-tune ``model`` in place on ``splits.x_train`` (validated on ``splits.x_val``).

    First re-estimates the BatchNorm statistics on ``config.bn_images`` training images
    (kept only when the validation accuracy does not drop). Then compiles it with
    ``config.optimizer`` on the (cosine-decayed) learning rate and sparse categorical
    cross-entropy (``from_logits`` detected with :func:`outputs_probabilities` unless
    given), or the distillation loss (:func:`distillation_loss`) when
    ``config.distill > 0``; trains ``config.epochs_for(len(splits.x_train))`` epochs and
    keeps the best one by ``config.monitor`` (EarlyStopping) or the last one
    (``config.keep_epoch``); see :class:`FinetuneConfig`.

    Args:
        model: The model to train (in place).
        splits: Training and validation data.
        config: The recipe.
        from_logits: Whether ``model`` outputs logits (detected when ``None``).
        seed: Training seed (default ``config.seed``).
        teacher: For distillation: the teacher model, or its precomputed
            :class:`TeacherOutputs` (:func:`teacher_outputs`).

    Raises:
        ValueError: no validation split, or ``config.distill > 0`` without a teacher.
    """
    import keras

    from lrf_optuna.models.training import evaluate

    config = config or FinetuneConfig()
    if len(splits.x_val) == 0:
        raise ValueError("fine-tuning needs a validation split (val_fraction > 0)")
    if config.distill > 0 and teacher is None:
        raise ValueError(f"distill={config.distill} needs a teacher (the original model or "
                         "its teacher_outputs), but got teacher=None")
    if from_logits is None:
        from_logits = not outputs_probabilities(model, splits.x_val)
    seed = config.seed if seed is None else seed
    val_built = val_before = evaluate(model, splits.x_val, splits.y_val)
    initial = model.get_weights()
    bn_done = False
    if config.bn_images > 0 and batchnorm_layers(model):
        reestimate_batchnorm(model, splits.x_train, images=config.bn_images,
                             batch_size=config.batch_size, seed=seed)
        val_before = evaluate(model, splits.x_val, splits.y_val)
        bn_done = val_before >= val_built
        if bn_done:
            initial = model.get_weights()
        else:  # the model's own statistics were better: keep them
            model.set_weights(initial)
            val_before = val_built
    epochs = config.epochs_for(len(splits.x_train))
    steps = epochs * math.ceil(len(splits.x_train) / config.batch_size)
    lr: Any = config.learning_rate
    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(steps, 1),
                                                     alpha=config.min_lr_fraction)
    optimizer = keras.optimizers.get({"class_name": config.optimizer,
                                      "config": {"learning_rate": lr}})
    y_train: np.ndarray = splits.y_train
    y_val: np.ndarray = splits.y_val
    if config.distill > 0:
        assert teacher is not None
        logits = (teacher if isinstance(teacher, TeacherOutputs)
                  else teacher_outputs(teacher, splits))
        if len(logits.train) != len(splits.x_train) or len(logits.val) != len(splits.x_val):
            raise ValueError(f"the teacher outputs cover {len(logits.train)} + "
                             f"{len(logits.val)} images, but the splits have "
                             f"{len(splits.x_train)} + {len(splits.x_val)}")
        y_train, y_val = _pack(splits.y_train, logits.train), _pack(splits.y_val, logits.val)
        model.compile(optimizer=optimizer,
                      loss=distillation_loss(weight=config.distill,
                                             temperature=config.temperature,
                                             from_logits=bool(from_logits)),
                      metrics=[keras.metrics.MeanMetricWrapper(_label_accuracy,
                                                               name="accuracy")])
    else:
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                      metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    verbose = config.verbose
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    callbacks = []
    if config.keep_epoch == "best":
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode="min" if config.monitor == "val_loss" else "max",
            patience=config.patience, restore_best_weights=config.restore_best_weights))
    start = time.perf_counter()
    hist = model.fit(splits.x_train, y_train, batch_size=config.batch_size,
                     epochs=epochs, validation_data=(splits.x_val, y_val),
                     shuffle=True, callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    val_after = evaluate(model, splits.x_val, splits.y_val)
    reverted = False
    if config.revert_if_worse and val_after < val_before:
        model.set_weights(initial)
        val_after, reverted = val_before, True
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    epochs_run = len(history.get("loss", []))
    return FinetuneOutcome(val_before, val_after, epochs_run, seconds, reverted,
                           bool(from_logits), history, val_acc_built=val_built,
                           bn_reestimated=bn_done,
                           steps=epochs_run * math.ceil(len(splits.x_train) / config.batch_size))
