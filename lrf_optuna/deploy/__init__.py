"""Deployment: static batch-1 ``.tflite`` files, quantized, checked and measured for a device.

What a device build needs from a compressed model, one module each:

=============== ==========================================================================
``convert``     Keras model -> static batch-1 ``.tflite`` bytes from a frozen concrete
                function; quantize ``none`` / ``dynamic`` / ``float16`` / ``int8`` (full
                integer, calibrated on training images, int8 input/output on request)
``tflite_file`` read a file's flatbuffer: the op report, tensors and their bytes, the
                shape-handling ops, the ops computing in float
``micro``       the TFLite Micro operator set and the check against it; the tensor arena,
                measured by the ``tflite-micro`` interpreter or planned from tensor
                lifetimes (greedy by size, first fit)
``runtime``     run and time files with LiteRT (``ai_edge_litert``; ``tf.lite`` only
                where it cannot be imported), the runtime named beside every latency
``files``       a model's deployable files: ``.keras`` without optimizer state
                (``save_keras``, ``load_model``), a ``.tflite`` checked against Keras,
                with the dynamic-batch fallbacks (``to_tflite``, ``quantized_file``,
                ``ExportError``)
``measure``     batch-1 latencies of a Keras model and of a file, a file's predictions,
                as plain numbers (``keras_latency_ms``, ``tflite_latency_ms``,
                ``tflite_predict``)
``evaluate``    :func:`deploy_model`: one model at one mode -> file bytes, accuracy of
                the file on given images (and per image), op report, arena, latency
=============== ==========================================================================

The bytes a plan's weights take in such a file, without converting anything, are
:func:`lrf_optuna.costs.deployed_bytes` (the search's ``memory="bytes"`` objective); a
fine-tuning job's model measured the way studies record it (a ``Measured``):
:func:`lrf_optuna.study.artifacts.measure_model`.

Example:
    >>> from lrf_optuna.deploy import deploy_model
    >>> d = deploy_model(compressed, splits, "int8")  # doctest: +SKIP
    >>> d.file_bytes, d.accuracy, d.ops, d.micro_unsupported, d.arena.bytes, d.latency
    ...  # doctest: +SKIP
    (91576, 0.977, {'CONV_2D': 9, 'FULLY_CONNECTED': 6, ...}, [], 61344, 0.41 ms (litert))
"""

from __future__ import annotations

from lrf_optuna.deploy.convert import (
    DEFAULT_REPRESENTATIVE,
    QUANTIZE_MODES,
    QuantizeMode,
    check_quantize,
    convert,
    representative_images,
)
from lrf_optuna.deploy.evaluate import DeployedFile, deploy_model, file_accuracy
from lrf_optuna.deploy.files import (
    TFLITE_CHECK_RTOL,
    ExportError,
    load_model,
    quantized_file,
    save_keras,
    to_tflite,
)
from lrf_optuna.deploy.measure import keras_latency_ms, tflite_latency_ms, tflite_predict
from lrf_optuna.deploy.micro import (
    TFLM_OPS,
    TFLM_SOURCE,
    Arena,
    arena_bytes,
    micro_unsupported,
    plan_offsets,
    planned_arena_bytes,
    tflm_arena,
)
from lrf_optuna.deploy.runtime import (
    LITERT,
    TF_LITE,
    Latency,
    latency,
    median_ms,
    open_interpreter,
    predict,
    runtime_name,
)
from lrf_optuna.deploy.tflite_file import SHAPE_OPS, OpInfo, TensorInfo, TFLiteFile, read_tflite

__all__ = [
    "DEFAULT_REPRESENTATIVE",
    "LITERT",
    "QUANTIZE_MODES",
    "SHAPE_OPS",
    "TFLITE_CHECK_RTOL",
    "TFLM_OPS",
    "TFLM_SOURCE",
    "TF_LITE",
    "Arena",
    "DeployedFile",
    "ExportError",
    "Latency",
    "OpInfo",
    "QuantizeMode",
    "TFLiteFile",
    "TensorInfo",
    "arena_bytes",
    "check_quantize",
    "convert",
    "deploy_model",
    "file_accuracy",
    "keras_latency_ms",
    "latency",
    "load_model",
    "median_ms",
    "micro_unsupported",
    "open_interpreter",
    "plan_offsets",
    "planned_arena_bytes",
    "predict",
    "quantized_file",
    "read_tflite",
    "representative_images",
    "runtime_name",
    "save_keras",
    "tflite_latency_ms",
    "tflite_predict",
    "tflm_arena",
    "to_tflite",
]
