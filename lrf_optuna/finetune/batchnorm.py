"""BatchNorm re-estimation: moving statistics recomputed for a changed network.

A factorized or pruned layer computes a slightly different function, so the BatchNorm
layers after it normalize its outputs with the original's statistics: channels whose energy
the truncation removed come out too small and shifted, and the error compounds layer by
layer. Recomputing the moving mean and variance of every BatchNorm layer on training images
-- forward passes in training mode, no weight changed -- corrects that before any training
(on a depthwise-separable net, a 59 % parameter cut went from 48 % to 90 % validation
accuracy this way; ``benchmarks/RESULTS.md``, "BatchNorm re-estimation").

:func:`reestimate_batchnorm` replaces each moving statistic by the average of the batch
statistics over the images (a cumulative average: the momentum of batch ``k`` is
``k / (k + 1)``), with dropout switched off and frozen BatchNorm layers updated too, and
restores every layer setting afterwards. :func:`train_mode_accuracy` is the accuracy with
batch statistics, which tells stale moving statistics from an unconverged model.

Example:
    >>> update = reestimate_batchnorm(model, splits.x_train, images=2048)  # doctest: +SKIP
    >>> update.layers, update.images  # doctest: +SKIP
    (12, 2048)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

__all__ = ["BatchNormUpdate", "batchnorm_layers", "reestimate_batchnorm", "train_mode_accuracy"]


@dataclass(frozen=True)
class BatchNormUpdate:
    """What :func:`reestimate_batchnorm` did: BatchNorm layers updated, images and
    batches used, seconds."""

    layers: int
    images: int
    batches: int
    seconds: float


def batchnorm_layers(model: keras.Model) -> list[Any]:
    """Every BatchNormalization layer of ``model``, nested models included, in order."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _dropout_layers(model: keras.Model) -> list[Any]:
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if hasattr(layer, "rate") and "dropout" in type(layer).__name__.lower()]


def _images(x: np.ndarray, images: int | None, seed: int) -> np.ndarray:
    if images is None or images >= len(x):
        return np.asarray(x, dtype="float32")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=images, replace=False))
    return np.asarray(x[idx], dtype="float32")


@contextlib.contextmanager
def _batch_statistics(model: keras.Model, *, keep_statistics: bool) -> Iterator[list[Any]]:
    """Within: dropout off and every BatchNorm layer trainable (so a training-mode call
    uses, and updates, batch statistics); yields the BatchNorm layers. Afterwards momentum,
    ``trainable`` and dropout rates are restored, and with ``keep_statistics`` the moving
    statistics as well."""
    layers = batchnorm_layers(model)
    dropouts = _dropout_layers(model)
    saved = [(layer, layer.momentum, layer.trainable,
              (layer.moving_mean.numpy(), layer.moving_variance.numpy())
              if keep_statistics else None) for layer in layers]
    rates = [(layer, layer.rate) for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for layer in layers:
            layer.trainable = True
        yield layers
    finally:
        for layer, momentum, trainable, stats in saved:
            layer.momentum, layer.trainable = momentum, trainable
            if stats is not None:
                layer.moving_mean.assign(stats[0])
                layer.moving_variance.assign(stats[1])
        for layer, rate in rates:
            layer.rate = rate


def reestimate_batchnorm(model: keras.Model, x: np.ndarray, *, images: int | None = 2048,
                         batch_size: int = 128, seed: int = 0) -> BatchNormUpdate:
    """Recompute the moving mean and variance of every BatchNorm layer of ``model`` on
    ``x`` (in place; no other weight changes).

    Each statistic becomes the mean of its batch statistics over the images, batch by
    batch in training mode (as ``torch.optim.swa_utils.update_bn`` does), so the result
    does not depend on the layers' momentum. Dropout layers are switched off and frozen
    BatchNorm layers (``trainable=False``, which Keras runs in inference mode) are updated
    as well; momentum, rates and ``trainable`` are restored afterwards. A model without
    BatchNorm is left alone.

    Args:
        model: The model to update.
        x: Training images (never validation or test images).
        images: Use this many images, drawn without replacement (``None``: all of ``x``).
        batch_size: Images per forward pass (the batch statistics' sample size).
        seed: Seed of the draw.

    Returns:
        A :class:`BatchNormUpdate`.

    Raises:
        ValueError: ``x`` is empty or ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not batchnorm_layers(model):
        return BatchNormUpdate(0, 0, 0, 0.0)
    if len(x) == 0:
        raise ValueError("BatchNorm re-estimation needs training images, but x is empty")
    start = time.perf_counter()
    data = _images(x, images, seed)
    batches = 0
    with _batch_statistics(model, keep_statistics=False) as layers:
        for batches, begin in enumerate(range(0, len(data), batch_size), start=1):
            for layer in layers:
                layer.momentum = (batches - 1) / batches
            model(data[begin:begin + batch_size], training=True)
    return BatchNormUpdate(len(layers), len(data), batches, time.perf_counter() - start)


def train_mode_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, *,
                        batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` with BatchNorm using each batch's own statistics
    (dropout off; the moving statistics are left as they were).

    Far above the inference-mode accuracy, it says the moving statistics are stale (the
    weights are fine); close to it, they are not the problem.
    """
    y = np.asarray(y).reshape(-1)
    hits = 0
    with _batch_statistics(model, keep_statistics=True):
        for begin in range(0, len(x), batch_size):
            out = np.asarray(model(np.asarray(x[begin:begin + batch_size], "float32"),
                                   training=True))
            hits += int(np.sum(out.reshape(len(out), -1).argmax(axis=1)
                               == y[begin:begin + batch_size]))
    return hits / max(len(y), 1)
