"""What a ``.tflite`` file holds, read from its flatbuffer: operators, tensors, bytes.

:func:`read_tflite` parses a file (or its bytes) with the TFLite flatbuffer schema that
ships with LiteRT (``ai_edge_litert.schema_py_generated``; TensorFlow's copy,
``tensorflow.lite.python.schema_py_generated``, where LiteRT is not installed). Nothing
is run: this is the file as a device receives it. The schema is the stable, versioned
description of the format, so this does not depend on an interpreter's private
``_get_ops_details()``.

* :attr:`TFLiteFile.ops`: the operators of the main subgraph in execution order (builtin
  name, or ``"CUSTOM:<name>"`` / ``"FLEX:<name>"`` for custom and TensorFlow (Flex) ops),
  with their input and output tensor indices and the tensor types they compute on.
* :meth:`TFLiteFile.op_report`: builtin op name -> count.
* :attr:`TFLiteFile.tensors`: shape, type, whether the tensor is constant (its buffer
  holds data), the bytes of that data and of its quantization parameters (scales are
  float32 and zero points int64 in the schema).
* :meth:`TFLiteFile.weight_bytes`: the bytes of every constant tensor, quantization
  parameters included: what the file stores besides the flatbuffer's own bookkeeping.
* :data:`SHAPE_OPS` and :meth:`TFLiteFile.shape_ops`: the operators that only handle a
  dynamic batch size, computing on shapes (absent from a static batch-1 file).
* :meth:`TFLiteFile.float_ops`: operators computing in floating point, apart from the
  QUANTIZE / DEQUANTIZE at a float input or output; empty for a full-integer file.

Example:
    >>> f = read_tflite("model_int8.tflite")  # doctest: +SKIP
    >>> f.op_report()  # doctest: +SKIP
    {'CONV_2D': 4, 'FULLY_CONNECTED': 3, 'RESHAPE': 1, 'QUANTIZE': 1, 'DEQUANTIZE': 1}
    >>> f.float_ops(), f.shape_ops()  # doctest: +SKIP
    ([], [])
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["SHAPE_OPS", "OpInfo", "TFLiteFile", "TensorInfo", "read_tflite"]

#: Operators that exist in a converted Keras model only to handle a dynamic batch size
#: (reading the input's shape, slicing the batch dimension off, packing it into the
#: target shape of a RESHAPE). A file converted from a batch-1 concrete function has none.
SHAPE_OPS = frozenset({"SHAPE", "STRIDED_SLICE", "PACK", "GATHER", "REDUCE_PROD",
                       "CONCATENATION"})

#: numpy dtype and item size of the schema's tensor types (the ones a CNN file uses).
_TYPES: dict[str, tuple[Any, float]] = {
    "FLOAT32": (np.float32, 4), "FLOAT16": (np.float16, 2), "INT32": (np.int32, 4),
    "UINT8": (np.uint8, 1), "INT64": (np.int64, 8), "BOOL": (np.bool_, 1),
    "INT16": (np.int16, 2), "INT8": (np.int8, 1), "FLOAT64": (np.float64, 8),
    "UINT32": (np.uint32, 4), "UINT16": (np.uint16, 2), "INT4": (np.int8, 0.5),
}
_FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})


@cache
def _schema() -> ModuleType:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # pragma: no cover - LiteRT is a dependency
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


@cache
def _names(enum: str) -> dict[int, str]:
    return {v: k for k, v in vars(getattr(_schema(), enum)).items()
            if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main subgraph."""

    index: int
    name: str
    shape: tuple[int, ...]
    #: Shape with ``-1`` for dynamic dimensions (the file's ``shape_signature``).
    shape_signature: tuple[int, ...]
    type: str
    #: True when the tensor's buffer holds data (weights, biases, shape constants).
    constant: bool
    #: Bytes of the tensor's data in the file (0 for activations).
    data_bytes: int
    #: Bytes of its quantization parameters (float32 scales, int64 zero points).
    quant_bytes: int
    #: Number of scales (1: per-tensor, more: per-channel; 0: not quantized).
    n_scales: int

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's values at its type (``shape`` x item size)."""
        size = _TYPES.get(self.type, (None, 4))[1]
        return int(np.ceil(int(np.prod(self.shape, dtype=np.int64)) * size))


