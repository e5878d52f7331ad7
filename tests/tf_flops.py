"""An independent MAC count: TensorFlow's own per-op statistics on a frozen graph.

TensorFlow registers a ``flops`` statistic for its convolution and matrix-product ops
(``Conv2D``, ``Conv3D``, ``DepthwiseConv2dNative``, ``MatMul``); the profiler sums them.
We trace the model for one sample, freeze the variables, and add up those statistics,
which share no code with :mod:`lrf_optuna.costs`. (``Conv2DBackpropInput``, the transposed
conv, uses a different convention in TensorFlow and is checked by brute force instead.)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

COUNTED_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul")


def tf_macs(model: keras.Model) -> dict[str, int]:
    """Per op type, half of TensorFlow's registered FLOPs for one sample."""
    spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph_def = convert_variables_to_constants_v2(fn).graph.as_graph_def(add_shapes=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    out: dict[str, int] = {}
    for op in graph.get_operations():
        if op.type in COUNTED_OPS:
            flops = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            out[op.type] = out.get(op.type, 0) + int(flops) // 2
        elif op.type in ("StatefulPartitionedCall", "PartitionedCall"):
            raise AssertionError("a function call hides ops from the count (grouped conv?)")
    return out
