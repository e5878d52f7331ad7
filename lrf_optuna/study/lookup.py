"""Finding studies: a search study by name, and its fine-tuning study beside it.

A search study's trials are finished and their attributes can no longer change, so
fine-tuning results live in a **second study in the same storage**, named
``"<study_name>:finetune"``: each of its trials is one job, fine-tuning search trial
``source_trial`` with one recipe (the training settings, user attribute ``recipe``).
:func:`latest_jobs` is the one place that picks, per search trial (and recipe), the job
whose results count (the latest COMPLETE one); :func:`fair_reference` the job that
fine-tuned the original model with a recipe.

Example:
    >>> finetune_study_name("vgg")
    'vgg:finetune'
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.errors import UserError
from lrf_optuna.study.finetune_records import (
    ARTIFACT_DIR_ATTR,
    RECIPE_ATTR,
    REFERENCE_ATTR,
    SOURCE_STUDY_ATTR,
    SOURCE_TRIAL,
)
from lrf_optuna.study.storage import (
    artifact_dir_for,
    check_storage,
    default_storage,
    sqlite_path,
    storage_of,
    storage_url,
)

__all__ = [
    "FINETUNE_SUFFIX",
    "SCORING_SUFFIX",
    "artifact_store_dir",
    "fair_reference",
    "fair_references",
    "find_finetune_study",
    "finetune_study_name",
    "finetuned_job",
    "job_recipe",
    "job_source",
    "jobs_by_source",
    "latest_jobs",
    "latest_jobs_by_recipe",
    "load_study",
    "open_finetune_study",
    "recorded_artifact_dir",
    "resolve_storage",
    "search_study_names",
]

FINETUNE_SUFFIX = ":finetune"
#: ``"<study_name>:scoring"``: a study's shared scoring units
#: (:mod:`lrf_optuna.search.scoring_queue`).
SCORING_SUFFIX = ":scoring"
#: The fine-tuning study's objectives: the dashboard plots the fine-tuned front.
FINETUNE_METRICS = ["params", "test_accuracy"]
FINETUNE_DIRECTIONS: list[Literal["minimize", "maximize"]] = ["minimize", "maximize"]


# -- search studies ---------------------------------------------------------------------------

def resolve_storage(study_name: str | None, storage: str | None) -> str:
    """``storage``, or ``sqlite:///studies/<study_name>.db`` like ``lrf-optuna search``.

    Raises:
        UserError: neither is given, or the SQLite database file does not exist.
    """
    if storage is None:
        if not study_name:
            raise UserError("pass --study-name or --storage")
        storage = default_storage(study_name)
    db = sqlite_path(storage) if "://" in storage else None
    if db is not None and not db.exists():
        raise UserError(f"no study database at {db}; run `lrf-optuna search` first or pass "
                        "--storage")
    return storage


def search_study_names(storage: str | optuna.storages.BaseStorage) -> list[str]:
    """Names of the search studies in a storage (fine-tuning studies and scoring queues
    left out)."""
    return [n for n in optuna.get_all_study_names(storage)
            if not n.endswith((FINETUNE_SUFFIX, SCORING_SUFFIX))]


def load_study(study_name: str | None, storage: str | None = None, *,
               write: bool = False) -> optuna.Study:
    """Load a search study by name (and/or storage URL), with clear errors.

    With only ``storage``, the storage must hold exactly one search study; with only
    ``study_name``, the storage is ``sqlite:///studies/<study_name>.db``. The storage is
    checked first (:func:`~lrf_optuna.study.storage.check_storage`; with ``write``, that it
    can be written too).

    Raises:
        UserError: a bad or unusable storage, no database, no such study, or an
            ambiguous storage.
    """
    url = resolve_storage(study_name, storage)
    if not check_storage(url, write=write).has_studies:
        raise UserError(f"{url} holds no Optuna study; run `lrf-optuna search` first or pass "
                        "another --storage")
    names = search_study_names(url)
    if study_name is None:
        if len(names) != 1:
            raise UserError(f"{url} holds {len(names)} search studies {names}; pass "
                            "--study-name")
        study_name = names[0]
    if study_name not in names:
        raise UserError(f"no study {study_name!r} in {url}; it has {names}")
    return optuna.load_study(study_name=study_name, storage=url)


# -- the fine-tuning study --------------------------------------------------------------------

def finetune_study_name(study: optuna.Study | str) -> str:
    """``"<study_name>:finetune"``."""
    name = study if isinstance(study, str) else study.study_name
    return f"{name}{FINETUNE_SUFFIX}"


def open_finetune_study(study: optuna.Study, *,
                        storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create or load ``"<study>:finetune"`` in the same storage (or ``storage``, e.g. a
    worker's heartbeat connection to the same database)."""
    ft = optuna.create_study(
        study_name=finetune_study_name(study), storage=storage or storage_of(study),
        load_if_exists=True, directions=FINETUNE_DIRECTIONS,
        sampler=optuna.samplers.RandomSampler(seed=0))
    if ft.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ft.set_metric_names(FINETUNE_METRICS)
    if SOURCE_STUDY_ATTR not in ft.user_attrs:
        ft.set_user_attr(SOURCE_STUDY_ATTR, study.study_name)
    return ft