@dataclass(frozen=True)
class OpInfo:
    """One operator, in execution order."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class TFLiteFile:
    """A parsed ``.tflite`` file (its main subgraph); see the module docstring."""

    size: int
    ops: tuple[OpInfo, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    n_subgraphs: int

    def op_report(self) -> dict[str, int]:
        """Builtin op name -> how many times it occurs, most frequent first."""
        return dict(Counter(op.name for op in self.ops).most_common())

    def shape_ops(self) -> list[str]:
        """The shape-handling ops the file holds (sorted, once each): every SHAPE, and
        every other op of :data:`SHAPE_OPS` whose first input is a computed (not
        constant) int32 tensor, i.e. a shape. (A STRIDED_SLICE or CONCATENATION of
        activations moves data: a strided 1x1 convolution's subsampling, a real
        concatenation; those are not counted.)"""
        found = set()
        for op in self.ops:
            if op.name not in SHAPE_OPS:
                continue
            first = self.tensors[op.inputs[0]] if op.inputs and op.inputs[0] >= 0 else None
            if op.name == "SHAPE" or (first is not None and first.type == "INT32"
                                      and not first.constant):
                found.add(op.name)
        return sorted(found)

    def weight_bytes(self) -> int:
        """Bytes of every constant tensor's data plus its quantization parameters."""
        return sum(t.data_bytes + t.quant_bytes for t in self.tensors if t.constant)

    def float_ops(self) -> list[str]:
        """Ops that compute in floating point (an input or output tensor of a float
        type), as ``"NAME#i"``, except a QUANTIZE taking a float model input and a
        DEQUANTIZE producing a float model output (the boundary of a full-integer file
        with float inputs and outputs). Custom and Flex ops count as float (they are not
        integer builtins)."""
        out = []
        for i, op in enumerate(self.ops):
            if op.name.startswith(("CUSTOM:", "FLEX:")):
                out.append(f"{op.name}#{i}")
                continue
            if op.name == "QUANTIZE" and set(op.inputs) <= set(self.inputs):
                continue
            if op.name == "DEQUANTIZE" and set(op.outputs) <= set(self.outputs):
                continue
            types = {self.tensors[t].type for t in (*op.inputs, *op.outputs) if t >= 0}
            if types & _FLOAT_TYPES:
                out.append(f"{op.name}#{i}")
        return out

    def is_static(self) -> bool:
        """True when no tensor has a dynamic dimension (``shape_signature`` -1)."""
        return all(-1 not in t.shape_signature for t in self.tensors)


def _op_name(code: Any) -> str:
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    name = _names("BuiltinOperator").get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(
            code.customCode)
        return f"FLEX:{custom[4:]}" if custom.startswith("Flex") else f"CUSTOM:{custom}"
    return name


def _quant_bytes(q: Any) -> tuple[int, int]:
    if q is None:
        return 0, 0
    n = len(q.scale) if q.scale is not None else 0
    zp = len(q.zeroPoint) if q.zeroPoint is not None else 0
    lo = len(q.min) if q.min is not None else 0
    hi = len(q.max) if q.max is not None else 0
    return 4 * (n + lo + hi) + 8 * zp, n


def read_tflite(source: str | os.PathLike[str] | bytes) -> TFLiteFile:
    """Parse a ``.tflite`` file (a path or the file's bytes).

    Raises:
        ValueError: the bytes are not a TFLite flatbuffer with a subgraph.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    schema = _schema()
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ValueError("not a TFLite flatbuffer (file identifier 'TFL3' missing)")
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if not model.subgraphs:
        raise ValueError("the TFLite file has no subgraph")
    graph = model.subgraphs[0]
    codes = [_op_name(c) for c in (model.operatorCodes or [])]
    types = _names("TensorType")
    tensors = []
    for i, t in enumerate(graph.tensors or []):
        buf = model.buffers[t.buffer] if model.buffers and t.buffer else None
        stored = 0
        if buf is not None:
            stored = len(buf.data) if buf.data is not None else int(buf.size or 0)
        qbytes, n_scales = _quant_bytes(t.quantization)
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        sig = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None \
            else shape
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name or "")
        tensors.append(TensorInfo(i, name, shape, sig, types.get(t.type, str(t.type)),
                                  stored > 0, stored, qbytes, n_scales))
    ops = tuple(OpInfo(codes[op.opcodeIndex],
                       tuple(int(j) for j in (op.inputs if op.inputs is not None else ())),
                       tuple(int(j) for j in (op.outputs if op.outputs is not None else ())))
                for op in (graph.operators or []))
    return TFLiteFile(len(data), ops, tuple(tensors),
                      tuple(int(j) for j in graph.inputs), tuple(int(j) for j in graph.outputs),
                      len(model.subgraphs))
