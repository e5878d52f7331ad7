"""Channel flow through a Keras graph: which output channels can be removed, and where.

Every tensor that carries prunable channels gets a :class:`ChannelMap`: along one axis
(its channel axis, or the feature axis after a ``Flatten``), which producer channel each
position is. Producers (Conv, ConvTranspose, SeparableConv, Dense) start a map; layers
that keep channels apart (activations, pooling, dropout, padding, BatchNorm,
DepthwiseConv, elementwise ops with scalar constants) carry it; merges (``Add`` ...) tie
the producers of their inputs into one group pruned alike; ``Concatenate`` lays maps side
by side; ``Flatten`` spreads a map over the flat features. Layers that consume a map slice
their input channels. Anything else a map reaches (a model output, a ``Reshape``, a custom
layer, a nested model's boundary) makes every producer in it not prunable, with the
reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from lrf_optuna.rewrite import _check_supported_model

L = keras.layers

#: Layers whose output channels are pruned (the filters / units), by weight family.
PRODUCERS: dict[type, str] = {
    L.Dense: "dense",
    L.Conv1D: "conv", L.Conv2D: "conv", L.Conv3D: "conv",
    L.Conv1DTranspose: "conv_transpose", L.Conv2DTranspose: "conv_transpose",
    L.Conv3DTranspose: "conv_transpose",
    L.SeparableConv1D: "separable", L.SeparableConv2D: "separable",
}
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_BATCH_NORM = (L.BatchNormalization,)
#: Carriers that act on each element alone, whatever the axis.
_ELEMENTWISE_LAYERS = (
    L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
    L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
    L.ActivityRegularization, L.Identity)
#: Carriers that keep channels apart along their data-format channel axis.
_SPATIAL_LAYERS = (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
    L.AveragePooling2D, L.AveragePooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D,
    L.UpSampling2D, L.UpSampling3D)
_GLOBAL_POOLING = (
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
#: Activation functions that act on each element alone (softmax & co. mix channels).
ELEMENTWISE_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "sigmoid", "tanh", "elu", "selu", "gelu", "silu", "swish",
    "softplus", "softsign", "hard_sigmoid", "hard_silu", "hard_swish", "leaky_relu",
    "mish", "exponential", "log_sigmoid", "celu", "tanh_shrink", "hard_tanh",
    "hard_shrink", "soft_shrink", "squareplus", "sparse_plus"})
#: ``keras.ops`` operations (recorded in Functional graphs) that act on each element,
#: when their other arguments are scalars.
_ELEMENTWISE_OPS = frozenset({
    "Relu", "Relu6", "Sigmoid", "Tanh", "Silu", "Gelu", "Elu", "Selu", "Softplus",
    "Softsign", "HardSigmoid", "HardSilu", "LeakyRelu", "Mish", "Celu", "LogSigmoid",
    "Abs", "Absolute", "Negative", "Square", "Sqrt", "Exp", "Log", "Log1p", "Clip",
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power"})
_MERGE_OPS = frozenset({"Add", "Subtract", "Multiply", "Maximum", "Minimum"})


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Which producer channel each position along ``axis`` of a tensor is.

    ``gid[i]`` is the producer (an index of :attr:`GraphAnalysis.producer_paths`) of
    position ``i``, ``-1`` for a position no pruning touches; ``ch[i]`` its filter index.
    ``axis`` counts the batch axis (``1 <= axis < rank``).
    """

    axis: int
    gid: np.ndarray
    ch: np.ndarray

    @property
    def groups(self) -> list[int]:
        return [int(g) for g in np.unique(self.gid[self.gid >= 0])]

    def is_whole(self) -> bool:
        """One producer's channels, each once, in order (what a merge can tie)."""
        g = self.gid[0]
        return bool(g >= 0 and np.all(self.gid == g)
                    and np.array_equal(self.ch, np.arange(len(self.ch))))


@dataclass
class Producer:
    """A layer whose output channels pruning would remove, prunable or not."""

    path: str
    layer: keras.layers.Layer
    family: str
    channels: int
    gid: int | None = None
    reason: str | None = None
    #: The first BatchNormalization after it, reached through channel-preserving layers
    #: only (no merge, Concatenate, Flatten or depthwise in between).
    batch_norm: keras.layers.Layer | None = None


