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

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import optuna

from lrf_optuna.cache import Candidate, GridConfig, LayerTable, SimilarityCache
from lrf_optuna.errors import UserError
from lrf_optuna.plan import KEEP, CompressionPlan, Plan, decode_plan, describe_choice, plan_attrs
from lrf_optuna.problem import Problem, ProblemSpec
from lrf_optuna.similarity import DEFAULT_METRIC, METRICS
from lrf_optuna.space import (
    Restrictions,
    candidate_grids,
    check_constraints,
    grid_from_json,
    is_int,
)
from lrf_optuna.study.binding import (
    Binding,
    bound,
    check_binding,
    load_study_problem,
    record_binding,
)
from lrf_optuna.study.records import (
    COMPRESSION_RATIO_ATTR,
    DEPLOYED_BYTES_ATTR,
    FLOPS_ATTR,
    FLOPS_REDUCTION_ATTR,
    ORIGINAL_ATTR,
    PARAMS_ATTR,
    PROBLEM_ATTR,
    PROXY_ATTR,
    PRUNE_ATTR,
    SPACE_ATTR,
    STRATEGY_ATTR,
    OriginalInfo,
    record_problem,
)
from lrf_optuna.study.recovery import (
    DEFAULT_GRACE_PERIOD,
    record_heartbeat,
    recover_stale_trials,
)
from lrf_optuna.study.storage import (
    artifact_dir_for,
    check_storage,
    default_storage,
    open_storage,
    safe_name,
    storage_url,
    study_lock,
)

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Dataset
    from lrf_optuna.prune.cache import PruneCache, PruneConfig
    from lrf_optuna.prune.space import PruneSpace
    from lrf_optuna.strategies import Strategy

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "CalibrationData",
    "LRFObjective",
    "LRFSearch",
    "PlanScore",
    "SeededNSGAIISampler",
    "create_lrf_study",
    "describe_choice",
    "finished_trials",
    "load_problem",
    "prepare_lrf_study",
    "run_remaining",
]

logger = logging.getLogger(__name__)

#: Calibration inputs: images ``(n, *input_shape)``, or an ``(images, labels)`` pair.
CalibrationData = np.ndarray | tuple[np.ndarray, np.ndarray]


def __getattr__(name: str) -> Any:
    if name == "sqlite_path":  # moved with the other storage helpers
        warnings.warn("lrf_optuna.search.sqlite_path is deprecated; use "
                      "lrf_optuna.study.storage.sqlite_path", DeprecationWarning, stacklevel=2)
        from lrf_optuna.study.storage import sqlite_path

        return sqlite_path
    raise AttributeError(f"module 'lrf_optuna.search' has no attribute {name!r}")


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 1.0


def _product(xs: Sequence[float]) -> float:
    return float(np.prod(np.clip(xs, 0.0, None))) if len(xs) else 1.0


def _min(xs: Sequence[float]) -> float:
    return float(np.min(xs)) if len(xs) else 1.0


#: How per-layer similarities (one per searched layer, 1.0 when kept) become the proxy.
AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": _mean,
    "product": _product,
    "min": _min,
}
#: Chosen by ``benchmarks/similarity_metrics.py`` (see ``benchmarks/RESULTS.md``).
DEFAULT_AGGREGATION = "product"

Direction = Literal["minimize", "maximize"]
_OBJECTIVES: dict[str, Direction] = {"params": "minimize", "bytes": "minimize", "flops": "minimize",
               "macs": "minimize", "proxy": "maximize"}


def prune_config_of(prune: Any) -> PruneConfig | None:
    """The :class:`~lrf_optuna.prune.PruneConfig` of an objective's ``prune`` argument
    (``None``/``False``: no pruning; ``True``: the default config).

    Example:
        >>> prune_config_of(None) is None, prune_config_of(True).ratios[:3]
        (True, (0.0, 0.125, 0.25))
    """
    if prune is None or prune is False:
        return None
    from lrf_optuna.prune.cache import PruneConfig

    if prune is True:
        return PruneConfig()
    if isinstance(prune, PruneConfig):
        return prune
    raise UserError(f"prune must be True, False, None or a lrf_optuna.prune.PruneConfig, "
                    f"but got {prune!r}")


