"""Parameters, bytes and multiply-accumulates (MACs) per layer and per model.

Conventions (the same for original and rewritten models):

* **params**: every weight, trainable or not (BatchNorm statistics included), as
  ``model.count_params()`` counts them.
* **bytes**: the weights' storage at their dtype (``params x itemsize`` per variable).
* **MACs**: multiply-accumulates of one forward pass of one sample through the linear
  layers LRF acts on (Dense, convolutions of every kind and the :class:`FactorizedLayer`
  replacements). Bias additions, activations, normalisation, pooling and merges are not
  counted: LRF leaves them unchanged. **FLOPs** are ``2 x MACs``. They come from the
  shapes the graph knows and are summed over a layer's calls (a shared layer computes
  once per call); a model whose multiplying layers have unknown spatial sizes is refused.

Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> c = model_costs(model)
    >>> c.params, c.macs, c.flops
    (112, 3888, 7776)
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from lrf_optuna.decompose import FactorizedLayer, UnsupportedLayerError, describe_layer
from lrf_optuna.decompose._base import _graph_shapes, _layer_kind
from lrf_optuna.decompose.fc_tensor_train import tt_macs_per_position
from lrf_optuna.decompose.layers import Stage, conv_output_length, stage_output_shape

__all__ = ["LayerCost", "ModelCost", "conv_output_length", "factorized_macs", "layer_costs",
           "model_costs", "stage_macs"]


@dataclass(frozen=True)
class LayerCost:
    """Costs of one layer (a leaf layer; nested models are flattened by path)."""

    path: str
    class_name: str
    params: int
    bytes: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass(frozen=True)
class ModelCost:
    """Costs of a whole model, with the per-layer breakdown."""

    layers: Sequence[LayerCost] = field(default_factory=tuple)

    @property
    def params(self) -> int:
        return sum(c.params for c in self.layers)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.layers)

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.layers)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def by_path(self) -> dict[str, LayerCost]:
        return {c.path: c for c in self.layers}


def stage_macs(stage: Stage, in_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """MACs of one :class:`FactorizedLayer` stage for one sample, and its output shape.

    ``in_shape`` is channels-last without the batch axis.
    """
    op = stage["op"]
    *spatial, c = (int(d) for d in in_shape)
    out_shape = tuple(int(d) for d in stage_output_shape(stage, (*spatial, c)))  # type: ignore[arg-type]
    positions = math.prod(spatial)
    out_positions = math.prod(out_shape[:-1])
    c_out = out_shape[-1]
    taps = math.prod(int(k) for k in stage["kernel_shape"][:len(spatial)]) if op in (
        "conv", "depthwise", "conv_transpose") else 1
    if op == "dense":
        macs = positions * c * c_out
    elif op == "tt":
        macs = positions * tt_macs_per_position(stage["in_modes"], stage["out_modes"],
                                                stage["ranks"])
    elif op in ("group_sum", "subsample"):
        macs = 0
    elif op == "conv":
        macs = out_positions * taps * int(stage["kernel_shape"][-2]) * c_out
    elif op == "depthwise":
        macs = out_positions * taps * c_out
    elif op == "conv_transpose":
        # every input position scatters a k x c_out patch for each input channel
        macs = positions * taps * c * c_out
    else:
        raise ValueError(f"Unknown stage op {op!r}.")
    return macs, out_shape


def factorized_macs(layer: FactorizedLayer, input_shape: Sequence[int]) -> int:
    """MACs of a :class:`FactorizedLayer` for one sample (input shape without batch)."""
    shape = tuple(int(d) for d in input_shape)
    if layer.data_format == "channels_first" and len(shape) > 1:
        shape = (*shape[1:], shape[0])
    total = 0
    for stage in layer.stages:
        macs, shape = stage_macs(stage, shape)
        total += macs
    return total


def _weight_bytes(layer: keras.layers.Layer) -> int:
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in layer.weights)


def _known(shape: tuple[Any, ...], layer: keras.layers.Layer) -> tuple[int, ...]:
    dims = shape[1:]
    if any(d is None for d in dims):
        raise ValueError(
            f"layer {layer.name!r}: the graph knows its shape only as {shape}; its MACs depend "
            "on the unknown dimensions. Build the model on a fixed input shape, e.g. "
            "keras.Input((height, width, channels))")
    return tuple(int(d) for d in dims)


def layer_costs(layer: keras.layers.Layer, path: str | None = None, *,
                nodes: Container[int] | None = None) -> LayerCost:
    """Costs of one leaf layer.

    MACs come from the shapes the graph knows (the layer's input and output tensors) and
    are summed over the layer's calls in the model (a layer shared by two branches
    computes twice): the calls whose node ids are in ``nodes`` (:func:`model_costs` passes
    its model's, :func:`lrf_optuna.rewrite.graph_nodes`), or the layer's first call when
    ``nodes`` is None.

    Raises:
        ValueError: a layer that multiplies (Dense, a convolution, a
            :class:`FactorizedLayer`) was called on a tensor of unknown spatial size.
    """
    def calls() -> list[tuple[Any, Any]]:
        found = _graph_shapes(layer, nodes)
        return found if nodes is not None else found[:1]

    macs = 0
    if isinstance(layer, FactorizedLayer):
        for in_shape, _ in calls():
            macs += factorized_macs(layer, _known(in_shape, layer))
    elif layer.weights:
        try:
            _layer_kind(layer)
            shapes = calls()
        except UnsupportedLayerError:
            shapes = []  # not a layer LRF acts on: its MACs are not counted
        for in_shape, out_shape in shapes:
            try:
                info = describe_layer(layer, input_shape=_known(in_shape, layer),
                                      output_shape=_known(out_shape, layer))
            except UnsupportedLayerError:
                continue  # e.g. LoRA-enabled or quantized: left as it is, not counted
            macs += info.original_macs
    return LayerCost(path=path or layer.name, class_name=type(layer).__name__,
                     params=int(layer.count_params()) if layer.built else 0,
                     bytes=_weight_bytes(layer), macs=int(macs))


def model_costs(model: keras.Model) -> ModelCost:
    """Costs of every leaf layer of a model (nested models flattened by path)."""
    from lrf_optuna.rewrite import graph_nodes, iter_layers

    nodes = graph_nodes(model)
    return ModelCost(tuple(layer_costs(layer, path, nodes=nodes)
                           for path, layer in iter_layers(model)))
