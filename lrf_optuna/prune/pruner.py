"""Prune a model: the graph analysis as an object, and the functions built on it.

Example:
    >>> import keras
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3, name="c1"),
    ...     keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(name="relu"),
    ...     keras.layers.Flatten(name="flat"), keras.layers.Dense(10, name="fc")], name="net")
    >>> graph = PruneGraph(model)
    >>> sorted(graph.prunable), graph.entries["fc"].reason
    (['c1'], "its output reaches the output of model 'net'")
    >>> graph.entries["c1"].consumers, graph.entries["c1"].carriers
    (('fc',), ('bn',))
    >>> small = graph.prune({"c1": 0.25})
    >>> small.get_layer("c1").filters, tuple(small.get_layer("fc").kernel.shape)
    (12, (432, 10))
    >>> graph.model_costs({"c1": 0.25}).params == small.count_params()
    True
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from lrf_optuna.costs import (
    LayerCost,
    ModelCost,
    batchnorm_folding,
    info_kernels,
    kernel_bytes,
    layer_costs,
    layer_deployed_bytes,
    standalone_batchnorm_bytes,
)
from lrf_optuna.decompose import LayerInfo, UnsupportedLayerError, describe_layer
from lrf_optuna.prune._graph import GraphAnalysis, analyze
from lrf_optuna.prune.costs import kept_count, pruned_layer_cost, pruned_layer_info
from lrf_optuna.prune.importance import Importance, consumers_of, group_scores, select_channels
from lrf_optuna.rewrite import iter_layers, rewrite_model

__all__ = ["Choice", "PruneEntry", "PruneGraph", "find_prunable", "kept_channels",
           "prune_and_factorize", "prune_model"]

logger = logging.getLogger(__name__)

#: ``(ratio, method, rank)`` for one layer: prune ``ratio`` of its filters, then factorize
#: the pruned kernel with ``method`` at ``rank`` (``method`` ``None``/``"keep"``: no LRF).
Choice = tuple[float, "str | None", "int | None"]


@dataclass(frozen=True)
class PruneEntry:
    """A layer whose filters (or units) pruning removes, or the reason it cannot.

    Attributes:
        path: Layer path (``"outer/inner"`` inside nested models).
        layer: The layer.
        channels: Its output channels (filters or units).
        group: The layers pruned alike with it (itself included; more than one when
            branches meet at ``Add``-like merges), in graph order.
        consumers: Layers whose input channels are sliced when it is pruned.
        carriers: Layers with weights sliced along (BatchNorm, DepthwiseConv).
        reason: Why it is not prunable (``None`` when it is).
    """

    path: str
    layer: keras.layers.Layer
    channels: int
    group: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    carriers: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None


def _check_ratio(path: str, ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise TypeError(f"pruning ratio for layer {path!r} must be a number in [0, 1), "
                        f"but got {ratio!r}")
    value = float(ratio)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"pruning ratio for layer {path!r} must be in [0, 1) (the fraction "
                         f"of filters removed), but got {ratio!r}")
    return value


class PruneGraph:
    """Where the channels of a model flow: what can be pruned, how, at what cost.

    Built once per model (the analysis walks the graph); every method is cheap.

    Args:
        model: A built Sequential or Functional model (nested models allowed).
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self._a: GraphAnalysis = analyze(model)
        self._layers = dict(iter_layers(model))
        self._infos: dict[str, LayerInfo | None] = {}
        self._fixed_costs: dict[str, LayerCost] = {}
        self._folds: tuple[set[int], set[int]] | None = None
        self._deployed_bytes: dict[str, dict[str, int]] = {}
        self.entries: dict[str, PruneEntry] = {}
        for path, prod in self._a.producers.items():
            if prod.gid is None:
                self.entries[path] = PruneEntry(path, prod.layer, prod.channels,
                                                reason=prod.reason)
                continue
            users = [p for p, m in self._a.inputs.items()
                     if self._a.root(prod.gid) in self._groups_in(p)]
            self.entries[path] = PruneEntry(
                path, prod.layer, prod.channels, group=tuple(self._a.members(prod.gid)),
                consumers=tuple(p for p in users if p in self._a.consumers),
                carriers=tuple(p for p in users if p not in self._a.consumers),
                reason=self._a.group_reason(prod.gid))

    @property
    def prunable(self) -> dict[str, PruneEntry]:
        """The entries that can be pruned."""
        return {p: e for p, e in self.entries.items() if e.prunable}

    @property
    def groups(self) -> list[tuple[str, ...]]:
        """The prunable groups (layers pruned alike), each once, in graph order."""
        return list(dict.fromkeys(e.group for e in self.prunable.values()))

    def input_axis(self, path: str) -> int | None:
        """The axis (batch axis counted) of layer ``path``'s input that pruning slices
        (what :meth:`input_mask` indexes); ``None`` when pruning never touches its input."""
        m = self._a.inputs.get(path)
        return None if m is None else m.axis

    def _groups_in(self, path: str) -> dict[int, int]:
        return self._a.layer_groups(path) if path in self._a.inputs else {}

    def _root(self, path: str) -> int:
        entry = self.entry(path)
        if not entry.prunable:
            raise ValueError(f"layer {path!r} cannot be pruned: {entry.reason}")
        gid = self._a.producers[path].gid
        assert gid is not None
        return self._a.root(gid)

    def entry(self, path: str) -> PruneEntry:
        """The entry of ``path``; ``KeyError`` naming it when it has no filters to prune."""
        if path in self.entries:
            return self.entries[path]
        if path in self._layers:
            raise KeyError(f"layer {path!r} ({type(self._layers[path]).__name__}) of model "
                           f"{self.model.name!r} has no filters to prune; prunable layers: "
                           f"{sorted(self.prunable)}")
        raise KeyError(f"model {self.model.name!r} has no layer {path!r}; prunable layers: "
                       f"{sorted(self.prunable)}")

    # -- ratios ------------------------------------------------------------------------
    def group_ratios(self, ratios: Mapping[str, float]) -> dict[int, float]:
        """Validate ``{path: ratio}`` and return ``{group id: ratio}`` for ratios > 0.

        A ratio given for one member of a group applies to the whole group; members given
        different ratios are an error. Ratio 0 is accepted for any layer with filters
        (even one that cannot be pruned).
        """
        out: dict[int, tuple[str, float]] = {}
        for path, raw in ratios.items():
            value = _check_ratio(path, raw)
            self.entry(path)
            if value == 0.0:
                continue
            root = self._root(path)
            if root in out and out[root][1] != value:
                raise ValueError(
                    f"layers {out[root][0]!r} and {path!r} are pruned alike (group "
                    f"{list(self.entries[path].group)}), but got ratios {out[root][1]!r} "
                    f"and {value!r}")
            out[root] = (path, value)
        return {root: value for root, (_, value) in out.items()}

    def _keep_counts(self, ratios: Mapping[str, float]) -> dict[int, int]:
        return {root: kept_count(self._channels(root), r)
                for root, r in self.group_ratios(ratios).items()}

    def _channels(self, root: int) -> int:
        return self._a.producers[self._a.producer_paths[root]].channels

    # -- importance and selection --------------------------------------------------------
    def importance(self, path: str, *, importance: Importance = "l1",
                   activations: Mapping[str, Any] | None = None) -> np.ndarray:
        """Importance of each output channel of ``path`` (its group's shared score)."""
        return group_scores(self._a, self._root(path), importance, activations)

    def kept_channels(self, path: str, ratio: float, *, importance: Importance = "l1",
                      activations: Mapping[str, Any] | None = None) -> np.ndarray:
        """Sorted indices of the output channels of ``path`` kept at ``ratio``.

        The same for every member of ``path``'s group. A pruned layer's outputs are the
        original outputs at these indices (exactly, when nothing upstream is pruned).
        """
        value = _check_ratio(path, ratio)
        channels = self.entry(path).channels
        if value == 0.0:
            return np.arange(channels)
        scores = self.importance(path, importance=importance, activations=activations)
        return select_channels(scores, kept_count(channels, value))

    def activation_layers(self, paths: Any = None) -> list[str]:
        """Layers whose captured *inputs* ``importance="activation"`` reads.

        Args:
            paths: Prunable layer paths to cover (default: all prunable layers).
        """
        wanted = self.prunable if paths is None else list(paths)
        roots = {self._root(p) for p in wanted}
        return sorted({c for r in roots for c in consumers_of(self._a, r)})

    # -- channels and costs, closed form --------------------------------------------------
    def channels(self, path: str, ratios: Mapping[str, float]) -> tuple[int, int]:
        """``(input channels, output channels)`` of layer ``path`` once ``ratios`` apply.

        Channels as :class:`~lrf_optuna.decompose.LayerInfo` counts them (a Dense after a
        Flatten has ``H x W x C`` inputs). Layers without channels give ``(0, 0)``.
        """
        return self._pruned_channels(path, self._keep_counts(ratios))

    def _info(self, path: str) -> LayerInfo | None:
        if path not in self._infos:
            try:
                self._infos[path] = describe_layer(self._layers[path])
            except UnsupportedLayerError:
                self._infos[path] = None
        return self._infos[path]

    def _pruned_channels(self, path: str, keeps: Mapping[int, int]) -> tuple[int, int]:
        layer = self._layers[path]
        info = self._info(path)
        if info is not None:
            cin, cout = info.in_channels, info.out_channels
        elif isinstance(layer, keras.layers.BatchNormalization):
            cin = cout = int(layer.moving_mean.shape[0])
        else:
            return 0, 0
        removed = sum(mult * (self._channels(root) - keeps[root])
                      for root, mult in self._groups_in(path).items() if root in keeps)
        cin -= removed
        prod = self._a.producers.get(path)
        if prod is not None and prod.gid is not None and self._a.root(prod.gid) in keeps:
            cout = keeps[self._a.root(prod.gid)]
        elif path in self._a.inputs and path not in self._a.consumers:
            cout = cin * int(getattr(layer, "depth_multiplier", 1))   # a carrier
        return cin, cout

    def layer_cost(self, path: str, ratios: Mapping[str, float], *,
                   method: str | None = None, rank: int | None = None) -> LayerCost:
        """Exact costs of layer ``path`` once ``ratios`` apply and it is factorized.

        Closed form from the layer's :class:`~lrf_optuna.decompose.LayerInfo`, its own
        ratio and the ratios of the producers feeding it; nothing is built.
        """
        return self._layer_cost(path, self._keep_counts(ratios), method, rank)

    def _layer_cost(self, path: str, keeps: Mapping[int, int], method: str | None,
                    rank: int | None, precision: str | None = None) -> LayerCost:
        layer = self._layers[path]
        touched = path in self._a.inputs or (
            path in self._a.producers and self._a.producers[path].gid is not None)
        if not touched and (method is None or method == "keep"):
            if path not in self._fixed_costs:
                self._fixed_costs[path] = layer_costs(layer, path)
            cost = self._fixed_costs[path]
            if precision is None:
                return cost
            return dataclasses.replace(cost, bytes=self._deployed(precision).get(path, 0))
        cin, cout = self._pruned_channels(path, keeps)
        itemsize = np.dtype(layer.variable_dtype).itemsize
        if isinstance(layer, keras.layers.BatchNormalization):
            params, macs = len(layer.weights) * cin, 0
            nbytes = params * itemsize
            if precision is not None:
                nbytes = (standalone_batchnorm_bytes(cin, precision)
                          if id(layer) in self._folding()[1] else 0)
        else:
            info = self._info(path)
            if info is None:
                raise UnsupportedLayerError(f"layer {path!r}: no cost formula for "
                                            f"{type(layer).__name__}")
            out = None if info.kind == "depthwise" else cout
            params, macs = pruned_layer_cost(info, in_channels=cin, out_channels=out,
                                             method=method, rank=rank)
            nbytes = params * itemsize
            if precision is not None:
                small = pruned_layer_info(info, in_channels=cin, out_channels=out)
                bias = bool(getattr(layer, "use_bias", False)) or id(layer) in self._folding()[0]
                nbytes = sum(kernel_bytes(k, precision)
                             for k in info_kernels(small, method, rank, bias=bias))
        name = "FactorizedLayer" if method not in (None, "keep") else type(layer).__name__
        return LayerCost(path, name, params, nbytes, macs)

    def _folding(self) -> tuple[set[int], set[int]]:
        if self._folds is None:
            self._folds = batchnorm_folding(self.model)
        return self._folds

    def _deployed(self, precision: str) -> dict[str, int]:
        if precision not in self._deployed_bytes:
            self._deployed_bytes[precision] = layer_deployed_bytes(self.model, precision)
        return self._deployed_bytes[precision]

    def model_costs(self, ratios: Mapping[str, float],
                    plan: Mapping[str, tuple[str, int] | None] | None = None, *,
                    precision: str | None = None) -> ModelCost:
        """Costs of the model pruned by ``ratios`` then factorized by ``plan``, unbuilt.

        Equal to :func:`lrf_optuna.model_costs` of
        ``rewrite_model(prune_model(model, ratios), plan)``; with ``precision`` (one of
        :data:`lrf_optuna.costs.PRECISIONS`) each layer's ``bytes`` are its deployed bytes
        in a ``.tflite`` file at that precision instead
        (:func:`lrf_optuna.costs.layer_deployed_bytes` of the built model).
        """
        keeps = self._keep_counts(ratios)
        plan = plan or {}
        rows = []
        for path in self._layers:
            choice = plan.get(path)
            method, rank = (choice[0], choice[1]) if choice else (None, None)
            rows.append(self._layer_cost(path, keeps, method, rank, precision))
        return ModelCost(tuple(rows))

    # -- building ------------------------------------------------------------------------
    def _masks(self, ratios: Mapping[str, float], importance: Importance,
               activations: Mapping[str, Any] | None) -> dict[int, np.ndarray]:
        masks: dict[int, np.ndarray] = {}
        for root, n_keep in self._keep_counts(ratios).items():
            channels = self._channels(root)
            if n_keep == channels:
                continue
            scores = group_scores(self._a, root, importance, activations)
            mask = np.zeros(channels, dtype=bool)
            mask[select_channels(scores, n_keep)] = True
            masks[root] = mask
        return masks

    def input_mask(self, path: str, ratios: Mapping[str, float], *,
                   importance: Importance = "l1",
                   activations: Mapping[str, Any] | None = None) -> np.ndarray | None:
        """Which positions of layer ``path``'s input channel axis survive ``ratios``.

        For a consumer, zeroing the other positions of its captured input and running the
        *original* layer gives exactly its output in the pruned model, as long as nothing
        else upstream of it changes -- in particular no other consumer of the same group
        (in a residual stage pruned as one group, the first block's conv is exact; later
        blocks also see the earlier blocks' changed outputs through the ``Add``). That is
        how the effect of pruning on the consumers can be scored from cached activations.
        ``None`` when every input channel survives.
        """
        from lrf_optuna.prune._rebuild import input_mask

        if path not in self._layers:
            self.entry(path)            # raises KeyError naming the path
        return input_mask(self._a, path, self._masks(ratios, importance, activations))

    def prune(self, ratios: Mapping[str, float], *, importance: Importance = "l1",
              activations: Mapping[str, Any] | None = None) -> keras.Model:
        """A new, smaller model with ``ratios`` of the planned layers' filters removed.

        See :func:`prune_model`.
        """
        from lrf_optuna.prune._rebuild import rebuild

        return rebuild(self.model, self._a, self._masks(ratios, importance, activations))


