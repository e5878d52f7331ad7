"""The similarity cache scored by any number of workers sharing the study's storage.

:func:`score_on_storage` turns a cache's build (:meth:`SimilarityCache.builder
<lrf_optuna.scoring.cache.SimilarityCache.builder>`) into claimable work, the way the
fine-tuning jobs are (:mod:`lrf_optuna.study.queue`):

* the queue is the study ``"<study_name>:scoring"`` in the search study's storage; each of
  its trials is one **unit** (one layer: every method and rank of its grid), enqueued once
  with user attributes ``unit`` (the layer), ``build`` (the cache fingerprint) and
  ``candidates``; the queue's user attribute ``build`` holds what a worker needs to make
  the same build (:meth:`~lrf_optuna.scoring.build.ResumableBuild.settings`: the cache
  directory, metric, grid ...);
* a worker claims one WAITING unit at a time under the study lock, scores its candidates
  and writes its result file into the cache directory (atomically, result last), then
  tells the unit COMPLETE with its value = seconds taken and user attributes ``worker``,
  ``device``. The calibration activations it needs are captured for the unit's whole
  pass (:meth:`~lrf_optuna.scoring.build.ResumableBuild.passes`: the neighbouring layers
  whose activations fit in memory together, not yet scored) and kept for the next units
  this worker claims, so a worker runs about one forward pass per pass, not per unit;
* **every worker must see the same cache directory** (a shared file system): the unit's
  result *is* the file; a unit whose file exists is never scored again (a claimed one is
  told COMPLETE with ``skipped``);
* a **killed worker's** unit is retried: its heartbeat goes stale after the grace period
  and the next worker to claim fails it and re-enqueues a WAITING copy
  (``RetryHeartbeatStaleTrialCallback``); the other units' files are kept;
* a unit that raises is told FAIL with user attribute ``error`` and re-enqueued up to
  ``max_attempts`` in all; past that, waiting workers stop with a
  :class:`~lrf_optuna.errors.UserError` naming the layer and the error.

With ``wait=True`` (what ``lrf-optuna search --shared-scoring`` does) a worker keeps
claiming until every unit is scored, waiting for the units other workers hold, and returns
the complete cache: the search of the study starts only once every candidate it may pick
is scored. ``lrf-optuna score`` runs a scoring-only worker (``wait=False``): it leaves when
no unit is waiting.

Example:
    >>> build = SimilarityCache.builder(model, x_cal, cache_dir="/shared/cache")  # doctest: +SKIP
    >>> report = score_on_storage(study, build)  # doctest: +SKIP
    >>> report.cache.complete  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.device import on_compute_device
from lrf_optuna.errors import UserError
from lrf_optuna.scoring.build import Unit, progress_bar
from lrf_optuna.scoring.cache import SimilarityBuild, SimilarityCache
from lrf_optuna.study.lookup import SCORING_SUFFIX
from lrf_optuna.study.queue import claim_next, fail_trial, quiet, worker_id
from lrf_optuna.study.recovery import HeartbeatThread
from lrf_optuna.study.storage import heartbeat_storage, storage_of, study_lock

__all__ = ["SCORING_SUFFIX", "ScoringReport", "find_scoring_queue", "open_scoring_queue",
           "score_on_storage", "scoring_queue_name", "shared_build"]

logger = logging.getLogger(__name__)

#: User attributes of a unit (trial) of the queue.
UNIT_ATTR, KIND_ATTR, BUILD_ATTR, CANDIDATES_ATTR = "unit", "kind", "build", "candidates"
WORKER_ATTR, DEVICE_ATTR, ERROR_ATTR, SKIPPED_ATTR = "worker", "device", "error", "skipped"
#: User attribute of the queue: the shared build's settings.
SETTINGS_ATTR = "build"
_LOCK = "scoring"


def scoring_queue_name(study: optuna.Study | str) -> str:
    """``"<study_name>:scoring"``."""
    name = study if isinstance(study, str) else study.study_name
    return f"{name}{SCORING_SUFFIX}"


def open_scoring_queue(study: optuna.Study, *,
                       storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create or load the scoring queue of ``study`` (in ``storage``, default the study's:
    a worker passes its heartbeat connection)."""
    with quiet():
        return optuna.create_study(study_name=scoring_queue_name(study),
                                   storage=storage or storage_of(study), load_if_exists=True,
                                   direction="minimize",
                                   sampler=optuna.samplers.RandomSampler(seed=0))


def find_scoring_queue(study: optuna.Study) -> optuna.Study | None:
    """The scoring queue of ``study``, or ``None`` when its cache was never shared."""
    if scoring_queue_name(study) not in optuna.get_all_study_names(storage_of(study)):
        return None
    return optuna.load_study(study_name=scoring_queue_name(study), storage=storage_of(study))


