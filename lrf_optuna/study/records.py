"""What lrf_optuna writes into studies: attribute names, typed readers, the trust checks.

The plan of a trial and its codec live below, in :mod:`lrf_optuna.plan`.

Study attributes: :data:`PROBLEM_ATTR` (how to rebuild model and data,
:class:`~lrf_optuna.problem.ProblemSpec`), :data:`SPACE_ATTR` (the search space),
:data:`ORIGINAL_ATTR` (the original model's costs and the proxy's settings,
:class:`OriginalInfo`), :data:`BINDING_ATTR` (fingerprints of the model and data and the
search settings, :mod:`lrf_optuna.study.binding`).

A study is a shared file (or rows anyone with access to the server can write), so the
paths it records are not trusted: :func:`problem_spec` resolves the problem files
lrf_optuna saved (recorded relative to the artifact store the storage URL implies) inside
that store only, and accepts a path outside it only when the study also records the
fingerprints the loaded model and data must then match
(:func:`lrf_optuna.study.binding.load_study_problem` checks them).

Search-trial attributes: the plan's (:mod:`lrf_optuna.plan`), :data:`STRATEGY_ATTR`, and
the costs and proxy :class:`SearchRecord` reads (:data:`PARAMS_ATTR`, :data:`FLOPS_ATTR`,
:data:`PROXY_ATTR`, ...). What a fine-tuning job records:
:mod:`lrf_optuna.study.finetune_records`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.errors import UserError
from lrf_optuna.formatting import as_float
from lrf_optuna.plan import LRF_PLAN_ATTR, readable_plan

if TYPE_CHECKING:
    from lrf_optuna.problem import ProblemSpec

__all__ = [
    "BINDING_ATTR",
    "COMPRESSION_RATIO_ATTR",
    "DEPLOYED_BYTES_ATTR",
    "FLOPS_ATTR",
    "FLOPS_REDUCTION_ATTR",
    "ORIGINAL_ATTR",
    "PARAMS_ATTR",
    "PROBLEM_ATTR",
    "PROXY_ATTR",
    "PRUNE_ATTR",
    "SPACE_ATTR",
    "STRATEGY_ATTR",
    "OriginalInfo",
    "SearchRecord",
    "as_int",
    "as_str",
    "get_search_trial",
    "original_info",
    "problem_spec",
    "record_problem",
]

# study user attributes
PROBLEM_ATTR = "lrf_optuna:problem"
SPACE_ATTR = "lrf_optuna:space"
ORIGINAL_ATTR = "lrf_optuna:original"
#: The pruning a search offers (its :class:`~lrf_optuna.prune.PruneConfig` and cache);
#: absent when the search does not prune.
PRUNE_ATTR = "lrf_optuna:prune"
BINDING_ATTR = "lrf_optuna:binding"
# search-trial user attributes (the plan's: lrf_optuna.plan)
STRATEGY_ATTR = "strategy"
#: Costs of the compressed model, also recorded by a fine-tuning job
#: (:mod:`lrf_optuna.study.finetune_records`).
PARAMS_ATTR = "params"
FLOPS_ATTR = "flops"
COMPRESSION_RATIO_ATTR = "compression_ratio"
FLOPS_REDUCTION_ATTR = "flops_reduction"
#: The accuracy proxy of the plan (the similarity cache's score).
PROXY_ATTR = "proxy"
#: Deployed weight bytes, when the search minimises bytes.
DEPLOYED_BYTES_ATTR = "deployed_bytes"


# -- typed readers ----------------------------------------------------------------------------

def as_str(value: Any) -> str | None:
    """``value`` when it is text, else ``None``."""
    return value if isinstance(value, str) else None


def as_int(value: Any) -> int | None:
    """``int(value)``, or ``None`` where :func:`as_float` gives ``None``."""
    number = as_float(value)
    return None if number is None else int(number)


@dataclass(frozen=True)
class SearchRecord:
    """A search trial's user attributes, typed (missing numbers are ``None``)."""

    number: int
    params: int | None
    flops: int | None
    proxy: float | None
    compression_ratio: float | None
    flops_reduction: float | None
    strategy: str
    plan: dict[str, str]

    @classmethod
    def of(cls, trial: FrozenTrial) -> SearchRecord:
        ua = trial.user_attrs
        return cls(trial.number, as_int(ua.get(PARAMS_ATTR)), as_int(ua.get(FLOPS_ATTR)),
                   as_float(ua.get(PROXY_ATTR)), as_float(ua.get(COMPRESSION_RATIO_ATTR)),
                   as_float(ua.get(FLOPS_REDUCTION_ATTR)), str(ua.get(STRATEGY_ATTR) or ""),
                   readable_plan(ua))


@dataclass(frozen=True)
class OriginalInfo:
    """The study attribute :data:`ORIGINAL_ATTR`: the original model and the proxy's
    settings, recorded by :meth:`~lrf_optuna.search.LRFObjective.describe_study`."""

    params: int
    flops: int
    model: str
    metric: str
    aggregation: str
    cache: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def original_info(study: optuna.Study) -> OriginalInfo | None:
    """The :class:`OriginalInfo` of a described study, or ``None``."""
    raw = study.user_attrs.get(ORIGINAL_ATTR)
    if not raw:
        return None
    return OriginalInfo(params=int(raw.get("params", 0)), flops=int(raw.get("flops", 0)),
                        model=str(raw.get("model", "?")),
                        metric=str(raw.get("metric", "cosine")),
                        aggregation=str(raw.get("aggregation", "mean")),
                        cache=str(raw.get("cache", "")))


