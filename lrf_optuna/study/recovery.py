"""Killed search workers: their RUNNING trials are found, failed with the reason, and the
strategy plans they carried are run again.

A search worker killed mid-trial (SIGKILL, power loss, a lost machine) leaves its trial
RUNNING for ever: Optuna only fails trials of heartbeat-enabled storages, and only those
that recorded a heartbeat. Search trials last milliseconds, so a per-trial heartbeat thread
would cost more than the trial; instead a search worker records one heartbeat when its
objective starts (:func:`record_heartbeat`; a fine-tuning job, which lasts minutes, beats
from a thread, :class:`HeartbeatThread`), and a trial is **stale** when it is RUNNING
and

* its heartbeat is older than the grace period (measured on the database's clock), or
* it has no heartbeat and started longer than the grace period ago (a worker killed
  between Optuna's ``ask`` and the objective; measured on the workers' clocks, which
  must agree to within the grace period when workers run on several machines).

A live worker's trial is never older than that: it finishes within milliseconds of its
heartbeat. The grace period (:data:`DEFAULT_GRACE_PERIOD`, 60 s; ``lrf-optuna search
--grace-period``) must stay well above the longest pause a live worker can take between
starting a trial and finishing it (a storage lock wait, a suspended laptop): a live
trial failed by mistake is not lost (its worker's ``tell`` is refused and the worker goes
on), but it is wasted.

:func:`recover_stale_trials` fails stale trials (user attribute :data:`FAIL_REASON_ATTR`
says why) under the study's ``"seed"`` lock, the lock under which strategy plans are
enqueued, so several workers recovering at once fail each trial once. Counts, tables and
the Pareto front only use COMPLETE trials, so a failed trial is ignored everywhere; a
strategy plan whose trial failed is enqueued again by the next
:meth:`~lrf_optuna.search.LRFObjective.seed_study` (it skips only plans that are WAITING,
RUNNING or COMPLETE).

Example:
    >>> study = optuna.load_study(study_name="vgg",  # doctest: +SKIP
    ...                           storage="sqlite:///studies/vgg.db")
    >>> [t.number for t in recover_stale_trials(study, grace_period=60)]  # doctest: +SKIP
    [401, 402]
"""

from __future__ import annotations

import datetime
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.study.storage import rdb_of, storage_of, study_lock

__all__ = ["DEFAULT_GRACE_PERIOD", "FAIL_REASON_ATTR", "HeartbeatThread", "StaleTrial",
           "fail_stale_trial", "record_heartbeat", "recover_stale_trials", "stale_trials"]

logger = logging.getLogger(__name__)

#: Seconds after which a RUNNING search trial without a newer heartbeat is a dead
#: worker's (a live search trial takes milliseconds).
DEFAULT_GRACE_PERIOD = 60.0
#: User attribute of a trial failed by :func:`recover_stale_trials`: why.
FAIL_REASON_ATTR = "fail_reason"


@dataclass(frozen=True)
class StaleTrial:
    """A RUNNING trial whose worker is gone, and how long it has been silent."""

    trial: FrozenTrial
    silent_seconds: float
    had_heartbeat: bool

    @property
    def reason(self) -> str:
        since = ("its last heartbeat" if self.had_heartbeat else
                 "it started and recorded no heartbeat")
        return (f"worker lost: RUNNING {self.silent_seconds:.0f} s after {since}; failed by "
                "lrf_optuna's stale-trial recovery (the worker was killed or lost)")


def record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record that ``trial``'s worker is alive now (a no-op for storages without a
    database)."""
    rdb = rdb_of(storage_of(study))
    if rdb is not None:
        rdb.record_heartbeat(trial._trial_id)


def _heartbeat_ages(rdb: optuna.storages.RDBStorage, trial_ids: Sequence[int]
                    ) -> dict[int, float]:
    """Seconds since each trial's heartbeat, on the database's clock (trials with one)."""
    import sqlalchemy
    from optuna.storages._rdb import models  # Optuna's schema: the heartbeat table

    beat = models.TrialHeartbeatModel
    with rdb.engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = conn.execute(sqlalchemy.select(beat.trial_id, beat.heartbeat)
                            .where(beat.trial_id.in_(list(trial_ids)))).all()
    if isinstance(now, str):  # SQLite's CURRENT_TIMESTAMP, when not typed
        now = datetime.datetime.fromisoformat(now)
    now = now.replace(tzinfo=None)
    return {int(i): (now - h.replace(tzinfo=None)).total_seconds() for i, h in rows}


def stale_trials(study: optuna.Study, *, grace_period: float) -> list[StaleTrial]:
    """The RUNNING trials of ``study`` whose worker is gone (see the module docstring).

    Raises:
        ValueError: ``grace_period`` is not a positive number.
    """
    if not (isinstance(grace_period, (int, float)) and math.isfinite(grace_period)
            and grace_period > 0):
        raise ValueError(f"grace_period must be a positive number of seconds, but got "
                         f"{grace_period!r}")
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    rdb = rdb_of(storage_of(study))
    ages = _heartbeat_ages(rdb, [t._trial_id for t in running]) if rdb is not None else {}
    now = datetime.datetime.now()
    out = []
    for trial in running:
        age = ages.get(trial._trial_id)
        had_heartbeat = age is not None
        if age is None:
            start = trial.datetime_start
            age = (now - start).total_seconds() if start is not None else math.inf
        if age > grace_period:
            out.append(StaleTrial(trial, age, had_heartbeat))
    return out


def fail_stale_trial(storage: optuna.storages.BaseStorage, stale: StaleTrial, *,
                     reason_attr: str) -> bool:
    """Mark ``stale``'s trial FAIL with its reason in user attribute ``reason_attr``;
    ``False`` when its worker finished it meanwhile (nothing changed then)."""
    trial_id = stale.trial._trial_id
    try:
        storage.set_trial_user_attr(trial_id, reason_attr, stale.reason)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def recover_stale_trials(study: optuna.Study, *, grace_period: float = DEFAULT_GRACE_PERIOD
                         ) -> list[FrozenTrial]:
    """Fail the stale RUNNING trials of ``study``, each with the reason in user attribute
    :data:`FAIL_REASON_ATTR`; returns them (as they were when found).

    Safe with several workers: it runs under the study's ``"seed"`` lock, and a trial its
    worker finished meanwhile is left alone.
    """
    storage = storage_of(study)
    failed = []
    with study_lock(study, "seed"):
        for stale in stale_trials(study, grace_period=grace_period):
            if not fail_stale_trial(storage, stale, reason_attr=FAIL_REASON_ATTR):
                continue  # its worker finished it after all
            failed.append(stale.trial)
            logger.warning("trial %d of study %r was RUNNING for %.0f s without a sign of "
                           "its worker (grace period %g s): marked FAIL", stale.trial.number,
                           study.study_name, stale.silent_seconds, grace_period)
    return failed


class HeartbeatThread:
    """Records a trial's heartbeat every ``interval`` seconds in a daemon thread while the
    ``with`` block runs (a long trial: a fine-tuning job); no-op without a storage."""

    def __init__(self, storage: optuna.storages.RDBStorage | None, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HeartbeatThread:
        if self.storage is not None:
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name=f"lrf-heartbeat-{self.trial_id}")
            self._thread.start()
        return self

    def _beat(self) -> None:
        assert self.storage is not None
        interval = self.storage.heartbeat_interval or 10
        while not self._stop.wait(interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a missed beat is not fatal; the next one retries
                logger.debug("heartbeat of trial id %d failed", self.trial_id, exc_info=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
