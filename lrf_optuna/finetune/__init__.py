"""Fine-tune chosen Pareto-optimal trials once, as resumable multi-worker Optuna jobs.

* :mod:`~lrf_optuna.finetune.select`: which trials (``select_trials``);
* :mod:`~lrf_optuna.finetune.budget`: the smallest model within an accuracy budget
  (``finetune_within``);
* :mod:`~lrf_optuna.finetune.recipe`: training one model (``finetune_model``);
* :mod:`~lrf_optuna.finetune.batchnorm`: BatchNorm statistics recomputed for a changed
  net (``reestimate_batchnorm``), before scoring a plan and before training it;
* :mod:`~lrf_optuna.finetune.jobs`: the job queue and its workers (``finetune_study``);
* :mod:`~lrf_optuna.finetune.config`: the settings (``FinetuneConfig``).

Example:
    >>> jobs = finetune_study(study, k=3)  # doctest: +SKIP
    >>> answer = finetune_within(study, max_drop=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

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
from lrf_optuna.finetune.select import Selection, budget_candidates, select_trials

__all__ = ["FinetuneConfig", "FinetuneOutcome", "Selection", "WithinBudget", "budget_candidates",
           "enqueue_finetune", "finetune_model", "finetune_study", "finetune_within",
           "outputs_probabilities", "reestimate_batchnorm", "requeue_running_jobs",
           "run_finetune_jobs", "select_trials", "smallest_passing", "teacher_outputs",
           "train_mode_accuracy"]

#: Names that moved (deprecated here; they warn once used).
_MOVED = {
    "finetune_study_of": ("lrf_optuna.study.lookup", "open_finetune_study"),
    "existing_finetune_study": ("lrf_optuna.study.lookup", "find_finetune_study"),
    "finetune_study_name": ("lrf_optuna.study.lookup", "finetune_study_name"),
    "finetuned_job": ("lrf_optuna.study.lookup", "finetuned_job"),
    "jobs_by_source": ("lrf_optuna.study.lookup", "jobs_by_source"),
    "FINETUNE_SUFFIX": ("lrf_optuna.study.lookup", "FINETUNE_SUFFIX"),
    "JobContext": ("lrf_optuna.study.models", "StudyModels"),
    "measure_model": ("lrf_optuna.export", "measure_model"),
    "download_job_artifacts": ("lrf_optuna.export", "download_job_files"),
    "results_table": ("lrf_optuna.report", "results_text"),
    "open_study": ("lrf_optuna.study.lookup", "load_study"),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module, new = _MOVED[name]
        warnings.warn(f"lrf_optuna.finetune.{name} is deprecated; use {module}.{new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new)
    raise AttributeError(f"module 'lrf_optuna.finetune' has no attribute {name!r}")
