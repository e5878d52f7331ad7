"""Parameters, bytes and multiply-accumulates (MACs) per layer and per model.

Conventions (the same for original and rewritten models):

* **params**: every weight, trainable or not (BatchNorm statistics included), as
  ``model.count_params()`` counts them.
* **bytes**: the weights' storage at their dtype (``params x itemsize`` per variable).
* **deployed bytes** (:func:`deployed_bytes`, :func:`layer_deployed_bytes`): the bytes a
  layer's weights take in a ``.tflite`` file at an export precision (:data:`PRECISIONS`,
  named like the ``quantize`` modes of :mod:`lrf_optuna.deploy.convert`); see
  :func:`kernel_bytes` for the layout, and ``tests/deploy_tests/test_deploy.py`` for the margin
  against real files.
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
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from lrf_optuna.decompose import (
    FactorizedLayer,
    LayerInfo,
    UnsupportedLayerError,
    describe_layer,
)
from lrf_optuna.decompose._base import _graph_shapes, _layer_kind
from lrf_optuna.decompose.fc_tensor_train import tt_macs_per_position
from lrf_optuna.decompose.layers import Stage, conv_output_length, stage_output_shape

__all__ = ["PRECISIONS", "DeployedKernel", "LayerCost", "ModelCost", "PlanBytes",
           "batchnorm_folding", "conv_output_length", "deployed_bytes", "deployed_kernels",
           "factorized_macs", "info_kernels", "kernel_bytes", "layer_costs",
           "layer_deployed_bytes", "model_costs", "stage_macs", "standalone_batchnorm_bytes"]


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


# -- deployed bytes ----------------------------------------------------------------------

#: Export precisions of :func:`deployed_bytes`: the ``quantize`` modes of
#: :mod:`lrf_optuna.deploy.convert` (``"none"`` is float32).
PRECISIONS = ("none", "dynamic", "float16", "int8", "int8_fc_per_tensor")
#: The converter's dynamic-range quantization leaves weight tensors smaller than this
#: (number of values) in float32.
DYNAMIC_MIN_ELEMENTS = 1024
#: Bytes of one quantization channel in the file: a float32 scale and an int64 zero point.
QUANT_CHANNEL_BYTES = 12


@dataclass(frozen=True)
class DeployedKernel:
    """One weight tensor as the converter writes it: ``values`` numbers over
    ``channels`` output channels (its quantization axis), of an op ``kind`` (``"conv"``
    for CONV_2D / DEPTHWISE_CONV_2D / TRANSPOSE_CONV, ``"dense"`` for FULLY_CONNECTED
    and a TT core's matrix product), with a bias of ``channels`` values or not."""

    values: int
    channels: int
    kind: str
    bias: bool


def kernel_bytes(kernel: DeployedKernel, precision: str) -> int:
    """Bytes of a weight tensor and its bias in a ``.tflite`` file at ``precision``.

    * ``none``: float32 weights and bias;
    * ``float16``: float16 weights and bias;
    * ``dynamic``: weights of at least :data:`DYNAMIC_MIN_ELEMENTS` values int8 with a
      float32 scale and an int64 zero point per output channel, smaller ones float32;
      float32 bias;
    * ``int8``: int8 weights, per output channel a scale and a zero point; an int32 bias
      with its own per-channel scale and zero point. The converter gives every int8
      CONV_2D / DEPTHWISE_CONV_2D a bias (zeros when the layer had none); a
      FULLY_CONNECTED without bias stays without.
    * ``int8_fc_per_tensor``: as ``int8``, but a ``"dense"`` kernel (FULLY_CONNECTED)
      and its bias carry one scale and zero point each.

    Example:
        >>> kernel_bytes(DeployedKernel(288, 32, "conv", True), "int8")  # 288 + 12*32 + 16*32
        1184
        >>> dense = DeployedKernel(12 * 512, 512, "dense", True)
        >>> kernel_bytes(dense, "int8"), kernel_bytes(dense, "int8_fc_per_tensor")
        (20480, 8216)
    """
    n, c = kernel.values, kernel.channels
    bias = kernel.bias
    if precision == "none":
        return 4 * (n + (c if bias else 0))
    if precision == "float16":
        return 2 * (n + (c if bias else 0))
    if precision == "dynamic":
        weights = n + QUANT_CHANNEL_BYTES * c if n >= DYNAMIC_MIN_ELEMENTS else 4 * n
        return weights + (4 * c if bias else 0)
    if precision in ("int8", "int8_fc_per_tensor"):
        with_bias = bias or kernel.kind == "conv"
        scales = 1 if precision == "int8_fc_per_tensor" and kernel.kind == "dense" else c
        return n + QUANT_CHANNEL_BYTES * scales + ((4 * c + QUANT_CHANNEL_BYTES * scales)
                                                   if with_bias else 0)
    raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")


def _stage_kernels(stage: Stage) -> list[DeployedKernel]:
    op = stage["op"]
    if op == "tt":
        m, n, r = stage["in_modes"], stage["out_modes"], stage["ranks"]
        return [DeployedKernel(int(r[k]) * int(m[k]) * int(n[k]) * int(r[k + 1]),
                               int(n[k]) * int(r[k + 1]), "dense", False)
                for k in range(len(m))]
    if op in ("subsample", "group_sum"):
        return []
    shape = [int(d) for d in stage["kernel_shape"]]
    values = math.prod(shape)
    if op == "dense":
        return [DeployedKernel(values, shape[-1], "dense", False)]
    if op == "depthwise":
        return [DeployedKernel(values, shape[-2] * shape[-1], "conv", False)]
    if op == "conv_transpose":
        return [DeployedKernel(values, shape[-2], "conv", False)]
    return [DeployedKernel(values, shape[-1], "conv", False)]


def info_kernels(info: LayerInfo, method: str | None = None, rank: int | None = None, *,
                 bias: bool = False) -> list[DeployedKernel]:
    """The weight tensors of the layer ``info`` describes (``method`` ``None`` or
    ``"keep"``), or of its replacement by ``method`` at ``rank``, from shapes alone: what
    :func:`deployed_kernels` reads off the built layer. ``info`` may describe a pruned
    layer (:func:`lrf_optuna.prune.pruned_layer_info`), which is never built.

    Example:
        >>> import keras
        >>> from lrf_optuna.decompose import describe_layer
        >>> conv = keras.layers.Conv2D(8, 3, name="c")
        >>> _ = conv.build((None, 10, 10, 4))
        >>> info_kernels(describe_layer(conv, input_shape=(10, 10, 4)), bias=True)
        [DeployedKernel(values=288, channels=8, kind='conv', bias=True)]
    """
    from lrf_optuna.decompose import get_method

    if method not in (None, "keep"):
        if rank is None:
            raise ValueError(f"method {method!r} on layer {info.name!r} needs a rank")
        kernels = [k for stage in get_method(str(method)).stages(info, int(rank))
                   for k in _stage_kernels(stage)]
    else:
        space = math.prod(info.kernel_size) if info.kernel_size else 1
        cin, cout = info.in_channels, info.out_channels
        if info.kind == "dense":
            kernels = [DeployedKernel(cin * cout, cout, "dense", False)]
        elif info.kind == "depthwise":
            kernels = [DeployedKernel(space * cout, cout, "conv", False)]
        elif info.kind == "separable":
            mid = cin * info.depth_multiplier
            kernels = [DeployedKernel(space * mid, mid, "conv", False),
                       DeployedKernel(mid * cout, cout, "conv", False)]
        elif info.kind == "conv_transpose":
            kernels = [DeployedKernel(space * cin * cout, cout, "conv", False)]
        else:
            kernels = [DeployedKernel(space * (cin // info.groups) * cout, cout, "conv",
                                      False)]
    return _with_bias(kernels) if bias else kernels


def standalone_batchnorm_bytes(channels: int, precision: str) -> int:
    """Bytes of a BatchNormalization that no layer folds: a MUL and an ADD with two
    per-channel vectors at the float precision (int8: int8 vectors, one scale each).

    Example:
        >>> standalone_batchnorm_bytes(16, "none"), standalone_batchnorm_bytes(16, "int8")
        (128, 56)
    """
    _check_precision(precision)
    item = {"none": 4, "dynamic": 4, "float16": 2}.get(precision, 1)
    return 2 * channels * item + (2 * QUANT_CHANNEL_BYTES if item == 1 else 0)


def batchnorm_folding(model: keras.Model) -> tuple[set[int], set[int]]:
    """Ids of the layers a BatchNormalization folds into (they deploy with a bias), and
    of the BatchNormalizations no layer folds (:func:`standalone_batchnorm_bytes`); every
    other BatchNormalization costs nothing deployed."""
    from lrf_optuna.rewrite import iter_layers

    return _batch_norms(list(iter_layers(model)))


def _with_bias(kernels: list[DeployedKernel]) -> list[DeployedKernel]:
    if not kernels:
        return kernels
    last = kernels[-1]
    return [*kernels[:-1], DeployedKernel(last.values, last.channels, last.kind, True)]


def deployed_kernels(layer: keras.layers.Layer, *, bias: bool | None = None
                     ) -> list[DeployedKernel]:
    """The weight tensors of a layer in a converted file (empty for a layer without
    weights, and for a BatchNormalization, which the converter folds into the
    convolution or Dense before it: see :func:`layer_deployed_bytes`).

    ``bias`` overrides whether the last tensor has a bias (a folded BatchNormalization
    gives its producer one).
    """
    kernels: list[DeployedKernel]
    has_bias = bool(getattr(layer, "use_bias", False))
    if isinstance(layer, FactorizedLayer):
        kernels = [k for stage in layer.stages for k in _stage_kernels(stage)]
        has_bias = layer.bias is not None
    elif isinstance(layer, keras.layers.BatchNormalization) or not layer.weights:
        return []
    else:
        try:
            kind = _layer_kind(layer)
        except UnsupportedLayerError:
            # any other layer with weights: its weights as float tensors, no channels
            return [DeployedKernel(int(np.prod(w.shape)), 0, "other", False)
                    for w in layer.weights]
        shape = [int(d) for d in layer.weights[0].shape]
        values = math.prod(shape)
        if kind == "separable":
            point = [int(d) for d in layer.weights[1].shape]
            kernels = [DeployedKernel(values, shape[-2] * shape[-1], "conv", False),
                       DeployedKernel(math.prod(point), point[-1], "conv", False)]
        else:
            channels = {"depthwise": shape[-2] * shape[-1],
                        "conv_transpose": shape[-2]}.get(kind, shape[-1])
            kernels = [DeployedKernel(values, channels,
                                      "dense" if kind == "dense" else "conv", False)]
    if bias if bias is not None else has_bias:
        kernels = _with_bias(kernels)
    return kernels


def _producer(layer: keras.layers.Layer) -> Any:
    try:
        node = layer._inbound_nodes[0]
        tensors = node.arguments.keras_tensors
    except (AttributeError, IndexError):
        return None
    if len(tensors) != 1:
        return None
    history = getattr(tensors[0], "_keras_history", None)
    return getattr(history, "operation", None) if history is not None else None


def _folds(bn: keras.layers.Layer) -> Any:
    """The layer a BatchNormalization folds into (a conv, Dense or factorized layer it
    directly follows), else None."""
    producer = _producer(bn)
    if producer is None or len(getattr(producer, "_outbound_nodes", [])) != 1:
        return None
    if isinstance(producer, FactorizedLayer):
        return producer
    try:
        _layer_kind(producer)
    except UnsupportedLayerError:
        return None
    return producer


def layer_deployed_bytes(model: keras.Model, precision: str = "int8") -> dict[str, int]:
    """Deployed bytes of each leaf layer with weights at ``precision``
    (:func:`kernel_bytes` over :func:`deployed_kernels`), by layer path.

    A BatchNormalization directly after a convolution, Dense or factorized layer (its
    only consumer) is folded by the converter: it costs nothing itself and gives that
    layer a bias when it had none. Any other BatchNormalization stays a MUL and an ADD
    with two per-channel vectors at the float precision (int8: int8 vectors, one
    scale each).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 3)),
        ...     keras.layers.Conv2D(4, 3, use_bias=False, name="c"),
        ...     keras.layers.BatchNormalization(name="bn")])
        >>> layer_deployed_bytes(m, "none")
        {'c': 448, 'bn': 0}
    """
    from lrf_optuna.rewrite import iter_layers

    _check_precision(precision)
    layers = list(iter_layers(model))
    folded, standalone = _batch_norms(layers)
    out: dict[str, int] = {}
    for path, layer in layers:
        if not layer.weights:
            continue
        if id(layer) in standalone:
            out[path] = standalone_batchnorm_bytes(int(layer.weights[0].shape[-1]), precision)
            continue
        kernels = deployed_kernels(layer, bias=True if id(layer) in folded else None)
        out[path] = sum(kernel_bytes(k, precision) for k in kernels)
    return out


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")


def _batch_norms(layers: Sequence[tuple[str, keras.layers.Layer]]) -> tuple[set[int], set[int]]:
    """Ids of the layers a BatchNormalization folds into, and of the BatchNormalizations
    that stay on their own."""
    folded: set[int] = set()
    standalone: set[int] = set()
    for _, layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            target = _folds(layer)
            if target is None:
                standalone.add(id(layer))
            else:
                folded.add(id(target))
    return folded, standalone


class PlanBytes:
    """Deployed bytes (:func:`deployed_bytes`) of a model's LRF plans at one precision,
    from shapes alone: the search's ``memory="bytes"`` objective.

    A candidate ``(method, rank)`` of a layer costs its replacement's stages
    (:meth:`lrf_optuna.decompose.LRFMethod.stages`) as :func:`kernel_bytes` counts them,
    with the bias the layer deploys with (its own, or a folded BatchNormalization's); a
    plan costs the original model's bytes minus what its layers save. Equal to
    :func:`deployed_bytes` of the built model.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, name="fc")])
        >>> pb = PlanBytes(m, "int8")
        >>> pb.original, pb.of_plan({"fc": ("svd", 8)})
        (5888, 2912)
    """

    def __init__(self, model: keras.Model, precision: str = "int8") -> None:
        from lrf_optuna.rewrite import find_layers, iter_layers

        _check_precision(precision)
        self.precision = precision
        self.layers = layer_deployed_bytes(model, precision)
        self.original = sum(self.layers.values())
        folded, _ = _batch_norms(list(iter_layers(model)))
        self._entries = find_layers(model)
        self._bias = {path: bool(getattr(e.layer, "use_bias", False)) or id(e.layer) in folded
                      for path, e in self._entries.items()}
        self._memo: dict[tuple[str, str, int], int] = {}

    def candidate(self, path: str, method: str, rank: int) -> int:
        """Deployed bytes of layer ``path`` replaced by ``method`` at ``rank``."""
        key = (path, method, int(rank))
        if key not in self._memo:
            info = self._entries[path].info
            assert info is not None
            self._memo[key] = sum(kernel_bytes(k, self.precision) for k in info_kernels(
                info, method, int(rank), bias=self._bias[path]))
        return self._memo[key]

    def of_plan(self, plan: Mapping[str, tuple[str, int]]) -> int:
        """Deployed bytes of the model with ``plan`` (``{layer: (method, rank)}``)."""
        return self.original + sum(self.candidate(p, m, r) - self.layers.get(p, 0)
                                   for p, (m, r) in plan.items())


def deployed_bytes(model: keras.Model, precision: str = "int8") -> int:
    """Bytes of the model's weights in a ``.tflite`` file at ``precision`` (one of
    :data:`PRECISIONS`): the sum of :func:`layer_deployed_bytes`.

    It leaves out what a file holds besides weights (shape constants of RESHAPE /
    TRANSPOSE, the flatbuffer's tables, per-tensor quantization of activations): compare
    it with :meth:`lrf_optuna.deploy.TFLiteFile.weight_bytes`.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((16,)), keras.layers.Dense(10)])
        >>> deployed_bytes(m, "none"), deployed_bytes(m, "int8")
        (680, 440)
    """
    return sum(layer_deployed_bytes(model, precision).values())
