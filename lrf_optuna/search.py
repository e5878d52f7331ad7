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

Objectives (default): model memory (``"params"``, or ``"bytes"``), ``"flops"`` (2 x MACs),
both minimised, and the accuracy ``"proxy"`` maximised. The proxy aggregates the chosen
candidates' feature-map similarities (a kept layer scores 1.0), see :data:`AGGREGATIONS`:
``product`` (default), ``mean`` or ``min``. On 60 random plans of LeNet-5 and of the
VGG-style net, cosine/product ranked plans by real (un-fine-tuned) accuracy best (mean
Spearman 0.929; cosine/mean 0.927, CKA 0.83), see ``benchmarks/RESULTS.md``. Costs are
whole-model numbers: the original model's total minus what the chosen layers save. A trial
is a dictionary look-up: it never touches TensorFlow.

Example:
    >>> objective = LRFObjective(model, x_cal, cache_dir=".lrf_cache")  # doctest: +SKIP
    >>> study = optuna.create_study(directions=objective.directions,  # doctest: +SKIP
    ...                             sampler=optuna.samplers.NSGAIISampler(seed=0))
    >>> objective.seed_study(study)  # doctest: +SKIP
    >>> study.optimize(objective, n_trials=300)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import optuna

from lrf_optuna.cache import Candidate, GridConfig, LayerTable, SimilarityCache
from lrf_optuna.similarity import DEFAULT_METRIC

if TYPE_CHECKING:
    import keras

    from lrf_optuna.strategies import Strategy

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "LRFObjective",
    "PlanScore",
    "artifact_dir_for",
    "create_lrf_study",
    "default_storage",
    "describe_choice",
    "open_storage",
    "run_remaining",
    "sqlite_path",
]

logger = logging.getLogger(__name__)

KEEP = "keep"


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


