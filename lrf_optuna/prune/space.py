"""The pruning part of a search space: one ratio-level parameter per prunable group.

:class:`~lrf_optuna.search.LRFObjective` with ``prune=`` adds, for every prunable group
(layers pruned alike, named by its first member ``G``), the parameter ``"G:prune"``: an
integer level ``0 .. len(PruneConfig.ratios) - 1`` selecting a ratio of the
:class:`~lrf_optuna.prune.PruneConfig` (level 0 = ratio 0 = not pruned). It is present in
every trial, like ``"L:method"`` and ``"L:rank"`` (NSGA-II samples a parameter outside
the shared search space at random). A layer's ``"L:rank"`` level keeps its meaning when
its filters are pruned: it selects the candidate at the same relative position of the
pruned layer's rank grid (scored in the :class:`~lrf_optuna.prune.PruneCache`), i.e. the
same fraction of the pruned layer's largest saving rank; a method not applicable to the
pruned layer leaves it pruned only.

Score of a plan (cache look-ups and closed-form costs only, no TensorFlow):

* proxy: the objective's aggregation over one similarity per searched layer (its LRF
  candidate's, from the pruned layer's table when its filters are pruned; 1.0 when kept)
  and one per group (the product over the group's consumers of their similarity when the
  group's removed channels are zeroed in their inputs; 1.0 when not pruned);
* costs: exact, :meth:`~lrf_optuna.prune.PruneGraph.model_costs` of the plan (pruned,
  then factorized), equal to ``count_params()`` of the built model.

Example:
    >>> space = PruneSpace(model, pruning, metric="cosine")  # doctest: +SKIP
    >>> space.parameters()  # doctest: +SKIP
    {'c1:prune': IntDistribution(high=6, log=False, low=0, step=1), ...}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from lrf_optuna.errors import UserError
from lrf_optuna.prune.costs import kept_count

if TYPE_CHECKING:
    import keras

    from lrf_optuna.costs import ModelCost
    from lrf_optuna.prune.cache import GroupTable, PruneCache, PruneConfig
    from lrf_optuna.scoring.cache import Candidate, LayerTable

__all__ = ["PRUNE_SUFFIX", "PruneSpace"]

#: Suffix of a group's ratio-level parameter (``"<group>:prune"``).
PRUNE_SUFFIX = ":prune"


class PruneSpace:
    """The prunable groups of a search, their parameters, scores and costs.

    Args:
        model: The original model.
        pruning: Its built :class:`~lrf_optuna.prune.PruneCache`.
        metric: The similarity metric of the proxy.
        methods: ``{layer: allowed methods or None}`` (the search's restrictions).
        rank_ranges: ``{layer: (min_rank, max_rank)}`` restrictions.
    """

    def __init__(self, model: keras.Model, pruning: PruneCache, *, metric: str,
                 methods: Mapping[str, Sequence[str] | None] | None = None,
                 rank_ranges: Mapping[str, tuple[int, int]] | None = None) -> None:
        from lrf_optuna.prune.pruner import PruneGraph

        self.pruning = pruning
        self.config: PruneConfig = pruning.config
        self.metric = metric
        self.graph = PruneGraph(model)
        self.groups: dict[str, GroupTable] = {n: pruning.group(n)
                                              for n in pruning.group_names}
        self.group_of: dict[str, str] = {p: n for n, g in self.groups.items()
                                         for p in g.members}
        from lrf_optuna.rewrite import find_layers

        self.infos = {p: e.info for p, e in find_layers(model).items()}
        methods = methods or {}
        rank_ranges = rank_ranges or {}
        #: ``{layer: {kept filters: {method: candidates by rank}}}``.
        self.grids: dict[str, dict[int, dict[str, list[Candidate]]]] = {}
        for path, tables in pruning.layers.items():
            allowed = methods.get(path)
            low, high = rank_ranges.get(path, (1, 1 << 62))
            self.grids[path] = {}
            for kept, table in tables.items():
                per = {}
                for name in table.methods:
                    if allowed is not None and name not in allowed:
                        continue
                    cands = sorted((c for c in table.for_method(name)
                                    if low <= c.rank <= high), key=lambda c: c.rank)
                    if cands:
                        per[name] = cands
                self.grids[path][kept] = per

    # -- parameters ------------------------------------------------------------------------
    def parameters(self) -> dict[str, optuna.distributions.IntDistribution]:
        """``{"<group>:prune": IntDistribution(0, levels - 1)}``, one per group."""
        high = len(self.config.ratios) - 1
        return {f"{name}{PRUNE_SUFFIX}": optuna.distributions.IntDistribution(0, high)
                for name in self.groups}

    def ratios_from_params(self, params: Mapping[str, Any]) -> dict[str, float]:
        """``{group: ratio}`` (ratios above 0) of trial parameters (a missing level is 0)."""
        out = {}
        for name in self.groups:
            level = int(params.get(f"{name}{PRUNE_SUFFIX}", 0))
            ratio = self.config.ratios[min(max(level, 0), len(self.config.ratios) - 1)]
            if ratio > 0:
                out[name] = ratio
        return out

    def level_of(self, ratio: float) -> int:
        """The level of the configured ratio nearest ``ratio``."""
        return min(range(len(self.config.ratios)),
                   key=lambda i: abs(self.config.ratios[i] - float(ratio)))

    def params_for_ratios(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """Encode ``{layer or group: ratio}`` as parameters (snapped to the nearest level;
        a layer outside the searched groups is ignored)."""
        by_group = self.group_ratios(ratios, strict=False)
        return {f"{name}{PRUNE_SUFFIX}": self.level_of(by_group.get(name, 0.0))
                for name in self.groups}

    # -- plans -----------------------------------------------------------------------------
    def group_ratios(self, ratios: Mapping[str, float], *, strict: bool = True
                     ) -> dict[str, float]:
        """``{group name: ratio}`` of ``{layer: ratio}`` (any member names its group).

        Raises:
            UserError: (``strict``) a layer outside the searched groups, a ratio outside
                ``[0, 1)``, or members of one group given different ratios.
        """
        out: dict[str, float] = {}
        for path, ratio in ratios.items():
            value = float(ratio)
            if not 0.0 <= value < 1.0:
                raise UserError(f"pruning ratio of layer {path!r} must be in [0, 1), but "
                                f"got {ratio!r}")
            name = self.group_of.get(path)
            if name is None:
                if strict:
                    raise UserError(f"the plan prunes layer {path!r}, which this search "
                                    f"does not prune; pruned groups: {sorted(self.groups)}")
                continue
            if value == 0.0:
                continue
            if name in out and out[name] != value:
                raise UserError(f"layers of group {list(self.groups[name].members)} are "
                                f"pruned alike, but the plan gives them ratios "
                                f"{out[name]!r} and {value!r}")
            out[name] = value
        return out

    def kept(self, path: str, ratios: Mapping[str, float]) -> tuple[int, int]:
        """``(filters kept, filters)`` of layer ``path`` under ``{group: ratio}``."""
        name = self.group_of.get(path)
        if name is None:
            return 0, 0
        channels = self.groups[name].channels
        return kept_count(channels, ratios.get(name, 0.0)), channels

    def pruned_candidate(self, path: str, kept: int, method: str, level: int,
                         n_levels: int) -> Candidate | None:
        """The candidate of ``method`` at rank ``level`` for ``path`` pruned to ``kept``
        filters (``None``: the method has no candidate there)."""
        grid = self.grids.get(path, {}).get(kept, {}).get(method)
        if not grid:
            return None
        if n_levels <= 1 or len(grid) == 1:
            return grid[0]
        index = round(int(level) * (len(grid) - 1) / (n_levels - 1))
        return grid[min(max(index, 0), len(grid) - 1)]

    def rank_level(self, path: str, kept: int, method: str, rank: int, n_levels: int
                   ) -> int:
        """The rank level whose candidate (:meth:`pruned_candidate`) is the pruned grid's
        rank nearest ``rank`` (0 when the method has no candidate there)."""
        grid = self.grids.get(path, {}).get(kept, {}).get(method)
        if not grid or n_levels <= 1 or len(grid) == 1:
            return 0
        index = min(range(len(grid)), key=lambda i: abs(grid[i].rank - rank))
        return round(index * (n_levels - 1) / (len(grid) - 1))

    def max_rank(self, path: str, method: str, ratios: Mapping[str, float]) -> int:
        """The largest rank ``method`` takes on layer ``path`` once ``{group: ratio}``
        apply (its own filters and its producers' pruned), 0 when it does not apply.

        A rank scored on the layer with every input channel can exceed it once its
        producers are pruned (an SVD rank above the kept inputs).
        """
        from lrf_optuna.decompose import get_method
        from lrf_optuna.prune.costs import pruned_layer_info

        info = self.infos[path]
        assert info is not None
        cin, cout = self.graph.channels(path, ratios)
        if (cin, cout) == (info.in_channels, info.out_channels):
            return get_method(method).max_rank(info)
        try:
            small = pruned_layer_info(info, in_channels=cin, out_channels=None
                                      if info.kind == "depthwise" else cout)
            m = get_method(method)
            return m.max_rank(small) if m.applies_to(small) else 0
        except ValueError:  # DecompositionError included
            return 0

    def table(self, path: str, kept: int) -> LayerTable:
        """The LRF table of ``path`` pruned to ``kept`` filters."""
        return self.pruning.table(path, kept)

    def group_similarities(self, ratios: Mapping[str, float]) -> dict[str, float]:
        """``{"<group>:prune": similarity}`` of every group (1.0 when not pruned).

        Raises:
            UserError: a ratio whose pruning the cache did not score.
        """
        out = {}
        for name, group in self.groups.items():
            kept = kept_count(group.channels, ratios.get(name, 0.0))
            try:
                out[f"{name}{PRUNE_SUFFIX}"] = group.score(kept, self.metric)
            except KeyError as err:
                raise UserError(f"{err.args[0]}; use one of the search's ratios "
                                f"{list(self.config.ratios)}") from None
        return out

    def costs(self, ratios: Mapping[str, float], plan: Mapping[str, tuple[str, int]], *,
              precision: str | None = None) -> ModelCost:
        """Exact costs of the model pruned by ``{group: ratio}``, then factorized (bytes:
        deployed at ``precision`` when given, see :meth:`PruneGraph.model_costs`)."""
        return self.graph.model_costs(ratios, plan, precision=precision)
