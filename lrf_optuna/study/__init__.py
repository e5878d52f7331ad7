"""The study layer: where studies live and what lrf_optuna records in them.

* :mod:`~lrf_optuna.study.storage`: storage URLs, default locations, opening storages
  (SQLite WAL, PostgreSQL, heartbeats) and cross-process study locks;
* :mod:`~lrf_optuna.study.records`: the attribute names of a study and its search trials,
  their typed readers and the problem-path trust checks (the plan codec:
  :mod:`lrf_optuna.plan`);
* :mod:`~lrf_optuna.study.finetune_records`: what a fine-tuning job records (its
  user-attribute keys, :class:`~lrf_optuna.study.finetune_records.FinetuneRecord`) and the
  budget search's answer types; a leaf that the jobs write through and the notes, the
  report and the export read through;
* :mod:`~lrf_optuna.study.lookup`: a search study by name (one error type,
  :class:`~lrf_optuna.errors.UserError`), its fine-tuning study and jobs;
* :mod:`~lrf_optuna.study.binding`: the fingerprints that bind a study to its model, data
  and search settings (resuming with others is refused);
* :mod:`~lrf_optuna.study.recovery`: RUNNING trials of killed search workers, failed with
  the reason; the heartbeat thread of a long trial (a fine-tuning job);
* :mod:`~lrf_optuna.study.queue`: work queues of enqueued trials claimed once by any worker
  (the fine-tuning jobs, the shared scoring units), killed workers' trials retried;
* :mod:`~lrf_optuna.study.models`: the compressed models of a stored study's trials,
  rebuilt from the study alone (:class:`~lrf_optuna.study.models.StudyModels`);
* :mod:`~lrf_optuna.study.artifacts`: a fine-tuning job's files: the model measured and
  written (:func:`~lrf_optuna.study.artifacts.measure_model`), stored as Optuna artifacts
  of the job and fetched back;
* :mod:`~lrf_optuna.study.notes`: the Markdown notes optuna-dashboard shows on a search
  study, a fine-tuning study and each job.

Studies are shared files (or rows on a server): nothing here trusts a path a study
records (:func:`~lrf_optuna.study.records.problem_spec`,
:func:`~lrf_optuna.study.lookup.artifact_store_dir`).
"""

from __future__ import annotations

from lrf_optuna.plan import CompressionPlan, decode_plan, readable_plan
from lrf_optuna.study.binding import Binding, check_binding, load_study_problem
from lrf_optuna.study.lookup import (
    FINETUNE_SUFFIX,
    find_finetune_study,
    finetune_study_name,
    finetuned_job,
    latest_jobs,
    load_study,
    open_finetune_study,
    resolve_storage,
    search_study_names,
)
from lrf_optuna.study.records import get_search_trial, original_info, problem_spec, record_problem
from lrf_optuna.study.recovery import recover_stale_trials
from lrf_optuna.study.storage import (
    artifact_dir_for,
    check_storage,
    default_storage,
    open_storage,
    sqlite_path,
    study_lock,
)

__all__ = [
    "FINETUNE_SUFFIX",
    "Binding",
    "CompressionPlan",
    "artifact_dir_for",
    "check_binding",
    "check_storage",
    "decode_plan",
    "default_storage",
    "find_finetune_study",
    "finetune_study_name",
    "finetuned_job",
    "get_search_trial",
    "latest_jobs",
    "load_study",
    "load_study_problem",
    "open_finetune_study",
    "open_storage",
    "original_info",
    "problem_spec",
    "readable_plan",
    "record_problem",
    "recover_stale_trials",
    "resolve_storage",
    "search_study_names",
    "sqlite_path",
    "study_lock",
]