def describe_choice(choice: tuple[str, int] | None) -> str:
    """Readable form of one layer's choice: ``"keep"`` or ``"tucker2 r=8"``."""
    if choice is None or choice[0] == KEEP:
        return KEEP
    return f"{choice[0]} r={int(choice[1])}"


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
        progress: Show the cache-building progress bar.

    Example (``model`` trained, ``x_cal`` calibration images)::

        import optuna, lrf_optuna
        objective = lrf_optuna.LRFObjective(model, x_cal, cache_dir=".lrf_cache")
        study = optuna.create_study(directions=objective.directions,
                                    sampler=optuna.samplers.NSGAIISampler(seed=0))
        objective.seed_study(study)
        study.optimize(objective, n_trials=500, show_progress_bar=True)
        compressed = objective.build_model(study.best_trials[0])
    """

    def __init__(
        self,
        model: keras.Model,
        calibration_data: Any,
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
        progress: bool = True,
    ) -> None:
        from lrf_optuna.costs import model_costs

        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose from "
                             f"{sorted(AGGREGATIONS)}")
        bad = [o for o in objectives if o not in _OBJECTIVES]
        if bad or not objectives:
            raise ValueError(f"unknown objectives {bad or objectives!r}; choose from "
                             f"{sorted(_OBJECTIVES)}")
        self.model = model
        self.metric = metric
        self.aggregation = aggregation
        self.objectives = list(objectives)
        self.max_params, self.max_flops, self.min_proxy = max_params, max_flops, min_proxy
        if isinstance(calibration_data, tuple):
            calibration_data = calibration_data[0]
        if cache is None:
            cache = SimilarityCache.build(model, calibration_data, cache_dir=cache_dir,
                                          metric=metric, grid=grid, progress=progress)
        elif metric not in cache.metrics:
            raise ValueError(f"the cache has metrics {cache.metrics}, not {metric!r}")
        self.cache = cache
        searched = list(layers) if layers is not None else list(cache.layers)
        unknown = [p for p in searched if p not in cache.tables]
        if unknown:
            raise KeyError(f"layers not in the similarity cache: {unknown}; it has "
                           f"{sorted(cache.tables)}")
        if isinstance(methods, Mapping):
            per_layer = {p: list(methods.get(p, [])) or None for p in searched}
        else:
            per_layer = {p: (list(methods) if methods is not None else None) for p in searched}
        self.spaces: dict[str, _LayerSpace] = {}
        for path in searched:
            space = _LayerSpace(cache.layer(path), per_layer[path],
                                (ranks or {}).get(path), metric)
            if len(space.choices) > 1:
                self.spaces[path] = space
            else:
                logger.info("layer %s has no candidate left after the restrictions; kept",
                            path)
        costs = model_costs(model)
        self.original_params = costs.params
        self.original_bytes = costs.bytes
        self.original_macs = costs.macs
        self._bytes_per_param = costs.bytes / max(costs.params, 1)

    # -- Optuna's side -------------------------------------------------------------------
    @property
    def directions(self) -> list[Direction]:
        """Optimisation directions, for ``optuna.create_study(directions=...)``."""
        return [_OBJECTIVES[o] for o in self.objectives]

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
        return out

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        plan: dict[str, tuple[str, int]] = {}
        for path, space in self.spaces.items():
            method = trial.suggest_categorical(f"{path}:method", space.choices)
            level = trial.suggest_int(f"{path}:rank", 0, max(space.n_levels - 1, 0))
            if method != KEEP:
                plan[path] = (str(method), space.candidate(str(method), level).rank)
        score = self.score(plan)
        self._record(trial, score)
        return tuple(score.objective(o) for o in self.objectives)

    def _record(self, trial: optuna.Trial, score: PlanScore) -> None:
        trial.set_user_attr("params", score.params)
        trial.set_user_attr("flops", score.flops)
        trial.set_user_attr("proxy", round(score.proxy, 6))
        trial.set_user_attr("compression_ratio",
                            round(self.original_params / max(score.params, 1), 4))
        trial.set_user_attr("flops_reduction",
                            round(1 - score.macs / max(self.original_macs, 1), 4))
        trial.set_user_attr("plan", {p: describe_choice(score.plan.get(p))
                                     for p in self.spaces})
        trial.set_user_attr("lrf_plan", {p: list(c) for p, c in score.plan.items()})
        if self.max_params is not None:
            trial.set_constraint("max_params", score.params - self.max_params)
        if self.max_flops is not None:
            trial.set_constraint("max_flops", score.flops - self.max_flops)
        if self.min_proxy is not None:
            trial.set_constraint("min_proxy", self.min_proxy - score.proxy)

    # -- plans ---------------------------------------------------------------------------
    def score(self, plan: Mapping[str, tuple[str, int] | None]) -> PlanScore:
        """Whole-model params, bytes, MACs and proxy of a plan (cache look-ups only)."""
        params, macs = self.original_params, self.original_macs
        sims: dict[str, float] = {}
        clean: dict[str, tuple[str, int]] = {}
        for path in self.spaces:
            choice = plan.get(path)
            if choice is None or choice[0] == KEEP:
                sims[path] = 1.0
                continue
            table = self.cache.layer(path)
            cand = table.lookup(choice[0], int(choice[1]))
            params += cand.params - table.original_params
            macs += cand.macs - table.original_macs
            sims[path] = cand.score(self.metric)
            clean[path] = (cand.method, cand.rank)
        proxy = AGGREGATIONS[self.aggregation](list(sims.values()))
        return PlanScore(clean, params, round(params * self._bytes_per_param), macs, proxy,
                         sims)

    def plan_from_params(self, params: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
        """Decode a trial's parameters into ``{layer: (method, rank)}`` (kept layers
        omitted)."""
        plan: dict[str, tuple[str, int]] = {}
        for path, space in self.spaces.items():
            method = params.get(f"{path}:method", KEEP)
            if method == KEEP:
                continue
            if method not in space.grids:
                raise ValueError(f"trial parameter {path}:method={method!r} is not in this "
                                 f"objective's search space {space.choices}")
            plan[path] = (method, space.candidate(method, int(params[f"{path}:rank"])).rank)
        return plan

    def plan_of(self, trial: optuna.trial.FrozenTrial | optuna.Trial) -> dict[
            str, tuple[str, int]]:
        return self.plan_from_params(trial.params)

    def params_for_plan(self, plan: Mapping[str, tuple[str, int] | None]) -> dict[str, Any]:
        """Encode a plan as trial parameters (ranks snap to the nearest grid rank)."""
        out: dict[str, Any] = {}
        for path, space in self.spaces.items():
            choice = plan.get(path)
            if choice is None or choice[0] == KEEP or choice[0] not in space.grids:
                out[f"{path}:method"] = KEEP
                out[f"{path}:rank"] = 0
            else:
                out[f"{path}:method"] = choice[0]
                out[f"{path}:rank"] = space.level_of(choice[0], int(choice[1]))
        return out

    def build_model(self, trial_or_plan: Any) -> keras.Model:
        """The compressed Keras model of a trial (frozen or live) or a plan."""
        plan = (self.plan_of(trial_or_plan) if hasattr(trial_or_plan, "params")
                else dict(trial_or_plan))
        return self.cache.build_model(self.model, plan)

    # -- seeding -------------------------------------------------------------------------
    def seed_study(self, study: optuna.Study, strategies: Iterable[Strategy] | None = None,
                   *, include_original: bool = True) -> int:
        """Enqueue the rank-selection strategies' plans; returns how many were new.

        Plans are snapped to the rank grid; a plan already enqueued or evaluated in the
        study (same parameters) is skipped, so calling this twice adds nothing. Also sets
        the study's metric names and records the search space in its user attributes.
        """
        from lrf_optuna._locks import study_lock
        from lrf_optuna.strategies import NamedPlan, all_plans

        named = all_plans(self.model, self.cache, strategies)
        if include_original:
            named = [NamedPlan("original", {}), *named]
        # Workers started together would each see a plan missing and enqueue it: check and
        # enqueue under one cross-process lock (Optuna's skip_if_exists is not atomic).
        with study_lock(study, "seed"):
            self.describe_study(study)
            seen = {json.dumps(_trial_params(t), sort_keys=True)
                    for t in study.get_trials(deepcopy=False)}
            added = 0
            for item in named:
                params = self.params_for_plan(item.plan)
                key = json.dumps(params, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                study.enqueue_trial(params, user_attrs={"strategy": item.label})
                added += 1
        logger.info("enqueued %d strategy plan(s) (%d already present)", added,
                    len(named) - added)
        return added

    def describe_study(self, study: optuna.Study) -> None:
        """Set metric names and record the search space / originals in study attrs.

        Raises:
            ValueError: the study was created with a different search space (resuming it
                with other layers, methods or grid would mix incomparable trials).
        """
        space = json.loads(json.dumps({
            name: optuna.distributions.distribution_to_json(dist)
            for name, dist in self.search_space().items()}))
        recorded = study.user_attrs.get("lrf_optuna:space")
        if recorded is not None and json.loads(json.dumps(recorded)) != space:
            raise ValueError(
                f"study {study.study_name!r} was created with another search space "
                "(layers, methods or rank grid differ); use a new study name or the "
                "original settings")
        if recorded is None:
            study.set_user_attr("lrf_optuna:space", space)
            study.set_user_attr("lrf_optuna:original",
                                {"params": self.original_params,
                                 "flops": 2 * self.original_macs,
                                 "model": self.model.name, "metric": self.metric,
                                 "aggregation": self.aggregation,
                                 "cache": str(self.cache.directory)})
        if study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(self.metric_names)


def _trial_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Parameters of a trial; an enqueued one's full fixed parameters (a RUNNING trial's
    ``params`` holds only what it has suggested so far)."""
    return dict(trial.system_attrs.get("fixed_params") or trial.params)


