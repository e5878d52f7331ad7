"""What every LRF method shares: layer description, the method interface, the registry."""

from __future__ import annotations

import abc
import math
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import keras
import numpy as np

from lrf_optuna.decompose.layers import FactorizedLayer, Stage

__all__ = [
    "DecompositionError",
    "LRFMethod",
    "LayerInfo",
    "LayerKind",
    "UnsupportedLayerError",
    "available_methods",
    "describe_layer",
    "get_method",
    "inputs_required",
    "layer_weights",
    "methods_for",
    "register_method",
    "validate_weights",
    "verify_replacement",
]

LayerKind = Literal["dense", "conv", "conv_transpose", "depthwise", "separable"]


class UnsupportedLayerError(ValueError):
    """A layer (or a layer/method pair) that cannot be decomposed, with the reason."""


class DecompositionError(ValueError):
    """Bad input to a decomposition: invalid rank, non-finite weights, ..."""


@dataclass(frozen=True)
class LayerInfo:
    """Everything an LRF method needs to know about one layer, in plain numbers.

    Shapes exclude the batch axis and are channels-last regardless of ``data_format``
    (``input_shape[-1]`` is the channel count). ``kernel_size`` is ``()`` for Dense.

    Example:
        >>> import keras
        >>> layer = keras.layers.Conv2D(8, 3, name="c")
        >>> _ = layer.build((None, 10, 10, 4))
        >>> info = describe_layer(layer, input_shape=(10, 10, 4))
        >>> info.kind, info.kernel_size, info.in_channels, info.out_channels, info.output_shape
        ('conv', (3, 3), 4, 8, (8, 8, 8))
    """

    name: str
    kind: LayerKind
    class_name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilation_rate: tuple[int, ...] = ()
    padding: str = "valid"
    output_padding: tuple[int, ...] | None = None
    groups: int = 1
    depth_multiplier: int = 1
    use_bias: bool = True
    activation: Any = "linear"
    data_format: str = "channels_last"
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    dtype: str = "float32"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def spatial_rank(self) -> int:
        return len(self.kernel_size)

    @property
    def is_pointwise(self) -> bool:
        """A conv whose kernel is 1 in every spatial dim and not grouped: a matrix."""
        return (self.kind == "conv" and self.groups == 1
                and all(k == 1 for k in self.kernel_size))

    @property
    def is_matrix(self) -> bool:
        """Dense, 1x1 conv or the pointwise part of a separable conv: FC methods apply."""
        return self.kind in ("dense", "separable") or self.is_pointwise

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(n_in, n_out)`` of the matrix the FC methods factorize."""
        if self.kind == "separable":
            return (self.in_channels * self.depth_multiplier, self.out_channels)
        return (self.in_channels, self.out_channels)

    @property
    def in_positions(self) -> int:
        """Number of input rows (spatial positions, or leading axes for Dense)."""
        return math.prod(self.input_shape[:-1]) if len(self.input_shape) > 1 else 1

    @property
    def out_positions(self) -> int:
        """Number of output positions per sample (1 for a Dense on a vector)."""
        return math.prod(self.output_shape[:-1]) if len(self.output_shape) > 1 else 1

    @property
    def original_params(self) -> int:
        """Parameter count of the original layer (weights + bias)."""
        bias = self.out_channels if self.use_bias else 0
        k = math.prod(self.kernel_size) if self.kernel_size else 1
        if self.kind == "dense":
            return self.in_channels * self.out_channels + bias
        if self.kind in ("conv", "conv_transpose"):
            return k * (self.in_channels // self.groups) * self.out_channels + bias
        if self.kind == "depthwise":
            return k * self.in_channels * self.depth_multiplier + bias
        # separable
        mid = self.in_channels * self.depth_multiplier
        return k * mid + mid * self.out_channels + bias

    @property
    def original_macs(self) -> int:
        """Multiply-accumulates of the original layer for one sample (bias excluded)."""
        k = math.prod(self.kernel_size) if self.kernel_size else 1
        if self.kind == "dense":
            return self.out_positions * self.in_channels * self.out_channels
        if self.kind == "conv":
            return self.out_positions * k * (self.in_channels // self.groups) * self.out_channels
        if self.kind == "conv_transpose":
            # every input position scatters a k x c_out patch for each input channel
            return self.in_positions * k * self.in_channels * self.out_channels
        if self.kind == "depthwise":
            return self.out_positions * k * self.in_channels * self.depth_multiplier
        mid = self.in_channels * self.depth_multiplier
        return self.out_positions * (k * mid + mid * self.out_channels)


def _tuple(v: Any) -> tuple[int, ...]:
    return tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else (int(v),)


def _ntuple(v: Any, n: int) -> tuple[int, ...]:
    t = _tuple(v)
    return t * n if len(t) == 1 and n > 1 else t


def _shape_without_batch(shape: Any) -> tuple[int, ...]:
    dims = tuple(shape)[1:]
    if any(d is None for d in dims):
        raise UnsupportedLayerError(
            f"its shape {tuple(shape)} has unknown non-batch dimensions; FLOPs and the "
            "calibration pass need a model built with a fixed input shape")
    return tuple(int(d) for d in dims)


def _to_channels_last(shape: tuple[int, ...], data_format: str) -> tuple[int, ...]:
    if data_format == "channels_first" and len(shape) > 1:
        return (*shape[1:], shape[0])
    return shape


def _from_channels_last(shape: tuple[int, ...], data_format: str) -> tuple[int, ...]:
    """The inverse of :func:`_to_channels_last`: a shape as the layer sees it."""
    if data_format == "channels_first" and len(shape) > 1:
        return (shape[-1], *shape[:-1])
    return shape


def _decomposable_kinds() -> dict[type, LayerKind]:
    L = keras.layers
    return {L.Dense: "dense",
            L.Conv1D: "conv", L.Conv2D: "conv", L.Conv3D: "conv",
            L.Conv1DTranspose: "conv_transpose", L.Conv2DTranspose: "conv_transpose",
            L.Conv3DTranspose: "conv_transpose",
            L.DepthwiseConv1D: "depthwise", L.DepthwiseConv2D: "depthwise",
            L.SeparableConv1D: "separable", L.SeparableConv2D: "separable"}


def _layer_kind(layer: keras.layers.Layer) -> LayerKind:
    """The kind of a decomposable layer, from its class alone (no shape is looked at).

    A subclass of a supported class counts only when it computes as its base does (it
    overrides neither ``call`` nor ``convolution_op``): the replacement reproduces the
    base class's computation, not a custom one.
    """
    cls = type(layer)
    kinds = _decomposable_kinds()
    base = next((b for b in cls.__mro__ if b in kinds), None)
    if base is None:
        raise UnsupportedLayerError(
            f"layer {layer.name!r} of class {cls.__name__} is not a decomposable kind "
            "(supported: Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D, "
            "SeparableConv1D/2D)")
    for method in ("call", "convolution_op"):
        if getattr(cls, method, None) is not getattr(base, method, None):
            raise UnsupportedLayerError(
                f"layer {layer.name!r} of class {cls.__name__} subclasses {base.__name__} but "
                f"overrides {method}(), so its replacement would not compute what it does")
    mode = getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None)
    if mode:
        raise UnsupportedLayerError(
            f"layer {layer.name!r} is quantized ({mode}); decompose the float model")
    return kinds[base]


def _graph_shapes(layer: keras.layers.Layer, nodes: Container[int] | None = None
                  ) -> list[tuple[Any, Any]]:
    """``(input_shape, output_shape)`` (batch axis included) of the layer's calls in a
    graph, as the graph's own tensors know them: those whose node ids are in ``nodes``, or
    every call when ``nodes`` is None."""
    out = []
    for node in getattr(layer, "_inbound_nodes", []):
        if nodes is not None and id(node) not in nodes:
            continue
        ins, outs = node.input_tensors, node.output_tensors
        if len(ins) != 1 or len(outs) != 1:
            raise UnsupportedLayerError(
                f"layer {layer.name!r} takes {len(ins)} input(s) and gives {len(outs)} "
                "output(s); decomposable layers have one of each")
        out.append((tuple(ins[0].shape), tuple(outs[0].shape)))
    return out


def describe_layer(layer: keras.layers.Layer, *, input_shape: Any = None,
                   output_shape: Any = None, nodes: Container[int] | None = None) -> LayerInfo:
    """Describe a decomposable layer, or raise :class:`UnsupportedLayerError` saying why.

    The layer's class is looked at first, so any other layer (a custom one included) is
    refused without being asked anything. Shapes come from the graph: the layer's input
    and output tensors in the model it was called in.

    Args:
        layer: A built Keras layer (Dense, ConvND, ConvNDTranspose, DepthwiseConvND,
            SeparableConvND).
        input_shape: Its input shape without the batch axis; taken from the layer's (first)
            call in its graph when omitted.
        output_shape: Its output shape without the batch axis; taken from the call in the
            graph with that input shape when there is one, else computed by the layer.
        nodes: Ids of the graph nodes whose calls count (a model's:
            :func:`lrf_optuna.rewrite.graph_nodes`); every call of the layer when omitted.
    """
    kind = _layer_kind(layer)
    cls = type(layer).__name__
    if not layer.built:
        raise UnsupportedLayerError(f"layer {layer.name!r} is not built")
    calls = _graph_shapes(layer, nodes)
    if input_shape is None:
        if not calls:
            raise UnsupportedLayerError(
                f"layer {layer.name!r}: cannot infer its input shape (it was never called "
                "on a symbolic input; pass input_shape)")
        input_shape = _shape_without_batch(calls[0][0])
    input_shape = tuple(int(d) for d in input_shape)
    if output_shape is None:
        known = [o for i, o in calls if tuple(i)[1:] == input_shape]
        if known:
            output_shape = _shape_without_batch(known[0])
        else:
            try:
                output_shape = _shape_without_batch(
                    layer.compute_output_shape((1, *input_shape)))
            except UnsupportedLayerError:
                raise
            except Exception as err:
                raise UnsupportedLayerError(
                    f"layer {layer.name!r}: cannot compute its output shape for input shape "
                    f"{input_shape} ({type(err).__name__}: {err})") from err
    output_shape = tuple(int(d) for d in output_shape)
    cfg = layer.get_config()
    if cfg.get("lora_rank"):
        raise UnsupportedLayerError(f"layer {layer.name!r} has LoRA enabled")
    data_format = cfg.get("data_format") or "channels_last"
    common: dict[str, Any] = dict(
        name=layer.name,
        class_name=cls,
        use_bias=bool(cfg.get("use_bias", True)),
        activation=cfg.get("activation", "linear"),
        data_format=data_format,
        input_shape=_to_channels_last(input_shape, data_format),
        output_shape=_to_channels_last(output_shape, data_format),
        dtype=str(layer.variable_dtype),
    )
    if kind == "dense":
        kernel = layer.kernel
        return LayerInfo(kind="dense", in_channels=int(kernel.shape[0]),
                         out_channels=int(kernel.shape[1]), **common)
    n = len(_tuple(cfg["kernel_size"]))
    conv: dict[str, Any] = dict(
        kernel_size=_ntuple(cfg["kernel_size"], n),
        strides=_ntuple(cfg["strides"], n),
        dilation_rate=_ntuple(cfg["dilation_rate"], n),
        padding=str(cfg["padding"]),
    )
    c_in = common["input_shape"][-1]
    c_out = common["output_shape"][-1]
    if kind == "conv":
        return LayerInfo(kind="conv", in_channels=c_in, out_channels=c_out,
                         groups=int(cfg.get("groups", 1)), **conv, **common)
    if kind == "conv_transpose":
        op = cfg.get("output_padding")
        return LayerInfo(kind="conv_transpose", in_channels=c_in, out_channels=c_out,
                         output_padding=None if op is None else _ntuple(op, n),
                         **conv, **common)
    return LayerInfo(kind=kind, in_channels=c_in, out_channels=c_out,
                     depth_multiplier=int(cfg.get("depth_multiplier", 1)), **conv, **common)


def layer_weights(layer: keras.layers.Layer) -> dict[str, np.ndarray]:
    """The original layer's weights by role: ``kernel`` (or ``depthwise_kernel`` and
    ``pointwise_kernel``) and ``bias`` when present, as numpy arrays."""
    out: dict[str, np.ndarray] = {}
    for role in ("kernel", "depthwise_kernel", "pointwise_kernel", "bias"):
        var = getattr(layer, role, None)
        if var is not None and hasattr(var, "shape"):
            try:
                out[role] = keras.ops.convert_to_numpy(var)
            except Exception:  # a non-variable attribute with the same name
                continue
    return out


class LRFMethod(abc.ABC):
    """One low-rank factorization technique.

    A subclass declares which layers it applies to, the rank range, closed-form costs,
    how to factorize weights and which stages compute with the factors. Register it with
    :func:`register_method` and it is available everywhere (search space, cache, CLI).

    The expensive part is split in two so that a grid of ranks costs one decomposition:
    :meth:`prepare` runs once per layer (an SVD, a QR ...), :meth:`factorize` cuts the
    prepared result at one rank.

    Data-aware methods (``needs_inputs = True``, e.g. the activation-aware SVDs) also fit
    the layer's calibration inputs: they are prepared by :meth:`prepare_with_inputs`, and
    :meth:`decompose` needs ``inputs=`` unless it gets ``prepared=`` or ``factors=``.
    """

    #: Registry name, e.g. ``"tucker2"``.
    name: ClassVar[str]
    #: One line for reports and ``--help``.
    description: ClassVar[str]
    #: Whether the similarity cache stores this method's factors (iterative methods whose
    #: result is costly or not bit-reproducible); others are recomputed on demand.
    cache_factors: ClassVar[bool] = False
    #: Whether the factors depend on the layer's calibration inputs as well as its weights
    #: (then :meth:`prepare_with_inputs` does the work, and ``cache_factors`` should be set:
    #: the cache is where the inputs are).
    needs_inputs: ClassVar[bool] = False

    # -- applicability -------------------------------------------------------------------
    @abc.abstractmethod
    def unsupported_reason(self, info: LayerInfo) -> str | None:
        """``None`` when the method applies to the layer, else why it does not."""

    def applies_to(self, info: LayerInfo) -> bool:
        return self.unsupported_reason(info) is None

    @abc.abstractmethod
    def max_rank(self, info: LayerInfo) -> int:
        """Largest meaningful rank; at this rank the factorization is exact."""

    def min_rank(self, info: LayerInfo) -> int:
        return 1

    # -- costs ---------------------------------------------------------------------------
    @abc.abstractmethod
    def params(self, info: LayerInfo, rank: int) -> int:
        """Parameters of the replacement layer at ``rank`` (bias included)."""

    @abc.abstractmethod
    def macs(self, info: LayerInfo, rank: int) -> int:
        """Multiply-accumulates of the replacement layer per sample (bias excluded)."""

    # -- factorization -------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        """Per-layer work shared by all ranks (e.g. one SVD). Weights are validated."""

    def prepare_with_inputs(self, info: LayerInfo, weights: Mapping[str, np.ndarray],
                            inputs: np.ndarray) -> Any:
        """:meth:`prepare` given the layer's calibration inputs as well.

        ``inputs`` is what the original layer receives, ``(n, *input_shape)`` in the layer's
        own ``data_format``. Weight-only methods ignore it (this default); data-aware
        methods (``needs_inputs``) override it.
        """
        return self.prepare(info, weights)

    @abc.abstractmethod
    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        """Factor weights at ``rank`` in stage order (bias not included)."""

    @abc.abstractmethod
    def stages(self, info: LayerInfo, rank: int) -> list[Stage]:
        """The stage chain of the replacement layer at ``rank``."""

    # -- helpers shared by every method --------------------------------------------------
    def check(self, info: LayerInfo, rank: int | None = None) -> None:
        """Raise a clear error when the method does not apply or ``rank`` is invalid."""
        reason = self.unsupported_reason(info)
        if reason is not None:
            raise UnsupportedLayerError(
                f"method {self.name!r} does not apply to layer {info.name!r} "
                f"({info.class_name}): {reason}")
        if rank is not None:
            lo, hi = self.min_rank(info), self.max_rank(info)
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not (
                    lo <= rank <= hi):
                raise DecompositionError(
                    f"rank for method {self.name!r} on layer {info.name!r} must be an "
                    f"integer in [{lo}, {hi}], but got {rank!r}")

    def saves(self, info: LayerInfo, rank: int) -> bool:
        """Whether ``rank`` saves parameters or multiply-accumulates over the original."""
        return (self.params(info, rank) < info.original_params
                or self.macs(info, rank) < info.original_macs)

    def saving_ranks(self, info: LayerInfo) -> list[int]:
        """All valid ranks that save parameters or FLOPs (empty: "no saving")."""
        if not self.applies_to(info):
            return []
        return [r for r in range(self.min_rank(info), self.max_rank(info) + 1)
                if self.saves(info, r)]

    def decompose(self, info: LayerInfo, weights: Mapping[str, np.ndarray], rank: int,
                  *, prepared: Any = None,
                  factors: list[np.ndarray] | None = None,
                  inputs: np.ndarray | None = None) -> FactorizedLayer:
        """Build the replacement layer at ``rank``, with factor weights and original bias.

        Args:
            info: The layer description (:func:`describe_layer`).
            weights: The original weights (:func:`layer_weights`).
            rank: The rank knob, in ``[min_rank, max_rank]``.
            prepared: The result of :meth:`prepare` (or :meth:`prepare_with_inputs`) on
                the same weights, to reuse it.
            factors: Ready factors (from :meth:`factorize`, e.g. cached); skips the work.
            inputs: The layer's calibration inputs, ``(n, *input_shape)`` in its own
                ``data_format``; required by data-aware methods (``needs_inputs``) when
                neither ``prepared`` nor ``factors`` is given, ignored by the others.

        Raises:
            UnsupportedLayerError: the method does not apply, or the replacement does not
                run here or outputs another shape than the layer (it is run once on a
                zero sample: :func:`verify_replacement`).
            DecompositionError: a data-aware method got none of ``inputs``, ``prepared``
                and ``factors``; a bad rank or non-finite weights or inputs.
        """
        if rank is None:
            raise DecompositionError(
                f"method {self.name!r} on layer {info.name!r} needs a rank, but got None")
        self.check(info, rank)
        weights = validate_weights(info, weights)  # cheap, and guards the bias too
        if factors is None:
            if prepared is None and inputs is not None:
                prepared = self.prepare_with_inputs(info, weights, inputs)
            elif prepared is None:
                if self.needs_inputs:
                    raise inputs_required(self, info)
                prepared = self.prepare(info, weights)
            factors = self.factorize(info, prepared, int(rank))
        layer = FactorizedLayer(
            self.stages(info, int(rank)), method=self.name, rank=int(rank),
            use_bias=info.use_bias, activation=info.activation, data_format=info.data_format,
            original_class=info.class_name, kernel_initializer="zeros", name=info.name,
            dtype=info.dtype)
        layer.build((None, *_from_channels_last(info.input_shape, info.data_format)))
        values = [np.asarray(f, dtype=info.dtype) for f in factors]
        if info.use_bias:
            values.append(np.asarray(weights["bias"], dtype=info.dtype))
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise AssertionError(
                f"{self.name}: factor shapes {got} do not match the stages {expected}")
        layer.set_weights(values)
        verify_replacement(self.name, info, layer)
        return layer


def verify_replacement(method: str, info: LayerInfo, layer: keras.layers.Layer) -> None:
    """Run a replacement once on one zero sample of the original input shape; raise
    :class:`UnsupportedLayerError` naming the layer and the method when it cannot run here
    or its output shape differs from the original layer's.

    :meth:`LRFMethod.decompose` calls it on every layer it builds, so a replacement that
    would fail is refused when it is made, never later inside a user's model.

    Example:
        >>> dense = keras.layers.Dense(4, name="fc")
        >>> _ = dense.build((None, 8))
        >>> info = describe_layer(dense, input_shape=(8,))
        >>> wrong = FactorizedLayer([{"op": "dense", "kernel_shape": [8, 3]}], method="svd",
        ...                         rank=3)
        >>> try:
        ...     verify_replacement("svd", info, wrong)
        ... except UnsupportedLayerError as err:
        ...     print(str(err).replace(": ", ":\\n", 1))
        method 'svd' on layer 'fc' (Dense):
        the replacement outputs shape (3,), but the layer outputs (4,)
    """
    where = f"method {method!r} on layer {info.name!r} ({info.class_name})"
    probe = np.zeros((1, *_from_channels_last(info.input_shape, info.data_format)),
                     dtype=layer.compute_dtype)
    try:
        out = layer(probe)
    except Exception as err:
        detail = " ".join(str(err).split())[:400]
        raise UnsupportedLayerError(
            f"{where}: the replacement does not run with this TensorFlow "
            f"({type(err).__name__}: {detail})") from err
    expected = _from_channels_last(info.output_shape, info.data_format)
    got = tuple(int(d) for d in out.shape[1:])
    if got != expected:
        raise UnsupportedLayerError(
            f"{where}: the replacement outputs shape {got}, but the layer outputs {expected}")


def inputs_required(method: LRFMethod, info: LayerInfo) -> DecompositionError:
    """The error of a data-aware method asked to decompose ``info`` without its inputs."""
    shape = info.input_shape
    if info.data_format == "channels_first" and len(shape) > 1:
        shape = (shape[-1], *shape[:-1])
    return DecompositionError(
        f"method {method.name!r} fits layer {info.name!r} to its calibration inputs, but "
        f"got none: pass inputs= (what the layer receives on calibration data, shape "
        f"(n, {', '.join(map(str, shape))})) to decompose(), or prepared= / factors= (the "
        "similarity cache stores this method's factors: use SimilarityCache.build_model)")


def validate_weights(info: LayerInfo, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check the weights are present and finite; return them as float64 arrays."""
    out: dict[str, np.ndarray] = {}
    for role, value in weights.items():
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise DecompositionError(
                f"layer {info.name!r}: its {role} has {bad} NaN or Inf value(s); "
                "cannot decompose non-finite weights")
        out[role] = arr
    return out


# -- registry ------------------------------------------------------------------------------
_REGISTRY: dict[str, LRFMethod] = {}
M = TypeVar("M", bound=type[LRFMethod])


def register_method(cls: M) -> M:
    """Class decorator adding an :class:`LRFMethod` to the registry under ``cls.name``."""
    name = cls.name
    if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
        raise ValueError(f"an LRF method named {name!r} is already registered")
    _REGISTRY[name] = cls()
    return cls


def get_method(name: str) -> LRFMethod:
    """The registered method called ``name``.

    Example:
        >>> get_method("svd").name
        'svd'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown LRF method {name!r}; registered: {sorted(_REGISTRY)}") from None


def available_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return list(_REGISTRY)


def methods_for(info: LayerInfo) -> list[LRFMethod]:
    """The registered methods that apply to a layer."""
    return [m for m in _REGISTRY.values() if m.applies_to(info)]

