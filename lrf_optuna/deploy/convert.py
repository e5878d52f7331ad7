"""Converting a Keras model to a static batch-1 ``.tflite`` file, quantized or not.

:func:`convert` traces ``model(x, training=False)`` as a ``tf.function`` on a fixed
``(1, *input_shape)`` float32 input, freezes its variables into constants and converts
that concrete function with ``tf.lite.TFLiteConverter.from_concrete_functions``. The
graph is then static: no SHAPE / STRIDED_SLICE / PACK / GATHER / REDUCE_PROD /
CONCATENATION ops handle a dynamic batch size (a factorized layer becomes a chain of
CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED + RESHAPE / TRANSPOSE ops), which is what a
microcontroller build wants. (The converter's default for a concrete function given with
its model is to go through a SavedModel, which keeps the weights as resource variables
(VAR_HANDLE / READ_VARIABLE) that a file does not initialise: its outputs are NaN.
``experimental_lower_to_saved_model = False`` takes the converter's freezing path
instead, where the variables become constants.)

Quantization modes (:data:`QUANTIZE_MODES`, the converter's post-training options):

============ ========================================================================
``none``     float32, no optimization flag: the factors are stored as they are
``dynamic``  dynamic-range: weight tensors of at least 1,024 values int8 (per output
             channel), activations float; no calibration data
``float16``  weights float16 (DEQUANTIZE to float32 at run time), activations float32
``int8``     full integer: int8 weights (per output channel), int8 activations, int32
             biases, builtin int8 kernels only (``TFLITE_BUILTINS_INT8``: an op
             without one is a conversion error, never a float fallback); the activation
             ranges come from a representative dataset of training images
             (:func:`representative_images`, :data:`DEFAULT_REPRESENTATIVE` of them);
             float32 input and output (QUANTIZE / DEQUANTIZE at the ends) unless
             ``int8_io``, then int8 input and output
``int8_fc_per_tensor``
             ``int8`` with the FULLY_CONNECTED weights (a factor of an SVD / QR /
             Tensor-Train layer, the 1x1 factors the converter writes as
             FULLY_CONNECTED, the classifier) quantized per tensor: one scale and
             zero point per weight and bias tensor instead of one per output
             channel. A scale and a zero point take 12 bytes, so a rank-12 factor
             with 512 outputs carries as many bytes of scales as of weights: on a
             97 %-factorized VGG-style net the file is 28 % smaller
             (benchmarks/RESULTS.md, "Deployed files"). Convolutions stay per
             channel (depthwise ones lose accuracy per tensor). Per-tensor
             FULLY_CONNECTED is also what older TFLite Micro and CMSIS-NN kernels
             expect. Decide on its accuracy: the max-drop search does
             (``compress(quantize=...)``).
============ ========================================================================

Example:
    >>> data = convert(model, quantize="int8", representative=splits.x_train[:300])
    ...  # doctest: +SKIP
    >>> read_tflite(data).float_ops()  # doctest: +SKIP
    []
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from lrf_optuna.errors import UserError

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Splits

__all__ = ["DEFAULT_REPRESENTATIVE", "INTEGER_MODES", "QUANTIZE_MODES", "QuantizeMode",
           "check_quantize", "convert", "is_integer", "model_input_shape", "quiet_converter",
           "representative_images"]

logger = logging.getLogger(__name__)

QuantizeMode = Literal["none", "dynamic", "float16", "int8", "int8_fc_per_tensor"]
#: The ``quantize=`` values (CLI ``--quantize``).
QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)
#: The full-integer modes: calibrated on representative images, int8 I/O possible.
INTEGER_MODES: tuple[str, ...] = ("int8", "int8_fc_per_tensor")

#: Training images the int8 converter calibrates activation ranges on. Chosen by
#: measurement (``python -m benchmarks.deploy --representative-sweep 32 100 300 1000``,
#: benchmarks/RESULTS.md "Deployed files"): the int8 file's test accuracy (10,000 images)
#: did not move with the count on either net -- VGG-style 92.43 / 92.46 / 92.38 / 92.43 %,
#: ResNet-20 92.31 / 92.28 / 92.28 / 92.29 % for 32 / 100 / 300 / 1000 images, within 3
#: test images of each other. 300 keeps a margin for models with rarer activations at
#: little cost (1000 images add ~6 s to a ResNet-20 conversion on this 2-core machine).
DEFAULT_REPRESENTATIVE = 300


def check_quantize(quantize: str) -> QuantizeMode:
    """``quantize`` if it is a known mode, else a :class:`~lrf_optuna.errors.UserError`.

    Example:
        >>> check_quantize("int8")
        'int8'
    """
    if quantize not in QUANTIZE_MODES:
        raise UserError(f"unknown quantize mode {quantize!r}; choose from "
                        f"{list(QUANTIZE_MODES)}")
    return quantize  # type: ignore[return-value]


def is_integer(quantize: str) -> bool:
    """Whether ``quantize`` is a full-integer mode (:data:`INTEGER_MODES`): it needs
    representative images and allows int8 inputs and outputs.

    Example:
        >>> is_integer("int8"), is_integer("int8_fc_per_tensor"), is_integer("dynamic")
        (True, True, False)
    """
    return quantize in INTEGER_MODES


def representative_images(splits: Splits, n: int = DEFAULT_REPRESENTATIVE, *,
                          seed: int = 0) -> np.ndarray:
    """``n`` training images (seeded draw from ``splits.x_train``, never validation or
    test images) as float32, for the int8 converter's calibration.

    Example:
        >>> from lrf_optuna.data import from_arrays, prepare_splits
        >>> x = np.zeros((200, 8, 8, 1), np.uint8); y = np.arange(200) % 4
        >>> s = prepare_splits(from_arrays(x, y, x[:8], y[:8]), calibration_size=16)
        >>> representative_images(s, 50).shape
        (50, 8, 8, 1)
    """
    x = splits.x_train
    if n < 1:
        raise UserError(f"need at least 1 representative image, got {n}")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), size=min(n, len(x)), replace=False)
    return np.asarray(x[np.sort(pick)], np.float32)


def model_input_shape(model: keras.Model, *, hint: str = "a static batch-1 file needs a "
                      "fixed one") -> tuple[int, ...]:
    """One sample's input shape (no batch axis).

    Raises:
        ValueError: a dynamic dimension (the message ends with ``hint``).
    """
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"model {model.name!r} has a dynamic input shape {shape}; {hint}")
    return tuple(int(d) for d in shape)


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Silence the converter: it prints the traced signature (and the calibrator its
    settings) on stdout and "Assets written to" on TensorFlow's logger."""
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    try:
        tf_logger.setLevel(max(level, logging.WARNING))
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tf_logger.setLevel(level)


