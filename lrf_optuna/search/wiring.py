"""The one search entry point: a problem's study opened (or resumed), checked, bound,
described and seeded (:func:`prepare_lrf_study`); :func:`create_lrf_study` also runs it.

Example:
    >>> search = prepare_lrf_study(ProblemSpec(model="lenet5"), n_trials=300)  # doctest: +SKIP
    >>> search.optimize(300)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from lrf_optuna.errors import UserError, is_int
from lrf_optuna.problem import Problem, ProblemSpec
from lrf_optuna.scoring.cache import SimilarityCache
from lrf_optuna.scoring.similarity import DEFAULT_METRIC
from lrf_optuna.search.objective import LRFObjective
from lrf_optuna.search.run import run_remaining
from lrf_optuna.search.sampler import SeededNSGAIISampler
from lrf_optuna.search.scoring_queue import score_on_storage
from lrf_optuna.search.settings import (
    DEFAULT_N_TRIALS,
    check_search_constraints,
    directions_of,
    memory_objectives,
    search_settings,
)
from lrf_optuna.search.space import Restrictions, candidate_grids
from lrf_optuna.study.binding import Binding, check_binding, record_binding
from lrf_optuna.study.records import PROBLEM_ATTR, record_problem
from lrf_optuna.study.recovery import DEFAULT_GRACE_PERIOD, recover_stale_trials
from lrf_optuna.study.storage import (
    artifact_dir_for,
    check_storage,
    default_storage,
    open_storage,
    safe_name,
    storage_url,
)

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Dataset

__all__ = ["LRFSearch", "create_lrf_study", "load_problem", "prepare_lrf_study"]


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
    shared_scoring: bool = False,
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
    4. the search space (:func:`~lrf_optuna.search.space.candidate_grids`: factorizable layers,
       methods, ranks, not empty) and the constraints (feasible at all);
    5. an existing study must have been made with the same model, data and search
       settings (:mod:`lrf_optuna.study.binding`) and objectives.

    Then: create or load the NSGA-II study; fail the RUNNING trials of killed workers
    (:func:`~lrf_optuna.study.recovery.recover_stale_trials`); record the problem (a model
    or data that only exist in memory are saved first, in
    ``<artifact dir>/problems/<study_name>/``) and its binding; build (or reopen) the
    similarity cache (here, or with ``shared_scoring`` together with every other worker
    of the study, :func:`~lrf_optuna.search.scoring_queue.score_on_storage`) and the
    :class:`LRFObjective`; describe the study
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
        shared_scoring: Score the similarity cache as claimable units on the study's
            storage, with every worker that does the same, into a ``cache_dir`` they all
            see (:mod:`lrf_optuna.search.scoring_queue`); the search starts once every
            unit is scored. Default: this process scores what is missing by itself.
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
    settings_json = search_settings(objectives, objective_kwargs, restrictions)
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
    check_search_constraints(problem.model, grids, prune=objective_kwargs.get("prune"),
                             max_params=objective_kwargs.get("max_params"),
                             max_flops=objective_kwargs.get("max_flops"),
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
    cache_dir = cache_dir or settings.cache_dir
    if shared_scoring:
        objective_kwargs["cache"] = _shared_cache(study, problem, cache_dir, grace_period,
                                                  objective_kwargs)
    objective = LRFObjective(problem.model, problem.splits.x_cal, cache_dir=cache_dir,
                             objectives=objectives, **objective_kwargs)
    record_binding(study, dataclasses.replace(binding, cache=objective.cache.fingerprint))
    objective.describe_study(study)
    enqueued = objective.seed_study(study)
    return LRFSearch(study, objective, problem, url_text, enqueued, grace_period)


def _shared_cache(study: optuna.Study, problem: Problem, cache_dir: str | os.PathLike[str],
                  grace_period: float, objective_kwargs: dict[str, Any]) -> SimilarityCache:
    """The cache :class:`LRFObjective` would build, scored with the study's other workers."""
    build = SimilarityCache.builder(problem.model, problem.splits.x_cal, cache_dir=cache_dir,
                                    metric=objective_kwargs.get("metric", DEFAULT_METRIC),
                                    grid=objective_kwargs.get("grid"))
    grace = max(int(grace_period), 3)
    return score_on_storage(study, build, grace_period=grace,
                            heartbeat_interval=max(1, min(10, grace // 3)),
                            progress=bool(objective_kwargs.get("progress", True))).cache


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
    n_trials: int | None = DEFAULT_N_TRIALS,
    seed: int = 0,
    population_size: int = 50,
    calibration_size: int = 512,
    val_fraction: float | None = None,
    cache_dir: str | os.PathLike[str] = ".lrf_cache",
    show_progress_bar: bool = True,
    shared_scoring: bool = False,
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
        shared_scoring: Score the similarity cache with the study's other workers
            (see :func:`prepare_lrf_study`).
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
                               population_size=population_size,
                               shared_scoring=shared_scoring, **objective_kwargs)
    if n_trials is not None:
        search.optimize(n_trials, show_progress_bar=show_progress_bar)
    return search.study, search.objective
