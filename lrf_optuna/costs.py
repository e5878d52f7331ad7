"""Parameters, bytes and multiply-accumulates (MACs) per layer and per model.

Conventions (the same for original and rewritten models):

* **params**: every weight, trainable or not (BatchNorm statistics included), as
  ``model.count_params()`` counts them.
* **bytes**: the weights' storage at their dtype (``params x itemsize`` per variable).
* **MACs**: multiply-accumulates of one forward pass of one sample through the linear
  layers LRF acts on (Dense, convolutions of every kind and the :class:`FactorizedLayer`
  replacements). Bias additions, activations, normalisation, pooling and merges are not
  counted: LRF leaves them unchanged. **FLOPs** are ``2 x MACs``.

Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> c = model_costs(model)
    >>> c.params, c.macs, c.flops
    (112, 3888, 7776)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from lrf_optuna.decompose import FactorizedLayer, UnsupportedLayerError, describe_layer
from lrf_optuna.decompose.layers import Stage, conv_output_length, stage_output_channels

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
    positions = math.prod(spatial) if spatial else 1
    c_out = stage_output_channels(stage, c)
    if op == "dense":
        return positions * c * c_out, (*spatial, c_out)
    if op == "tt":
        m, n, r = stage["in_modes"], stage["out_modes"], stage["ranks"]
        total = 0
        for k in range(len(m)):
            total += (math.prod(n[:k]) * r[k] * m[k] * n[k] * r[k + 1]
                      * math.prod(m[k + 1:]))
        return positions * total, (*spatial, c_out)
    if op == "group_sum":
        return 0, (*spatial, c_out)
    nd = len(spatial)
    strides = _expand(stage.get("strides", 1), nd)
    if op == "subsample":
        return 0, (*(-(-s // st) for s, st in zip(spatial, strides)), c)
    kernel = [int(k) for k in stage["kernel_shape"][:nd]]
    taps = math.prod(kernel)
    dilation = _expand(stage.get("dilation_rate", 1), nd)
    padding = stage.get("padding", "valid")
    transpose = op == "conv_transpose"
    out_pad = stage.get("output_padding")
    out_spatial = tuple(
        conv_output_length(n_, k_, stride=s_, dilation=d_, padding=padding,
                           transpose=transpose,
                           output_padding=None if out_pad is None else int(out_pad[i]))
        for i, (n_, k_, s_, d_) in enumerate(zip(spatial, kernel, strides, dilation)))
    out_positions = math.prod(out_spatial) if out_spatial else 1
    if op == "conv":
        per_group_in = int(stage["kernel_shape"][-2])
        return out_positions * taps * per_group_in * c_out, (*out_spatial, c_out)
    if op == "depthwise":
        return out_positions * taps * c_out, (*out_spatial, c_out)
    if op == "conv_transpose":
        return positions * taps * c * c_out, (*out_spatial, c_out)
    raise ValueError(f"Unknown stage op {op!r}.")


def _expand(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        return [int(i) for i in v]
    return [int(v)] * n


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


def _input_shape(layer: keras.layers.Layer) -> tuple[int, ...] | None:
    try:
        shape = tuple(layer.input.shape)[1:]
    except (AttributeError, ValueError):
        return None
    if any(d is None for d in shape):
        return None
    return tuple(int(d) for d in shape)


def layer_costs(layer: keras.layers.Layer, path: str | None = None) -> LayerCost:
    """Costs of one leaf layer (MACs need the layer's input shape from its graph node)."""
    macs = 0
    shape = _input_shape(layer)
    if isinstance(layer, FactorizedLayer):
        if shape is None:
            raise ValueError(f"layer {layer.name!r}: input shape unknown, cannot count MACs")
        macs = factorized_macs(layer, shape)
    elif layer.weights:
        try:
            macs = describe_layer(layer, input_shape=shape).original_macs
        except UnsupportedLayerError:
            macs = 0
    return LayerCost(path=path or layer.name, class_name=type(layer).__name__,
                     params=int(layer.count_params()) if layer.built else 0,
                     bytes=_weight_bytes(layer), macs=int(macs))


def model_costs(model: keras.Model) -> ModelCost:
    """Costs of every leaf layer of a model (nested models flattened by path)."""
    from lrf_optuna.rewrite import iter_layers

    return ModelCost(tuple(layer_costs(layer, path) for path, layer in iter_layers(model)))
