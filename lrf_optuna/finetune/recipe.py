"""Training one compressed model: the fine-tuning recipe.

Example:
    >>> outcome = finetune_model(compressed, splits, FinetuneConfig(epochs=2))  # doctest: +SKIP
    >>> outcome.val_acc_before <= outcome.val_acc_after  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Splits

__all__ = ["FinetuneOutcome", "finetune_model", "outputs_probabilities"]


@dataclass(frozen=True)
class FinetuneOutcome:
    """What :func:`finetune_model` did."""

    val_acc_before: float
    val_acc_after: float
    epochs_run: int
    seconds: float
    reverted: bool
    from_logits: bool
    history: dict[str, list[float]]


def outputs_probabilities(model: keras.Model, x: np.ndarray) -> bool:
    """Whether ``model`` ends in a softmax: its outputs on ``x[:64]`` are non-negative and
    sum to 1 per row. (The zoo models output probabilities; user models may output
    logits.)"""
    y = np.asarray(model(np.asarray(x[:64], dtype="float32"), training=False))
    y = y.reshape(len(y), -1)
    return bool(np.all(y >= -1e-6) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def finetune_model(model: keras.Model, splits: Splits, config: FinetuneConfig | None = None, *,
                   from_logits: bool | None = None, seed: int | None = None
                   ) -> FinetuneOutcome:
    """Fine-tune ``model`` in place on ``splits.x_train`` (validated on ``splits.x_val``).

    Compiles it with ``config.optimizer`` on the (cosine-decayed) learning rate, sparse
    categorical cross-entropy (``from_logits`` detected with
    :func:`outputs_probabilities` unless given) and accuracy; EarlyStopping on
    ``val_accuracy``; see :class:`FinetuneConfig`.
    """
    import keras

    from lrf_optuna.models.training import evaluate

    config = config or FinetuneConfig()
    if len(splits.x_val) == 0:
        raise ValueError("fine-tuning needs a validation split (val_fraction > 0)")
    if from_logits is None:
        from_logits = not outputs_probabilities(model, splits.x_val)
    val_before = evaluate(model, splits.x_val, splits.y_val)
    initial = model.get_weights()
    steps = config.epochs * math.ceil(len(splits.x_train) / config.batch_size)
    lr: Any = config.learning_rate
    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(steps, 1),
                                                     alpha=config.min_lr_fraction)
    optimizer = keras.optimizers.get({"class_name": config.optimizer,
                                      "config": {"learning_rate": lr}})
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"])
    keras.utils.set_random_seed(config.seed if seed is None else seed)
    verbose = config.verbose
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                         patience=config.patience,
                                         restore_best_weights=config.restore_best_weights)
    start = time.perf_counter()
    hist = model.fit(splits.x_train, splits.y_train, batch_size=config.batch_size,
                     epochs=config.epochs, validation_data=(splits.x_val, splits.y_val),
                     shuffle=True, callbacks=[stop], verbose=verbose)
    seconds = time.perf_counter() - start
    val_after = evaluate(model, splits.x_val, splits.y_val)
    reverted = False
    if config.revert_if_worse and val_after < val_before:
        model.set_weights(initial)
        val_after, reverted = val_before, True
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    return FinetuneOutcome(val_before, val_after, len(history.get("loss", [])), seconds,
                           reverted, bool(from_logits), history)
