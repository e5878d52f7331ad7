"""Rank-selection strategies: each turns a model (and its similarity cache) into plans.

Every strategy returns a list of :class:`NamedPlan` -- a label and a plan
``{layer_path: (method, rank)}`` -- through one interface, so the search can enqueue them
as starting points and the benchmarks can compare them:

* :class:`SimilarityThreshold` (the paper's): for each layer, the cheapest
  ``(method, rank)`` in the cache whose feature-map similarity reaches ``tau``; one plan per
  ``tau`` of a sweep. A layer with no candidate reaching ``tau`` is kept.
* :class:`EnergyThreshold` (weight based): for each layer, the smallest rank keeping a
  fraction ``e`` of the squared singular-value energy of the method's unfolding (equivalently
  a relative weight reconstruction error ``sqrt(1 - e)``); one plan per ``e``.
* :class:`VBMFRanks` (Kim et al. 2016): EVBMF (:func:`lrf_optuna.vbmf.evbmf_rank`) on the
  weight unfoldings; Tucker-2 takes its rank from the output-channel unfolding, SVD methods
  from the matrix they factorize.
* :class:`UniformRatio` (the paper's single-method comparison): one method everywhere it
  applies, each layer at the largest rank whose parameters stay within ``ratio`` of the
  original's; one plan per (method, ratio).

Filter-based pruning alone (FBP, the paper's baseline; plans are
:class:`~lrf_optuna.plan.CompressionPlan` with ratios and no factorization, seeded
when the search prunes):

* :class:`UniformPruning`: every prunable group of the searched layers loses the same
  fraction of its filters (the least important by the criterion); one plan per ratio.
* :class:`PruningThreshold`: each group at the largest ratio of the pruning cache whose
  consumers' similarity (:class:`~lrf_optuna.prune.PruneCache`) reaches ``tau``; one plan
  per ``tau``.

Layers where the chosen rank would not save parameters or FLOPs are kept.

Example:
    >>> plans = default_strategies()[0].plans(model, cache)  # doctest: +SKIP
    >>> plans[0].label, plans[0].plan  # doctest: +SKIP
    ('tau=0.99', {'conv1': ('tucker2', 5), 'fc1': ('svd', 24), ...})
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.plan import CompressionPlan

if TYPE_CHECKING:
    import keras

    from lrf_optuna.decompose import LayerInfo
    from lrf_optuna.prune.cache import PruneCache
    from lrf_optuna.scoring.cache import SimilarityCache

__all__ = ["EnergyThreshold", "NamedPlan", "PruningThreshold", "SimilarityThreshold",
           "Strategy", "UniformPruning", "UniformRatio", "VBMFRanks", "all_plans",
           "default_strategies", "pruning_strategies"]

Choice = tuple[str, int]


@dataclass(frozen=True)
class NamedPlan:
    """A plan with the strategy label that produced it."""

    label: str
    plan: Mapping[str, Choice] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return self.label.split(":")[0]


class Strategy(abc.ABC):
    """Produces plans for a model; ``cache`` may be ``None`` for weight-based strategies."""

    name: str

    @abc.abstractmethod
    def plans(self, model: keras.Model, cache: SimilarityCache | None) -> list[NamedPlan]:
        """The plans of this strategy, most compressed last or first (label says)."""


def _targets(model: keras.Model, cache: SimilarityCache | None) -> dict[str, Any]:
    from lrf_optuna.rewrite import find_layers

    found = find_layers(model)
    if cache is not None:
        return {p: found[p] for p in cache.layers if p in found}
    return found


# -- the paper's ---------------------------------------------------------------------------
@dataclass
class SimilarityThreshold(Strategy):
    """Cheapest candidate per layer whose similarity reaches ``tau`` (cache based)."""

    #: From 0.5: on small data, distilled fine-tuning brings plans this far down back
    #: (the MobileNet-style user net: tau 0.7 within 1 pp at 80.6 % of the parameters saved).
    taus: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.98,
                             0.99, 0.995, 0.999)
    cost: str = "params"
    metric: str | None = None
    name: str = "tau"

    def plans(self, model: keras.Model, cache: SimilarityCache | None) -> list[NamedPlan]:
        if cache is None:
            raise ValueError("the similarity-threshold strategy needs a SimilarityCache")
        metric = self.metric or cache.metric
        out = []
        for tau in self.taus:
            plan: dict[str, Choice] = {}
            for path in cache.layers:
                table = cache.tables.get(path)
                best = None if table is None else table.best(
                    metric=metric, min_similarity=tau, cost=self.cost)
                if best is not None:
                    plan[path] = (best.method, best.rank)
            out.append(NamedPlan(f"{self.name}:{tau:g}", plan))
        return out


# -- weight based ---------------------------------------------------------------------------
def _unfolding(info: LayerInfo, weights: Mapping[str, np.ndarray], method: str) -> np.ndarray:
    """The matrix whose singular values decide ``method``'s rank on this layer."""
    from lrf_optuna.decompose import matrix_of

    if method in ("svd", "qr", "tt"):
        return matrix_of(info, weights)
    kernel = np.asarray(weights["kernel"] if "kernel" in weights
                        else weights["depthwise_kernel"], dtype=np.float64)
    if info.kind == "conv_transpose":
        kernel = np.swapaxes(kernel, -1, -2)
    if info.groups > 1:  # first group stands for all (ranks are per group)
        kernel = np.split(kernel, info.groups, axis=-1)[0]
    if method == "channel_svd":
        return kernel.reshape(-1, kernel.shape[-1])
    if method == "tucker2":  # output-channel unfolding: c_out x (k^2 c_in)
        return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
    if method == "spatial_svd" and info.kind == "conv":
        kh, kw, ci, co = kernel.shape
        return kernel.transpose(0, 2, 1, 3).reshape(kh * ci, kw * co)
    if method == "spatial_svd" and info.kind == "depthwise":
        return kernel[..., 0, 0]  # one filter stands for all (rank <= min(kh, kw))
    raise ValueError(f"no weight unfolding for method {method!r} on {info.class_name}")


