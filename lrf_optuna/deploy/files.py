"""A model's deployable files: ``.keras`` without optimizer state, a checked ``.tflite``
(float32 or quantized).

* :func:`save_keras` writes a ``.keras`` file **without optimizer state** (a compiled,
  fine-tuned model would otherwise carry Adam's two moment tensors per weight, tripling the
  file): the size it leaves is the size of the deployable model. :func:`load_model` loads
  it (it registers lrf_optuna's layers first: plain ``keras.saving.load_model`` fails on
  them unless ``lrf_optuna.decompose`` was imported, which registers
  :class:`~lrf_optuna.decompose.FactorizedLayer`).
* :func:`to_tflite` converts a frozen batch-1 concrete function
  (:func:`lrf_optuna.deploy.convert.convert`): a static graph, builtin ops only, float32 by
  default (no optimization flags: the factors stay as they are, so TFLite computes exactly
  the factorized graph, a ``FactorizedLayer`` becoming a chain of CONV_2D /
  DEPTHWISE_CONV_2D / FULLY_CONNECTED + RESHAPE / TRANSPOSE ops), or quantized
  (``quantize="dynamic"``, ``"float16"``, ``"int8"``), and checks the file it wrote. A
  float32 model that does not convert that way falls back to
  ``TFLiteConverter.from_keras_model`` and a SavedModel round trip (dynamic batch size).
  (Converting a concrete function *with its model* through the converter's default
  SavedModel lowering keeps resource variables the file never initialises: that produced
  the NaN outputs older versions saw; the freezing path has no such problem.) No route
  gives a working file: :class:`ExportError`.
* :func:`quantized_file` writes a quantized file, calibrated on training images.

Example:
    >>> path = to_tflite(compressed, "small.tflite")  # doctest: +SKIP
    >>> load_model(save_keras(compressed, "small.keras")).count_params()  # doctest: +SKIP
    48210
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lrf_optuna.deploy.convert import (
    DEFAULT_REPRESENTATIVE,
    check_quantize,
    convert,
    is_integer,
    model_input_shape,
    quiet_converter,
    representative_images,
)
from lrf_optuna.deploy.runtime import predict
from lrf_optuna.deploy.tflite_file import read_tflite
from lrf_optuna.errors import UserError

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Splits

__all__ = ["TFLITE_CHECK_RTOL", "ExportError", "load_model", "quantized_file", "save_keras",
           "to_tflite"]

logger = logging.getLogger(__name__)

#: Outputs of the converted model may differ from Keras by at most this, relative to the
#: largest output magnitude, on the random check batch of :func:`to_tflite`.
TFLITE_CHECK_RTOL = 1e-3


class ExportError(RuntimeError):
    """A model cannot be converted to a working TFLite model."""


def save_keras(model: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` as a ``.keras`` file without optimizer state; returns the path.

    A compiled model is rebuilt first from its config (same architecture and weights, not
    compiled: ``keras.models.clone_model`` would re-compile it and Keras would save the
    optimizer variables again), so the file holds only what inference needs.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a Keras model file must end in .keras, but got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    target = model
    if getattr(model, "optimizer", None) is not None:
        target = type(model).from_config(model.get_config())
        target.set_weights(model.get_weights())
    target.save(path)
    return path


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a ``.keras`` file written by lrf_optuna (compressed or not).

    Registers lrf_optuna's Keras layers (``import lrf_optuna.decompose``) first: without
    that, Keras fails on a factorized model with a generic "could not locate class" error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    import keras

    import lrf_optuna.decompose  # noqa: F401  (registers FactorizedLayer and its parts)

    if not Path(path).exists():
        raise FileNotFoundError(f"no model file at {path}")
    return keras.saving.load_model(path)


def _input_shape(model: keras.Model) -> tuple[int, ...]:
    return model_input_shape(model, hint="pass input_shape explicitly")


def _check_conversion(model: keras.Model, path: Path) -> float:
    """Largest |TFLite - Keras| on a random batch of 2, relative to max |Keras|."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *_input_shape(model))).astype("float32")
    want = np.asarray(model(x, training=False))
    got = predict(path, x)
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1.0))


def _convert_dynamic(model: keras.Model, errors: list[str]) -> bytes | None:
    """The float32 routes of older lrf_optuna (dynamic batch size): ``from_keras_model``,
    then a SavedModel round trip; ``None`` when both fail (reasons in ``errors``)."""
    import tensorflow as tf

    def from_keras() -> bytes:
        return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    def from_saved_model() -> bytes:
        with tempfile.TemporaryDirectory(prefix="lrf_tflite_") as tmp:
            model.export(os.path.join(tmp, "saved_model"), format="tf_saved_model",
                         verbose=False)
            conv = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "saved_model"))
            return bytes(conv.convert())

    for name, route in (("from_keras_model", from_keras), ("saved_model", from_saved_model)):
        try:
            with quiet_converter():
                return route()
        except Exception as err:  # converter errors come in many types
            errors.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
            logger.debug("TFLite conversion via %s failed", name, exc_info=True)
    return None