def directions_of(objectives: Sequence[str]) -> list[Direction]:
    """Optimisation directions of objective names (see :class:`LRFObjective`).

    Example:
        >>> directions_of(["params", "proxy"])
        ['minimize', 'maximize']
    """
    if isinstance(objectives, str):
        raise UserError(f"objectives must be a list of names, but got {objectives!r}")
    bad = [o for o in objectives if o not in _OBJECTIVES]
    if bad or not objectives:
        raise UserError(f"unknown objectives {bad or list(objectives)!r}; choose from "
                        f"{sorted(_OBJECTIVES)}")
    if len(set(objectives)) != len(objectives):
        raise UserError(f"objectives {list(objectives)} name one twice")
    return [_OBJECTIVES[o] for o in objectives]


#: The ``memory=`` values: what the memory objective counts.
MEMORY_COUNTS = ("params", "bytes")


def memory_objectives(objectives: Sequence[str], memory: str = "params") -> list[str]:
    """The objectives with the memory one as ``memory`` says: ``"bytes"`` puts
    ``"bytes"`` (deployed bytes) where ``"params"`` was.

    Example:
        >>> memory_objectives(["params", "flops", "proxy"], "bytes")
        ['bytes', 'flops', 'proxy']
    """
    if memory not in MEMORY_COUNTS:
        raise UserError(f"unknown memory count {memory!r}; choose from {list(MEMORY_COUNTS)}")
    if isinstance(objectives, str):
        raise UserError(f"objectives must be a list of names, but got {objectives!r}")
    if memory == "params":
        return list(objectives)
    return list(dict.fromkeys("bytes" if o == "params" else o for o in objectives))


