"""Microcontroller readiness: the TFLite Micro operator set and the tensor arena.

* :data:`TFLM_OPS`: the builtin operators TensorFlow Lite for Microcontrollers has
  kernels for; :func:`micro_unsupported` names the ops of a file outside it.
* The **tensor arena** is the one block of RAM a TFLM build reserves for a model: the
  activations (planned so that tensors whose lifetimes do not overlap share memory)
  plus the interpreter's own bookkeeping. :func:`arena_bytes` asks the ``tflite-micro``
  package's interpreter when it is installed (its ``RecordingMicroAllocator`` reports
  the arena it used after one ``invoke()``; it runs in a child process, because the
  TFLM Python wrapper aborts the process on some models instead of raising) and
  otherwise computes the activation memory from the file (:func:`planned_arena_bytes`).

The planning (:func:`plan_offsets`), as TFLM's ``GreedyMemoryPlanner`` does it:

1. Every non-constant tensor of the main subgraph (inputs, outputs, intermediate
   activations) is a buffer of ``ceil(bytes / 16) * 16`` bytes (TFLM aligns buffers to
   16 bytes), alive from the op that writes it (op 0 for a model input) to the last op
   that reads it (the last op for a model output).
2. Buffers are placed largest first (ties: earlier first use, then tensor index); each
   goes at the lowest offset where it overlaps, in memory, no already placed buffer
   whose lifetime overlaps its own (first fit over the gaps between those buffers).
3. The activation memory is the highest end offset.

It does not model what the interpreter adds (per-tensor structs, op data, scratch
buffers of some kernels: a few kB on a small CNN), so it is a lower bound of TFLM's
total arena and equals its non-persistent ("head") part when no kernel requests
scratch memory.

Example:
    >>> plan_offsets([(100, 0, 1), (100, 1, 2), (50, 2, 3)])  # (bytes, first, last)
    ([0, 112, 0], 224)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lrf_optuna.deploy.tflite_file import TFLiteFile, read_tflite

__all__ = ["TFLM_OPS", "TFLM_SOURCE", "Arena", "arena_bytes", "micro_unsupported",
           "plan_offsets", "planned_arena_bytes", "tflm_arena", "tflm_available"]

#: Where :data:`TFLM_OPS` comes from.
TFLM_SOURCE = ("tflite-micro 0.dev20261023182759 (PyPI wheel): the builtin kernels its "
               "interpreter registers (the Register_<OP> functions of "
               "tensorflow/lite/micro/micro_mutable_op_resolver.h compiled into "
               "tflite_micro/python/tflite_micro/_runtime.so), builtin operators only")

#: Builtin operators with a TFLite Micro kernel (source: :data:`TFLM_SOURCE`; the
#: signal-processing and vendor custom ops of that build are left out: they are not
#: builtins a converter emits). A kernel existing does not mean every type is supported
#: (e.g. float16 tensors are not); :func:`arena_bytes` runs the file to find out.
TFLM_OPS = frozenset({
    "ABS", "ADD", "ADD_N", "ARG_MAX", "ARG_MIN", "ASSIGN_VARIABLE", "AVERAGE_POOL_2D",
    "BATCH_MATMUL", "BATCH_TO_SPACE_ND", "BROADCAST_ARGS", "BROADCAST_TO", "CALL_ONCE",
    "CAST", "CEIL", "CONCATENATION", "CONV_2D", "COS", "CUMSUM", "DEPTHWISE_CONV_2D",
    "DEPTH_TO_SPACE", "DEQUANTIZE", "DIV", "DYNAMIC_UPDATE_SLICE", "ELU",
    "EMBEDDING_LOOKUP", "EQUAL", "EXP", "EXPAND_DIMS", "FILL", "FLOOR", "FLOOR_DIV",
    "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GATHER_ND", "GREATER", "GREATER_EQUAL",
    "HARD_SWISH", "IF", "L2_NORMALIZATION", "L2_POOL_2D", "LEAKY_RELU", "LESS",
    "LESS_EQUAL", "LOG", "LOGICAL_AND", "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC",
    "LOG_SOFTMAX", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MIRROR_PAD", "MUL",
    "NEG", "NOT_EQUAL", "PACK", "PAD", "PADV2", "PRELU", "QUANTIZE", "READ_VARIABLE",
    "REDUCE_ALL", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "REVERSE_V2", "ROUND", "RSQRT",
    "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_BATCH_ND",
    "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE",
    "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SVDF", "TANH", "TRANSPOSE",
    "TRANSPOSE_CONV", "UNIDIRECTIONAL_SEQUENCE_LSTM", "UNPACK", "VAR_HANDLE", "WHILE",
    "ZEROS_LIKE",
})

#: TFLM's buffer alignment (``MicroArenaBufferAlignment()``), bytes.
ALIGNMENT = 16


def micro_unsupported(file: TFLiteFile | str | os.PathLike[str] | bytes) -> list[str]:
    """The ops of a file that TFLite Micro has no kernel for (sorted, once each; custom
    and Flex ops always).

    Example:
        >>> micro_unsupported("model_int8.tflite")  # doctest: +SKIP
        []
    """
    f = file if isinstance(file, TFLiteFile) else read_tflite(file)
    return sorted({op.name for op in f.ops} - TFLM_OPS)


def plan_offsets(buffers: list[tuple[int, int, int]], alignment: int = ALIGNMENT
                 ) -> tuple[list[int], int]:
    """Greedy-by-size first-fit placement of buffers ``(bytes, first_op, last_op)``
    (lifetimes inclusive); returns each buffer's offset and the peak bytes. See the
    module docstring.

    Example:
        >>> plan_offsets([(16, 0, 0), (32, 1, 1)])  # disjoint lifetimes share memory
        ([0, 0], 32)
        >>> plan_offsets([(16, 0, 1), (32, 1, 1)])
        ([32, 0], 48)
    """
    sizes = [-(-b // alignment) * alignment for b, _, _ in buffers]
    order = sorted(range(len(buffers)), key=lambda i: (-sizes[i], buffers[i][1], i))
    offsets = [0] * len(buffers)
    placed: list[int] = []
    for i in order:
        _, first, last = buffers[i]
        live = sorted((offsets[j], offsets[j] + sizes[j]) for j in placed
                      if buffers[j][1] <= last and first <= buffers[j][2])
        offset = 0
        for start, end in live:
            if start - offset >= sizes[i]:
                break
            offset = max(offset, end)
        offsets[i] = offset
        placed.append(i)
    peak = max((offsets[i] + sizes[i] for i in range(len(buffers))), default=0)
    return offsets, peak


def planned_arena_bytes(file: TFLiteFile | str | os.PathLike[str] | bytes) -> int:
    """Activation memory of a file, planned from its tensors' lifetimes
    (:func:`plan_offsets` over the main subgraph's non-constant tensors)."""
    f = file if isinstance(file, TFLiteFile) else read_tflite(file)
    first: dict[int, int] = {t: 0 for t in f.inputs}
    last: dict[int, int] = {}
    end = max(len(f.ops) - 1, 0)
    for i, op in enumerate(f.ops):
        for t in op.outputs:
            first.setdefault(t, i)
        for t in op.inputs:
            if t >= 0 and not f.tensors[t].constant:
                first.setdefault(t, i)
                last[t] = i
    for t in f.outputs:
        last[t] = end
    buffers = [(f.tensors[t].nbytes, first[t], last.get(t, first[t]))
               for t in sorted(first) if not f.tensors[t].constant]
    return plan_offsets(buffers)[1]


@dataclass(frozen=True)
class Arena:
    """The tensor arena of a file.

    Attributes:
        bytes: What a device must reserve: TFLM's total arena when ``source`` is
            ``"tflite-micro"``, else the planned activation memory.
        activations: The planned activation memory (:func:`planned_arena_bytes`).
        source: ``"tflite-micro"`` (measured by its interpreter) or ``"planned"``.
        note: Why TFLM did not measure it, when it did not.
    """

    bytes: int
    activations: int
    source: str
    note: str = ""


_CHILD = r"""
import json, os, sys, tempfile
import numpy as np
from tflite_micro import runtime
data = open(sys.argv[1], "rb").read()
it = runtime.Interpreter.from_bytes(data, arena_size=int(sys.argv[2]))
for k in range(len(json.loads(sys.argv[3]))):
    d = it.get_input_details(k)
    it.set_input(np.zeros(d["shape"], d["dtype"]), k)
it.invoke()
sys.stderr.flush()
with tempfile.TemporaryFile() as f:
    saved = os.dup(2); os.dup2(f.fileno(), 2)
    try:
        it.print_allocations()
    finally:
        os.dup2(saved, 2); os.close(saved)
    f.seek(0); text = f.read().decode(errors="replace")
print(json.dumps({"report": text}))
"""


def tflm_available() -> bool:
    """Whether the ``tflite-micro`` package can be imported here."""
    import importlib.util

    return importlib.util.find_spec("tflite_micro") is not None


def tflm_arena(path: str | os.PathLike[str], *, timeout: float = 120.0
               ) -> tuple[dict[str, int] | None, str]:
    """TFLM's arena for a file, ``{"total": ..., "head": ..., "tail": ...}`` bytes
    (``None`` and the reason when it cannot run it): one ``invoke()`` on zeros in a
    child process with a generous arena, then what the ``RecordingMicroAllocator``
    reports ("Arena allocation total / head / tail"; the head is the planned,
    non-persistent part, the tail what the interpreter keeps)."""
    if not tflm_available():
        return None, "tflite-micro is not installed"
    f = read_tflite(path)
    outside = micro_unsupported(f)
    if outside:
        return None, f"ops outside TFLite Micro: {', '.join(outside)}"
    size = max(64 * f.size, 8 << 20)
    try:
        run = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(size),
                              json.dumps(list(f.inputs))],
                             capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"the TFLM interpreter did not finish in {timeout:g} s"
    if run.returncode != 0:
        tail = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        return None, f"the TFLM interpreter failed: {tail[:200]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])["report"]
    found = {m.group(1): int(m.group(2)) for m in
             re.finditer(r"Arena allocation (total|head|tail) (\d+) bytes", report)}
    if "total" not in found:
        return None, "the TFLM interpreter reported no arena total"
    return found, ""


def arena_bytes(path: str | os.PathLike[str], *, use_tflm: bool = True) -> Arena:
    """The tensor arena of a file: measured by TFLite Micro where it is installed and
    runs the file, else planned (see the module docstring)."""
    planned = planned_arena_bytes(Path(path).read_bytes())
    if use_tflm:
        measured, note = tflm_arena(path)
        if measured is not None:
            return Arena(measured["total"], planned, "tflite-micro")
    else:
        note = "tflite-micro not asked"
    return Arena(planned, planned, "planned", note)