@dataclass
class GraphAnalysis:
    """The result of :func:`analyze`: producers, groups and the maps layers consume."""

    producers: dict[str, Producer] = field(default_factory=dict)
    producer_paths: list[str] = field(default_factory=list)
    #: ``{path: map of its input}`` for every layer whose weights follow the pruning.
    inputs: dict[str, ChannelMap] = field(default_factory=dict)
    #: Layers that *consume* the channels (their outputs do not carry them on).
    consumers: set[str] = field(default_factory=set)
    parent: list[int] = field(default_factory=list)
    reasons: dict[int, list[str]] = field(default_factory=dict)
    merges: dict[int, list[str]] = field(default_factory=dict)

    # -- groups (union-find over producer ids) -------------------------------------------
    def new_group(self, path: str) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.producer_paths.append(path)
        return gid

    def root(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            ra, rb = min(ra, rb), max(ra, rb)
            self.parent[rb] = ra
            self.reasons[ra] = self.reasons.get(ra, []) + self.reasons.pop(rb, [])
            self.merges[ra] = self.merges.get(ra, []) + self.merges.pop(rb, [])
        if where not in self.merges.setdefault(ra, []):
            self.merges[ra].append(where)

    def block(self, maps: Iterable[ChannelMap | None], reason: str) -> None:
        """Make every group with channels in ``maps`` not prunable, for ``reason``."""
        for m in maps:
            for g in m.groups if m is not None else ():
                self.block_group(g, reason)

    def block_group(self, gid: int, reason: str) -> None:
        r = self.reasons.setdefault(self.root(gid), [])
        if reason not in r:
            r.append(reason)

    def members(self, gid: int) -> list[str]:
        root = self.root(gid)
        return [p for i, p in enumerate(self.producer_paths) if self.root(i) == root]

    def group_reason(self, gid: int) -> str | None:
        root = self.root(gid)
        reasons = self.reasons.get(root)
        if not reasons:
            return None
        text = "; ".join(reasons)
        members = self.members(root)
        if len(members) > 1:
            text += (f" (it is pruned alike with {members}, whose branches meet at "
                     f"{self.merges.get(root, [])})")
        return text

    def root_of(self, gid: np.ndarray) -> np.ndarray:
        """The group root of every entry of ``gid`` (``-1`` stays ``-1``)."""
        roots = np.array([self.root(g) for g in range(len(self.parent))] + [-1])
        return roots[gid]

    def layer_groups(self, path: str) -> dict[int, int]:
        """``{group root: multiplicity}`` of the channels in ``path``'s input map."""
        m = self.inputs[path]
        counts: Counter[int] = Counter()
        for g, n in zip(*np.unique(m.gid[m.gid >= 0], return_counts=True)):
            counts[self.root(int(g))] += int(n) // self.producers[
                self.producer_paths[int(g)]].channels
        return dict(counts)


def graph_nodes(model: keras.Model) -> list[Any]:
    """The (non-input) nodes of a Sequential or Functional model, in topological order."""
    fn = model._functional if isinstance(model, keras.Sequential) else model
    out = []
    for depth in sorted(fn._nodes_by_depth, reverse=True):
        out += [n for n in fn._nodes_by_depth[depth] if n.operation and not n.is_input]
    return out


def _channel_axis(layer: Any, rank: int) -> int:
    fmt = getattr(layer, "data_format", None)
    return 1 if fmt == "channels_first" else rank - 1


def _activation_name(act: Any) -> str | None:
    if isinstance(act, str):
        return act
    name = getattr(act, "__name__", None)
    return name if isinstance(name, str) else None


def _is_scalar(v: Any) -> bool:
    if isinstance(v, (bool, int, float, np.number)) or v is None:
        return True
    return isinstance(v, np.ndarray) and v.size == 1


def _source(t: Any) -> str:
    op = getattr(getattr(t, "_keras_history", None), "operation", None)
    return repr(op.name) if op is not None else "an input"


def _describe(op: Any, path: str) -> str:
    return f"{path!r} ({type(op).__name__})"


