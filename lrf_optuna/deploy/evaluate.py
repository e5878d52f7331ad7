"""One model, one quantize mode: the deployed file and everything measured on it.

:func:`deploy_model` is the entry point for deciding on the deployed file (a max-drop
search judging each probe by its quantized file, a results table of int8 files): it
converts the model (:func:`lrf_optuna.deploy.convert.convert`, int8 calibrated on
training images), runs the file in LiteRT on the given images (the validation split by
default; the test split only when asked) and returns a :class:`DeployedFile`: file bytes,
accuracy, the per-image correctness, the op report, the TFLite Micro check, the arena and
the batch-1 latency with the runtime that ran it.

Example:
    >>> d = deploy_model(model, splits, "int8", out_dir="files")  # doctest: +SKIP
    >>> d.file_bytes, round(d.accuracy, 4), d.latency  # doctest: +SKIP
    (91576, 0.9771, Latency(ms=0.412, runtime='litert'))
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lrf_optuna.deploy.convert import (
    DEFAULT_REPRESENTATIVE,
    check_quantize,
    is_integer,
    representative_images,
)
from lrf_optuna.deploy.files import to_tflite
from lrf_optuna.deploy.micro import Arena, arena_bytes, micro_unsupported
from lrf_optuna.deploy.runtime import Latency, latency, predict
from lrf_optuna.deploy.tflite_file import read_tflite
from lrf_optuna.errors import UserError

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Splits

__all__ = ["DeployedFile", "deploy_model", "file_accuracy"]


@dataclass(frozen=True)
class DeployedFile:
    """A converted file and what was measured on it.

    Attributes:
        path: The ``.tflite`` file (``None`` when it was written to a temporary folder
            and removed).
        quantize: Its mode (:data:`~lrf_optuna.deploy.QUANTIZE_MODES`).
        file_bytes: Its size.
        weight_bytes: Bytes of its constant tensors (weights, biases, quantization
            parameters, shape constants).
        accuracy: Top-1 accuracy of the file run in the interpreter on the images.
        correct: Per image, whether the file's top-1 class is the label.
        split: Which images: ``"val"``, ``"test"`` or ``"given"``.
        ops: Op report, builtin op name -> count.
        micro_unsupported: Ops outside the TFLite Micro set (empty: all supported).
        float_ops: Ops computing in float (empty for a full-integer file).
        arena: The tensor arena (TFLite Micro's, else planned).
        latency: Batch-1 latency and the runtime that ran it.
    """

    path: Path | None
    quantize: str
    file_bytes: int
    weight_bytes: int
    accuracy: float
    correct: np.ndarray = field(repr=False)
    split: str
    ops: dict[str, int]
    micro_unsupported: list[str]
    float_ops: list[str]
    arena: Arena
    latency: Latency

    def to_json(self) -> dict[str, object]:
        """The figures as JSON-able values (no per-image array), e.g. for user
        attributes."""
        return {"quantize": self.quantize, "file_bytes": self.file_bytes,
                "weight_bytes": self.weight_bytes, "accuracy": round(self.accuracy, 6),
                "split": self.split, "ops": dict(self.ops),
                "micro_unsupported": list(self.micro_unsupported),
                "float_ops": len(self.float_ops), "arena_bytes": self.arena.bytes,
                "activation_bytes": self.arena.activations, "arena_source": self.arena.source,
                "latency_ms": self.latency.ms, "runtime": self.latency.runtime}


def file_accuracy(path: str | os.PathLike[str] | bytes, x: np.ndarray, y: np.ndarray
                  ) -> tuple[float, np.ndarray]:
    """Top-1 accuracy of a ``.tflite`` file on ``(x, y)`` (labels as class ids or
    one-hot rows) and the per-image correctness."""
    labels = np.asarray(y)
    if labels.ndim > 1:
        labels = labels.argmax(axis=-1)
    correct = predict(path, x).argmax(axis=-1) == labels
    return float(correct.mean()), correct


def deploy_model(model: keras.Model, splits: Splits, quantize: str = "int8", *,
                 split: Literal["val", "test"] = "val",
                 images: tuple[np.ndarray, np.ndarray] | None = None,
                 out_dir: str | os.PathLike[str] | None = None, stem: str = "model",
                 int8_io: bool = False, representative: int = DEFAULT_REPRESENTATIVE,
                 latency_repeats: int = 50, latency_warmup: int = 5,
                 use_tflm: bool = True) -> DeployedFile:
    """Convert ``model`` at ``quantize``, run the file and measure it.

    Args:
        model: The Keras model (compressed or not).
        splits: Its splits: ``"int8"`` calibrates on ``representative`` images of
            ``splits.x_train``; accuracy is measured on ``split``.
        quantize: ``"none"`` (float32), ``"dynamic"``, ``"float16"`` or ``"int8"``.
        split: ``"val"`` (default: what decisions use) or ``"test"``.
        images: ``(x, y)`` to measure on instead of a split.
        out_dir: Keep the file as ``<out_dir>/<stem>_<quantize>.tflite`` (default: a
            temporary file, removed; ``path`` is then ``None``).
        stem: File name stem.
        int8_io: With ``"int8"``: int8 input and output tensors.
        representative: Calibration images for ``"int8"``.
        latency_repeats: Timed ``invoke()`` calls (median).
        latency_warmup: Untimed calls first.
        use_tflm: Measure the arena with the ``tflite-micro`` interpreter when it is
            installed (else it is planned from the file).

    Raises:
        UserError: bad arguments; :class:`~lrf_optuna.deploy.files.ExportError`: the model
            does not convert.

    Example:
        >>> d = deploy_model(model, splits, "int8")  # doctest: +SKIP
        >>> d.correct.shape == splits.y_val.shape  # doctest: +SKIP
        True
    """
    mode = check_quantize(quantize)
    if images is not None:
        x, y, which = images[0], images[1], "given"
    elif split in ("val", "test"):
        x, y = (splits.x_val, splits.y_val) if split == "val" else (splits.x_test,
                                                                    splits.y_test)
        which = split
    else:
        raise UserError(f"split must be 'val' or 'test', but got {split!r}")
    rep = representative_images(splits, representative) if is_integer(mode) else None
    with tempfile.TemporaryDirectory(prefix="lrf_deploy_") as tmp:
        directory = Path(out_dir) if out_dir is not None else Path(tmp)
        path = to_tflite(model, directory / f"{stem}_{mode}.tflite", quantize=mode,
                         representative=rep, int8_io=int8_io)
        f = read_tflite(path)
        accuracy, correct = file_accuracy(path, x, y)
        return DeployedFile(
            path=path if out_dir is not None else None, quantize=mode, file_bytes=f.size,
            weight_bytes=f.weight_bytes(), accuracy=accuracy, correct=correct, split=which,
            ops=f.op_report(), micro_unsupported=micro_unsupported(f),
            float_ops=f.float_ops(), arena=arena_bytes(path, use_tflm=use_tflm),
            latency=latency(path, latency_repeats, latency_warmup))
