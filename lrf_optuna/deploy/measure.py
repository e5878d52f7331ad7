"""Batch-1 CPU latencies of a Keras model and of a ``.tflite`` file, and a file's
predictions, as plain numbers.

* :func:`keras_latency_ms` times ``model(x, training=False)`` inside a ``tf.function``
  (traced once on a fixed ``(1, *input_shape)`` input, so no retracing and no Python
  layer overhead is timed);
* :func:`tflite_latency_ms` times LiteRT's ``invoke()``
  (:func:`lrf_optuna.deploy.runtime.latency`, which also names the runtime that ran);
* :func:`tflite_predict` runs a file on images (:func:`lrf_optuna.deploy.runtime.predict`).

Both latencies are at batch size 1, on random input, the median of ``repeats`` runs
after ``warmup`` runs, in milliseconds.

Example:
    >>> path = to_tflite(compressed, "small.tflite")  # doctest: +SKIP
    >>> np.abs(tflite_predict(path, x) - compressed.predict(x)).max() < 1e-4  # doctest: +SKIP
    True
    >>> keras_latency_ms(compressed) > tflite_latency_ms(path)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lrf_optuna.deploy.convert import model_input_shape
from lrf_optuna.deploy.runtime import latency, median_ms, predict

if TYPE_CHECKING:
    import keras

__all__ = ["keras_latency_ms", "tflite_latency_ms", "tflite_predict"]


def tflite_predict(path: str | os.PathLike[str], x: np.ndarray, *, batch_size: int = 256,
                   num_threads: int | None = None) -> np.ndarray:
    """Run a ``.tflite`` model (one input, one output) on ``x`` with LiteRT, as float32.

    A file with a dynamic batch dimension is resized to batches of ``batch_size``; a
    static batch-1 file is invoked once per image; integer inputs and outputs are
    quantized and dequantized (:func:`lrf_optuna.deploy.predict`).
    """
    return predict(path, x, batch_size=batch_size, num_threads=num_threads)


def keras_latency_ms(model: keras.Model, input_shape: Sequence[int] | None = None,
                     repeats: int = 50, warmup: int = 5) -> float:
    """Median CPU latency (ms) of one sample through ``model`` (batch size 1).

    Times ``model(x, training=False)`` in a ``tf.function`` traced once for the fixed
    input shape (the trace happens during warm-up, which is at least one call), plus
    fetching the output as NumPy.

    Args:
        model: Any Keras model with one input.
        input_shape: One sample's shape (no batch axis); default: the model's.
        repeats: Timed calls; the median is returned.
        warmup: Untimed calls first (at least 1 is made, for the trace).
    """
    import tensorflow as tf

    shape = (tuple(input_shape) if input_shape is not None
             else model_input_shape(model, hint="pass input_shape explicitly"))
    x = tf.constant(np.random.default_rng(0).standard_normal((1, *shape)).astype("float32"))
    fn = tf.function(lambda t: model(t, training=False))
    return median_ms(lambda: np.asarray(fn(x)), repeats, max(warmup, 1))


def tflite_latency_ms(path: str | os.PathLike[str], repeats: int = 50, warmup: int = 5, *,
                      num_threads: int | None = None) -> float:
    """Median CPU latency (ms) of one ``invoke()`` at batch size 1, in LiteRT (the
    fallback ``tf.lite.Interpreter`` only where ``ai_edge_litert`` cannot be imported;
    :func:`lrf_optuna.deploy.latency` also says which ran).

    ``num_threads=None`` keeps the interpreter's default (XNNPACK decides).
    """
    return latency(path, repeats, warmup, num_threads=num_threads).ms
