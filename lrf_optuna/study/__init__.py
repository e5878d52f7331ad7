"""The study layer: where studies live and what lrf_optuna records in them.

* :mod:`~lrf_optuna.study.storage`: storage URLs, default locations, opening storages
  (SQLite WAL, PostgreSQL, heartbeats) and cross-process study locks;
* :mod:`~lrf_optuna.study.records`: the user-attribute names, their typed readers and the
  plan codec;
* :mod:`~lrf_optuna.study.lookup`: a search study by name (one error type,
  :class:`~lrf_optuna.errors.UserError`), its fine-tuning study and jobs.
"""

from __future__ import annotations

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
from lrf_optuna.study.records import (
    CompressionPlan,
    decode_plan,
    get_search_trial,
    original_info,
    problem_spec,
    readable_plan,
    record_problem,
)
from lrf_optuna.study.storage import (
    artifact_dir_for,
    default_storage,
    open_storage,
    sqlite_path,
    study_lock,
)

__all__ = [
    "FINETUNE_SUFFIX",
    "CompressionPlan",
    "artifact_dir_for",
    "decode_plan",
    "default_storage",
    "find_finetune_study",
    "finetune_study_name",
    "finetuned_job",
    "get_search_trial",
    "latest_jobs",
    "load_study",
    "open_finetune_study",
    "open_storage",
    "original_info",
    "problem_spec",
    "readable_plan",
    "record_problem",
    "resolve_storage",
    "search_study_names",
    "sqlite_path",
    "study_lock",
]
