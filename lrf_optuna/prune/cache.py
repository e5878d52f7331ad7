"""The pruning part of the similarity cache: pruning candidates scored once, on disk.

Beside the LRF candidates of :class:`~lrf_optuna.scoring.cache.SimilarityCache` (the original
layers factorized), a search that prunes needs two more kinds of scores, computed once
per model and calibration set and read by every trial:

**Group candidates** ``(group, ratio)``: what removing a group's filters does to the layers
that consume them. A pruned layer's own kept outputs are exact (similarity 1); the loss is
in its *consumers* (:attr:`~lrf_optuna.prune.PruneEntry.consumers`, the next Conv / Dense
layers). For each consumer, its captured input with the removed positions zeroed
(:meth:`~lrf_optuna.prune.PruneGraph.input_mask`: channels, Flatten rows, Concatenate
offsets, depthwise repeats, ``Add`` groups) is run through the *original* consumer and
compared with its captured output, with the cache's metric: one consumer forward per
(group, ratio). That is exactly the consumer's output in the pruned model when nothing
else upstream changes; deeper layers are not re-run (the same per-layer approximation LRF
scoring makes). The group's score is the product over its consumers.

**Pruned LRF candidates** ``(layer, ratio, method, rank)``: the LRF of the *pruned* kernel
(its kept filters), run on the layer's captured inputs and compared with the original
outputs on the kept channels. The kernel keeps every input channel: the pruning of the
layer's producers is ignored here (their effect is in the producers' group scores), so one
table per (layer, own ratio) serves every combination of producer ratios. Ratio 0 is the
:class:`~lrf_optuna.scoring.cache.SimilarityCache`'s own table.

Grid (the cost is ratios x methods x ranks per layer, so it is thinned): the ratios of
:class:`PruneConfig` (default ``0, 1/8, ..., 6/8``), de-duplicated by the number of filters
they keep (a 6-filter layer keeps 6, 6, 5, 4, 3, 3, 2: five distinct prunings); at each
ratio above 0, every applicable method at :attr:`PruneConfig.points` (default 6)
log-spaced saving ranks of the pruned layer, instead of the 16 of the unpruned one.

Built by the scoring's resumable build (:mod:`lrf_optuna.scoring.build`): one unit per group,
one per member layer. On disk, beside the LRF cache (its directory, a
``prune-<fingerprint[:12]>/`` subdirectory; safe formats only, each file written
atomically, a killed build resumes)::

    manifest.json                       format, fingerprint, config, groups, layers
    groups/<NNN>-<name>.json            a group: channel importance, consumer scores
    layers/<NNN>-<path>.json            a layer: {kept filters: its LRF table}
    factors/<path>--k<kept>--<method>.npz   factors of methods flagged ``cache_factors``

The fingerprint hashes the LRF cache's own fingerprint (model, weights, calibration data,
metrics, grid, versions), the :class:`PruneConfig`, the layers searched and
:data:`PRUNE_CACHE_FORMAT`.

Example:
    >>> base = SimilarityCache.build(model, x_cal)  # doctest: +SKIP
    >>> pruning = PruneCache.build(model, x_cal, base)  # doctest: +SKIP
    >>> pruning.group_score("conv1", kept=4, metric="cosine")  # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from lrf_optuna.plan import CompressionPlan
from lrf_optuna.prune.costs import kept_count, pruned_layer_info
from lrf_optuna.prune.importance import CRITERIA, Importance
from lrf_optuna.scoring._store import (
    factor_file,
    read_factors,
    read_manifest,
    read_results,
    safe_file_name,
    write_factors,
    write_json,
)
from lrf_optuna.scoring.build import ProgressBar, ResumableBuild, Unit, run_build
from lrf_optuna.scoring.cache import (
    GridConfig,
    LayerTable,
    SimilarityCache,
    batchnorm_view,
    fingerprint,
    library_versions,
    run_batched,
    score_candidates,
    score_outputs,
)

if TYPE_CHECKING:
    import keras

    from lrf_optuna.decompose import LayerInfo, LRFMethod
    from lrf_optuna.prune.pruner import PruneGraph

__all__ = ["PRUNE_CACHE_FORMAT", "GroupTable", "PruneCache", "PruneConfig",
           "build_pruned_model", "input_stage_sliceable"]

logger = logging.getLogger(__name__)

#: Version of the on-disk layout of the pruning cache (checked on load, in the fingerprint).
#: 2: pruned layers are scored through their BatchNorm like the similarity cache's.
PRUNE_CACHE_FORMAT = 2


@dataclass(frozen=True)
class PruneConfig:
    """Which pruning ratios a search offers and how its candidates are scored.

    Args:
        ratios: The ratio levels (fractions of each group's filters removed), the first 0,
            increasing, below 1. The search's ``"<group>:prune"`` parameter picks one.
        importance: Which filters go (:data:`lrf_optuna.prune.CRITERIA`): ``"l1"``
            (default), ``"l2"`` or ``"activation"``.
        points: Log-spaced saving ranks scored per (layer, method) at each ratio above 0
            (the unpruned layer has the :class:`~lrf_optuna.scoring.cache.GridConfig`'s).

    Example:
        >>> PruneConfig().ratios
        (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
        >>> PruneConfig(ratios=(0.5,))
        Traceback (most recent call last):
        ...
        ValueError: PruneConfig ratios must start at 0 and increase, each below 1, but got (0.5,)
    """

    ratios: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    importance: str = "l1"
    points: int = 6

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        if (not ratios or ratios[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(ratios))
                or ratios[-1] >= 1.0):
            raise ValueError(f"PruneConfig ratios must start at 0 and increase, each below 1, "
                             f"but got {self.ratios!r}")
        object.__setattr__(self, "ratios", ratios)
        if self.importance not in CRITERIA:
            raise ValueError(f"PruneConfig importance must be one of {list(CRITERIA)}, but "
                             f"got {self.importance!r}")
        if isinstance(self.points, bool) or not isinstance(self.points, int) or self.points < 1:
            raise ValueError(f"PruneConfig points must be a positive integer, but got "
                             f"{self.points!r}")

    def to_json(self) -> dict[str, Any]:
        return {"ratios": list(self.ratios), "importance": self.importance,
                "points": self.points}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PruneConfig:
        return cls(ratios=tuple(d["ratios"]), importance=str(d["importance"]),
                   points=int(d["points"]))


@dataclass(frozen=True)
class GroupTable:
    """One prunable group: the importance of its channels and what its consumers lose.

    Attributes:
        name: Its first member (in graph order), which names it in a search.
        members: The layers pruned alike.
        consumers: The layers whose inputs lose the channels.
        channels: Filters (units) of each member.
        importance: Score of each channel under the cache's criterion (the highest are kept).
        scores: ``{kept filters: {consumer: {metric: similarity}}}`` for each distinct
            pruning of the config's ratios.
    """

    name: str
    members: tuple[str, ...]
    consumers: tuple[str, ...]
    channels: int
    importance: tuple[float, ...]
    scores: Mapping[int, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def score(self, kept: int, metric: str) -> float:
        """Product over the consumers of their similarity when ``kept`` filters remain
        (1.0 when nothing is removed).

        Raises:
            KeyError: ``kept`` is not a pruning the cache scored.
        """
        if kept >= self.channels:
            return 1.0
        if kept not in self.scores:
            raise KeyError(f"group {self.name!r}: no pruning to {kept} of {self.channels} "
                           f"filters was scored; scored: {sorted(self.scores)}")
        return float(math.prod(s[metric] for s in self.scores[kept].values()))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scores"] = {str(k): v for k, v in self.scores.items()}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GroupTable:
        return cls(name=d["name"], members=tuple(d["members"]),
                   consumers=tuple(d["consumers"]), channels=int(d["channels"]),
                   importance=tuple(float(v) for v in d["importance"]),
                   scores={int(k): v for k, v in d["scores"].items()},
                   seconds=float(d.get("seconds", 0.0)))


def _kept_counts(channels: int, ratios: Sequence[float]) -> dict[int, float]:
    """``{filters kept: the smallest ratio keeping them}`` of the prunings ``ratios`` make
    (those keeping every filter left out), by decreasing filters kept."""
    out: dict[int, float] = {}
    for r in sorted(ratios):
        kept = kept_count(channels, r)
        if kept < channels:
            out.setdefault(kept, float(r))
    return out


def _grid_of(manifest: Mapping[str, Any]) -> GridConfig:
    grid = manifest["grid"]
    methods = grid.get("methods")
    return GridConfig(points=int(grid["points"]),
                      methods=None if methods is None else tuple(methods))


def input_stage_sliceable(method: LRFMethod, info: LayerInfo) -> bool:
    """Whether ``method``'s replacement of ``info`` takes the layer's input channels in its
    first factor's second-to-last axis (a first Dense / conv stage, maybe after a strided
    sampling): then factors fitted with every input channel serve a layer whose producers
    are pruned, by dropping the removed channels' rows.

    Example:
        >>> import keras
        >>> from lrf_optuna.decompose import describe_layer, get_method
        >>> dense = keras.layers.Dense(8)
        >>> _ = dense.build((None, 16))
        >>> input_stage_sliceable(get_method("svd_aware"), describe_layer(dense,
        ...                                                               input_shape=(16,)))
        True
    """
    for stage in method.stages(info, method.min_rank(info)):
        if stage["op"] == "subsample":
            continue
        return (stage["op"] in ("conv", "dense")
                and int(stage["kernel_shape"][-2]) == info.in_channels)
    return False


class PruneCache:
    """Scored pruning candidates of one model (see the module docstring).

    Build with :meth:`build` (resumes), reopen with :meth:`load` (JSON only), read with
    :meth:`group_score`, :meth:`table` and :meth:`factors`.
    """

    def __init__(self, directory: Path, manifest: Mapping[str, Any],
                 groups: Mapping[str, GroupTable],
                 layers: Mapping[str, Mapping[int, LayerTable]]) -> None:
        self.directory = Path(directory)
        self.manifest = dict(manifest)
        self.groups = dict(groups)
        self.layers = {p: dict(t) for p, t in layers.items()}

    # -- reading -------------------------------------------------------------------------
    @property
    def config(self) -> PruneConfig:
        return PruneConfig.from_json(self.manifest["config"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def group_names(self) -> list[str]:
        """The groups the cache covers, by name, in graph order."""
        return [g["name"] for g in self.manifest["groups"]]

    @property
    def complete(self) -> bool:
        return (all(n in self.groups for n in self.group_names)
                and all(p in self.layers for p in self.manifest["layers"]))

    def group(self, name: str) -> GroupTable:
        try:
            return self.groups[name]
        except KeyError:
            raise KeyError(f"the pruning cache has no group {name!r}; it has "
                           f"{self.group_names}") from None

    def group_score(self, name: str, *, kept: int, metric: str) -> float:
        """Similarity of group ``name``'s consumers when ``kept`` filters remain."""
        return self.group(name).score(kept, metric)

    def table(self, path: str, kept: int) -> LayerTable:
        """The LRF candidates of layer ``path`` pruned to ``kept`` filters.

        Raises:
            KeyError: that pruning of that layer was not scored.
        """
        tables = self.layers.get(path)
        if tables is None or kept not in tables:
            scored = sorted(tables) if tables else []
            raise KeyError(f"the pruning cache has no LRF table of layer {path!r} pruned to "
                           f"{kept} filters; scored: {scored}")
        return tables[kept]

    def importance_scores(self) -> dict[str, np.ndarray]:
        """``{group name: channel scores}``: the criterion's scores, for
        ``PruneGraph.prune(..., importance=...)``."""
        return {name: np.asarray(g.importance) for name, g in self.groups.items()}

    def factors(self, path: str, kept: int, method: str, rank: int) -> list[np.ndarray] | None:
        """Cached factors of ``(path pruned to kept filters, method, rank)``, if stored."""
        return read_factors(factor_file(self.directory, path, method, kept=kept), rank)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PruneCache:
        """Open a built (or partially built) pruning cache directory."""
        directory = Path(directory)
        manifest = read_manifest(directory, PRUNE_CACHE_FORMAT, "pruning cache")
        groups = [GroupTable.from_json(d) for d in read_results(directory / "groups")]
        layers = {d["path"]: {int(k): LayerTable.from_json(t) for k, t in d["tables"].items()}
                  for d in read_results(directory / "layers")}
        return cls(directory, manifest, {g.name: g for g in groups}, layers)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: keras.Model,
        calibration_x: np.ndarray,
        base: SimilarityCache,
        *,
        config: PruneConfig | None = None,
        layers: Iterable[str] | None = None,
        batch_size: int = 64,
        max_bytes_per_layer: int | None = None,
        workers: int | None = None,
        progress: bool = True,
    ) -> PruneCache:
        """Build (or resume, or just open) the pruning cache of ``model`` beside ``base``.

        Args:
            model: The model ``base`` was built from (checked by fingerprint).
            calibration_x: The calibration inputs ``base`` was built on.
            base: The model's :class:`~lrf_optuna.scoring.cache.SimilarityCache` (its metrics,
                method restriction and directory are used).
            config: Ratios, importance criterion and rank points (:class:`PruneConfig`).
            layers: The searched layers (default: ``base``'s); a group is covered when
                every member is one of them.
            batch_size: Batch size of the calibration pass and of every forward.
            max_bytes_per_layer: Activation memory budget per layer.
            workers: Threads scoring in parallel (default: CPU count, at most 4).
            progress: Show a progress bar.

        Raises:
            ValueError: ``model`` / ``calibration_x`` are not those ``base`` was built on.
        """
        from lrf_optuna.prune.pruner import PruneGraph

        config = config or PruneConfig()
        x = np.asarray(calibration_x, dtype="float32")
        grid = _grid_of(base.manifest)
        if fingerprint(model, x, metrics=base.metrics, grid=grid,
                       layers=base.layers) != base.fingerprint:
            raise ValueError(f"the similarity cache {base.directory} was not built from this "
                             "model and these calibration inputs")
        targets = list(dict.fromkeys(layers)) if layers is not None else base.layers
        graph = PruneGraph(model)
        groups = [g for g in graph.groups if all(p in targets for p in g)]
        h = hashlib.sha256()
        h.update(json.dumps({"base": base.fingerprint, "config": config.to_json(),
                             "layers": targets, "format": PRUNE_CACHE_FORMAT,
                             "versions": library_versions()}, sort_keys=True).encode())
        fp = h.hexdigest()
        directory = base.directory / f"prune-{fp[:12]}"
        manifest = {
            "format": PRUNE_CACHE_FORMAT, "fingerprint": fp, "base": base.fingerprint,
            "model": model.name, "config": config.to_json(), "metrics": base.metrics,
            "groups": [{"name": g[0], "members": list(g), "channels":
                        graph.entry(g[0]).channels,
                        "consumers": list(graph.entry(g[0]).consumers)} for g in groups],
            "layers": [p for g in groups for p in g], "calibration_samples": len(x),
            "versions": library_versions()}
        if not (directory / "manifest.json").exists():
            write_json(directory / "manifest.json", manifest, indent=1)
        cache = cls.load(directory)
        build = _PruneBuild(cache, model, x, graph, groups, grid, batch_size=batch_size,
                            max_bytes_per_layer=max_bytes_per_layer,
                            batchnorm=bool(base.manifest.get("batchnorm")))
        if not run_build(build, workers=workers, progress=progress):
            logger.info("pruning cache %s is complete (%d groups)", directory, len(groups))
        return cache


class _PruneBuild(ResumableBuild[Any]):
    """The units of a pruning cache (:meth:`PruneCache.build`): one per group (its
    consumers at every pruning of the config), one per member layer (its pruned LRF
    tables, ``{kept: LayerTable}``)."""

    desc = "scoring pruning candidates"

    def __init__(self, cache: PruneCache, model: keras.Model, x: np.ndarray,
                 graph: PruneGraph, groups: Sequence[tuple[str, ...]], grid: GridConfig, *,
                 batch_size: int, max_bytes_per_layer: int | None, batchnorm: bool) -> None:
        from lrf_optuna.rewrite import find_layers

        self.cache, self.model, self.x, self.graph = cache, model, x, graph
        self.groups = list(groups)
        self.config = cache.config
        self.batch_size, self.max_bytes_per_layer = batch_size, max_bytes_per_layer
        self.batchnorm = batchnorm
        self.members = [p for g in self.groups for p in g]
        self.group_of = {p: g for g in self.groups for p in g}
        found = find_layers(model)
        self.plans = {p: self._layer_plan(found[p].info, grid) for p in self.members}
        self.layer_objs = _layers_by_path(model)
        self.acts: Mapping[str, Any] = {}
        self.importance: dict[str, np.ndarray] = {}

    def _layer_plan(self, info: LayerInfo | None, grid: GridConfig
                    ) -> dict[int, tuple[LayerInfo, dict[str, list[int]]]]:
        """``{kept filters: (the pruned layer, {method: ranks})}`` of one member."""
        from lrf_optuna.decompose import methods_for

        assert info is not None
        plan = {}
        for kept in _kept_counts(info.out_channels, self.config.ratios):
            small = pruned_layer_info(info, out_channels=kept)
            ranks = {}
            for method in methods_for(small):
                if grid.methods is not None and method.name not in grid.methods:
                    continue
                r = GridConfig(points=self.config.points).ranks(method, small)
                if r:
                    ranks[method.name] = r
            plan[kept] = (small, ranks)
        return plan

    def units(self) -> list[Unit]:
        d = self.cache.directory
        return [
            *(Unit("group", g[0], d / "groups" / f"{i:03d}-{safe_file_name(g[0])}.json",
                   len(_kept_counts(self.graph.entry(g[0]).channels, self.config.ratios)))
              for i, g in enumerate(self.groups)),
            *(Unit("layer", p, d / "layers" / f"{i:03d}-{safe_file_name(p)}.json",
                   sum(len(r) for _, ranks in self.plans[p].values() for r in ranks.values()))
              for i, p in enumerate(self.members))]

    def prepare(self, todo: Sequence[Unit]) -> None:
        from lrf_optuna.scoring.calibration import (
            DEFAULT_MAX_BYTES_PER_LAYER,
            capture_activations,
        )

        todo_groups = [u.name for u in todo if u.kind == "group"]
        todo_layers = [u.name for u in todo if u.kind == "layer"]
        consumers = {c for g in todo_groups for c in self.graph.entry(g).consumers}
        if self.config.importance == "activation":
            consumers |= set(self.graph.activation_layers([g[0] for g in self.groups]))
        capture = sorted(consumers | set(todo_layers))
        logger.info("scoring %d pruned group(s) and %d pruned layer(s) into %s",
                    len(todo_groups), len(todo_layers), self.cache.directory)
        self.acts = capture_activations(
            self.model, self.x, capture, batch_size=self.batch_size,
            max_bytes_per_layer=self.max_bytes_per_layer or DEFAULT_MAX_BYTES_PER_LAYER)
        self.importance = {name: np.asarray(g.importance)
                           for name, g in self.cache.groups.items()}
        for g in todo_groups:
            self.importance[g] = self.graph.importance(g, importance=self.config.importance,
                                                       activations=self.acts)

    def run(self, unit: Unit, bar: ProgressBar) -> Any:
        if unit.kind == "group":
            group = next(g for g in self.groups if g[0] == unit.name)
            return _score_group(self.graph, group, self.importance[unit.name], self.config,
                                self.acts, self.layer_objs, self.cache.manifest["metrics"],
                                self.batch_size, bar)
        return self._score_layer(unit.name, bar)

    def _score_layer(self, path: str, bar: ProgressBar
                     ) -> dict[int, tuple[LayerTable, dict[str, dict[str, np.ndarray]]]]:
        """``{kept: (table, factors)}``: the member ``path`` pruned at each ratio, its
        LRF candidates scored on the kept outputs."""
        layer = self.layer_objs[path]
        view = batchnorm_view(self.model, path) if self.batchnorm else None
        keep_order = np.argsort(-self.importance[self.group_of[path][0]], kind="stable")
        acts = self.acts[path]
        out = {}
        for kept, (small, ranks) in self.plans[path].items():
            mask = np.zeros(self.graph.entry(path).channels, dtype=bool)
            mask[keep_order[:kept]] = True
            axis = 1 if small.data_format == "channels_first" and small.kind != "dense" \
                else -1
            out[kept] = score_candidates(
                path, small, output_sliced_weights(layer, mask), acts.inputs,
                np.compress(mask, acts.outputs, axis=axis), ranks,
                self.cache.manifest["metrics"], self.batch_size, bar,
                view=view.kept(mask) if view is not None and axis == -1 else None)
        return out

    def write(self, unit: Unit, result: Any) -> None:
        if unit.kind == "group":
            write_json(unit.file, result.to_json())
            self.cache.groups[unit.name] = result
            return
        d = self.cache.directory
        for kept, (_, stored) in result.items():
            for method, arrays in stored.items():
                write_factors(factor_file(d, unit.name, method, kept=kept), arrays)
        tables = {kept: table for kept, (table, _) in result.items()}
        write_json(unit.file, {"path": unit.name,
                               "tables": {str(k): t.to_json() for k, t in tables.items()}})
        self.cache.layers[unit.name] = tables


def _layers_by_path(model: keras.Model) -> dict[str, Any]:
    from lrf_optuna.rewrite import iter_layers

    return dict(iter_layers(model))


#: The weights :func:`lrf_optuna.decompose.layer_weights` reads, by variable name.
_ROLES = ("kernel", "depthwise_kernel", "pointwise_kernel", "bias")


def output_sliced_weights(layer: Any, out_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The layer's weights by role (as :func:`~lrf_optuna.decompose.layer_weights`) with
    the output channels outside ``out_mask`` removed."""
    from lrf_optuna.prune._rebuild import sliced_weights

    arrays = sliced_weights(layer, None, out_mask)
    return {v.name: a for v, a in zip(layer.weights, arrays) if v.name in _ROLES}


def _score_group(graph: PruneGraph, group: tuple[str, ...], scores: np.ndarray,
                 config: PruneConfig, acts: Mapping[str, Any], layer_objs: Mapping[str, Any],
                 metrics: Sequence[str], batch_size: int, bar: ProgressBar) -> GroupTable:
    t0 = time.perf_counter()
    name = group[0]
    entry = graph.entry(name)
    out: dict[int, dict[str, dict[str, float]]] = {}
    for kept, ratio in _kept_counts(entry.channels, config.ratios).items():
        per: dict[str, dict[str, float]] = {}
        for consumer in entry.consumers:
            mask = graph.input_mask(consumer, {name: ratio}, importance={name: scores})
            x = acts[consumer].inputs
            if mask is not None:
                axis = graph.input_axis(consumer)
                assert axis is not None
                shape = [1] * x.ndim
                shape[axis] = len(mask)
                x = x * mask.reshape(shape).astype(x.dtype)
            y = run_batched(layer_objs[consumer], x, batch_size)
            per[consumer] = score_outputs(metrics, acts[consumer].outputs, y)
        out[kept] = per
        bar.update(1)
    bar.set_postfix_str(f"group {name}")
    return GroupTable(name=name, members=tuple(group), consumers=tuple(entry.consumers),
                      channels=entry.channels, importance=tuple(float(v) for v in scores),
                      scores=out, seconds=round(time.perf_counter() - t0, 3))


def build_plan_model(model: keras.Model, plan: Mapping[str, Any], cache: SimilarityCache,
                     *, pruning: PruneCache | None = None) -> keras.Model:
    """The compressed model of any plan: pruned, then factorized
    (:func:`build_pruned_model`) when it prunes (a
    :class:`~lrf_optuna.plan.CompressionPlan` with ``ratios``), else factorized
    from the similarity cache (:meth:`~lrf_optuna.scoring.cache.SimilarityCache.build_model`).

    Example:
        >>> compressed = build_plan_model(model, objective.plan_of(trial),  # doctest: +SKIP
        ...                               objective.cache, pruning=objective.prune.pruning)
    """
    typed = CompressionPlan.of(plan)
    if typed.ratios:
        return build_pruned_model(model, dict(typed), typed.ratios,
                                  importance=cast(Importance, typed.importance),
                                  cache=cache, pruning=pruning)
    return cache.build_model(model, dict(plan))


def build_pruned_model(model: keras.Model, plan: Mapping[str, Any],
                       ratios: Mapping[str, float], *, importance: Importance = "l1",
                       cache: SimilarityCache | None = None,
                       pruning: PruneCache | None = None) -> keras.Model:
    """Prune ``model`` by ``ratios``, then factorize the pruned layers by ``plan``.

    Every planned layer is factorized from the *pruned* layer's weights (its kept filters,
    its kept input channels), exactly as :func:`~lrf_optuna.prune.prune_and_factorize`
    does; but for methods whose factors the caches store (``cache_factors``: CP, the
    activation-aware methods), the stored factors of the layer pruned to the same filters
    are used -- exactly what was scored -- with the rows of the input channels its
    producers' pruning removed dropped from the first factor (the same outputs as the
    scored factors on inputs whose removed channels are zero, which is what the pruned
    model feeds them).

    Args:
        model: The original model.
        plan: ``{layer: (method, rank)}``; ranks refer to the pruned layers.
        ratios: ``{layer: ratio}`` (one member per group is enough).
        importance: The criterion (a name) that chose the kept filters.
        cache: The LRF similarity cache (factors of unpruned layers).
        pruning: The pruning cache (its importance scores, when its criterion is
            ``importance``, and the factors of pruned layers).

    Raises:
        ValueError: ``"activation"`` importance without the pruning cache that stored it;
            a data-aware method whose factors are not cached for that pruning and rank.
    """
    from lrf_optuna.decompose import get_method
    from lrf_optuna.prune.pruner import PruneGraph
    from lrf_optuna.rewrite import rewrite_model

    graph = PruneGraph(model)
    chosen: Importance = importance
    if pruning is not None and pruning.config.importance == importance:
        chosen = pruning.importance_scores()
    elif importance == "activation":
        raise ValueError("this plan's filters were chosen by activation importance: pass "
                         "the pruning cache that scored them (pruning=...)")
    pruned = graph.prune(ratios, importance=chosen)
    factors = {}
    for path, choice in plan.items():
        if choice is None or choice[0] == "keep":
            continue
        method, rank = str(choice[0]), int(choice[1])
        if not get_method(method).cache_factors:
            continue
        entry = graph.entries.get(path)
        kept = graph.channels(path, ratios)[1]
        pruned_out = entry is not None and kept < entry.channels
        if pruned_out:
            stored = pruning.factors(path, kept, method, rank) if pruning else None
        else:
            stored = cache.factors(path, method, rank) if cache else None
        if stored is None:
            if get_method(method).needs_inputs:
                raise ValueError(
                    f"layer {path!r}: method {method!r} is fitted to calibration inputs and "
                    f"its factors are not cached for rank {rank}"
                    + (f" with {kept} filters kept" if pruned_out else ""))
            continue    # recomputed from the pruned weights
        mask = graph.input_mask(path, ratios, importance=chosen)
        if mask is not None:
            stored = [np.compress(mask, stored[0], axis=-2), *stored[1:]]
        factors[(path, method, rank)] = stored
    return rewrite_model(pruned, plan, factors=factors)
