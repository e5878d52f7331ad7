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

Fine-tuning jobs: :class:`FinetuneRecord`; the original model measured the same way:
:class:`Measured`.

Every fine-tuning job records its *recipe* (:data:`RECIPE_ATTR`, the digest of the
training settings, and :data:`RECIPE_CONFIG_ATTR`, the settings): results are compared and
reused only within one recipe. The **fair reference** of a recipe is the job that
fine-tuned the original model (the search trial with the empty plan) with that recipe
(:data:`REFERENCE_ATTR`); drops are reported against it and against the untouched
original.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.errors import UserError
from lrf_optuna.paired import PairedDrop, paired_drop, unpack_correct
from lrf_optuna.plan import LRF_PLAN_ATTR, readable_plan

if TYPE_CHECKING:
    from lrf_optuna.problem import ProblemSpec

__all__ = [
    "BINDING_ATTR",
    "DEPLOYED_ATTR",
    "ORIGINAL_ATTR",
    "PROBLEM_ATTR",
    "PRUNE_ATTR",
    "RECIPE_ATTR",
    "RECIPE_CONFIG_ATTR",
    "REFERENCE_ATTR",
    "SOURCE_TRIAL",
    "SPACE_ATTR",
    "STRATEGY_ATTR",
    "BudgetProbe",
    "BudgetSearch",
    "FinetuneRecord",
    "Measured",
    "OriginalCheck",
    "OriginalInfo",
    "Resolution",
    "SearchRecord",
    "WithinBudget",
    "as_float",
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
# fine-tuning: the job's source trial (parameter and user attribute), study attributes
SOURCE_TRIAL = "source_trial"
BASELINE_ATTR = "original"
ARTIFACT_DIR_ATTR = "artifact_dir"
SOURCE_STUDY_ATTR = "source_study"
# fine-tuning jobs: the recipe they were enqueued with; the fair-reference flag
RECIPE_ATTR = "recipe"
RECIPE_CONFIG_ATTR = "recipe_config"
REFERENCE_ATTR = "fair_reference"
#: A job's model as the LiteRT file its recipe's ``quantize`` makes, measured in the
#: interpreter (bytes, arena, latency, val / test accuracy and per-image results).
DEPLOYED_ATTR = "deployed"


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


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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
    val_correct: str | None = None
    test_correct: str | None = None
    val_images: int | None = None
    test_images: int | None = None
    val_acc_train_mode: float | None = None
    #: Which interpreter ran ``latency_ms_tflite``: ``"litert"`` (ai_edge_litert) or
    #: ``"tf.lite"`` (the deprecated fallback); ``None`` for records made before it was
    #: recorded (they ran ``tf.lite``).
    tflite_runtime: str | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Measured:
        a = attrs.get
        return cls(params=_int(a("params")), flops=_int(a("flops")),
                   test_acc=as_float(a("test_acc")), val_acc=as_float(a("val_acc")),
                   keras_bytes=_int(a("keras_bytes")), tflite_bytes=_int(a("tflite_bytes")),
                   latency_ms_keras=as_float(a("latency_ms_keras")),
                   latency_ms_tflite=as_float(a("latency_ms_tflite")),
                   val_correct=_str(a("val_correct")), test_correct=_str(a("test_correct")),
                   val_images=_int(a("val_images")), test_images=_int(a("test_images")),
                   val_acc_train_mode=as_float(a("val_acc_train_mode")),
                   tflite_runtime=_str(a("tflite_runtime")))

    def correct(self, split: str) -> np.ndarray | None:
        """Per-image correctness on ``split`` (``"val"`` or ``"test"``), when recorded."""
        text = self.val_correct if split == "val" else self.test_correct
        n = self.val_images if split == "val" else self.test_images
        if text is None or n is None:
            return None
        try:
            return unpack_correct(text, n)
        except ValueError:
            return None

    def drop_against(self, other: Measured, split: str = "val") -> PairedDrop | None:
        """This model's accuracy drop against ``other`` on the same ``split`` images,
        paired (:mod:`lrf_optuna.paired`); ``None`` without per-image results."""
        theirs, mine = other.correct(split), self.correct(split)
        if theirs is None or mine is None or len(theirs) != len(mine):
            return None
        return paired_drop(theirs, mine)


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
    recipe: str | None = None
    recipe_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    is_reference: bool = False
    val_acc_built: float | None = None
    bn_reestimated: bool = False
    steps: int | None = None
    deployed: Measured | None = None
    deployed_info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, job: FrozenTrial) -> FinetuneRecord:
        ua = job.user_attrs
        source = _int(ua.get(SOURCE_TRIAL))
        recipe = ua.get(RECIPE_ATTR)
        config = ua.get(RECIPE_CONFIG_ATTR)
        return cls(job.number, -1 if source is None else source, Measured.from_attrs(ua),
                   as_float(ua.get("val_acc_before")), as_float(ua.get("val_acc_after")),
                   as_float(ua.get("test_acc_before")), _int(ua.get("epochs_run")),
                   as_float(ua.get("finetune_seconds")), bool(ua.get("reverted", False)),
                   readable_plan(ua), str(recipe) if recipe is not None else None,
                   dict(config) if isinstance(config, Mapping) else {},
                   bool(ua.get(REFERENCE_ATTR, False)), as_float(ua.get("val_acc_built")),
                   bool(ua.get("bn_reestimated", False)), _int(ua.get("steps")),
                   Measured.from_attrs(dep) if isinstance(dep := ua.get(DEPLOYED_ATTR),
                                                          Mapping) else None,
                   dict(dep) if isinstance(dep, Mapping) else {})

    @property
    def quantize(self) -> str | None:
        """The mode of the deployed file decisions are taken on (``None``: the Keras
        model's accuracy decides)."""
        mode = self.deployed_info.get("quantize")
        return str(mode) if self.deployed is not None and mode else None

    @property
    def decided_val_acc(self) -> float | None:
        """The validation accuracy decisions use: the deployed file's when the job made
        one, else the fine-tuned Keras model's."""
        return self.deployed.val_acc if self.deployed is not None else self.val_acc_after

    def decided_drop(self, reference: FinetuneRecord) -> PairedDrop | None:
        """The paired validation drop decisions use: deployed file against the
        reference's deployed file when both have one, else Keras model against Keras
        model."""
        if self.deployed is not None and reference.deployed is not None:
            return self.deployed.drop_against(reference.deployed, "val")
        return self.paired(reference, "val")

    def paired(self, other: FinetuneRecord | Measured | None, split: str = "val"
               ) -> PairedDrop | None:
        """This job's drop against ``other`` (a fair reference's record, or the original
        measured) on the same ``split`` images, with its uncertainty
        (:mod:`lrf_optuna.paired`); ``None`` when either side has no per-image results."""
        if other is None:
            return None
        return self.measured.drop_against(
            other.measured if isinstance(other, FinetuneRecord) else other, split)

    def paired_drops(self, reference: FinetuneRecord | None,
                     original: Measured | None = None) -> dict[str, PairedDrop | None]:
        """The drops of :meth:`drops_pp` as :class:`~lrf_optuna.paired.PairedDrop` (with
        standard errors), where per-image results are recorded."""
        return {"val_vs_reference": self.paired(reference, "val"),
                "test_vs_reference": self.paired(reference, "test"),
                "test_vs_original": self.paired(original, "test")}

    def drops_pp(self, reference: FinetuneRecord | None,
                 original: Measured | None = None) -> dict[str, float | None]:
        """Accuracy drops in percentage points (positive: worse): ``val_vs_reference``,
        ``test_vs_reference`` (against the fair reference's fine-tuned accuracies) and
        ``test_vs_original`` (against the untouched original); ``None`` when unknown.

        Example:
            >>> job = FinetuneRecord(1, 5, Measured(test_acc=0.90), None, 0.91, None, 3, 1.0,
            ...                      False, {})
            >>> ref = FinetuneRecord(0, 0, Measured(test_acc=0.92), None, 0.925, None, 3,
            ...                      1.0, False, {}, is_reference=True)
            >>> {k: round(v, 2) for k, v in job.drops_pp(ref, Measured(test_acc=0.915)).items()}
            {'val_vs_reference': 1.5, 'test_vs_reference': 2.0, 'test_vs_original': 1.5}
        """
        def drop(theirs: float | None, mine: float | None) -> float | None:
            return None if theirs is None or mine is None else 100.0 * (theirs - mine)

        return {"val_vs_reference": drop(reference.val_acc_after if reference else None,
                                         self.val_acc_after),
                "test_vs_reference": drop(reference.measured.test_acc if reference else None,
                                          self.measured.test_acc),
                "test_vs_original": drop(original.test_acc if original else None,
                                         self.measured.test_acc)}


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


