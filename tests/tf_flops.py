"""An independent MAC count: TensorFlow's own per-op statistics on the traced graph.

TensorFlow registers a ``flops`` statistic for its convolution and matrix-product ops
(``Conv2D``, ``Conv3D``, ``DepthwiseConv2dNative``, ``MatMul``, ``BatchMatMulV2/V3``,
``Conv2DBackpropInput``); the profiler's registry computes them from the shapes of the
traced graph. We trace the model for one sample and add up those statistics, which share
no code with :mod:`lrf_optuna.costs`.

Function calls are profiled too: Keras runs grouped convolutions (and channels-first 3-D
ones) inside an XLA-compiled ``tf.function``, which appears in the graph as a
``(Stateful)PartitionedCall``; its body is a graph of its own, traced with the shapes of
the call's inputs, and is counted op by op (recursively). The traced outer graph already
knows the call's output shape, so the ops after it are counted as well.

Two of TensorFlow's ops compute more than the layer needs, so compare where they do not:
a dilated conv runs on ``space_to_batch`` blocks, padded up to a multiple of the rate
(none with "same" padding on sizes divisible by the rate), and
``Conv2DBackpropInput`` (the transposed conv) counts ``output positions / stride^2`` input
positions, which is the number of input positions only when the output is exactly
``stride`` times the input: "same" padding. Compare transposed convs on "same" padding.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

COUNTED_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2",
               "BatchMatMulV3", "Conv2DBackpropInput")
CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")


def _function_graph(name: str, graphs: list[Any]) -> Any:
    """The body of the function called ``name``, looked up from the innermost graph out."""
    for graph in reversed(graphs):
        fn = graph._get_function(name)
        if fn is not None:
            return fn.graph
    raise AssertionError(f"function {name!r} is not in the graph's library")


def _count(graphs: list[Any], out: dict[str, int]) -> None:
    graph = graphs[-1]
    for op in graph.get_operations():
        if op.type in COUNTED_OPS:
            flops = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            out[op.type] = out.get(op.type, 0) + int(flops) // 2
        elif op.type in CALL_OPS:
            _count([*graphs, _function_graph(op.get_attr("f").name, graphs)], out)


def tf_macs(model: keras.Model) -> dict[str, int]:
    """Per op type, half of TensorFlow's registered FLOPs for one sample, function bodies
    included."""
    spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    out: dict[str, int] = {}
    _count([fn.graph], out)
    return out


def graph_ops(fn: Any) -> list[Any]:
    """Every op of a concrete function's graph and of the functions it calls (recursively)."""
    found: list[Any] = []

    def walk(graphs: list[Any]) -> None:
        for op in graphs[-1].get_operations():
            found.append(op)
            if op.type in CALL_OPS:
                walk([*graphs, _function_graph(op.get_attr("f").name, graphs)])

    walk([fn.graph])
    return found