# -- the problem --------------------------------------------------------------------------------

_PATH_FIELDS = ("model", "dataset", "data_dir")


def _is_name(field: str, value: str) -> bool:
    """A value that is not a path: a reference model or the Fashion-MNIST dataset."""
    from lrf_optuna.models import REFERENCE_MODELS

    return (field == "model" and value in REFERENCE_MODELS) or (
        field == "dataset" and value in ("fashion-mnist", "fashion_mnist"))


def _inside(path: Path, directory: Path) -> bool:
    return os.path.commonpath([path, directory]) == str(directory)


def record_problem(study: optuna.Study, spec: ProblemSpec, *,
                   store: str | os.PathLike[str] | None = None) -> None:
    """Store ``spec`` in the study (once), so later commands can rebuild the problem.

    Files inside ``store`` (the artifact store, where lrf_optuna saves in-memory models
    and data) are recorded relative to it, so that :func:`problem_spec` finds them in the
    store of whoever opens the study, never at a path the study names.
    """
    if PROBLEM_ATTR in study.user_attrs:
        return
    raw = spec.to_json()
    if store is not None:
        root = Path(store).resolve()
        for field in _PATH_FIELDS:
            value = raw.get(field)
            if value and not _is_name(field, value) and _inside(Path(value).resolve(), root):
                raw[field] = Path(value).resolve().relative_to(root).as_posix()
    study.set_user_attr(PROBLEM_ATTR, raw)


def problem_spec(study: optuna.Study) -> ProblemSpec:
    """The :class:`~lrf_optuna.problem.ProblemSpec` recorded in a study, its paths made
    safe to open.

    A relative path is a file lrf_optuna saved in the artifact store the storage URL
    implies (:func:`~lrf_optuna.study.storage.artifact_dir_for`) and resolves inside it;
    an absolute path (the user's own ``--model`` / ``--dataset`` files) is returned only
    when the study records the fingerprints (:data:`BINDING_ATTR`) that the loaded files
    must match.

    Raises:
        UserError: the study has none (it was not made by ``create_lrf_study`` or
            ``lrf-optuna search``), a relative path leaves the artifact store, or an
            absolute path cannot be verified.
    """
    from lrf_optuna.problem import ProblemSpec
    from lrf_optuna.study.storage import artifact_dir_for, storage_url

    raw = study.user_attrs.get(PROBLEM_ATTR)
    if not isinstance(raw, Mapping):
        raise UserError(f"study {study.study_name!r} has no {PROBLEM_ATTR!r} attribute; it "
                        "was not made by lrf_optuna.create_lrf_study or `lrf-optuna search` "
                        "(pass problem= explicitly)")
    spec = ProblemSpec.from_json(dict(raw))
    store = artifact_dir_for(storage_url(study)).resolve()
    resolved: dict[str, Any] = {}
    outside = []
    for field in _PATH_FIELDS:
        value = getattr(spec, field)
        if value is None or not isinstance(value, str) or _is_name(field, value):
            continue
        path = Path(value)
        if not path.is_absolute():
            path = (store / path).resolve()
            if not _inside(path, store):
                raise UserError(f"study {study.study_name!r} records the {field} path "
                                f"{value!r}, which leads out of its artifact store {store}; "
                                "the study file may have been tampered with")
            resolved[field] = str(path)
        elif not _inside(path.resolve(), store):
            outside.append(f"{field} {value}")
    if outside and not isinstance(study.user_attrs.get(BINDING_ATTR), Mapping):
        raise UserError(f"study {study.study_name!r} names files outside its artifact store "
                        f"{store} ({', '.join(outside)}) and records no fingerprints to "
                        "verify them (a study of an older lrf_optuna, or edited); rerun "
                        "`lrf-optuna search` on it with the same --model and --dataset to "
                        "record them, or pass problem= explicitly")
    return dataclasses.replace(spec, **resolved)


# -- trials -----------------------------------------------------------------------------------

def get_search_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """The COMPLETE search trial ``number`` of ``study``, made by lrf_optuna.

    Raises:
        UserError: no such trial, not COMPLETE, or without a plan.
    """
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        span = f"0..{len(trials) - 1}" if trials else "none"
        raise UserError(f"study {study.study_name!r} has no trial {number} (trials: {span})")
    trial = found[0]
    if trial.state != TrialState.COMPLETE:
        raise UserError(f"trial {number} of study {study.study_name!r} is "
                        f"{trial.state.name}, not COMPLETE")
    if LRF_PLAN_ATTR not in trial.user_attrs:
        raise UserError(f"trial {number} of study {study.study_name!r} has no "
                        f"{LRF_PLAN_ATTR!r} user attribute (not made by lrf_optuna's search)")
    return trial