# -- answers of the budget search (lrf_optuna.finetune.budget) -------------------------------

@dataclass(frozen=True)
class BudgetProbe:
    """One evaluated candidate: its index (by size), position, score and verdict."""

    index: int
    position: float
    score: float
    passed: bool
    known: bool  # known before the search started (not probed by it)


@dataclass(frozen=True)
class BudgetSearch:
    """What :func:`~lrf_optuna.finetune.budget.smallest_passing` found: ``chosen`` (an
    index, ``None`` when no candidate passed), the probes in order, and whether the
    bracket closed (``converged``: the chosen candidate's smaller neighbour was evaluated
    and failed, or it is the smallest candidate)."""

    chosen: int | None
    probes: list[BudgetProbe]
    target: float
    converged: bool

    @property
    def n_evaluated(self) -> int:
        """Evaluations this search ran (results known beforehand not counted)."""
        return sum(1 for p in self.probes if not p.known)


@dataclass(frozen=True)
class Resolution:
    """How finely the validation split resolves a drop of the budget's size, known before
    any fine-tuning (:func:`lrf_optuna.paired.expected_standard_error`).

    Attributes:
        images: Validation images every decision rests on.
        expected_se_pp: Expected standard error of a candidate's paired drop at the budget.
        max_drop: The budget (pp).
    """

    images: int
    expected_se_pp: float
    max_drop: float

    #: A budget of fewer standard errors than this is not resolved.
    RESOLVES = 3.0

    @property
    def resolved(self) -> bool:
        """Whether the budget spans at least :attr:`RESOLVES` standard errors."""
        return self.max_drop >= self.RESOLVES * self.expected_se_pp

    def text(self) -> str:
        """One sentence on the resolution, with what helps when it is too coarse."""
        head = (f"{self.images:,} validation images: a drop of {self.max_drop:g} pp is "
                f"measured to about ± {self.expected_se_pp:.2f} pp (one standard error)")
        if self.resolved:
            return head
        need = math.ceil(self.images * (self.RESOLVES * self.expected_se_pp
                                        / max(self.max_drop, 1e-9)) ** 2)
        return (f"{head}, so the budget is less than {self.RESOLVES:g} standard errors and "
                "decisions near it are close to a coin toss: use a larger validation split "
                f"(about {need:,} images: --val-fraction, or pass your own x_val/y_val) or "
                "a larger budget")