_CREATE_LOCK_KEY = 0x4C5246  # "LRF": advisory-lock key guarding Optuna's table creation


def open_storage(url: str | optuna.storages.BaseStorage, *, heartbeat_interval: int | None = None
                 ) -> optuna.storages.BaseStorage | str:
    """An Optuna storage for ``url``, tuned for many small trials.

    SQLite: the database is switched to write-ahead logging with ``synchronous=NORMAL``
    (a trial makes ~25 small commits; this cut the per-trial time ~5x here, see
    ``benchmarks/RESULTS.md``). WAL stays safe against process crashes; only a power
    loss can drop the last committed trials. Other URLs (PostgreSQL ...) get an RDB
    storage, with a heartbeat when ``heartbeat_interval`` is given so that trials of a
    killed worker are failed and retried (``RetryHeartbeatStaleTrialCallback``). A storage
    object is returned as it is.
    """
    if not isinstance(url, str):
        return url
    kwargs: dict[str, Any] = {}
    if heartbeat_interval is not None:
        kwargs = dict(heartbeat_interval=heartbeat_interval, grace_period=3 * heartbeat_interval,
                      heartbeat_stale_trial_callback=(
                          optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)))
    if url.startswith("sqlite:"):
        from sqlalchemy import event

        storage = optuna.storages.RDBStorage(url, **kwargs)

        @event.listens_for(storage.engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        storage.engine.dispose()  # reconnect with the pragmas
        return storage
    if url.startswith("postgresql"):
        # Workers started together on an empty database race to create Optuna's tables
        # (PostgreSQL then raises a UniqueViolation on its type catalog): serialise the
        # creation with an advisory lock.
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"),
                             {"k": _CREATE_LOCK_KEY})
                conn.commit()
                try:
                    return optuna.storages.RDBStorage(url, **kwargs)
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                                 {"k": _CREATE_LOCK_KEY})
                    conn.commit()
        finally:
            engine.dispose()
    if url.startswith("mysql"):
        return optuna.storages.RDBStorage(url, **kwargs)
    return url


