"""The worker loop: optimise a study until it has enough finished trials, with the
RUNNING trials of killed workers recovered on the way (:mod:`lrf_optuna.study.recovery`).

Example:
    >>> run_remaining(study, objective, n_trials=300)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import optuna

from lrf_optuna.study.recovery import (
    DEFAULT_GRACE_PERIOD,
    record_heartbeat,
    recover_stale_trials,
)

if TYPE_CHECKING:
    from lrf_optuna.search.objective import LRFObjective

__all__ = ["finished_trials", "run_remaining"]

logger = logging.getLogger(__name__)


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