def find_finetune_study(study: optuna.Study) -> optuna.Study | None:
    """The fine-tuning study beside ``study`` in the same storage, or ``None``."""
    name = finetune_study_name(study)
    if name not in optuna.get_all_study_names(storage_of(study)):
        return None
    return optuna.load_study(study_name=name, storage=storage_of(study))


def artifact_store_dir(study: optuna.Study, explicit: str | os.PathLike[str] | None = None
                       ) -> Path:
    """The artifact store of ``study``'s fine-tuning jobs: ``explicit`` (one the user
    names), else :func:`~lrf_optuna.study.storage.artifact_dir_for` of the storage URL
    (``<db stem>_artifacts`` beside a SQLite file, else ``studies/artifacts``).

    Never a directory the study records: studies are shared files (and rows anyone with
    access to the server can write), so a path read from one could point anywhere. The
    ``artifact_dir`` a fine-tuning study records (:func:`recorded_artifact_dir`) is only
    shown as a hint."""
    if explicit is not None:
        return Path(explicit)
    return artifact_dir_for(storage_url(study))


def recorded_artifact_dir(study: optuna.Study) -> str | None:
    """The artifact directory ``study``'s fine-tuning study says it used, for messages
    only (see :func:`artifact_store_dir`)."""
    ft = find_finetune_study(study)
    value = ft.user_attrs.get(ARTIFACT_DIR_ATTR) if ft is not None else None
    return str(value) if value else None


def job_source(job: FrozenTrial) -> int | None:
    """The search trial a job fine-tunes (also for a WAITING job, from its fixed params)."""
    value = job.params.get(SOURCE_TRIAL)
    if value is None:
        value = job.system_attrs.get("fixed_params", {}).get(SOURCE_TRIAL)
    return int(value) if value is not None else None


def job_recipe(job: FrozenTrial) -> str | None:
    """The recipe key a job was enqueued with (``None`` for jobs made before recipes were
    recorded)."""
    value = job.user_attrs.get(RECIPE_ATTR)
    return str(value) if value is not None else None


def jobs_by_source(ft: optuna.Study, *, recipe: str | None = None
                   ) -> dict[int, list[FrozenTrial]]:
    """The fine-tuning study's jobs grouped by source trial number (job order kept); with
    ``recipe``, only the jobs of that recipe."""
    out: dict[int, list[FrozenTrial]] = {}
    for job in ft.get_trials(deepcopy=False):
        source = job_source(job)
        if source is not None and (recipe is None or job_recipe(job) == recipe):
            out.setdefault(source, []).append(job)
    return out


def latest_jobs(ft: optuna.Study | None, *, recipe: str | None = None
                ) -> dict[int, FrozenTrial]:
    """``{source trial: its latest COMPLETE job}``: the results that count (of any recipe,
    or of ``recipe``)."""
    if ft is None:
        return {}
    out = {}
    for source, jobs in jobs_by_source(ft, recipe=recipe).items():
        done = [j for j in jobs if j.state == TrialState.COMPLETE]
        if done:
            out[source] = done[-1]
    return out


def latest_jobs_by_recipe(ft: optuna.Study | None) -> dict[tuple[int, str | None], FrozenTrial]:
    """``{(source trial, recipe): its latest COMPLETE job}`` (recipe ``None``: jobs made
    before recipes were recorded)."""
    out: dict[tuple[int, str | None], FrozenTrial] = {}
    if ft is None:
        return out
    for job in ft.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        source = job_source(job)
        if source is not None:
            out[(source, job_recipe(job))] = job
    return out


def fair_references(ft: optuna.Study | None) -> dict[str, FrozenTrial]:
    """``{recipe: its latest COMPLETE fair-reference job}`` (the original model fine-tuned
    with that recipe)."""
    out: dict[str, FrozenTrial] = {}
    if ft is None:
        return out
    for job in ft.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        recipe = job_recipe(job)
        if job.user_attrs.get(REFERENCE_ATTR) and recipe is not None:
            out[recipe] = job
    return out


def fair_reference(ft: optuna.Study | None, recipe: str) -> FrozenTrial | None:
    """The latest COMPLETE fair-reference job of ``recipe``, or ``None``."""
    return fair_references(ft).get(recipe)


def finetuned_job(study: optuna.Study, trial_number: int, *, recipe: str | None = None
                  ) -> FrozenTrial | None:
    """The latest COMPLETE fine-tuning job of search trial ``trial_number`` (of any recipe,
    or of ``recipe``), if any."""
    return latest_jobs(find_finetune_study(study), recipe=recipe).get(trial_number)