def find_prunable(model: keras.Model, *, include_unprunable: bool = False
                  ) -> dict[str, PruneEntry]:
    """The layers whose filters (or units) can be pruned, keyed by path.

    Args:
        model: A built Sequential or Functional model (nested models allowed).
        include_unprunable: Also list the Conv/Dense-like layers that cannot be pruned,
            with the reason (``entry.reason``).

    Example:
        >>> import keras
        >>> x = keras.Input((8, 8, 3))
        >>> y = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
        >>> y = keras.layers.Add(name="add")([y, keras.layers.Conv2D(4, 1, name="b")(x)])
        >>> y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
        >>> model = keras.Model(x, keras.layers.Dense(2, name="fc")(y), name="m")
        >>> {p: e.group for p, e in find_prunable(model).items()}
        {'a': ('a', 'b'), 'b': ('a', 'b')}
    """
    graph = PruneGraph(model)
    return dict(graph.entries) if include_unprunable else graph.prunable


def kept_channels(model: keras.Model, path: str, ratio: float, *,
                  importance: Importance = "l1",
                  activations: Mapping[str, Any] | None = None) -> np.ndarray:
    """Sorted indices of the output channels of layer ``path`` kept at ``ratio``.

    See :meth:`PruneGraph.kept_channels`; build a :class:`PruneGraph` once to ask often.
    """
    return PruneGraph(model).kept_channels(path, ratio, importance=importance,
                                           activations=activations)