def sqlite_path(storage_url: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URL (``None`` for other URLs / in-memory).

    Example:
        >>> sqlite_path("sqlite:///studies/vgg.db?timeout=30").as_posix()
        'studies/vgg.db'
    """
    from urllib.parse import urlsplit

    if not storage_url.startswith("sqlite:///"):
        return None
    path = urlsplit(storage_url[len("sqlite:///"):]).path  # drop ?timeout=... options
    if not path or path == ":memory:":
        return None
    return Path(path)


def artifact_dir_for(storage_url: str) -> Path:
    """Default artifact directory for a storage URL.

    ``sqlite:///dir/name.db`` -> ``dir/name_artifacts`` (beside the database, so a study
    folder can be copied as a whole); any other storage (PostgreSQL, MySQL, in-memory
    SQLite) -> ``studies/artifacts`` (relative to the working directory).

    Example:
        >>> artifact_dir_for("sqlite:///studies/vgg_small.db").as_posix()
        'studies/vgg_small_artifacts'
        >>> artifact_dir_for("postgresql://user@host/lrf").as_posix()
        'studies/artifacts'
    """
    db = sqlite_path(str(storage_url))
    if db is None:
        return Path("studies") / "artifacts"
    return db.with_name(f"{db.stem}_artifacts")


def default_storage(study_name: str, directory: str | os.PathLike[str] = "studies") -> str:
    """``sqlite:///studies/<study_name>.db`` (the directory is created)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(directory) / f'{study_name}.db'}"


def create_lrf_study(
    model: keras.Model,
    calibration_data: Any,
    *,
    study_name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    n_trials: int | None = 300,
    seed: int = 0,
    population_size: int = 50,
    show_progress_bar: bool = True,
    **objective_kwargs: Any,
) -> tuple[optuna.Study, LRFObjective]:
    """Everything in one call: objective, resumable NSGA-II study, seeding, optimisation.

    ``n_trials`` is the *total* number of finished trials wanted: rerunning with the same
    arguments on the same storage continues where it stopped and evaluates nothing twice.
    ``None`` only builds the objective and seeds the study.

    Example:
        >>> study, objective = create_lrf_study(model, x_cal, study_name="vgg")  # doctest: +SKIP
        >>> print(len(study.best_trials))  # doctest: +SKIP
    """
    objective = LRFObjective(model, calibration_data, **objective_kwargs)
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage or default_storage(study_name)),
        load_if_exists=True, directions=objective.directions,
        sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size))
    objective.seed_study(study)
    if n_trials is not None:
        run_remaining(study, objective, n_trials, show_progress_bar=show_progress_bar)
    return study, objective


def finished_trials(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE,)
    return len(study.get_trials(deepcopy=False, states=states))


def run_remaining(study: optuna.Study, objective: LRFObjective, n_trials: int, *,
                  show_progress_bar: bool = True) -> int:
    """Optimise until the study has ``n_trials`` finished trials; returns how many ran.

    Several workers on one storage share the target: each stops once the study has
    ``n_trials`` finished trials. Ctrl-C stops cleanly: the running trial is marked failed
    by Optuna, every finished trial stays stored, and rerunning continues from there.
    """
    remaining = max(0, n_trials - finished_trials(study))
    if remaining:
        # other workers on the same storage count too: stop when the study has n_trials
        stop = optuna.study.MaxTrialsCallback(n_trials,
                                              states=(optuna.trial.TrialState.COMPLETE,))
        study.optimize(objective, n_trials=remaining, show_progress_bar=show_progress_bar,
                       callbacks=[stop])
    return remaining