@dataclass(frozen=True)
class OriginalCheck:
    """Is the original a sound reference? Its validation accuracy as given (inference
    mode), with batch statistics (training mode), after BatchNorm re-estimation (where the
    fair reference starts) and after the fair reference's fine-tuning.

    A fine-tuned original far above the untouched one (more than :attr:`GAIN_PP`) means
    the original was not converged, or its BatchNorm moving statistics are stale (then the
    training-mode or re-estimated accuracy is far above the inference-mode one too). The
    decisions are taken against the fair reference either way, the stronger of the two:
    it starts from the re-estimated original and never ends below it.
    """

    val_acc: float | None
    val_acc_train_mode: float | None
    val_acc_reestimated: float | None
    reference_val_acc: float | None

    #: A fine-tuned original gaining more than this (pp) is flagged.
    GAIN_PP = 2.0

    @property
    def gain_pp(self) -> float | None:
        """The fair reference's gain over the untouched original (pp)."""
        if self.val_acc is None or self.reference_val_acc is None:
            return None
        return 100.0 * (self.reference_val_acc - self.val_acc)

    @property
    def diagnosis(self) -> str | None:
        """``None`` (sound), ``"stale_batchnorm"`` or ``"not_converged"``."""
        gain = self.gain_pp
        if gain is None or gain <= self.GAIN_PP or self.val_acc is None:
            return None
        repaired = max((a for a in (self.val_acc_train_mode, self.val_acc_reestimated)
                        if a is not None), default=None)
        if repaired is not None and 100.0 * (repaired - self.val_acc) > self.GAIN_PP:
            return "stale_batchnorm"
        return "not_converged"

    def text(self) -> str | None:
        """What to tell the user, or ``None`` when the original is sound."""
        if self.diagnosis is None or self.val_acc is None:
            return None
        gain = f"{self.gain_pp:+.2f} pp"
        if self.diagnosis == "stale_batchnorm":
            seen = ", ".join(f"{what} {100 * a:.2f} %" for what, a in (
                ("with batch statistics", self.val_acc_train_mode),
                ("after BatchNorm re-estimation", self.val_acc_reestimated)) if a is not None)
            return (f"the original's BatchNorm moving statistics are stale: validation "
                    f"accuracy {100 * self.val_acc:.2f} % as given, {seen}; the fair "
                    f"reference ({gain}) starts from the re-estimated original, and every "
                    "decision is taken against it. Ship the re-estimated original, not the "
                    "one given: lrf_optuna.finetune.reestimate_batchnorm(model, x_train)")
        return (f"fine-tuning the original gained {gain} of validation accuracy: it was not "
                "trained to convergence; every decision is taken against the fine-tuned "
                "original (the fair reference), which is the better model to compare with "
                "and to ship if compression is not needed")