def _batches(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for i in range(len(images)):
        yield [images[i:i + 1]]


def convert(model: keras.Model, *, quantize: str = "none",
            representative: np.ndarray | None = None, int8_io: bool = False) -> bytes:
    """The bytes of a static batch-1 ``.tflite`` file of ``model`` (see the module
    docstring).

    Args:
        model: A Keras model with one fixed-shape input (factorized or not).
        quantize: One of :data:`QUANTIZE_MODES`.
        representative: Calibration images for ``"int8"`` (e.g.
            :func:`representative_images`); required then, ignored otherwise.
        int8_io: With ``"int8"``: int8 input and output tensors instead of float32.

    Raises:
        UserError: an unknown mode, ``int8`` without representative images, or
            ``int8_io`` without ``int8``.
        Exception: whatever the converter raises (e.g. an op without an int8 kernel).
    """
    import tensorflow as tf

    mode = check_quantize(quantize)
    if int8_io and not is_integer(mode):
        raise UserError(f"int8 inputs and outputs need a full-integer quantize mode "
                        f"({' or '.join(INTEGER_MODES)}), got {mode!r}")
    if is_integer(mode) and (representative is None or len(representative) == 0):
        raise UserError(f"quantize={mode!r} needs representative images from the training "
                        "split (representative_images(splits))")
    shape = model_input_shape(model)
    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec((1, *shape), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], model)
    converter.experimental_lower_to_saved_model = False  # freeze: see the docstring
    if mode != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if is_integer(mode):
        images = np.asarray(representative, np.float32)
        converter.representative_dataset = lambda: _batches(images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if mode == "int8_fc_per_tensor":
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    # the calibrator prints "fully_quantize: 0, inference_type: 6 ..." on stdout
    with quiet_converter():
        return bytes(converter.convert())
