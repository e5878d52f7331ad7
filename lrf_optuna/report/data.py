"""What the report, the tables and the figures show, read once from the studies.

:func:`read_study` reads a search study and its fine-tuning study (no TensorFlow, no
cache: fast enough for ``lrf-optuna show``); :func:`collect` adds the similarity cache for
the full report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.errors import UserError
from lrf_optuna.plan import readable_plan
from lrf_optuna.scoring.cache import SimilarityCache
from lrf_optuna.study.finetune_records import (
    ARTIFACT_DIR_ATTR,
    BASELINE_ATTR,
    RECIPE_TEXT_ATTR,
    FinetuneRecord,
)
from lrf_optuna.study.lookup import (
    fair_references,
    find_finetune_study,
    finetune_study_name,
    latest_jobs_by_recipe,
)
from lrf_optuna.study.records import ORIGINAL_ATTR, PARAMS_ATTR, PROXY_ATTR, original_info

__all__ = ["FinetuneRow", "ReportData", "collect", "read_study"]


@dataclass
class FinetuneRow:
    """One fine-tuned search trial and recipe: its latest COMPLETE job, joined with the
    trial and with the fair reference of its recipe (``None`` when not run yet)."""

    job: int
    source: int
    record: FinetuneRecord
    plan: dict[str, str]
    proxy: float | None
    search_params: int | None
    reference: FinetuneRecord | None = None


@dataclass
class ReportData:
    """Everything the report shows, read from storage (and the cache, for the report)."""

    study_name: str
    original: Mapping[str, Any]
    baseline: Mapping[str, Any]
    metric: str
    aggregation: str
    n_trials: int  # COMPLETE trials: failed, pruned or RUNNING ones do not count
    complete: list[FrozenTrial]
    front: list[FrozenTrial]
    finetune_name: str
    finetune_exists: bool
    finetuned: list[FinetuneRow] = field(default_factory=list)
    references: dict[str, FinetuneRecord] = field(default_factory=dict)
    recipe_texts: dict[str, str] = field(default_factory=dict)
    finetune_states: dict[str, int] = field(default_factory=dict)
    artifact_dir: str | None = None
    cache: SimilarityCache | None = None
    layers: list[str] = field(default_factory=list)


def _params_key(row: FinetuneRow) -> float:
    params = row.record.measured.params
    return math.inf if params is None else float(params)


def read_study(study: optuna.Study) -> ReportData:
    """Read a described search study and its fine-tuning study (if any).

    Raises:
        UserError: the study was not described by lrf_optuna (no ``lrf_optuna:original``).
    """
    info = original_info(study)
    if info is None:
        raise UserError(f"study {study.study_name!r} has no {ORIGINAL_ATTR!r} attribute; it "
                        "was not described by lrf_optuna (`lrf-optuna search` and "
                        "create_lrf_study do it; with optuna.create_study call "
                        "objective.describe_study(study))")
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    layers: list[str] = []
    for t in complete:
        layers += [name for name in readable_plan(t) if name not in layers]
    data = ReportData(
        study_name=study.study_name, original=info.to_json(), baseline={},
        metric=info.metric, aggregation=info.aggregation, n_trials=len(complete),
        complete=complete, front=list(study.best_trials) if complete else [],
        finetune_name=finetune_study_name(study), finetune_exists=False, layers=layers)
    finetune = find_finetune_study(study)
    if finetune is None:
        return data
    data.finetune_exists = True
    data.baseline = dict(finetune.user_attrs.get(BASELINE_ATTR) or {})
    data.artifact_dir = finetune.user_attrs.get(ARTIFACT_DIR_ATTR)
    for t in finetune.get_trials(deepcopy=False):
        data.finetune_states[t.state.name] = data.finetune_states.get(t.state.name, 0) + 1
    by_number = {t.number: t for t in trials}
    data.references = {recipe: FinetuneRecord.of(job)
                       for recipe, job in fair_references(finetune).items()}
    for (source_number, recipe), job in latest_jobs_by_recipe(finetune).items():
        record = FinetuneRecord.of(job)
        if recipe is not None:
            data.recipe_texts[recipe] = str(job.user_attrs.get(RECIPE_TEXT_ATTR) or recipe)
        if record.is_reference:
            continue
        source = by_number.get(source_number)
        plan = readable_plan(source) if source is not None else {}
        data.finetuned.append(FinetuneRow(
            job.number, source_number, record, plan or readable_plan(job),
            source.user_attrs.get(PROXY_ATTR) if source is not None else None,
            source.user_attrs.get(PARAMS_ATTR) if source is not None else None,
            data.references.get(recipe) if recipe is not None else None))
    data.finetuned.sort(key=lambda r: (_params_key(r), r.source, r.job))
    return data


def collect(study: optuna.Study, *, cache_dir: str | os.PathLike[str] | None = None
            ) -> ReportData:
    """:func:`read_study` plus the similarity cache (for the report's figures and tables).

    Raises:
        UserError: the study was not described, or its similarity cache is missing.
    """
    data = read_study(study)
    recorded = Path(str(data.original.get("cache", "")))
    cache_path = recorded
    if cache_dir is not None:  # the cache itself, or its parent (search's --cache-dir)
        cache_path = Path(cache_dir)
        if not (cache_path / "manifest.json").exists() and \
                (cache_path / recorded.name / "manifest.json").exists():
            cache_path = cache_path / recorded.name
    try:
        data.cache = SimilarityCache.load(cache_path)
    except FileNotFoundError as err:
        raise UserError(f"the similarity cache of study {study.study_name!r} is missing "
                        f"({err}); rerun `lrf-optuna search` with the same options to "
                        "rebuild it, or pass --cache-dir") from err
    data.layers = list(data.cache.layers) + [p for p in data.layers
                                             if p not in data.cache.layers]
    return data