def _weight_method(info: LayerInfo) -> str | None:
    """The method weight-based strategies use for a layer (the classic SVD-based one)."""
    if info.is_matrix:
        return "svd"
    if info.kind in ("conv", "conv_transpose"):
        return "channel_svd"
    if info.kind == "depthwise" and len(info.kernel_size) == 2:
        return "spatial_svd"
    return None


def _clip_choice(info: LayerInfo, method: str, rank: int) -> Choice | None:
    from lrf_optuna.decompose import get_method

    m = get_method(method)
    if not m.applies_to(info):
        return None
    rank = int(min(max(rank, m.min_rank(info)), m.max_rank(info)))
    return (method, rank) if m.saves(info, rank) else None


@dataclass
class EnergyThreshold(Strategy):
    """Smallest rank keeping a fraction ``e`` of the singular-value energy (weights only)."""

    energies: Sequence[float] = (0.80, 0.90, 0.95, 0.98, 0.99, 0.999)
    name: str = "energy"

    def plans(self, model: keras.Model, cache: SimilarityCache | None) -> list[NamedPlan]:
        from lrf_optuna.decompose import layer_weights

        spectra: dict[str, tuple[Any, str, np.ndarray]] = {}
        for path, entry in _targets(model, cache).items():
            method = _weight_method(entry.info)
            if method is None or method not in entry.methods:
                continue
            s = np.linalg.svd(_unfolding(entry.info, layer_weights(entry.layer), method),
                              compute_uv=False)
            spectra[path] = (entry.info, method, np.cumsum(s**2) / max(np.sum(s**2), 1e-30))
        out = []
        for e in self.energies:
            plan: dict[str, Choice] = {}
            for path, (info, method, cum) in spectra.items():
                rank = int(np.searchsorted(cum, e - 1e-12) + 1)
                choice = _clip_choice(info, method, rank)
                if choice is not None:
                    plan[path] = choice
            out.append(NamedPlan(f"{self.name}:{e:g}", plan))
        return out


@dataclass
class VBMFRanks(Strategy):
    """EVBMF ranks on the weight unfoldings, for Tucker-2 (conv) and SVD (FC)."""

    conv_method: str = "tucker2"
    name: str = "vbmf"

    def plans(self, model: keras.Model, cache: SimilarityCache | None) -> list[NamedPlan]:
        from lrf_optuna.decompose import layer_weights
        from lrf_optuna.vbmf import evbmf_rank

        plan: dict[str, Choice] = {}
        for path, entry in _targets(model, cache).items():
            info = entry.info
            method = "svd" if info.is_matrix else (
                self.conv_method if self.conv_method in entry.methods else _weight_method(info))
            if method is None or method not in entry.methods:
                continue
            rank = evbmf_rank(_unfolding(info, layer_weights(entry.layer), method))
            choice = _clip_choice(info, method, max(rank, 1))
            if choice is not None:
                plan[path] = choice
        return [NamedPlan(f"{self.name}:{self.conv_method}", plan)]