@dataclass(frozen=True)
class WithinBudget:
    """The answer of :func:`~lrf_optuna.finetune.budget.finetune_within`.

    Attributes:
        max_drop: The budget in percentage points of validation accuracy.
        chosen: The chosen search trial (``None``: no candidate stays within the budget).
        job: Its fine-tuning job (``None`` likewise).
        reference: The fair reference of the chosen job's recipe (the original fine-tuned
            the same way); of the first recipe when nothing was chosen.
        original: The untouched original model, measured like the jobs.
        probes: ``(search trial, its job's record, the probe)`` of every candidate
            evaluated, in probe order (jobs known before the search first), the escalated
            recipe's after the first recipe's.
        search: The first recipe's search (indices into ``candidates``).
        candidates: The candidates' trial numbers, smallest first.
        recipe: The first recipe in words.
        confidence: The confidence of every decision (:mod:`lrf_optuna.paired`).
        references: The fair reference of every recipe used, by recipe key.
        escalation: The longer recipe's search among the candidates smaller than the
            first recipe's answer (``None``: not escalated).
        escalated_recipe: That recipe in words.
        resolution: How finely the validation split resolves the budget.
        original_check: Whether the original is a sound reference.
    """

    max_drop: float
    chosen: FrozenTrial | None
    job: FinetuneRecord | None
    reference: FinetuneRecord
    original: Measured
    probes: list[tuple[FrozenTrial, FinetuneRecord, BudgetProbe]]
    search: BudgetSearch
    candidates: list[int]
    recipe: str
    original_params: int | None = None
    original_flops: int | None = None
    confidence: float = 0.5
    references: dict[str, FinetuneRecord] = dataclasses.field(default_factory=dict)
    escalation: BudgetSearch | None = None
    escalated_recipe: str | None = None
    resolution: Resolution | None = None
    original_check: OriginalCheck | None = None

    @property
    def search_recipe_key(self) -> str | None:
        """The recipe key of the first search (its fair reference's)."""
        first = next(iter(self.references), None)
        return first if first is not None else self.reference.recipe

    def reference_of(self, job: FinetuneRecord) -> FinetuneRecord:
        """The fair reference of ``job``'s recipe."""
        return self.references.get(job.recipe or "", self.reference)

    def drops_pp(self) -> dict[str, float | None]:
        """The chosen job's drops (pp): ``val_vs_reference``, ``test_vs_reference``,
        ``test_vs_original`` (empty values when nothing was chosen)."""
        if self.job is None:
            return {"val_vs_reference": None, "test_vs_reference": None,
                    "test_vs_original": None}
        return self.job.drops_pp(self.reference, self.original)

    def paired_drops(self) -> dict[str, PairedDrop | None]:
        """The chosen job's drops with their uncertainty (``None`` where not recorded)."""
        if self.job is None:
            return {"val_vs_reference": None, "test_vs_reference": None,
                    "test_vs_original": None}
        return self.job.paired_drops(self.reference, self.original)
