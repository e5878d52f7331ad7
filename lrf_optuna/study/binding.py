"""What binds a study to its model, data and search settings.

A search study compares trials of one model on one calibration set in one search space:
resumed with another model, other data or other settings, its trials would silently
mix. So a study records, once, a :class:`Binding` (study attribute
:data:`~lrf_optuna.study.records.BINDING_ATTR`): the fingerprints of the model
(architecture and weights), the data (every split) and the calibration images, and the
search settings (objectives, metric, aggregation, layer / method / rank restrictions,
rank grid). :func:`check_binding` refuses, before anything expensive, to resume a study
with anything else, and says how to start a new study instead. Constraints
(``max_params`` ...) may change between runs: they only mark trials feasible or not. A
study made before bindings existed is not checked; the next search records its binding.

The same fingerprints make a study's files safe to reopen: :func:`load_study_problem`
loads the model and data a study names and refuses them unless they are the ones the
study was made with (a crafted or edited study cannot make lrf_optuna load and export
another file).

Example:
    >>> b = Binding(model="a1", data="b2", calibration="c3", search={"metric": "cosine"})
    >>> b.differences(Binding(model="a1", data="b2", calibration="c3",
    ...                       search={"metric": "cka"}))
    ["the search settings differ (metric: 'cosine' when the study was made, now 'cka')"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from lrf_optuna.errors import UserError
from lrf_optuna.study.records import BINDING_ATTR, PROBLEM_ATTR, problem_spec
from lrf_optuna.study.storage import shown_url, storage_url

if TYPE_CHECKING:
    from lrf_optuna.problem import Problem

__all__ = ["Binding", "bound", "check_binding", "load_study_problem", "record_binding"]

_NEW_STUDY = ("start a new study instead: pass another --study-name (study_name=) or "
              "--storage")


@dataclass(frozen=True)
class Binding:
    """Fingerprints of a study's model, data and calibration images, and its search
    settings (JSON)."""

    model: str
    data: str
    calibration: str
    search: Mapping[str, Any] = field(default_factory=dict)
    #: The similarity cache's fingerprint (recorded once it is built; not compared: it
    #: also hashes library versions, and the cache is rebuilt when they change).
    cache: str = ""

    @classmethod
    def of(cls, problem: Problem, search: Mapping[str, Any] | None = None) -> Binding:
        """The binding of a loaded problem (and the search settings, if a search)."""
        fp = problem.fingerprints()
        return cls(fp["model"], fp["data"], fp["calibration"], dict(search or {}))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "calibration": self.calibration,
                "search": dict(self.search), "cache": self.cache}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Binding:
        return cls(str(raw.get("model", "")), str(raw.get("data", "")),
                   str(raw.get("calibration", "")), dict(raw.get("search") or {}),
                   str(raw.get("cache") or ""))

    def differences(self, other: Binding, *, search: bool = True,
                    recorded_spec: Mapping[str, Any] | None = None) -> list[str]:
        """What differs from ``other`` (this one is the recorded binding), in words."""
        spec = dict(recorded_spec or {})
        out = []
        if self.model != other.model:
            made = f"{spec['model']}, " if spec.get("model") else ""
            out.append(f"the model differs (the study was made with {made}fingerprint "
                       f"{self.model[:8]})")
        if self.data != other.data:
            shown = {**spec, "val_fraction": "auto" if spec.get("val_fraction", 0) is None
                     else spec.get("val_fraction")}
            settings = ", ".join(f"{k} {shown[k]!r}" if k != "val_fraction" else
                                 f"{k} {shown[k]}" for k in ("dataset", "seed", "val_fraction")
                                 if k in spec)
            out.append("the data or its splits differ" + (
                f" (the study was made with {settings})" if settings else ""))
        elif self.calibration != other.calibration:
            size = spec.get("calibration_size")
            out.append("the calibration images differ" + (
                f" (the study was made with calibration_size {size})" if size else ""))
        if search:
            changed = [k for k in sorted(set(self.search) | set(other.search))
                       if self.search.get(k) != other.search.get(k)]
            if changed:
                out.append("the search settings differ (" + "; ".join(
                    f"{k}: {self.search.get(k)!r} when the study was made, now "
                    f"{other.search.get(k)!r}" for k in changed) + ")")
        return out


def bound(study: optuna.Study) -> Binding | None:
    """The binding a study recorded, or ``None`` (a study of an older lrf_optuna)."""
    raw = study.user_attrs.get(BINDING_ATTR)
    return Binding.from_json(raw) if isinstance(raw, Mapping) else None


def record_binding(study: optuna.Study, binding: Binding) -> None:
    """Record ``binding`` in the study, unless it has one already (then only a cache
    fingerprint it lacks is added)."""
    raw = study.user_attrs.get(BINDING_ATTR)
    if not isinstance(raw, Mapping):
        study.set_user_attr(BINDING_ATTR, binding.to_json())
    elif binding.cache and not raw.get("cache"):
        study.set_user_attr(BINDING_ATTR, {**raw, "cache": binding.cache})


def _where(study: optuna.Study, url: str | None) -> str:
    url = url or storage_url(study)
    return f"study {study.study_name!r}" + (f" in {shown_url(url)}" if url else "")


def check_binding(study: optuna.Study, binding: Binding, *, url: str | None = None) -> None:
    """Refuse to resume ``study`` with another model, data or search settings.

    A study without a recorded binding (made by an older lrf_optuna) passes.

    Raises:
        UserError: what differs, and how to start a new study instead.
    """
    recorded = bound(study)
    if recorded is None:
        return
    diffs = recorded.differences(binding, recorded_spec=study.user_attrs.get(PROBLEM_ATTR))
    if diffs:
        raise UserError(f"cannot resume {_where(study, url)}: {'; '.join(diffs)}. Resuming "
                        "would mix trials of different problems: resume it with what it was "
                        f"made with, or {_NEW_STUDY}")


def load_study_problem(study: optuna.Study, problem: Problem | None = None) -> Problem:
    """The problem of ``study``: ``problem`` if given, else loaded from the files the study
    names (:func:`~lrf_optuna.study.records.problem_spec`); either way it must match the
    fingerprints the study recorded.

    Raises:
        UserError: the files cannot be found or trusted, or are not the model and data
            the study was made with.
    """
    if problem is None:
        problem = problem_spec(study).load(verbose=False)
    recorded = bound(study)
    if recorded is not None:
        diffs = recorded.differences(Binding.of(problem), search=False,
                                     recorded_spec=study.user_attrs.get(PROBLEM_ATTR))
        if diffs:
            raise UserError(f"the model and data loaded for {_where(study, None)} are not "
                            f"the ones it was made with: {'; '.join(diffs)}. Pass the "
                            "original model and data (problem=), or a study made with these")
    return problem