@dataclass
class UniformRatio(Strategy):
    """One method everywhere, each layer at the largest rank within ``ratio`` of params."""

    methods: Sequence[str] | None = None
    ratios: Sequence[float] = (0.5, 0.25, 0.1)
    name: str = "uniform"

    def plans(self, model: keras.Model, cache: SimilarityCache | None) -> list[NamedPlan]:
        from lrf_optuna.decompose import available_methods, get_method

        targets = _targets(model, cache)
        out = []
        for method_name in self.methods or available_methods():
            method = get_method(method_name)
            for ratio in self.ratios:
                plan: dict[str, Choice] = {}
                for path, entry in targets.items():
                    info = entry.info
                    if method_name not in entry.methods:
                        continue
                    budget = ratio * info.original_params
                    rank = _largest_rank_within(method, info, budget)
                    if rank is not None:
                        plan[path] = (method_name, rank)
                if plan:
                    out.append(NamedPlan(f"{self.name}:{method_name}@{ratio:g}", plan))
        return out


def _largest_rank_within(method: Any, info: LayerInfo, budget: float) -> int | None:
    """Largest rank with ``params <= budget`` (params grow with rank: bisection)."""
    lo, hi = method.min_rank(info), method.max_rank(info)
    if method.params(info, lo) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if method.params(info, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- filter-based pruning alone ------------------------------------------------------------

def _pruned_plan(ratios: Mapping[str, float], importance: str) -> Mapping[str, Choice]:
    return CompressionPlan({}, ratios=ratios, importance=importance)


@dataclass
class UniformPruning(Strategy):
    """FBP alone: every prunable group of the searched layers pruned by the same ratio.

    Example:
        >>> import keras
        >>> net = keras.Sequential([keras.Input((8, 8, 1)),
        ...                         keras.layers.Conv2D(8, 3, name="c1"),
        ...                         keras.layers.Flatten(), keras.layers.Dense(4, name="fc")])
        >>> [(p.label, p.plan.ratios) for p in UniformPruning(ratios=(0.5,)).plans(net, None)]
        [('fbp:ratio=0.5', {'c1': 0.5})]
    """

    ratios: Sequence[float] = (0.25, 0.5, 0.75)
    importance: str = "l1"
    name: str = "fbp"

    def plans(self, model: keras.Model, cache: SimilarityCache | None) -> list[NamedPlan]:
        from lrf_optuna.prune.pruner import PruneGraph

        targets = _targets(model, cache)
        groups = [g for g in PruneGraph(model).groups if all(p in targets for p in g)]
        if not groups:
            return []
        return [NamedPlan(f"{self.name}:ratio={r:g}",
                          _pruned_plan({g[0]: float(r) for g in groups}, self.importance))
                for r in self.ratios]


@dataclass
class PruningThreshold(Strategy):
    """FBP alone, by similarity: each group at the largest ratio of ``pruning``'s config
    whose consumers' similarity (``metric``) reaches ``tau``; one plan per ``tau``."""

    pruning: PruneCache
    taus: Sequence[float] = (0.99, 0.97, 0.95, 0.9)
    metric: str = "cosine"
    name: str = "fbp-tau"

    def plans(self, model: keras.Model, cache: SimilarityCache | None) -> list[NamedPlan]:
        from lrf_optuna.prune.costs import kept_count

        out = []
        ratios_offered = self.pruning.config.ratios
        for tau in self.taus:
            ratios = {}
            for name, group in self.pruning.groups.items():
                ok = [r for r in ratios_offered
                      if group.score(kept_count(group.channels, r), self.metric) >= tau]
                if ok and max(ok) > 0:
                    ratios[name] = max(ok)
            if ratios:
                out.append(NamedPlan(f"{self.name}:tau={tau:g}", _pruned_plan(
                    ratios, self.pruning.config.importance)))
        return out


def pruning_strategies(pruning: PruneCache, *, metric: str = "cosine") -> list[Strategy]:
    """The FBP-alone strategies a search that prunes seeds (uniform ratios, and the
    similarity threshold on ``pruning``)."""
    return [UniformPruning(importance=pruning.config.importance),
            PruningThreshold(pruning, metric=metric)]


def default_strategies() -> list[Strategy]:
    """The paper's tau sweep, energy, VBMF and uniform single-method plans."""
    return [SimilarityThreshold(), EnergyThreshold(), VBMFRanks(), UniformRatio()]


def all_plans(model: keras.Model, cache: SimilarityCache | None,
              strategies: Iterable[Strategy] | None = None) -> list[NamedPlan]:
    """Every plan of every strategy, duplicates (same plan) removed, first label kept."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for strategy in strategies if strategies is not None else default_strategies():
        if cache is None and isinstance(strategy, SimilarityThreshold):
            continue
        for named in strategy.plans(model, cache):
            ratios = CompressionPlan.of(named.plan).ratios
            key = (tuple(sorted(named.plan.items())), tuple(sorted(ratios.items())))
            if key not in seen:
                seen.add(key)
                out.append(named)
    return out