@dataclass
class ScoringReport:
    """What one worker's :func:`score_on_storage` did.

    Attributes:
        cache: The cache (complete when the call waited).
        scored: Layers this worker scored, in order.
        seconds: Seconds this worker spent on each of them.
        candidates: Candidates this worker scored.
        device: Where it scored them.
    """

    cache: SimilarityCache
    scored: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    candidates: int = 0
    device: str = ""


def _unit_key(trial: FrozenTrial) -> tuple[str, str] | None:
    attrs = trial.user_attrs
    if UNIT_ATTR not in attrs:
        return None
    return str(attrs.get(BUILD_ATTR, "")), str(attrs[UNIT_ATTR])


def _record_settings(queue: optuna.Study, build: SimilarityBuild) -> None:
    """Record the shared build's settings, or refuse a worker whose build differs."""
    settings = build.settings()
    recorded = queue.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        queue.set_user_attr(SETTINGS_ATTR, settings)
        return
    if recorded.get("key") != settings["key"]:
        raise UserError(
            f"{queue.study_name!r} scores the cache {str(recorded.get('key'))[:16]}, but "
            f"this worker's model, calibration data or scoring settings make "
            f"{settings['key'][:16]}: every worker must run the same search command")
    if Path(recorded["cache_dir"]) != Path(settings["cache_dir"]):
        raise UserError(
            f"{queue.study_name!r} writes its cache into {recorded['cache_dir']}, a directory "
            f"every worker must see; this worker would use {settings['cache_dir']}: pass "
            f"--cache-dir {recorded['cache_dir']}")


def enqueue_units(queue: optuna.Study, build: SimilarityBuild, lock: Any, *,
                  max_attempts: int = 3) -> tuple[int, dict[str, list[str]]]:
    """Enqueue every unit of ``build`` that is not done and has no WAITING, RUNNING or
    COMPLETE trial (under the lock: workers started together enqueue each unit once).

    Returns:
        ``(added, exhausted)``: how many were enqueued, and the errors of the units that
        failed ``max_attempts`` times (``{layer: [error, ...]}``), which are not.
    """
    added, exhausted = 0, {}
    with lock():
        trials = queue.get_trials(deepcopy=False)
        by_unit: dict[tuple[str, str], list[FrozenTrial]] = {}
        for t in trials:
            key = _unit_key(t)
            if key is not None:
                by_unit.setdefault(key, []).append(t)
        for unit in build.units():
            if build.done(unit):
                continue
            mine = by_unit.get((build.key, unit.name), [])
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in mine):
                continue
            failed = [t for t in mine if t.state == TrialState.FAIL]
            if len(failed) >= max_attempts:
                exhausted[unit.name] = [str(t.user_attrs.get(ERROR_ATTR, "killed"))
                                        for t in failed]
                continue
            queue.enqueue_trial({}, user_attrs={UNIT_ATTR: unit.name, KIND_ATTR: unit.kind,
                                                BUILD_ATTR: build.key,
                                                CANDIDATES_ATTR: unit.steps})
            added += 1
    return added, exhausted


def _run_unit(build: SimilarityBuild, unit: Unit, pass_of: dict[str, list[Unit]],
              progress: bool) -> str:
    bar = progress_bar(unit.steps, progress, desc=f"scoring {unit.name}")
    try:
        with on_compute_device() as device:
            if not build.prepared(unit):
                build.prepare([u for u in pass_of[unit.name]
                               if u.name == unit.name or not build.done(u)])
            result = build.run(unit, bar)
            build.write(unit, result)
    finally:
        bar.close()
    return device


