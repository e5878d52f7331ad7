"""The Optuna objective: per-layer method and rank, scored from the similarity cache.

Search space. For every searched layer ``L`` there are exactly two parameters, present in
every trial so that NSGA-II's crossover and mutation act on them (Optuna samples a
parameter outside the shared search space at random):

* ``"L:method"``: categorical over ``"keep"`` and the methods the cache scored for ``L``;
* ``"L:rank"``: an integer *rank level* ``0 .. n_levels - 1``. For the chosen method it
  selects the rank at the same relative position of that method's rank grid
  (``index = round(level * (len(grid) - 1) / (n_levels - 1))``), so a level means
  "about this much compression" whatever the method, and crossover between trials with
  different methods stays meaningful. It is ignored when the method is ``"keep"``.

Objectives (default): model memory (``"params"``, or ``"bytes"``: with ``memory="bytes"``
the deployed bytes of the weights at the export precision ``quantize``,
:class:`lrf_optuna.costs.PlanBytes`), ``"flops"`` (2 x MACs), both minimised, and the
accuracy ``"proxy"`` maximised. The proxy aggregates the chosen candidates' feature-map
similarities (a kept layer scores 1.0), see :data:`AGGREGATIONS`: ``product`` (default),
``mean`` or ``min``. On 60 random plans of LeNet-5 and of the VGG-style net,
cosine/product ranked plans by real (un-fine-tuned) accuracy best (mean Spearman 0.929;
cosine/mean 0.927, CKA 0.83), see ``benchmarks/RESULTS.md``. Costs are whole-model
numbers: the original model's total minus what the chosen layers save. A trial is a
dictionary look-up: it never touches TensorFlow.

Example:
    >>> objective = LRFObjective(model, x_cal, cache_dir=".lrf_cache")  # doctest: +SKIP
    >>> study = optuna.create_study(directions=objective.directions,  # doctest: +SKIP
    ...                             sampler=SeededNSGAIISampler(seed=0))
    >>> objective.seed_study(study)  # doctest: +SKIP
    >>> study.optimize(objective, n_trials=300)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from lrf_optuna.errors import UserError, is_int
from lrf_optuna.plan import KEEP, CompressionPlan, Plan, plan_attrs
from lrf_optuna.scoring.cache import Candidate, GridConfig, LayerTable, SimilarityCache
from lrf_optuna.scoring.similarity import DEFAULT_METRIC
from lrf_optuna.search.settings import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    Direction,
    check_scoring,
    check_search_constraints,
    directions_of,
    memory_objectives,
    memory_setting,
    prune_config_of,
)
from lrf_optuna.search.space import Restrictions, candidate_grids, grid_from_json
from lrf_optuna.study.records import (
    COMPRESSION_RATIO_ATTR,
    DEPLOYED_BYTES_ATTR,
    FLOPS_ATTR,
    FLOPS_REDUCTION_ATTR,
    ORIGINAL_ATTR,
    PARAMS_ATTR,
    PROXY_ATTR,
    PRUNE_ATTR,
    SPACE_ATTR,
    STRATEGY_ATTR,
    OriginalInfo,
)
from lrf_optuna.study.storage import study_lock

if TYPE_CHECKING:
    import keras

    from lrf_optuna.prune.cache import PruneCache, PruneConfig
    from lrf_optuna.prune.space import PruneSpace
    from lrf_optuna.search.strategies import Strategy

__all__ = ["CalibrationData", "LRFObjective", "PlanScore"]

logger = logging.getLogger(__name__)

#: Calibration inputs: images ``(n, *input_shape)``, or an ``(images, labels)`` pair.
CalibrationData = np.ndarray | tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PlanScore:
    """Whole-model costs and proxy of a plan, from the cache."""

    plan: Mapping[str, tuple[str, int]]
    params: int
    bytes: int
    macs: int
    proxy: float
    similarities: Mapping[str, float]

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def objective(self, name: str) -> float:
        return float(getattr(self, name))


class _LayerSpace:
    """The searchable choices of one layer, as lists indexed by rank level."""

    def __init__(self, table: LayerTable, methods: Sequence[str] | None,
                 rank_range: tuple[int, int] | None, metric: str) -> None:
        self.path = table.path
        self.table = table
        self.grids: dict[str, list[Candidate]] = {}
        for name in table.methods:
            if methods is not None and name not in methods:
                continue
            cands = sorted(table.for_method(name), key=lambda c: c.rank)
            if rank_range is not None:
                cands = [c for c in cands if rank_range[0] <= c.rank <= rank_range[1]]
            if cands:
                self.grids[name] = cands
        self.choices = [KEEP, *self.grids]
        self.n_levels = max((len(g) for g in self.grids.values()), default=1)
        self.metric = metric

    def candidate(self, method: str, level: int) -> Candidate:
        grid = self.grids[method]
        if self.n_levels <= 1 or len(grid) == 1:
            return grid[0]
        index = round(int(level) * (len(grid) - 1) / (self.n_levels - 1))
        return grid[min(max(index, 0), len(grid) - 1)]

    def level_of(self, method: str, rank: int) -> int:
        """The rank level whose candidate is the grid rank nearest ``rank`` (log scale)."""
        grid = self.grids[method]
        ranks = np.array([c.rank for c in grid], dtype=float)
        index = int(np.argmin(np.abs(np.log(ranks) - math.log(max(rank, 1)))))
        if self.n_levels <= 1 or len(grid) == 1:
            return 0
        return round(index * (self.n_levels - 1) / (len(grid) - 1))


class LRFObjective:
    """Multi-objective Optuna objective over per-layer LRF method and rank.

    Building it builds (or reopens) the :class:`~lrf_optuna.scoring.cache.SimilarityCache`; calling
    it on a trial only reads that cache.

    Args:
        model: The trained original model (Sequential or Functional).
        calibration_data: Calibration inputs from the training data (never test data),
            an array ``(n, *input_shape)`` or an ``(x, y)`` pair.
        cache_dir: Where the similarity cache lives.
        metric: Similarity metric of the proxy.
        aggregation: How layer similarities combine into the proxy (:data:`AGGREGATIONS`).
        objectives: Names among ``"params"``, ``"bytes"``, ``"flops"``, ``"macs"`` and
            ``"proxy"``; directions follow.
        layers: Restrict the search to these layer paths (default: all decomposable).
        methods: Restrict the methods: a list for every layer, or ``{layer: [methods]}``.
        ranks: Restrict ranks per layer: ``{layer: (min_rank, max_rank)}``.
        max_params: Constraint: the compressed model has at most this many parameters.
        max_flops: Constraint: at most this many FLOPs.
        min_proxy: Constraint: the proxy is at least this.
        grid: Rank grid of the cache.
        cache: An already built cache (skips building; ``model`` is still needed to
            build compressed models).
        prune: Also search filter pruning (opt-in): ``True`` for the default
            :class:`~lrf_optuna.prune.PruneConfig`, or a config. Adds one parameter
            ``"<group>:prune"`` per prunable group (:mod:`lrf_optuna.prune.space`) and
            builds the :class:`~lrf_optuna.prune.PruneCache` beside the similarity cache.
        pruning: An already built pruning cache (with ``prune``).
        memory: What the memory objective counts: ``"params"`` (default) or
            ``"bytes"``, the bytes the weights take in the ``.tflite`` file at
            ``quantize`` (:class:`~lrf_optuna.costs.PlanBytes`; replaces ``"params"`` in
            ``objectives``).
        quantize: The export precision the ``"bytes"`` objective counts at
            (:data:`lrf_optuna.deploy.QUANTIZE_MODES`; ``"none"`` is float32).
        progress: Show the cache-building progress bar.

    Raises:
        UserError: before the calibration pass, for anything wrong with the arguments
            (:mod:`lrf_optuna.search.space`): calibration data of the wrong shape or with NaN/Inf
            values, an unknown metric, aggregation, objective or method, a layer that is not
            factorizable, a bad rank range, an empty search space, infeasible constraints.

    Example (``model`` trained, ``x_cal`` calibration images)::

        import optuna, lrf_optuna
        objective = lrf_optuna.LRFObjective(model, x_cal, cache_dir=".lrf_cache")
        study = optuna.create_study(directions=objective.directions,
                                    sampler=lrf_optuna.SeededNSGAIISampler(seed=0))
        objective.seed_study(study)
        study.optimize(objective, n_trials=500, show_progress_bar=True)
        compressed = objective.build_model(study.best_trials[0])
    """

    def __init__(
        self,
        model: keras.Model,
        calibration_data: CalibrationData,
        *,
        cache_dir: str | os.PathLike[str] = ".lrf_cache",
        metric: str = DEFAULT_METRIC,
        aggregation: str = DEFAULT_AGGREGATION,
        objectives: Sequence[str] = ("params", "flops", "proxy"),
        layers: Iterable[str] | None = None,
        methods: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        ranks: Mapping[str, tuple[int, int]] | None = None,
        max_params: float | None = None,
        max_flops: float | None = None,
        min_proxy: float | None = None,
        grid: GridConfig | None = None,
        cache: SimilarityCache | None = None,
        prune: PruneConfig | bool | None = None,
        pruning: PruneCache | None = None,
        memory: str = "params",
        quantize: str = "none",
        progress: bool = True,
    ) -> None:
        from lrf_optuna.costs import PlanBytes, model_costs
        from lrf_optuna.data import check_inputs

        # everything cheap first: the calibration pass comes last
        check_scoring(metric, aggregation)
        objectives = memory_objectives(objectives, memory)
        directions_of(objectives)  # raises on unknown names
        deployed = memory_setting(objectives, {"memory": memory, "quantize": quantize,
                                               "prune": prune})
        prune_config = prune_config_of(prune)
        if layers is None and cache is not None:
            layers = cache.layers
        restrictions = Restrictions.of(layers, methods, ranks)
        grids = candidate_grids(model, restrictions, grid or (
            grid_from_json(cache.manifest["grid"]) if cache is not None else None))
        check_search_constraints(model, grids, prune=prune_config, max_params=max_params,
                                 max_flops=max_flops, min_proxy=min_proxy)
        if isinstance(calibration_data, tuple):
            calibration_data = calibration_data[0]
        calibration_data = check_inputs(calibration_data, tuple(model.inputs[0].shape[1:]),
                                        what="calibration_data", model=repr(model.name))
        self.model = model
        self.metric = metric
        self.aggregation = aggregation
        self.objectives = list(objectives)
        self.max_params, self.max_flops, self.min_proxy = max_params, max_flops, min_proxy
        self.restrictions = restrictions
        if cache is None:
            cache = SimilarityCache.build(model, calibration_data, cache_dir=cache_dir,
                                          metric=metric, grid=grid, progress=progress)
        elif metric not in cache.metrics:
            raise UserError(f"the cache has metrics {cache.metrics}, not {metric!r}")
        self.cache = cache
        unknown = [p for p in grids if p not in cache.tables]
        if unknown:
            raise UserError(f"layers not in the similarity cache: {unknown}; it has "
                            f"{sorted(cache.tables)}")
        self.spaces: dict[str, _LayerSpace] = {}
        for path in grids:
            space = _LayerSpace(cache.layer(path), restrictions.methods_of(path),
                                (restrictions.ranks or {}).get(path), metric)
            if len(space.choices) > 1:
                self.spaces[path] = space
            else:
                logger.info("layer %s has no candidate left after the restrictions; kept",
                            path)
        self.prune: PruneSpace | None = None
        if prune_config is not None:
            self.prune = self._prune_space(model, calibration_data, prune_config, pruning,
                                           progress)
        costs = model_costs(model)
        self.original_params = costs.params
        self.original_bytes = costs.bytes
        self.original_macs = costs.macs
        self._bytes_per_param = costs.bytes / max(costs.params, 1)
        #: Deployed bytes of plans, when the memory objective counts them.
        self.plan_bytes = PlanBytes(model, deployed["quantize"]) if deployed else None
        if self.plan_bytes is not None:
            self.original_bytes = self.plan_bytes.original

    def _prune_space(self, model: keras.Model, x: np.ndarray, config: PruneConfig,
                     pruning: PruneCache | None, progress: bool) -> PruneSpace:
        from lrf_optuna.prune.cache import PruneCache
        from lrf_optuna.prune.space import PruneSpace

        if pruning is None:
            try:
                pruning = PruneCache.build(model, x, self.cache, config=config,
                                           layers=list(self.spaces), progress=progress)
            except ValueError as err:
                raise UserError(str(err)) from err
        elif pruning.config != config:
            raise UserError(f"the pruning cache has config {pruning.config}, not {config}")
        return PruneSpace(model, pruning, metric=self.metric,
                          methods={p: self.restrictions.methods_of(p) for p in self.spaces},
                          rank_ranges=self.restrictions.ranks)

    # -- Optuna's side -------------------------------------------------------------------
    @property
    def directions(self) -> list[Direction]:
        """Optimisation directions, for ``optuna.create_study(directions=...)``."""
        return directions_of(self.objectives)

    @property
    def metric_names(self) -> list[str]:
        return list(self.objectives)

    def search_space(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The distributions of every parameter (two per searched layer)."""
        out: dict[str, optuna.distributions.BaseDistribution] = {}
        for path, space in self.spaces.items():
            out[f"{path}:method"] = optuna.distributions.CategoricalDistribution(
                space.choices)
            out[f"{path}:rank"] = optuna.distributions.IntDistribution(
                0, max(space.n_levels - 1, 0))
        if self.prune is not None:
            out.update(self.prune.parameters())
        return out

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        params: dict[str, Any] = {}
        for path, space in self.spaces.items():
            params[f"{path}:method"] = trial.suggest_categorical(f"{path}:method",
                                                                 space.choices)
            params[f"{path}:rank"] = trial.suggest_int(f"{path}:rank", 0,
                                                       max(space.n_levels - 1, 0))
        if self.prune is not None:
            for name, dist in self.prune.parameters().items():
                params[name] = trial.suggest_int(name, dist.low, dist.high)
        score = self.score(self.plan_from_params(params))
        self._record(trial, score)
        return tuple(score.objective(o) for o in self.objectives)

    def _record(self, trial: optuna.Trial, score: PlanScore) -> None:
        trial.set_user_attr(PARAMS_ATTR, score.params)
        trial.set_user_attr(FLOPS_ATTR, score.flops)
        trial.set_user_attr(PROXY_ATTR, round(score.proxy, 6))
        if self.plan_bytes is not None:
            trial.set_user_attr(DEPLOYED_BYTES_ATTR, score.bytes)
        trial.set_user_attr(COMPRESSION_RATIO_ATTR,
                            round(self.original_params / max(score.params, 1), 4))
        trial.set_user_attr(FLOPS_REDUCTION_ATTR,
                            round(1 - score.macs / max(self.original_macs, 1), 4))
        for key, value in plan_attrs(score.plan, self.spaces).items():
            trial.set_user_attr(key, value)
        if self.max_params is not None:
            trial.set_constraint("max_params", score.params - self.max_params)
        if self.max_flops is not None:
            trial.set_constraint("max_flops", score.flops - self.max_flops)
        if self.min_proxy is not None:
            trial.set_constraint("min_proxy", self.min_proxy - score.proxy)

    # -- plans ---------------------------------------------------------------------------
    def _checked_plan(self, plan: Any, *, layers: Mapping[str, Any] | None
                      ) -> dict[str, tuple[str, int]]:
        """``plan`` as ``{layer: (method, rank)}`` (kept layers dropped), every entry
        checked; with ``layers``, each named layer must be one of them."""
        if not isinstance(plan, Mapping):
            raise UserError(f"a plan is a mapping {{layer: (method, rank)}}, but got "
                            f"{type(plan).__name__}")
        out: dict[str, tuple[str, int]] = {}
        for path, choice in plan.items():
            if choice is None or choice == KEEP:
                continue
            if not (isinstance(choice, (tuple, list)) and len(choice) == 2):
                raise UserError(f"plan entry of layer {path!r} must be (method, rank), None "
                                f"or 'keep', but got {choice!r}")
            method, rank = choice
            if method == KEEP:
                continue
            if layers is not None and path not in layers:
                raise UserError(f"the plan names layer {path!r}, which this objective does "
                                f"not search; searched layers: {sorted(layers)}")
            if not isinstance(method, str):
                raise UserError(f"plan entry of layer {path!r}: the method must be a name, "
                                f"but got {method!r}")
            if not is_int(rank) or rank < 1:
                raise UserError(f"plan entry of layer {path!r}: the rank must be a positive "
                                f"integer, but got {rank!r} ({type(rank).__name__})")
            table = self.cache.tables.get(path)
            if layers is not None and table is not None and method not in table.methods:
                raise UserError(f"plan entry of layer {path!r}: method {method!r} was not "
                                f"scored for it; scored methods: {table.methods}")
            out[path] = (method, int(rank))
        return out

    def score(self, plan: Mapping[str, tuple[str, int] | None]) -> PlanScore:
        """Whole-model params, bytes, MACs and proxy of a plan (cache look-ups only).

        Raises:
            UserError: an entry is not ``(method, rank)`` with a scored method and a
                positive integer rank, or names a layer the objective does not search.
        """
        checked = self._checked_plan(plan, layers=self.spaces)
        ratios = CompressionPlan.of(plan).ratios
        if self.prune is not None:
            return self._score_pruned(checked, self.prune.group_ratios(ratios))
        if ratios:
            raise UserError(f"the plan prunes {sorted(ratios)}, but this objective does not "
                            "search pruning (pass prune=True)")
        sims, clean, picked = self._choose(checked, {})
        params, macs = self.original_params, self.original_macs
        for table, cand in picked.values():
            params += cand.params - table.original_params
            macs += cand.macs - table.original_macs
        proxy = AGGREGATIONS[self.aggregation](list(sims.values()))
        nbytes = (self.plan_bytes.of_plan(clean) if self.plan_bytes is not None
                  else round(params * self._bytes_per_param))
        return PlanScore(clean, params, nbytes, macs, proxy, sims)

    def _choose(self, checked: Mapping[str, tuple[str, int]], ratios: Mapping[str, float]
                ) -> tuple[dict[str, float], dict[str, tuple[str, int]],
                           dict[str, tuple[LayerTable, Candidate]]]:
        """Each searched layer's scored candidate under ``ratios`` (``{group: ratio}``; a
        layer whose filters are pruned looks up its pruned table): similarities (1.0 when
        kept), the plan on the grid and ``{layer: (table, candidate)}``."""
        sims: dict[str, float] = {}
        clean: dict[str, tuple[str, int]] = {}
        picked: dict[str, tuple[LayerTable, Candidate]] = {}
        for path in self.spaces:
            choice = checked.get(path)
            if choice is None:
                sims[path] = 1.0
                continue
            fitted = self._fit(path, choice[0], choice[1], ratios)
            if fitted is None:  # no rank of the method fits the pruned layer: pruned only
                sims[path] = 1.0
                continue
            table, cand = fitted
            sims[path] = cand.score(self.metric)
            clean[path] = (cand.method, cand.rank)
            picked[path] = (table, cand)
        return sims, clean, picked

    def _fit(self, path: str, method: str, rank: int, ratios: Mapping[str, float]
             ) -> tuple[LayerTable, Candidate] | None:
        """The scored candidate of ``(method, rank)`` for ``path`` under ``{group:
        ratio}``: from the pruned layer's table when its filters are pruned, at the
        nearest scored rank at or below ``rank`` that the layer still takes once its
        producers are pruned (``None``: none does).

        Raises:
            UserError: ``method`` was not scored for the layer pruned this way.
        """
        kept, channels = self.prune.kept(path, ratios) if self.prune else (0, 0)
        if kept < channels:
            table = self.prune.table(path, kept)  # type: ignore[union-attr]
            if method not in table.methods:
                raise UserError(f"plan entry of layer {path!r}: method {method!r} was not "
                                f"scored for it pruned to {kept} of {channels} filters; "
                                f"scored methods: {table.methods}")
        else:
            table = self.cache.layer(path)
        if self.prune is None or not ratios:
            return table, table.lookup(method, rank)
        limit = self.prune.max_rank(path, method, ratios)
        cand = table.lookup(method, min(rank, limit))
        return None if cand.rank > limit else (table, cand)

    def _score_pruned(self, checked: Mapping[str, tuple[str, int]],
                      ratios: Mapping[str, float]) -> PlanScore:
        """:meth:`score` of a search that prunes (see :mod:`lrf_optuna.prune.space`)."""
        assert self.prune is not None
        sims, clean, _ = self._choose(checked, ratios)
        sims.update(self.prune.group_similarities(ratios))
        costs = self.prune.costs(ratios, clean, precision=None if self.plan_bytes is None
                                 else self.plan_bytes.precision)
        proxy = AGGREGATIONS[self.aggregation](list(sims.values()))
        plan = CompressionPlan(clean, ratios=ratios, importance=self.prune.config.importance)
        return PlanScore(plan, costs.params, costs.bytes, costs.macs, proxy, sims)

    def plan_from_params(self, params: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
        """Decode a trial's parameters into ``{layer: (method, rank)}`` (kept layers
        omitted); a :class:`~lrf_optuna.plan.CompressionPlan` with the groups'
        ratios when the search prunes."""
        plan: dict[str, tuple[str, int]] = {}
        ratios = self.prune.ratios_from_params(params) if self.prune is not None else {}
        for path, space in self.spaces.items():
            method = params.get(f"{path}:method", KEEP)
            if method == KEEP:
                continue
            if method not in space.grids:
                raise ValueError(f"trial parameter {path}:method={method!r} is not in this "
                                 f"objective's search space {space.choices}")
            level = int(params[f"{path}:rank"])
            kept, channels = self.prune.kept(path, ratios) if self.prune else (0, 0)
            if kept < channels:
                assert self.prune is not None
                cand = self.prune.pruned_candidate(path, kept, method, level, space.n_levels)
                if cand is not None:
                    plan[path] = (method, cand.rank)
                continue
            plan[path] = (method, space.candidate(method, level).rank)
        if self.prune is None:
            return plan
        fitted = {p: self._fit(p, m, r, ratios) for p, (m, r) in plan.items()}
        return CompressionPlan({p: (f[1].method, f[1].rank) for p, f in fitted.items() if f},
                               ratios=ratios, importance=self.prune.config.importance)

    def plan_of(self, trial: optuna.trial.FrozenTrial | optuna.Trial) -> Plan:
        """The plan of a trial, decoded from its parameters."""
        return self.plan_from_params(trial.params)

    def params_for_plan(self, plan: Mapping[str, tuple[str, int] | None]) -> dict[str, Any]:
        """Encode a plan as trial parameters (ranks snap to the nearest grid rank; a layer
        the objective does not search, or a method it does not search for a layer, is
        kept).

        Raises:
            UserError: an entry is not ``(method, rank)`` with a positive integer rank.
        """
        checked = self._checked_plan(plan, layers=None)
        out: dict[str, Any] = {}
        ratios: dict[str, float] = {}
        if self.prune is not None:
            prune_params = self.prune.params_for_ratios(CompressionPlan.of(plan).ratios)
            ratios = self.prune.ratios_from_params(prune_params)
        for path, space in self.spaces.items():
            choice = checked.get(path)
            if choice is None or choice[0] not in space.grids:
                out[f"{path}:method"] = KEEP
                out[f"{path}:rank"] = 0
                continue
            out[f"{path}:method"] = choice[0]
            kept, channels = self.prune.kept(path, ratios) if self.prune else (0, 0)
            if kept < channels:
                assert self.prune is not None
                out[f"{path}:rank"] = self.prune.rank_level(path, kept, choice[0],
                                                            choice[1], space.n_levels)
            else:
                out[f"{path}:rank"] = space.level_of(choice[0], choice[1])
        if self.prune is not None:
            out.update(prune_params)
        return out

    def build_model(self, trial_or_plan: optuna.trial.FrozenTrial | optuna.Trial
                    | Mapping[str, tuple[str, int]]) -> keras.Model:
        """The compressed Keras model of a trial (frozen or live) or a plan.

        Pick a compressed trial with :func:`lrf_optuna.select_trials` (the original, all
        "keep", is on every Pareto front: ``study.best_trials[0]`` may be it).

        Raises:
            UserError: a plan entry is not ``(method, rank)`` with a scored method and a
                positive integer rank, or names a layer the cache has not scored.
        """
        if not isinstance(trial_or_plan, Mapping):
            plan = self.plan_of(trial_or_plan)
        else:
            plan = self._checked_plan(trial_or_plan, layers=self.cache.tables)
            source = CompressionPlan.of(trial_or_plan)
            if source.ratios:
                plan = CompressionPlan(plan, ratios=source.ratios, importance=source.importance)
        from lrf_optuna.prune.cache import build_plan_model

        return build_plan_model(self.model, plan, self.cache,
                                pruning=self.prune.pruning if self.prune else None)

    # -- seeding -------------------------------------------------------------------------
    def seed_study(self, study: optuna.Study, strategies: Iterable[Strategy] | None = None,
                   *, include_original: bool = True) -> int:
        """Enqueue the rank-selection strategies' plans; returns how many were new.

        Plans are snapped to the rank grid; a plan already enqueued, running or evaluated
        in the study (same parameters; a FAILed trial does not count, e.g. one of a killed
        worker) is skipped, so calling this twice adds nothing. The study must have been
        described (:meth:`describe_study`) with this search space.

        Raises:
            UserError: the study is not described, or with another search space.
        """
        from lrf_optuna.search.strategies import (
            NamedPlan,
            all_plans,
            default_strategies,
            pruning_strategies,
        )

        if self._recorded_space(study) is None:
            raise UserError(f"study {study.study_name!r} is not described yet: call "
                            "objective.describe_study(study) first (create_lrf_study and "
                            "`lrf-optuna search` do both)")
        if strategies is None and self.prune is not None:
            strategies = [*default_strategies(),
                          *pruning_strategies(self.prune.pruning, metric=self.metric)]
        named = all_plans(self.model, self.cache, strategies)
        if include_original:
            named = [NamedPlan("original", {}), *named]
        # Workers started together would each see a plan missing and enqueue it: check and
        # enqueue under one cross-process lock (Optuna's skip_if_exists is not atomic).
        with study_lock(study, "seed"):
            seen = {json.dumps(_trial_params(t), sort_keys=True)
                    for t in study.get_trials(deepcopy=False)
                    if t.state != optuna.trial.TrialState.FAIL}
            added = 0
            for item in named:
                params = self.params_for_plan(item.plan)
                key = json.dumps(params, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                study.enqueue_trial(params, user_attrs={STRATEGY_ATTR: item.label})
                added += 1
        logger.info("enqueued %d strategy plan(s) (%d already present)", added,
                    len(named) - added)
        return added

    def describe_study(self, study: optuna.Study) -> None:
        """Record what the study searches: metric names, the search space
        (``"lrf_optuna:space"``) and the original model with the proxy's settings
        (``"lrf_optuna:original"``, read by the report, the dashboard and fine-tuning).

        Raises:
            UserError: the study was created with a different search space (resuming it
                with other layers, methods or grid would mix incomparable trials).
        """
        space = self._space_json()
        recorded = self._recorded_space(study)
        if recorded is not None and recorded != space:
            raise UserError(
                f"study {study.study_name!r} was created with another search space "
                "(layers, methods or rank grid differ); use a new study name or the "
                "original settings")
        if recorded is None:
            study.set_user_attr(SPACE_ATTR, space)
            study.set_user_attr(ORIGINAL_ATTR, OriginalInfo(
                params=self.original_params, flops=2 * self.original_macs,
                model=self.model.name, metric=self.metric, aggregation=self.aggregation,
                cache=str(self.cache.directory)).to_json())
            if self.prune is not None:
                study.set_user_attr(PRUNE_ATTR, {
                    "config": self.prune.config.to_json(),
                    "cache": str(self.prune.pruning.directory),
                    "layers": list(self.spaces),
                    "groups": {n: list(g.members) for n, g in self.prune.groups.items()}})
        if study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(self.metric_names)

    def _space_json(self) -> dict[str, Any]:
        return json.loads(json.dumps({
            name: optuna.distributions.distribution_to_json(dist)
            for name, dist in self.search_space().items()}))

    @staticmethod
    def _recorded_space(study: optuna.Study) -> dict[str, Any] | None:
        recorded = study.user_attrs.get(SPACE_ATTR)
        return None if recorded is None else json.loads(json.dumps(recorded))


def _trial_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Parameters of a trial; an enqueued one's full fixed parameters (a RUNNING trial's
    ``params`` holds only what it has suggested so far)."""
    return dict(trial.system_attrs.get("fixed_params") or trial.params)
