"""What lrf_optuna writes into studies: attribute names, typed readers, the plan codec.

A **plan** maps a layer path to ``(method, rank)``; a layer not in it is kept. A plan that
also prunes is a :class:`CompressionPlan`: the same mapping (ranks of the *pruned* layers)
plus ``ratios`` (``{layer: fraction of its filters removed}``) and the ``importance``
criterion that chose the filters; it is built by pruning, then factorizing. A search trial
stores its plan twice: ``"lrf_plan"`` (changed layers only, for the code:
``{layer: [method, rank]}``, and ``[method, rank, ratio]`` for a pruned layer, method
``"keep"`` and rank 0 when it is only pruned; the criterion in ``"prune_importance"``) and
``"plan"`` (``{layer: "tucker2 r=8" | "prune 25% + svd r=8" | "prune 25%" | "keep"}`` for
every searched layer, for people and the dashboard). :func:`plan_attrs` writes both,
:func:`decode_plan` is the one reader of the first, :func:`readable_plan` of the second.
A pruned-only trial's ``lrf_plan`` is not empty, so "``lrf_plan == {}``" still means the
original model, and a reader that only knows ``[method, rank]`` entries fails loudly on a
pruned plan instead of building the wrong model.

Study attributes: :data:`PROBLEM_ATTR` (how to rebuild model and data,
:class:`~lrf_optuna.problem.ProblemSpec`), :data:`SPACE_ATTR` (the search space),
:data:`ORIGINAL_ATTR` (the original model's costs and the proxy's settings,
:class:`OriginalInfo`). Fine-tuning jobs: :class:`FinetuneRecord`; the original model
measured the same way: :class:`Measured`.

Example:
    >>> attrs = plan_attrs({"fc1": ("svd", 8)}, layers=["conv1", "fc1"])
    >>> attrs["plan"]
    {'conv1': 'keep', 'fc1': 'svd r=8'}
    >>> decode_plan(attrs)
    {'fc1': ('svd', 8)}
    >>> parse_choice("tucker2 r=4"), parse_choice("keep")
    (('tucker2', 4), None)
    >>> pruned = plan_attrs(CompressionPlan({"fc1": ("svd", 8)}, ratios={"conv1": 0.25,
    ...                                                                  "fc1": 0.5}),
    ...                     layers=["conv1", "fc1"])
    >>> pruned["plan"]
    {'conv1': 'prune 25%', 'fc1': 'prune 50% + svd r=8'}
    >>> pruned["lrf_plan"]
    {'fc1': ['svd', 8, 0.5], 'conv1': ['keep', 0, 0.25]}
    >>> decode_plan(pruned).ratios
    {'fc1': 0.5, 'conv1': 0.25}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.errors import UserError

if TYPE_CHECKING:
    from lrf_optuna.problem import ProblemSpec

__all__ = [
    "KEEP",
    "LRF_PLAN_ATTR",
    "ORIGINAL_ATTR",
    "PLAN_ATTR",
    "PROBLEM_ATTR",
    "SOURCE_TRIAL",
    "SPACE_ATTR",
    "STRATEGY_ATTR",
    "FinetuneRecord",
    "PRUNE_ATTR",
    "PRUNE_IMPORTANCE_ATTR",
    "CompressionPlan",
    "Measured",
    "OriginalInfo",
    "Plan",
    "SearchRecord",
    "as_float",
    "decode_plan",
    "describe_ratio",
    "describe_choice",
    "get_search_trial",
    "original_info",
    "parse_choice",
    "parse_ratio",
    "plan_attrs",
    "problem_spec",
    "readable_plan",
    "record_problem",
]

KEEP = "keep"
#: ``{layer path: (method, rank)}``; layers not in it are kept.
Plan = dict[str, tuple[str, int]]

# study user attributes
PROBLEM_ATTR = "lrf_optuna:problem"
SPACE_ATTR = "lrf_optuna:space"
ORIGINAL_ATTR = "lrf_optuna:original"
#: The pruning a search offers (its :class:`~lrf_optuna.prune.PruneConfig` and cache);
#: absent when the search does not prune.
PRUNE_ATTR = "lrf_optuna:prune"
# search-trial user attributes
PLAN_ATTR = "plan"
LRF_PLAN_ATTR = "lrf_plan"
PRUNE_IMPORTANCE_ATTR = "prune_importance"
STRATEGY_ATTR = "strategy"
# fine-tuning: the job's source trial (parameter and user attribute), study attributes
SOURCE_TRIAL = "source_trial"
BASELINE_ATTR = "original"
ARTIFACT_DIR_ATTR = "artifact_dir"
SOURCE_STUDY_ATTR = "source_study"


# -- plans ------------------------------------------------------------------------------------

class CompressionPlan(dict[str, tuple[str, int]]):
    """A plan that may prune: ``{layer: (method, rank)}`` (the factorized layers, ranks of
    the pruned layers) plus ``ratios`` and the ``importance`` criterion.

    Built by pruning ``ratios`` of the filters (:func:`lrf_optuna.prune.prune_model`),
    then factorizing the pruned layers (:meth:`lrf_optuna.cache.SimilarityCache.build_model`
    does both). Without ratios it is an LRF plan and equals the plain ``dict``; with
    ratios it is truthy even when nothing is factorized. ``dict(plan)`` keeps only the
    LRF choices.

    Args:
        lrf: ``{layer: (method, rank)}``.
        ratios: ``{layer: ratio}``, the fraction of each pruned layer's filters removed
            (zeros are dropped); layers pruned alike (a group) share one ratio.
        importance: The criterion choosing the filters (``"l1"``, ``"l2"``,
            ``"activation"``).

    Example:
        >>> plan = CompressionPlan({"fc1": ("svd", 8)}, ratios={"conv1": 0.5})
        >>> plan == {"fc1": ("svd", 8)}, bool(CompressionPlan(ratios={"conv1": 0.5}))
        (False, True)
        >>> plan.choices()
        {'fc1': (0.0, 'svd', 8), 'conv1': (0.5, 'keep', None)}
    """

    def __init__(self, lrf: Mapping[str, tuple[str, int]] | Iterable[Any] = (), *,
                 ratios: Mapping[str, float] | None = None, importance: str = "l1") -> None:
        super().__init__(lrf)
        self.ratios: dict[str, float] = {str(p): float(r) for p, r in (ratios or {}).items()
                                         if float(r) > 0}
        self.importance = str(importance)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CompressionPlan):
            return (dict.__eq__(self, other) and self.ratios == other.ratios
                    and (not self.ratios or self.importance == other.importance))
        if isinstance(other, dict):
            return not self.ratios and dict.__eq__(self, other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return bool(len(self)) or bool(self.ratios)

    def __repr__(self) -> str:
        if not self.ratios:
            return dict.__repr__(self)
        return (f"CompressionPlan({dict.__repr__(self)}, ratios={self.ratios!r}, "
                f"importance={self.importance!r})")

    def copy(self) -> CompressionPlan:  # type: ignore[override]
        return CompressionPlan(self, ratios=self.ratios, importance=self.importance)

    def choices(self) -> dict[str, tuple[float, str, int | None]]:
        """``{layer: (ratio, method, rank)}`` of every changed layer, the form of
        :func:`lrf_optuna.prune.prune_and_factorize`."""
        out: dict[str, tuple[float, str, int | None]] = {
            p: (self.ratios.get(p, 0.0), m, int(r)) for p, (m, r) in self.items()}
        for p, ratio in self.ratios.items():
            out.setdefault(p, (ratio, KEEP, None))
        return out


def describe_ratio(ratio: float) -> str:
    """``0.25`` -> ``"prune 25%"`` (``""`` for 0).

    Example:
        >>> describe_ratio(0.125), describe_ratio(0)
        ('prune 12.5%', '')
    """
    return f"prune {100 * float(ratio):g}%" if float(ratio) > 0 else ""


def describe_choice(choice: Any, ratio: float = 0.0) -> str:
    """A layer's choice as ``"tucker2 r=8"`` / ``"keep"`` (``"prune 25% + tucker2 r=8"`` /
    ``"prune 25%"`` when ``ratio`` of its filters go), whatever form it was stored in
    (``(method, rank)``, ``[method, rank]``, ``[method, rank, ratio]``,
    ``{"method", "rank"}``, text or ``None``)."""
    if isinstance(choice, (list, tuple)) and len(choice) == 3:
        choice, ratio = (choice[0], choice[1]), float(choice[2])
    if choice is None:
        text = KEEP
    elif isinstance(choice, str):
        text = choice
    else:
        if isinstance(choice, Mapping) and "method" in choice:
            choice = (choice["method"], choice.get("rank", 0))
        if isinstance(choice, (list, tuple)) and len(choice) == 2:
            method, rank = choice
            text = KEEP if method == KEEP else f"{method} r={int(rank)}"
        else:
            text = str(choice)
    pruned = describe_ratio(ratio)
    if not pruned:
        return text
    return pruned if text == KEEP else f"{pruned} + {text}"


def parse_ratio(text: str) -> float:
    """The pruning ratio of a readable choice: ``"prune 25% + svd r=8"`` -> ``0.25``;
    ``0.0`` when it does not prune."""
    if not text.startswith("prune "):
        return 0.0
    try:
        return float(text[len("prune "):].split("%", 1)[0]) / 100.0
    except ValueError:
        return 0.0


def parse_choice(text: str) -> tuple[str, int] | None:
    """``"tucker2 r=8"`` (or ``"prune 25% + tucker2 r=8"``) -> ``("tucker2", 8)``;
    ``"keep"``, ``"prune 25%"`` (or unparsable) -> ``None``."""
    if text.startswith("prune "):
        _, plus, text = text.partition(" + ")
        if not plus:
            return None
    method, _, rank = text.partition(" r=")
    if method == KEEP or not rank:
        return None
    try:
        return method, int(rank)
    except ValueError:
        return None


def plan_attrs(plan: Mapping[str, tuple[str, int]], layers: Iterable[str]) -> dict[str, Any]:
    """The user attributes that store ``plan`` (a :class:`CompressionPlan` when it prunes)
    in a trial: ``plan`` (readable, every searched layer), ``lrf_plan`` (machine-readable)
    and, when it prunes, ``prune_importance``."""
    ratios = getattr(plan, "ratios", {})
    lrf: dict[str, list[Any]] = {}
    for p, (m, r) in plan.items():
        lrf[p] = [str(m), int(r), ratios[p]] if p in ratios else [str(m), int(r)]
    for p, ratio in ratios.items():
        lrf.setdefault(p, [KEEP, 0, ratio])
    out: dict[str, Any] = {
        PLAN_ATTR: {p: describe_choice(plan.get(p), ratios.get(p, 0.0)) for p in layers},
        LRF_PLAN_ATTR: lrf}
    if ratios:
        out[PRUNE_IMPORTANCE_ATTR] = getattr(plan, "importance", "l1")
    return out


def _attrs(trial_or_attrs: FrozenTrial | Mapping[str, Any]) -> Mapping[str, Any]:
    return (trial_or_attrs.user_attrs if isinstance(trial_or_attrs, FrozenTrial)
            else trial_or_attrs)


def decode_plan(trial_or_attrs: FrozenTrial | Mapping[str, Any]) -> CompressionPlan:
    """The plan a trial stored (its ``lrf_plan`` attribute): ``{layer: (method, rank)}``,
    with the pruning ratios and criterion when it prunes (:class:`CompressionPlan`).

    Raises:
        ValueError: the trial has no ``lrf_plan`` (it was not made by lrf_optuna), or an
            entry is not ``[method, rank]`` / ``[method, rank, ratio]``.
    """
    attrs = _attrs(trial_or_attrs)
    raw = attrs.get(LRF_PLAN_ATTR)
    what = (f"trial {trial_or_attrs.number}" if isinstance(trial_or_attrs, FrozenTrial)
            else "these attributes")
    if raw is None:
        raise ValueError(f"{what} has no {LRF_PLAN_ATTR!r} user attribute (not made by "
                         "lrf_optuna's search)")
    lrf: Plan = {}
    ratios: dict[str, float] = {}
    for p, entry in raw.items():
        if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
            raise ValueError(f"{what}: {LRF_PLAN_ATTR} entry of layer {p!r} must be [method, "
                             f"rank] or [method, rank, ratio], but got {entry!r}")
        if entry[0] != KEEP:
            lrf[str(p)] = (str(entry[0]), int(entry[1]))
        if len(entry) == 3:
            ratios[str(p)] = float(entry[2])
    return CompressionPlan(lrf, ratios=ratios,
                           importance=str(attrs.get(PRUNE_IMPORTANCE_ATTR, "l1")))


def readable_plan(trial_or_attrs: FrozenTrial | Mapping[str, Any]) -> dict[str, str]:
    """``{layer: "svd r=8" | "keep"}`` of a trial (its ``plan`` attribute, else derived from
    ``lrf_plan``)."""
    attrs = _attrs(trial_or_attrs)
    raw = attrs.get(PLAN_ATTR)
    if not isinstance(raw, Mapping):
        raw = attrs.get(LRF_PLAN_ATTR)
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): describe_choice(v) for k, v in raw.items()}


# -- typed readers ----------------------------------------------------------------------------

def as_float(value: Any) -> float | None:
    """``float(value)``, or ``None`` for missing, non-numeric or NaN values.

    Example:
        >>> as_float("0.5"), as_float(None), as_float(float("nan"))
        (0.5, None, None)
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _int(value: Any) -> int | None:
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
        return cls(trial.number, _int(ua.get("params")), _int(ua.get("flops")),
                   as_float(ua.get("proxy")), as_float(ua.get("compression_ratio")),
                   as_float(ua.get("flops_reduction")), str(ua.get(STRATEGY_ATTR) or ""),
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


@dataclass(frozen=True)
class Measured:
    """A model measured for deployment (the original, or a fine-tuned trial): test (and
    validation) accuracy, size, files and batch-1 latencies."""

    params: int | None = None
    flops: int | None = None
    test_acc: float | None = None
    val_acc: float | None = None
    keras_bytes: int | None = None
    tflite_bytes: int | None = None
    latency_ms_keras: float | None = None
    latency_ms_tflite: float | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Measured:
        a = attrs.get
        return cls(params=_int(a("params")), flops=_int(a("flops")),
                   test_acc=as_float(a("test_acc")), val_acc=as_float(a("val_acc")),
                   keras_bytes=_int(a("keras_bytes")), tflite_bytes=_int(a("tflite_bytes")),
                   latency_ms_keras=as_float(a("latency_ms_keras")),
                   latency_ms_tflite=as_float(a("latency_ms_tflite")))


@dataclass(frozen=True)
class FinetuneRecord:
    """A finished fine-tuning job's user attributes, typed."""

    job: int
    source: int
    measured: Measured
    val_acc_before: float | None
    val_acc_after: float | None
    test_acc_before: float | None
    epochs_run: int | None
    finetune_seconds: float | None
    reverted: bool
    plan: dict[str, str]

    @classmethod
    def of(cls, job: FrozenTrial) -> FinetuneRecord:
        ua = job.user_attrs
        return cls(job.number, int(_int(ua.get(SOURCE_TRIAL)) or -1), Measured.from_attrs(ua),
                   as_float(ua.get("val_acc_before")), as_float(ua.get("val_acc_after")),
                   as_float(ua.get("test_acc_before")), _int(ua.get("epochs_run")),
                   as_float(ua.get("finetune_seconds")), bool(ua.get("reverted", False)),
                   readable_plan(ua))


# -- the problem --------------------------------------------------------------------------------

def record_problem(study: optuna.Study, spec: ProblemSpec) -> None:
    """Store ``spec`` in the study (once), so later commands can rebuild the problem."""
    if PROBLEM_ATTR not in study.user_attrs:
        study.set_user_attr(PROBLEM_ATTR, spec.to_json())


def problem_spec(study: optuna.Study) -> ProblemSpec:
    """The :class:`~lrf_optuna.problem.ProblemSpec` recorded in a study.

    Raises:
        UserError: the study has none (it was not made by ``create_lrf_study`` or
            ``lrf-optuna search``).
    """
    from lrf_optuna.problem import ProblemSpec

    raw = study.user_attrs.get(PROBLEM_ATTR)
    if raw is None:
        raise UserError(f"study {study.study_name!r} has no {PROBLEM_ATTR!r} attribute; it "
                        "was not made by lrf_optuna.create_lrf_study or `lrf-optuna search` "
                        "(pass problem= explicitly)")
    return ProblemSpec.from_json(raw)


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