def score_on_storage(study: optuna.Study, build: SimilarityBuild, *, wait: bool = True,
                     heartbeat_interval: int = 10, grace_period: int = 60,
                     max_retries: int = 2, max_attempts: int = 3,
                     poll_seconds: float = 2.0, max_units: int | None = None,
                     progress: bool = True) -> ScoringReport:
    """Score ``build``'s units as one of any number of workers on ``study``'s storage
    (see the module docstring).

    Args:
        study: The search study (its storage holds the queue).
        build: The cache's build; every worker must make the same one (same model,
            calibration data, settings and a cache directory all of them see).
        wait: Keep going until every unit is scored (waiting for other workers' units);
            ``False``: leave when no unit is waiting.
        heartbeat_interval: Seconds between a worker's heartbeats (RDB storages).
        grace_period: A unit whose heartbeat is older than this is retried elsewhere.
        max_retries: Automatic re-enqueues of a killed worker's unit.
        max_attempts: Failed attempts (errors) of a unit before waiting workers give up.
        poll_seconds: How often a waiting worker looks for finished or stale units.
        max_units: Score at most this many units in this call.
        progress: A progress bar per unit.

    Returns:
        What this worker did (:class:`ScoringReport`), with the cache reloaded.

    Raises:
        UserError: this worker's build differs from the shared one, or a unit failed
            ``max_attempts`` times (``wait=True``).
    """
    storage, rdb = heartbeat_storage(study, heartbeat_interval=heartbeat_interval,
                                     grace_period=grace_period, max_retry=max_retries)
    queue = open_scoring_queue(study, storage=storage)

    def lock() -> contextlib.AbstractContextManager[None]:
        return study_lock(study, _LOCK)

    with lock():
        _record_settings(queue, build)
    report = ScoringReport(build.cache)
    units = {u.name: u for u in build.units()}
    pass_of = {u.name: group for group in build.passes(list(units.values())) for u in group}
    added, exhausted = enqueue_units(queue, build, lock, max_attempts=max_attempts)
    if added:
        logger.info("enqueued %d scoring unit(s) in %r", added, queue.study_name)
    while max_units is None or len(report.scored) < max_units:
        claimed = claim_next(queue, rdb, lock, error_attr=ERROR_ATTR)
        if claimed is None:
            if not wait or all(build.done(u) for u in units.values()):
                break
            added, exhausted = enqueue_units(queue, build, lock, max_attempts=max_attempts)
            if exhausted and not queue.get_trials(deepcopy=False, states=(
                    TrialState.WAITING, TrialState.RUNNING)):
                raise UserError("scoring failed for layer(s) " + "; ".join(
                    f"{name!r} ({len(errs)} attempts, last: {errs[-1]})"
                    for name, errs in exhausted.items()) + f"; see {queue.study_name!r}")
            if not added:
                time.sleep(poll_seconds)  # other workers hold the remaining units
            continue
        trial, trials = claimed
        mine = next(t for t in trials if t.number == trial.number)
        key = _unit_key(mine)
        unit = units.get(key[1]) if key is not None and key[0] == build.key else None
        if unit is None:
            fail_trial(queue, trial, **{ERROR_ATTR: f"not a unit of this worker's build "
                                                    f"{build.key[:16]}: {key}"})
            continue
        if build.done(unit):
            trial.set_user_attr(SKIPPED_ATTR, True)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                queue.tell(trial, 0.0)
            continue
        t0 = time.perf_counter()
        with HeartbeatThread(rdb, trial._trial_id):
            try:
                device = _run_unit(build, unit, pass_of, progress)
            except BaseException as err:
                fail_trial(queue, trial, **{ERROR_ATTR: f"{type(err).__name__}: {err}"[:2000],
                                            WORKER_ATTR: worker_id()})
                if not isinstance(err, Exception):
                    raise
                logger.exception("scoring unit %r failed (trial %d of %r)", unit.name,
                                 trial.number, queue.study_name)
                continue
        seconds = time.perf_counter() - t0
        for k, v in {WORKER_ATTR: worker_id(), DEVICE_ATTR: device}.items():
            trial.set_user_attr(k, v)
        try:
            with quiet():
                queue.tell(trial, seconds)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("unit %r was declared stale and retried meanwhile; its result "
                           "file is written, so the retry skips it", unit.name)
        report.scored.append(unit.name)
        report.seconds.append(seconds)
        report.candidates += unit.steps
        report.device = device
        logger.info("scored %s: %d candidates in %.1f s on %s", unit.name, unit.steps,
                    seconds, device)
    build.release()
    report.cache = SimilarityCache.load(build.cache.directory)
    return report


def shared_build(study: optuna.Study, model: Any, calibration_x: Any) -> SimilarityBuild:
    """The build recorded in ``study``'s scoring queue, made again by this worker (for a
    scoring-only worker, ``lrf-optuna score``).

    Raises:
        UserError: the study has no scoring queue, or this worker's model or calibration
            data differ from the shared build's.
    """
    queue = find_scoring_queue(study)
    settings = queue.user_attrs.get(SETTINGS_ATTR) if queue is not None else None
    if settings is None:
        raise UserError(f"study {study.study_name!r} has no shared scoring (no "
                        f"{scoring_queue_name(study)!r} study): start one worker with "
                        "`lrf-optuna search --shared-scoring` first")
    try:
        return SimilarityCache.builder_of(model, calibration_x, settings)
    except ValueError as err:
        raise UserError(f"{scoring_queue_name(study)!r}: {err}") from err


def score_study(study: optuna.Study, *, max_units: int | None = None, wait: bool = False,
                progress: bool = True) -> ScoringReport:
    """A scoring-only worker (``lrf-optuna score``): the study's recorded problem loaded,
    the shared build made again (:func:`shared_build`) and its waiting units scored.

    Raises:
        UserError: no shared scoring in the study, or this machine's model or data
            differ from the other workers'.
    """
    from lrf_optuna.study.records import problem_spec

    problem = problem_spec(study).load(verbose=progress)
    build = shared_build(study, problem.model, problem.splits.x_cal)
    return score_on_storage(study, build, wait=wait, max_units=max_units, progress=progress)