def memory_setting(objectives: Sequence[str], kwargs: Mapping[str, Any]) -> dict[str, str] | None:
    """What a study's binding records of its memory objective: ``{"count": "bytes",
    "quantize": mode}`` when it counts deployed bytes, else ``None`` (nothing recorded,
    so the bindings of older studies hold).

    Raises:
        UserError: an unknown ``memory`` or ``quantize``, or deployed bytes with pruning.
    """
    from lrf_optuna.deploy.convert import check_quantize

    memory = kwargs.get("memory", "params")
    quantize = check_quantize(kwargs.get("quantize", "none"))
    if "bytes" not in memory_objectives(objectives, memory):
        return None
    if prune_config_of(kwargs.get("prune")) is not None:
        raise UserError("memory='bytes' (--memory bytes) is not available with pruning yet: "
                        "the pruned layers' deployed bytes are not modelled; use "
                        "memory='params' with prune")
    return {"count": "bytes", "quantize": quantize}


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

    Building it builds (or reopens) the :class:`~lrf_optuna.cache.SimilarityCache`; calling
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
            (:mod:`lrf_optuna.space`): calibration data of the wrong shape or with NaN/Inf
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
        if aggregation not in AGGREGATIONS:
            raise UserError(f"unknown aggregation {aggregation!r}; choose from "
                            f"{sorted(AGGREGATIONS)}")
        if metric not in METRICS:
            raise UserError(f"unknown similarity metric {metric!r}; choose from "
                            f"{sorted(METRICS)}")
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
        # pruning reaches below LRF's smallest model: only the proxy bound is checked then
        check_constraints(model, grids, max_params=None if prune_config else max_params,
                          max_flops=None if prune_config else max_flops,
                          min_proxy=min_proxy)
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
        ratios = getattr(plan, "ratios", None) or {}
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
        costs = self.prune.costs(ratios, clean)
        proxy = AGGREGATIONS[self.aggregation](list(sims.values()))
        plan = CompressionPlan(clean, ratios=ratios, importance=self.prune.config.importance)
        return PlanScore(plan, costs.params, costs.bytes, costs.macs, proxy, sims)

    def plan_from_params(self, params: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
        """Decode a trial's parameters into ``{layer: (method, rank)}`` (kept layers
        omitted); a :class:`~lrf_optuna.study.records.CompressionPlan` with the groups'
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
            prune_params = self.prune.params_for_ratios(getattr(plan, "ratios", None) or {})
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
            ratios = getattr(trial_or_plan, "ratios", None) or {}
            if ratios:
                plan = CompressionPlan(plan, ratios=ratios,
                                       importance=getattr(trial_or_plan, "importance", "l1"))
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
        from lrf_optuna.strategies import (
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


class SeededNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, with the enqueued (seeded) trials in its populations.

    NSGA-II gives a trial its generation when it first samples a parameter. A trial enqueued
    with every parameter fixed (the strategy plans of :meth:`LRFObjective.seed_study`, the
    original model) never samples one, so it never belongs to a generation and is never
    chosen as a parent: the search evolves from random plans only, while the good plans it
    was seeded with sit unused on the front (measured: on ResNet-20 500 NSGA-II trials
    added 2 trials to a front of 14 seeds, exactly the hypervolume of random search). Here
    every trial gets its generation before it runs, so seeded plans join the population of
    the generation they run in (the first one, usually) and are crossed over like any
    other. Generations are stored under Optuna's own key, so studies started with the plain
    :class:`~optuna.samplers.NSGAIISampler` resume unchanged.

    Example:
        >>> import optuna
        >>> sampler = SeededNSGAIISampler(seed=0, population_size=4)
        >>> study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
        >>> study.enqueue_trial({"x": 0.5})
        >>> study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=1)
        >>> study.trials[0].system_attrs[SeededNSGAIISampler._get_generation_key()]
        0
    """

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        if trial.system_attrs.get("fixed_params"):
            self.get_trial_generation(study, trial)


# __init_subclass__ gave the subclass keys of its own name; share NSGA-II's instead
SeededNSGAIISampler._GENERATION_KEY = optuna.samplers.NSGAIISampler._get_generation_key()
SeededNSGAIISampler._PARENT_CACHE_KEY_PREFIX = (
    optuna.samplers.NSGAIISampler._get_parent_cache_key_prefix())


def finished_trials(study: optuna.Study) -> int:
    """How many trials of ``study`` are COMPLETE."""
    states = (optuna.trial.TrialState.COMPLETE,)
    return len(study.get_trials(deepcopy=False, states=states))


def run_remaining(study: optuna.Study, objective: LRFObjective, n_trials: int, *,
                  show_progress_bar: bool = True,
                  grace_period: float = DEFAULT_GRACE_PERIOD) -> int:
    """Optimise until the study has ``n_trials`` COMPLETE trials; returns how many trials
    this call completed.

    Several workers on one storage share the target: each stops once the study has
    ``n_trials`` COMPLETE trials. Ctrl-C stops cleanly: the running trial is marked failed
    by Optuna, every finished trial stays stored, and rerunning continues from there.

    Killed workers (:mod:`lrf_optuna.study.recovery`): each trial records a heartbeat when
    its objective starts; first, and then every ``grace_period / 2`` seconds, RUNNING
    trials silent for longer than ``grace_period`` seconds are failed with the reason, and
    the strategy plans they carried are enqueued again. A trial of this worker that another
    worker failed that way (this one paused for longer than the grace period) is dropped,
    and the worker goes on.
    """
    complete = optuna.trial.TrialState.COMPLETE
    ran = 0
    last_check = time.monotonic()

    def recover() -> None:
        failed = recover_stale_trials(study, grace_period=grace_period)
        if any("fixed_params" in t.system_attrs for t in failed) and \
                objective._recorded_space(study) is not None:
            objective.seed_study(study)  # a killed worker's strategy plan runs again

    def after_trial(_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran, last_check
        ran += trial.state == complete
        if time.monotonic() - last_check > grace_period / 2:
            last_check = time.monotonic()
            recover()

    def beat_then_score(trial: optuna.Trial) -> tuple[float, ...]:
        record_heartbeat(study, trial)
        return objective(trial)

    recover()
    # other workers on the same storage count too: stop when the study has n_trials
    stop = optuna.study.MaxTrialsCallback(n_trials, states=(complete,))
    while (remaining := n_trials - finished_trials(study)) > 0:
        try:
            study.optimize(beat_then_score, n_trials=remaining,
                           show_progress_bar=show_progress_bar, callbacks=[stop, after_trial])
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("a trial of this worker was failed by another worker's stale-trial "
                           "recovery (this worker paused for more than %g s); going on",
                           grace_period)
            continue
        break
    return ran


# -- the one search entry point ------------------------------------------------------------

@dataclass
class LRFSearch:
    """A prepared search (see :func:`prepare_lrf_study`): the study, its objective and
    problem, ready to run."""

    study: optuna.Study
    objective: LRFObjective
    problem: Problem
    storage: str
    enqueued: int
    grace_period: float = DEFAULT_GRACE_PERIOD

    def optimize(self, n_trials: int, *, show_progress_bar: bool = True) -> int:
        """Run until the study has ``n_trials`` COMPLETE trials (:func:`run_remaining`);
        returns how many trials this call completed."""
        return run_remaining(self.study, self.objective, n_trials,
                             show_progress_bar=show_progress_bar,
                             grace_period=self.grace_period)


#: The :class:`LRFObjective` arguments ``prepare_lrf_study`` passes on.
_OBJECTIVE_ARGS = ("metric", "aggregation", "layers", "methods", "ranks", "max_params",
                   "max_flops", "min_proxy", "grid", "prune", "memory", "quantize",
                   "progress")


def _search_settings(objectives: Sequence[str], kwargs: Mapping[str, Any],
                     restrictions: Restrictions) -> dict[str, Any]:
    """What a search study is bound to besides its problem (see
    :mod:`lrf_optuna.study.binding`)."""
    metric = kwargs.get("metric", DEFAULT_METRIC)
    aggregation = kwargs.get("aggregation", DEFAULT_AGGREGATION)
    if metric not in METRICS:
        raise UserError(f"unknown similarity metric {metric!r}; choose from {sorted(METRICS)}")
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {aggregation!r}; choose from "
                        f"{sorted(AGGREGATIONS)}")
    grid = kwargs.get("grid") or GridConfig()
    settings = {"objectives": list(objectives), "metric": metric, "aggregation": aggregation,
                **restrictions.to_json(), "grid": grid.to_json()}
    prune = prune_config_of(kwargs.get("prune"))
    if prune is not None:  # absent without pruning: the bindings of older studies hold
        settings["prune"] = prune.to_json()
    memory = memory_setting(objectives, kwargs)
    if memory is not None:  # likewise absent when counting params
        settings["memory"] = memory
    return settings


def _existing_study(url: str | optuna.storages.BaseStorage, study_name: str
                    ) -> optuna.Study | None:
    """The study ``study_name`` if the storage holds it, read without changing anything."""
    storage = (optuna.storages.RDBStorage(url, skip_table_creation=True)
               if isinstance(url, str) else url)
    try:
        if study_name not in {s.study_name for s in storage.get_all_studies()}:
            return None
        return optuna.load_study(study_name=study_name, storage=storage)
    finally:
        if isinstance(url, str):
            storage.engine.dispose()  # type: ignore[attr-defined]


def _check_resumable(study: optuna.Study, binding: Binding, directions: Sequence[str],
                     url: str | None) -> None:
    """Refuse to resume ``study`` with another problem, search settings or objectives."""
    check_binding(study, binding, url=url)
    recorded = [d.name.lower() for d in study.directions]
    if recorded != list(directions):
        raise UserError(f"study {study.study_name!r} optimises {len(recorded)} objective(s) "
                        f"{recorded}, not {list(directions)}; pass its --objectives, or "
                        "start a new study (another --study-name or --storage)")


def prepare_lrf_study(
    problem: Problem | ProblemSpec,
    *,
    study_name: str | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    seed: int = 0,
    population_size: int = 50,
    objectives: Sequence[str] = ("params", "flops", "proxy"),
    cache_dir: str | os.PathLike[str] | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    **objective_kwargs: Any,
) -> LRFSearch:
    """Open (or resume) the study of ``problem`` and make it ready: the one place that
    wires a search.

    Everything cheap is checked before anything expensive, and nothing is stored before
    every check passed; each failure is one :class:`~lrf_optuna.errors.UserError` line.
    In order:

    1. the arguments (objectives, metric, aggregation, restrictions, sampler settings);
    2. the storage (:func:`~lrf_optuna.study.storage.check_storage`: the URL, the file or
       server, write access), default ``sqlite:///studies/<study_name>.db``;
    3. the problem: a :class:`~lrf_optuna.problem.ProblemSpec` is loaded now (a model
       file before the data, a reference model trained or loaded last), and model and data
       must fit (:func:`~lrf_optuna.problem.check_problem`);
    4. the search space (:func:`~lrf_optuna.space.candidate_grids`: factorizable layers,
       methods, ranks, not empty) and the constraints (feasible at all);
    5. an existing study must have been made with the same model, data and search
       settings (:mod:`lrf_optuna.study.binding`) and objectives.

    Then: create or load the NSGA-II study; fail the RUNNING trials of killed workers
    (:func:`~lrf_optuna.study.recovery.recover_stale_trials`); record the problem (a model
    or data that only exist in memory are saved first, in
    ``<artifact dir>/problems/<study_name>/``) and its binding; build (or reopen) the
    similarity cache and the :class:`LRFObjective`; describe the study
    (:meth:`LRFObjective.describe_study`) and seed it with the rank-selection strategies'
    plans (:meth:`LRFObjective.seed_study`). Nothing is optimised: call
    :meth:`LRFSearch.optimize`.

    Args:
        problem: The model and splits (:class:`~lrf_optuna.problem.Problem`), or the spec
            to load them from (loaded after the storage is checked).
        study_name: Default: the problem's name.
        storage: An Optuna storage URL or object.
        seed: Seed of the NSGA-II sampler.
        population_size: NSGA-II population size.
        objectives: See :class:`LRFObjective`.
        cache_dir: Similarity cache directory (default: the problem's, ``.lrf_cache``).
        grace_period: Seconds after which a RUNNING trial without a sign of its worker is
            failed (:mod:`lrf_optuna.study.recovery`).
        **objective_kwargs: More :class:`LRFObjective` arguments (``methods``,
            ``layers``, ``metric``, constraints ...).

    Raises:
        UserError: any of the checks above.
    """
    unknown = sorted(set(objective_kwargs) - set(_OBJECTIVE_ARGS))
    if unknown:
        raise UserError(f"unknown argument(s) {unknown}; LRFObjective takes "
                        f"{sorted(_OBJECTIVE_ARGS)}")
    objectives = memory_objectives(objectives, objective_kwargs.get("memory", "params"))
    directions = directions_of(objectives)
    restrictions = Restrictions.of(objective_kwargs.get("layers"),
                                   objective_kwargs.get("methods"),
                                   objective_kwargs.get("ranks"))
    settings_json = _search_settings(objectives, objective_kwargs, restrictions)
    if not (isinstance(grace_period, (int, float)) and grace_period > 0):
        raise UserError(f"grace_period must be a positive number of seconds, but got "
                        f"{grace_period!r}")
    try:
        sampler = SeededNSGAIISampler(seed=seed, population_size=population_size)
    except (ValueError, TypeError) as err:
        raise UserError(f"population_size {population_size!r}: {err}") from err
    study_name = study_name or problem.name
    url = storage if storage is not None else default_storage(study_name)
    has_studies = check_storage(url).has_studies if isinstance(url, str) else True
    if isinstance(problem, ProblemSpec):
        problem = problem.load(verbose=objective_kwargs.get("progress", True))
    else:
        problem.check()
        if problem.spec is None and problem.dataset is None:
            raise UserError("an in-memory Problem needs its dataset (Problem.from_objects) "
                            "so that the study can record it for fine-tuning")
    grids = candidate_grids(problem.model, restrictions, objective_kwargs.get("grid"))
    prunes = prune_config_of(objective_kwargs.get("prune")) is not None
    check_constraints(problem.model, grids,
                      max_params=None if prunes else objective_kwargs.get("max_params"),
                      max_flops=None if prunes else objective_kwargs.get("max_flops"),
                      min_proxy=objective_kwargs.get("min_proxy"))
    binding = Binding.of(problem, settings_json)
    existing = _existing_study(url, study_name) if has_studies else None
    if existing is not None:
        _check_resumable(existing, binding, directions, url if isinstance(url, str) else None)
    # every check passed: from here on the storage is written
    study = optuna.create_study(study_name=study_name, storage=open_storage(url),
                                load_if_exists=True, directions=directions, sampler=sampler)
    url_text = url if isinstance(url, str) else storage_url(study)
    recover_stale_trials(study, grace_period=grace_period)
    if PROBLEM_ATTR not in study.user_attrs:
        store = artifact_dir_for(url_text)
        spec = problem.save(store / "problems" / safe_name(study_name))
        record_problem(study, spec, store=store)
    record_binding(study, binding)
    settings = problem.spec or problem.settings or ProblemSpec(model="")
    objective = LRFObjective(problem.model, problem.splits.x_cal,
                             cache_dir=cache_dir or settings.cache_dir,
                             objectives=objectives, **objective_kwargs)
    record_binding(study, dataclasses.replace(binding, cache=objective.cache.fingerprint))
    objective.describe_study(study)
    enqueued = objective.seed_study(study)
    return LRFSearch(study, objective, problem, url_text, enqueued, grace_period)


def load_problem(model: keras.Model | str | os.PathLike[str],
                 data: Dataset | str | os.PathLike[str] = "fashion-mnist", *, seed: int = 0,
                 calibration_size: int = 512, val_fraction: float | None = None,
                 cache_dir: str | os.PathLike[str] = ".lrf_cache") -> Problem | ProblemSpec:
    """The problem of a model and a dataset, each given as an object or by name / path (the
    arguments of :func:`create_lrf_study`).

    Given two names / paths, this is the :class:`~lrf_optuna.problem.ProblemSpec`, which
    :func:`prepare_lrf_study` loads once the storage is known to work (cheap checks before
    expensive work); given objects, the :class:`~lrf_optuna.problem.Problem`.

    Raises:
        UserError: calibration images instead of a dataset, a model name with a dataset
            object, or an unusable ``data``.
    """
    if isinstance(data, (np.ndarray, tuple)):
        raise UserError("create_lrf_study needs the dataset (a lrf_optuna.data.Dataset, "
                        "'fashion-mnist' or a .npz path), not calibration images: the study "
                        "records it so that fine-tuning can rebuild the problem; for a bare "
                        "objective use LRFObjective(model, x_cal)")
    if isinstance(model, (str, os.PathLike)) and isinstance(data, (str, os.PathLike)):
        return ProblemSpec(model=str(model), dataset=str(data), seed=seed,
                           calibration_size=calibration_size, val_fraction=val_fraction,
                           cache_dir=str(cache_dir))
    from lrf_optuna.data import Dataset

    if isinstance(data, (str, os.PathLike)):
        data = ProblemSpec(model="", dataset=str(data)).load_dataset()
    if isinstance(model, (str, os.PathLike)):
        raise UserError("with a Dataset object, pass the trained keras.Model (or pass "
                        "the dataset as 'fashion-mnist' / a .npz path)")
    if not isinstance(data, Dataset):
        raise UserError(f"data must be a lrf_optuna.data.Dataset, 'fashion-mnist' or a "
                        f".npz path, but got {type(data).__name__}")
    return Problem.from_objects(model, data, seed=seed, calibration_size=calibration_size,
                                val_fraction=val_fraction, cache_dir=cache_dir)


def create_lrf_study(
    model: keras.Model | str | os.PathLike[str],
    data: Dataset | str | os.PathLike[str] = "fashion-mnist",
    *,
    study_name: str | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    n_trials: int | None = 300,
    seed: int = 0,
    population_size: int = 50,
    calibration_size: int = 512,
    val_fraction: float | None = None,
    cache_dir: str | os.PathLike[str] = ".lrf_cache",
    show_progress_bar: bool = True,
    **objective_kwargs: Any,
) -> tuple[optuna.Study, LRFObjective]:
    """Everything in one call: problem, resumable NSGA-II study, description, seeding,
    optimisation (:func:`prepare_lrf_study`, then :meth:`LRFSearch.optimize`).

    The study records the problem, so ``lrf_optuna.finetune_study(study, k=3)`` and
    ``lrf-optuna finetune / export / report`` work on it afterwards, in this process or
    another. ``n_trials`` is the *total* number of finished trials wanted: rerunning with
    the same arguments on the same storage continues where it stopped and evaluates
    nothing twice. ``None`` only prepares the study.

    Args:
        model: A trained Keras model, a reference model name (``"lenet5"`` ...) or a
            ``.keras`` file.
        data: A :class:`~lrf_optuna.data.Dataset`, ``"fashion-mnist"`` or a ``.npz`` file
            with ``x_train``, ``y_train``, ``x_test``, ``y_test``. The calibration images
            (``calibration_size``, stratified) and the validation split
            (``val_fraction``) come from its training part, never from test data.
        study_name: Default: the model's name.
        storage: Default ``sqlite:///studies/<study_name>.db``.
        n_trials: Total finished trials wanted.
        seed: Seed of the splits and of the sampler.
        population_size: NSGA-II population size.
        calibration_size: Calibration images.
        val_fraction: Validation fraction of the training data.
        cache_dir: Similarity cache directory.
        show_progress_bar: Optuna's progress bar.
        **objective_kwargs: More :class:`LRFObjective` arguments.

    Example:
        >>> study, objective = create_lrf_study(model, data, study_name="vgg")  # doctest: +SKIP
        >>> print(len(study.best_trials))  # doctest: +SKIP
    """
    if n_trials is not None and (not is_int(n_trials) or n_trials < 0):
        raise UserError(f"n_trials must be an integer >= 0 (or None), but got {n_trials!r}")
    problem = load_problem(model, data, seed=seed, calibration_size=calibration_size,
                           val_fraction=val_fraction, cache_dir=cache_dir)
    if isinstance(problem, ProblemSpec):
        objective_kwargs.setdefault("progress", show_progress_bar)
    search = prepare_lrf_study(problem, study_name=study_name, storage=storage, seed=seed,
                               population_size=population_size, **objective_kwargs)
    if n_trials is not None:
        search.optimize(n_trials, show_progress_bar=show_progress_bar)
    return search.study, search.objective


class StudyModels:
    """The compressed models of a stored study's trials, rebuilt from the study alone.

    Loads, once and when first needed, the problem (from the files the study names,
    unless ``problem`` is given; either way it must be the model and data the study was
    made with: :func:`~lrf_optuna.study.binding.load_study_problem`) and the similarity
    cache. A study is not trusted with paths: the cache directory it recorded is only read,
    and only when it holds the complete cache whose fingerprint the study is bound to;
    otherwise the cache is built (or reopened) in ``cache_dir`` (default: the given
    problem's, else ``.lrf_cache``), never in a directory the study names.

    Example:
        >>> models = StudyModels(study)  # doctest: +SKIP
        >>> compressed = models.build(study.trials[42])  # doctest: +SKIP
    """

    def __init__(self, study: optuna.Study, *, problem: Problem | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.study = study
        self._given = problem
        self._problem: Problem | None = None
        self._cache: SimilarityCache | None = None
        self._pruning: PruneCache | None = None
        settings = (problem.spec or problem.settings) if problem is not None else None
        self.cache_dir = Path(cache_dir or (settings.cache_dir if settings else ".lrf_cache"))

    @property
    def problem(self) -> Problem:
        if self._problem is None:
            if self._given is None:
                logger.info("loading the problem of study %r", self.study.study_name)
            self._problem = load_study_problem(self.study, self._given)
        return self._problem

    def _recorded_cache(self) -> SimilarityCache | None:
        """The complete cache the search recorded, if it is the one the study is bound to
        (read only: a cache is JSON and ``.npz`` files)."""
        from lrf_optuna.study.records import original_info

        original = original_info(self.study)
        if original is None or not original.cache:
            return None
        try:
            cache = SimilarityCache.load(original.cache)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.info("the cache recorded by study %r is not usable (%s)",
                        self.study.study_name, err)
            return None
        binding = bound(self.study)
        if (binding is not None and binding.cache and cache.fingerprint != binding.cache) \
                or not cache.complete:
            logger.warning("%s is not the complete similarity cache of study %r; building "
                           "one in %s", original.cache, self.study.study_name, self.cache_dir)
            return None
        return cache

    @property
    def cache(self) -> SimilarityCache:
        if self._cache is None:
            from lrf_optuna.study.records import original_info

            self._cache = self._recorded_cache()
            if self._cache is None:
                original = original_info(self.study)
                self._cache = SimilarityCache.build(
                    self.problem.model, self.problem.splits.x_cal, cache_dir=self.cache_dir,
                    metric=original.metric if original else DEFAULT_METRIC, progress=False)
        return self._cache

    @property
    def pruning(self) -> PruneCache | None:
        """The pruning cache of a study that searched pruning (built or reopened beside
        the similarity cache), else ``None``."""
        raw = self.study.user_attrs.get(PRUNE_ATTR)
        if not isinstance(raw, Mapping):
            return None
        if self._pruning is None:
            from lrf_optuna.prune.cache import PruneCache, PruneConfig

            config = PruneConfig.from_json(raw["config"])
            try:  # read only, and only the complete cache of this similarity cache
                recorded = PruneCache.load(str(raw.get("cache")))
                if (recorded.complete and recorded.config == config
                        and recorded.manifest.get("base") == self.cache.fingerprint):
                    self._pruning = recorded
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.info("the pruning cache recorded by study %r is not usable (%s)",
                            self.study.study_name, err)
            if self._pruning is None:
                try:
                    self._pruning = PruneCache.build(
                        self.problem.model, self.problem.splits.x_cal, self.cache,
                        config=config, layers=raw.get("layers") or None, progress=False)
                except ValueError as err:
                    raise UserError(f"cannot rebuild the pruning cache of study "
                                    f"{self.study.study_name!r}: {err}") from err
        return self._pruning

    def build(self, trial: optuna.trial.FrozenTrial) -> keras.Model:
        """The compressed (not fine-tuned) model of a search trial's stored plan (pruned,
        then factorized, when it prunes)."""
        from lrf_optuna.prune.cache import build_plan_model

        plan = decode_plan(trial)
        return build_plan_model(self.problem.model, plan, self.cache,
                                pruning=self.pruning if plan.ratios else None)
