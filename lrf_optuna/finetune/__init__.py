"""Fine-tune chosen Pareto-optimal trials once, as resumable multi-worker Optuna jobs.

* :mod:`~lrf_optuna.finetune.select`: which trials (``select_trials``, ``choose_trials``);
* :mod:`~lrf_optuna.finetune.budget`: the smallest model within an accuracy budget
  (``finetune_within``);
* :mod:`~lrf_optuna.finetune.recipe`: training one model (``finetune_model``);
* :mod:`~lrf_optuna.finetune.batchnorm`: BatchNorm statistics recomputed for a changed
  net (``reestimate_batchnorm``), before scoring a plan and before training it;
* :mod:`~lrf_optuna.finetune.jobs`: the job queue and its workers (``finetune_study``: choose,
  enqueue, run, reporting through its ``on_enqueued`` and ``callbacks`` hooks);
* :mod:`~lrf_optuna.finetune.config`: the settings (``FinetuneConfig``).

Example:
    >>> jobs = finetune_study(study, k=3)  # doctest: +SKIP
    >>> answer = finetune_within(study, max_drop=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

from lrf_optuna.finetune.batchnorm import reestimate_batchnorm, train_mode_accuracy
from lrf_optuna.finetune.budget import WithinBudget, finetune_within, smallest_passing
from lrf_optuna.finetune.config import FinetuneConfig
from lrf_optuna.finetune.jobs import (
    enqueue_finetune,
    finetune_study,
    requeue_running_jobs,
    run_finetune_jobs,
)
from lrf_optuna.finetune.recipe import (
    FinetuneOutcome,
    finetune_model,
    outputs_probabilities,
    teacher_outputs,
)
from lrf_optuna.finetune.select import (
    Selection,
    budget_candidates,
    choose_trials,
    select_trials,
)

__all__ = ["FinetuneConfig", "FinetuneOutcome", "Selection", "WithinBudget", "budget_candidates",
           "choose_trials", "enqueue_finetune", "finetune_model", "finetune_study",
           "finetune_within", "outputs_probabilities", "reestimate_batchnorm",
           "requeue_running_jobs", "run_finetune_jobs", "select_trials", "smallest_passing",
           "teacher_outputs", "train_mode_accuracy"]

