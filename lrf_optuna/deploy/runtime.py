"""Running and timing ``.tflite`` files with LiteRT.

The interpreter is LiteRT's (``ai_edge_litert.interpreter.Interpreter``, the maintained
successor of ``tf.lite.Interpreter``); only where ``ai_edge_litert`` cannot be imported
(a platform without its wheel) does :func:`open_interpreter` fall back to TensorFlow's
deprecated ``tf.lite.Interpreter``, whose deprecation warning is then left alone. Every
function that measures says which one ran (:data:`LITERT` or :data:`TF_LITE`), and the
latency figures carry that name (:class:`Latency`).

* :func:`predict` runs a file on an array of images: a file with a dynamic batch
  dimension is resized to batches of ``batch_size``; a static batch-1 file (what
  :mod:`lrf_optuna.deploy.convert` writes) is invoked once per image. Integer inputs
  are quantized with the file's scale and zero point and integer outputs dequantized,
  so callers always pass and get float32.
* :func:`latency` times ``invoke()`` at batch size 1 (median of ``repeats`` runs after
  ``warmup`` runs, milliseconds).

Example:
    >>> y = predict("model_int8.tflite", x_test)  # doctest: +SKIP
    >>> latency("model_int8.tflite").runtime  # doctest: +SKIP
    'litert'
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

__all__ = ["LITERT", "TF_LITE", "Latency", "latency", "median_ms", "open_interpreter", "predict",
           "runtime_name"]

#: Name of LiteRT's interpreter (``ai_edge_litert``) in measurements.
LITERT = "litert"
#: Name of TensorFlow's deprecated ``tf.lite.Interpreter`` (the fallback).
TF_LITE = "tf.lite"


@cache
def _interpreter_class() -> tuple[type, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
        import tensorflow as tf

        return tf.lite.Interpreter, TF_LITE
    return Interpreter, LITERT


def runtime_name() -> str:
    """Which interpreter :func:`open_interpreter` uses here (:data:`LITERT` or
    :data:`TF_LITE`).

    Example:
        >>> runtime_name() in (LITERT, TF_LITE)
        True
    """
    return _interpreter_class()[1]


def open_interpreter(source: str | os.PathLike[str] | bytes, *,
                     num_threads: int | None = None) -> tuple[Any, str]:
    """An allocated interpreter of a ``.tflite`` file (path or bytes), and the name of
    the runtime (:data:`LITERT`, else :data:`TF_LITE`).

    ``num_threads=None`` keeps the interpreter's default (XNNPACK decides).
    """
    cls, name = _interpreter_class()
    if isinstance(source, bytes):
        interp = cls(model_content=source, num_threads=num_threads)
    else:
        interp = cls(model_path=str(source), num_threads=num_threads)
    interp.allocate_tensors()
    return interp, name


def _quantizer(detail: dict[str, Any]) -> tuple[float, int]:
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def _to_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu":
        scale, zero = _quantizer(detail)
        if scale == 0:
            raise ValueError("the file's integer input has no quantization scale")
        info = np.iinfo(dtype)
        q = np.round(np.asarray(x, np.float32) / scale) + zero
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(x, dtype=dtype)


def _from_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind in "iu":
        scale, zero = _quantizer(detail)
        if scale:
            return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return np.asarray(y, np.float32)


def predict(source: str | os.PathLike[str] | bytes, x: np.ndarray, *,
            batch_size: int = 256, num_threads: int | None = None) -> np.ndarray:
    """Outputs of a ``.tflite`` file (one input, one output) on images ``x``, as float32.

    Raises:
        ValueError: ``x`` is empty, or an integer input has no quantization scale.
    """
    interp, _ = open_interpreter(source, num_threads=num_threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("cannot predict on an empty batch")
    signature = tuple(int(d) for d in inp.get("shape_signature", inp["shape"]))
    step = 1 if signature and signature[0] == 1 else max(int(batch_size), 1)
    outs = []
    current: tuple[int, ...] = tuple(int(d) for d in inp["shape"])
    for start in range(0, len(x), step):
        chunk = _to_input(x[start:start + step], inp)
        if current != chunk.shape:
            interp.resize_tensor_input(inp["index"], chunk.shape, strict=False)
            interp.allocate_tensors()
            current = chunk.shape
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        outs.append(_from_output(np.array(interp.get_tensor(out["index"])), out))
    return np.concatenate(outs)


@dataclass(frozen=True)
class Latency:
    """A batch-1 latency and the runtime that ran it."""

    ms: float
    runtime: str

    def __str__(self) -> str:
        return f"{self.ms:.3f} ms ({self.runtime})"


def median_ms(run: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of ``run()`` in ms over ``repeats`` calls after ``warmup``."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def latency(source: str | os.PathLike[str] | bytes, repeats: int = 50, warmup: int = 5, *,
            num_threads: int | None = None) -> Latency:
    """Median latency of one ``invoke()`` at batch size 1, with the runtime's name.

    Raises:
        ValueError: ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    interp, name = open_interpreter(source, num_threads=num_threads)
    inp = interp.get_input_details()[0]
    shape = (1, *(int(d) for d in inp["shape"][1:]))
    if tuple(int(d) for d in inp["shape"]) != shape:
        interp.resize_tensor_input(inp["index"], shape, strict=False)
        interp.allocate_tensors()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    interp.set_tensor(inp["index"], _to_input(x, inp))
    return Latency(round(median_ms(interp.invoke, repeats, warmup), 4), name)
