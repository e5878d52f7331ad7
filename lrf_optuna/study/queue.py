"""Work queues on a study's storage: enqueued trials, each claimed once by any worker.

The fine-tuning jobs (:mod:`lrf_optuna.finetune.jobs`) and the scoring units of a shared
similarity cache (:mod:`lrf_optuna.search.scoring_queue`) are both queues of this kind: a
study whose WAITING trials are units of work, popped by ``study.ask()`` under a
cross-process lock (:func:`~lrf_optuna.study.storage.study_lock`: SQLite ignores
``SELECT ... FOR UPDATE``, so two processes could otherwise pop the same trial), run under
a :class:`~lrf_optuna.study.recovery.HeartbeatThread` and told COMPLETE or FAIL.

A killed worker's unit is recovered by the next :func:`claim_next`: RUNNING trials whose
heartbeat is older than the storage's grace period are failed by Optuna and re-enqueued as
WAITING copies by its ``RetryHeartbeatStaleTrialCallback``; a trial that never beat (its
worker died between the pop and the first beat) is failed and re-enqueued the same way
once it started longer than the grace period ago.

Example:
    >>> storage, rdb = heartbeat_storage(study, heartbeat_interval=10,  # doctest: +SKIP
    ...                                  grace_period=60, max_retry=2)
    >>> claimed = claim_next(queue, rdb, lambda: study_lock(study, "jobs"),
    ...                      error_attr="error")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.study.recovery import fail_stale_trial, stale_trials

__all__ = ["claim_next", "fail_trial", "quiet", "worker_id"]

logger = logging.getLogger(__name__)

Lock = Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Optuna's warnings about what a queue does on purpose: heartbeats outside
    ``Study.optimize``, and the experimental heartbeat API."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


def worker_id() -> str:
    """``host:pid:thread`` of the calling worker (recorded on what it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def fail_trial(queue: optuna.Study, trial: optuna.Trial | int, **attrs: Any) -> None:
    """Set ``attrs`` on a RUNNING trial and tell it FAIL (nothing when it is finished)."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        if isinstance(trial, optuna.Trial):
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        queue.tell(trial, state=TrialState.FAIL)


def _fail_silent(queue: optuna.Study, rdb: optuna.storages.RDBStorage,
                 error_attr: str) -> None:
    """Fail (and re-enqueue through the retry callback) RUNNING trials that never recorded
    a heartbeat and started more than the grace period ago: Optuna's
    ``fail_stale_trials`` never sees them."""
    interval = rdb.get_heartbeat_interval()
    if not interval:
        return
    grace = rdb.grace_period or 2 * interval  # Optuna's own default
    callback = rdb.get_heartbeat_stale_trial_callback()
    for stale in stale_trials(queue, grace_period=grace):
        if stale.had_heartbeat:
            continue  # Optuna's own check owns these
        if not fail_stale_trial(rdb, stale, reason_attr=error_attr):
            continue  # its worker finished it after all
        logger.warning("%s: trial %d never recorded a heartbeat and started %.0f s ago: its "
                       "worker was lost; marked FAIL and re-enqueued", queue.study_name,
                       stale.trial.number, stale.silent_seconds)
        if callback is not None:
            callback(queue, rdb.get_trial(stale.trial._trial_id))


def claim_next(queue: optuna.Study, rdb: optuna.storages.RDBStorage | None, lock: Lock, *,
               error_attr: str) -> tuple[optuna.Trial, list[FrozenTrial]] | None:
    """Pop the next WAITING trial of ``queue`` under ``lock``; ``None`` when none waits.

    Stale RUNNING trials are failed (and re-enqueued by the storage's retry callback)
    first. The popped trial has recorded one heartbeat already (a trial without one never
    becomes stale by Optuna's check).

    Returns:
        ``(trial, trials)``: the claimed trial and every trial of the queue as read under
        the lock (for the caller's own duplicate checks).
    """
    with lock(), quiet():
        if rdb is not None:
            optuna.storages.fail_stale_trials(queue)
            _fail_silent(queue, rdb, error_attr)
        if not queue.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        trial = queue.ask()
        if rdb is not None:
            rdb.record_heartbeat(trial._trial_id)
        return trial, queue.get_trials(deepcopy=False)