def prune_model(model: keras.Model, ratios: Mapping[str, float], *,
                importance: Importance = "l1",
                activations: Mapping[str, Any] | None = None) -> keras.Model:
    """Return a new, smaller model with a fraction of each listed layer's filters removed.

    Every consumer is adjusted (next Conv/Dense input channels, BatchNorm statistics,
    DepthwiseConv channels, Flatten rows, Concatenate offsets); layers pruned alike (an
    ``Add`` group) share one ratio and one set of kept channels. The original model is
    not modified and shares no variables with the result; layer names are kept, so an LRF
    plan applies to the result with :func:`lrf_optuna.rewrite_model`.

    Args:
        model: A built Sequential or Functional model (nested models allowed).
        ratios: ``{layer_path: ratio}``, the fraction of filters removed, in ``[0, 1)``;
            ``floor(ratio * filters)`` are removed, at least one is kept
            (:func:`~lrf_optuna.prune.kept_count`).
        importance: ``"l1"`` (default), ``"l2"`` or ``"activation"``
            (:mod:`lrf_optuna.prune.importance`), or channel scores computed before,
            ``{layer path: scores}`` with one member of each pruned group.
        activations: For ``"activation"``: ``{path: LayerActivations}`` of the layers
            :meth:`PruneGraph.activation_layers` names.

    Raises:
        KeyError: a path is not a layer of the model, or has no filters.
        TypeError, ValueError: a ratio is not a number in ``[0, 1)``, names a layer that
            cannot be pruned (the message says why) or differs within a group.
    """
    return PruneGraph(model).prune(ratios, importance=importance, activations=activations)