def to_tflite(model: keras.Model, path: str | os.PathLike[str], *, check: bool = True,
              quantize: str = "none", representative: np.ndarray | None = None,
              int8_io: bool = False) -> Path:
    """Convert a Keras model (with or without FactorizedLayers) to a static batch-1
    ``.tflite`` file, float32 or quantized.

    The file comes from a frozen batch-1 concrete function
    (:func:`lrf_optuna.deploy.convert.convert`): no shape-handling ops, builtin ops
    only. With ``quantize="none"`` and ``check`` (default), it must reproduce Keras'
    outputs on a random batch (relative error <= :data:`TFLITE_CHECK_RTOL`); when that
    route fails, the older dynamic-batch routes (``from_keras_model``, then a
    SavedModel round trip) are tried, with a warning. A quantized file is checked to
    run and give finite outputs of the right shape (its accuracy is the caller's to
    judge on real data), and an ``int8`` file to compute in integers only
    (:meth:`lrf_optuna.deploy.TFLiteFile.float_ops`).

    Args:
        model: The model.
        path: Where the file goes (parent directories are created).
        check: Check the file as described.
        quantize: ``"none"``, ``"dynamic"``, ``"float16"`` or ``"int8"``
            (:data:`lrf_optuna.deploy.QUANTIZE_MODES`).
        representative: Training images for ``"int8"``
            (:func:`lrf_optuna.deploy.representative_images`).
        int8_io: With ``"int8"``, int8 input and output tensors.

    Returns:
        ``path``.

    Raises:
        ExportError: no route gives a working file.
        UserError: bad ``quantize`` / ``representative`` / ``int8_io``.
    """
    mode = check_quantize(quantize)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    try:
        with quiet_converter():
            data: bytes | None = convert(model, quantize=mode, representative=representative,
                                         int8_io=int8_io)
    except UserError:
        raise
    except Exception as err:  # converter errors come in many types
        errors.append(f"batch-1 concrete function: {type(err).__name__}: {str(err)[:300]}")
        logger.debug("batch-1 TFLite conversion failed", exc_info=True)
        data = None
    if data is not None:
        path.write_bytes(data)
        problem = _check_file(model, path, mode) if check else None
        if problem is None:
            return path
        errors.append(f"batch-1 concrete function: {problem}")
    if mode == "none":
        data = _convert_dynamic(model, errors)
        if data is not None:
            path.write_bytes(data)
            problem = _check_file(model, path, mode) if check else None
            if problem is None:
                warnings.warn(f"model {model.name!r}: the static batch-1 conversion failed "
                              f"({errors[0]}); wrote a dynamic-batch file instead",
                              stacklevel=2)
                return path
            errors.append(f"dynamic batch: {problem}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    raise ExportError(f"cannot convert model {model.name!r} to TFLite ({mode}): "
                      + "; ".join(errors))


def _check_file(model: keras.Model, path: Path, mode: str) -> str | None:
    """What is wrong with a converted file, or None."""
    if mode == "none":
        err_rel = _check_conversion(model, path)
        return (None if err_rel <= TFLITE_CHECK_RTOL
                else f"outputs differ from Keras (relative error {err_rel:.3g})")
    if is_integer(mode):
        floats = read_tflite(path).float_ops()
        if floats:
            return f"ops computing in float in an {mode} file: {', '.join(floats[:10])}"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *_input_shape(model))).astype("float32")
    got = predict(path, x)
    want_shape = tuple(np.asarray(model(x[:1], training=False)).shape[1:])
    if got.shape[1:] != want_shape or not np.all(np.isfinite(got)):
        return f"outputs of shape {got.shape[1:]} (want {want_shape}) or not finite"
    return None


def quantized_file(model: keras.Model, path: str | os.PathLike[str], quantize: str,
                   splits: Splits, *, int8_io: bool = False,
                   representative: int | None = None) -> Path:
    """Write ``model`` quantized as ``quantize`` to ``path``; a full-integer mode
    (``"int8"``, ``"int8_fc_per_tensor"``) calibrates on
    ``representative`` training images of ``splits`` (default
    :data:`lrf_optuna.deploy.DEFAULT_REPRESENTATIVE`)."""
    images = (representative_images(splits, representative or DEFAULT_REPRESENTATIVE)
              if is_integer(quantize) else None)
    return to_tflite(model, path, quantize=quantize, representative=images, int8_io=int8_io)