class _Analyzer:
    def __init__(self) -> None:
        self.a = GraphAnalysis()
        self.map_owner: dict[int, str] = {}   # id(map) -> producer path (fresh maps only)
        self.seen: set[int] = set()           # nested models already analyzed

    # -- one model level ---------------------------------------------------------------
    def scope(self, model: keras.Model, prefix: str, where: str) -> None:
        _check_supported_model(model)
        nodes = graph_nodes(model)
        uses = Counter(id(n.operation) for n in nodes)
        maps: dict[int, ChannelMap] = {}
        for node in nodes:
            op = node.operation
            path = f"{prefix}{op.name}"
            ins = list(node.input_tensors)
            in_maps = [maps.get(id(t)) for t in ins]
            out: ChannelMap | None = None
            if isinstance(op, keras.Model):
                self.a.block(in_maps, f"its output enters nested model {path!r} (pruning "
                                      "does not cross nested-model boundaries)")
                if id(op) in self.seen:
                    continue
                self.seen.add(id(op))
                first = len(self.a.producer_paths)
                self.scope(op, f"{path}/", f"nested model {path!r}")
                if uses[id(op)] > 1:
                    for gid in range(first, len(self.a.producer_paths)):
                        self.a.block_group(gid, f"it is inside nested model {path!r}, which "
                                                f"is called {uses[id(op)]} times")
            elif uses[id(op)] > 1 and (type(op) in PRODUCERS or op.weights):
                # weightless layers (a shared ReLU instance) are followed per call below
                if type(op) in PRODUCERS:
                    self.producer(op, path, node.outputs[0], reason=(
                        f"it is a shared layer (called {uses[id(op)]} times)"))
                self.a.block(in_maps, f"its output feeds the shared layer "
                                      f"{_describe(op, path)}, called {uses[id(op)]} times")
            else:
                out = self.node(node, op, path, ins, in_maps)
            if out is not None and len(node.outputs) == 1:
                maps[id(node.outputs[0])] = out
            elif out is not None:
                self.a.block([out], f"{_describe(op, path)} has several outputs")
        for t in model.outputs:
            self.a.block([maps.get(id(t))], f"its output reaches the output of {where}")

    # -- one node ------------------------------------------------------------------------
    def node(self, node: Any, op: Any, path: str, ins: list[Any],
             in_maps: list[ChannelMap | None]) -> ChannelMap | None:
        m = in_maps[0] if len(in_maps) == 1 else None
        if not isinstance(op, keras.layers.Layer):
            return self.operation(node, op, path, ins, in_maps)
        cls = type(op)
        if cls in PRODUCERS:
            if m is not None:
                self.consume(op, path, ins[0], m)
            return self.producer(op, path, node.outputs[0])
        if cls in _MERGES:
            return self.merge(op, path, ins, in_maps)
        if cls is L.Concatenate:
            return self.concatenate(op, path, ins, in_maps)
        if m is None:
            if any(x is not None for x in in_maps):
                self.a.block(in_maps, f"its output feeds {_describe(op, path)}, which the "
                                      "pruner cannot adjust")
            return None
        rank = len(ins[0].shape)
        if cls in _ELEMENTWISE_LAYERS or (cls is L.Activation and _activation_name(
                op.activation) in ELEMENTWISE_ACTIVATIONS) or (cls is L.Rescaling and all(
                np.asarray(v).size == 1 for v in (op.scale, op.offset))):
            return m
        if cls in (*_SPATIAL_LAYERS, *_GLOBAL_POOLING, *_BATCH_NORM, *_DEPTHWISE):
            axis = int(op.axis) % rank if cls in _BATCH_NORM else _channel_axis(op, rank)
            if axis != m.axis:
                self.a.block([m], f"its output reaches {_describe(op, path)} on axis "
                                  f"{m.axis}, not that layer's channel axis {axis}")
                return None
            if cls in _BATCH_NORM:
                self.a.inputs[path] = m
                owner = self.map_owner.get(id(m))
                if owner is not None and self.a.producers[owner].batch_norm is None:
                    self.a.producers[owner].batch_norm = op
            elif cls in _DEPTHWISE:
                self.a.inputs[path] = m
                k = int(op.depth_multiplier)
                return ChannelMap(m.axis, np.repeat(m.gid, k), np.repeat(m.ch, k))
            elif cls in _GLOBAL_POOLING and not op.keepdims:
                return ChannelMap(1, m.gid, m.ch)
            return m
        if cls is L.Flatten:
            return self.flatten(op, path, ins[0], m)
        self.a.block([m], f"its output feeds {_describe(op, path)}, which the pruner "
                          "cannot adjust")
        return None

    def producer(self, op: Any, path: str, tensor: Any, *, reason: str | None = None
                 ) -> ChannelMap | None:
        family = PRODUCERS[type(op)]
        cfg = op.get_config()
        rank = len(tensor.shape)
        axis = rank - 1 if family == "dense" else _channel_axis(op, rank)
        channels = int(tensor.shape[axis])
        if reason is None:
            act = _activation_name(getattr(op, "activation", None))
            if cfg.get("groups", 1) != 1:
                reason = f"it is a grouped convolution (groups={cfg['groups']})"
            elif act not in ELEMENTWISE_ACTIVATIONS:
                reason = (f"its activation {act or cfg.get('activation')!r} is not known to "
                          "act on each channel alone (softmax & co. mix channels)")
            elif cfg.get("lora_rank") or getattr(op, "quantization_mode", None):
                reason = "it has LoRA or quantization enabled"
            elif channels < 2:
                reason = "it has a single output channel"
        prod = Producer(path, op, family, channels, reason=reason)
        self.a.producers[path] = prod
        if reason is not None:
            return None
        prod.gid = self.a.new_group(path)
        out = ChannelMap(axis, np.full(channels, prod.gid), np.arange(channels))
        self.map_owner[id(out)] = path
        return out

    def consume(self, op: Any, path: str, tensor: Any, m: ChannelMap) -> None:
        rank = len(tensor.shape)
        axis = rank - 1 if isinstance(op, L.Dense) else _channel_axis(op, rank)
        cfg = op.get_config()
        if axis != m.axis:
            self.a.block([m], f"its output reaches {_describe(op, path)} on axis {m.axis}, "
                              f"not that layer's input-channel axis {axis}")
        elif cfg.get("groups", 1) != 1:
            self.a.block([m], f"its output feeds the grouped convolution "
                              f"{_describe(op, path)} (groups={cfg['groups']})")
        elif cfg.get("lora_rank") or getattr(op, "quantization_mode", None):
            self.a.block([m], f"its output feeds {_describe(op, path)}, which has LoRA or "
                              "quantization enabled")
        else:
            self.a.inputs[path] = m
            self.a.consumers.add(path)

    def merge(self, op: Any, path: str, ins: list[Any], in_maps: list[ChannelMap | None]
              ) -> ChannelMap | None:
        mapped = [m for m in in_maps if m is not None]
        if not mapped:
            return None
        fixed = [_source(t) for t, m in zip(ins, in_maps) if m is None]
        if fixed:
            self.a.block(mapped, f"its branch meets, at {_describe(op, path)}, a tensor from "
                                 f"{', '.join(fixed)} that cannot be pruned alike")
            return None
        if not all(m.is_whole() and m.axis == mapped[0].axis
                   and len(m.gid) == len(mapped[0].gid) for m in mapped):
            self.a.block(mapped, f"its branch meets, at {_describe(op, path)}, channels that "
                                 "are concatenated, flattened or repeated")
            return None
        first = int(mapped[0].gid[0])
        for m in mapped[1:]:
            self.a.union(first, int(m.gid[0]), path)
        self.a.union(first, first, path)
        return ChannelMap(mapped[0].axis, mapped[0].gid, mapped[0].ch)

    def concatenate(self, op: Any, path: str, ins: list[Any],
                    in_maps: list[ChannelMap | None]) -> ChannelMap | None:
        if not any(m is not None for m in in_maps):
            return None
        rank = len(ins[0].shape)
        axis = int(op.axis) % rank
        gids, chs = [], []
        for t, m in zip(ins, in_maps):
            if m is not None and m.axis != axis:
                self.a.block([m], f"{_describe(op, path)} concatenates it along axis {axis}, "
                                  f"not its channel axis {m.axis}")
                m = None
            if m is None:
                n = t.shape[axis]
                gids.append(np.full(int(n), -1))
                chs.append(np.zeros(int(n), dtype=np.int64))
            else:
                gids.append(m.gid)
                chs.append(m.ch)
        return ChannelMap(axis, np.concatenate(gids), np.concatenate(chs))

    def flatten(self, op: Any, path: str, tensor: Any, m: ChannelMap) -> ChannelMap | None:
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            self.a.block([m], f"{_describe(op, path)} flattens a tensor of unknown shape "
                              f"{tuple(tensor.shape)}")
            return None
        ax = m.axis - 1
        pos = np.arange(shape[ax]).reshape([-1 if i == ax else 1 for i in range(len(shape))])
        pos = np.broadcast_to(pos, shape)
        if getattr(op, "data_format", None) == "channels_first":
            pos = np.moveaxis(pos, 0, -1)   # Flatten moves channels last before flattening
        flat = pos.reshape(-1)
        return ChannelMap(1, m.gid[flat], m.ch[flat])

    def operation(self, node: Any, op: Any, path: str, ins: list[Any],
                  in_maps: list[ChannelMap | None]) -> ChannelMap | None:
        """A ``keras.ops`` call recorded in a Functional graph (``x * 2``, ``ops.relu``)."""
        if not any(m is not None for m in in_maps):
            return None
        name = type(op).__name__
        tensors = {id(t) for t in ins}
        others = [v for v in (*node.arguments.args, *node.arguments.kwargs.values())
                  if id(v) not in tensors]
        flat_others = [x for v in others for x in keras.tree.flatten(v)]
        if name in _ELEMENTWISE_OPS and len(ins) == 1 and all(
                _is_scalar(x) for x in flat_others):
            return in_maps[0]
        if name in _MERGE_OPS and len(ins) == 2 and not flat_others and \
                tuple(ins[0].shape) == tuple(ins[1].shape):
            return self.merge(op, path, ins, in_maps)
        self.a.block(in_maps, f"its output feeds the operation {_describe(op, path)}, which "
                              "the pruner cannot adjust")
        return None


def analyze(model: keras.Model) -> GraphAnalysis:
    """Follow every prunable channel through ``model`` (nested models included)."""
    analyzer = _Analyzer()
    analyzer.scope(model, "", f"model {model.name!r}")
    return analyzer.a