def split_choices(choices: Mapping[str, Choice | None]
                  ) -> tuple[dict[str, float], dict[str, tuple[str, int]]]:
    """``{path: (ratio, method, rank)}`` -> pruning ratios and an LRF plan."""
    ratios: dict[str, float] = {}
    plan: dict[str, tuple[str, int]] = {}
    for path, choice in choices.items():
        if choice is None:
            continue
        if not isinstance(choice, (tuple, list)) or len(choice) != 3:
            raise ValueError(f"choice for layer {path!r} must be (ratio, method, rank), but "
                             f"got {choice!r}")
        ratio, method, rank = choice
        if _check_ratio(path, ratio) > 0:
            ratios[path] = float(ratio)
        if method is not None and method != "keep":
            plan[path] = (method, rank)  # type: ignore[assignment]
    return ratios, plan


def prune_and_factorize(model: keras.Model, choices: Mapping[str, Choice | None], *,
                        importance: Importance = "l1",
                        activations: Mapping[str, Any] | None = None) -> keras.Model:
    """Prune each layer's filters, then factorize the pruned kernels.

    Args:
        model: A built Sequential or Functional model.
        choices: ``{layer_path: (ratio, method, rank)}``; ratio 0 skips pruning, method
            ``None``/``"keep"`` skips factorization. Ranks refer to the *pruned* layer.
        importance, activations: As in :func:`prune_model`.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8, 8, 3)),
        ...     keras.layers.Conv2D(16, 3, name="c1"), keras.layers.Flatten(),
        ...     keras.layers.Dense(32, name="fc1"), keras.layers.Dense(10, name="fc2")])
        >>> small = prune_and_factorize(model, {"c1": (0.5, "channel_svd", 4),
        ...                                     "fc1": (0.25, "svd", 8)})
        >>> [type(l).__name__ for l in small.layers]
        ['FactorizedLayer', 'Flatten', 'FactorizedLayer', 'Dense']
        >>> tuple(small.get_layer("fc2").kernel.shape)
        (24, 10)
    """
    ratios, plan = split_choices(choices)
    pruned = prune_model(model, ratios, importance=importance, activations=activations)
    return rewrite_model(pruned, plan) if plan else pruned
