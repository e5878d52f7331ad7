"""What a fine-tuning study records: the user-attribute keys its jobs write, the typed
record of a job, and the answer types of the budget search.

The fine-tuning study ``"<study_name>:finetune"`` (:mod:`lrf_optuna.study.lookup`) holds
one trial per *job*. :mod:`lrf_optuna.finetune.jobs` writes a job's results under the keys
below, and everything that reads them (:class:`FinetuneRecord`, :class:`Measured`, the
report, the dashboard, the export, the CLI) reads them through these names: no key is
spelled anywhere else. The keys a search trial shares with a job (``params``, ``flops``,
``compression_ratio``) belong to :mod:`lrf_optuna.study.records`, the plan's to
:mod:`lrf_optuna.plan`.

Every fine-tuning job records its *recipe* (:data:`RECIPE_ATTR`, the digest of the
training settings, and :data:`RECIPE_CONFIG_ATTR`, the settings): results are compared and
reused only within one recipe. The **fair reference** of a recipe is the job that
fine-tuned the original model (the search trial with the empty plan) with that recipe
(:data:`REFERENCE_ATTR`); drops are reported against it and against the untouched original
(study attribute :data:`BASELINE_ATTR`, :class:`Measured`).

The module sits in the study layer, not in :mod:`lrf_optuna.finetune`, because some of its
readers (:mod:`~lrf_optuna.study.lookup`, :mod:`~lrf_optuna.study.notes`,
:mod:`~lrf_optuna.study.artifacts`) stand below the fine-tuning package and the others
(:mod:`lrf_optuna.report`, :mod:`lrf_optuna.export`) need none of it, while importing
anything from ``lrf_optuna.finetune`` loads the whole package: it is a leaf that imports
only :mod:`lrf_optuna.plan`, :mod:`lrf_optuna.paired`, :mod:`lrf_optuna.formatting` and
:mod:`lrf_optuna.study.records`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from lrf_optuna.formatting import as_float
from lrf_optuna.paired import PairedDrop, paired_drop, unpack_correct
from lrf_optuna.plan import readable_plan
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, as_int, as_str

__all__ = [
    "ARTIFACT_DIR_ATTR",
    "BASELINE_ATTR",
    "BN_REESTIMATED_ATTR",
    "DEPLOYED_ATTR",
    "DEVICE_ATTR",
    "EPOCHS_RUN_ATTR",
    "ERROR_ATTR",
    "FINETUNE_SECONDS_ATTR",
    "FROM_LOGITS_ATTR",
    "KERAS_BYTES_ATTR",
    "LATENCY_MS_KERAS_ATTR",
    "LATENCY_MS_TFLITE_ATTR",
    "NAME_ATTR",
    "QUANTIZE_ATTR",
    "RECIPE_ATTR",
    "RECIPE_CONFIG_ATTR",
    "RECIPE_TEXT_ATTR",
    "REFERENCE_ATTR",
    "REVERTED_ATTR",
    "SKIPPED_ATTR",
    "SOURCE_STUDY_ATTR",
    "SOURCE_TRIAL",
    "STEPS_ATTR",
    "TEST_ACC_ATTR",
    "TEST_ACC_BEFORE_ATTR",
    "TEST_CORRECT_ATTR",
    "TEST_IMAGES_ATTR",
    "TFLITE_BYTES_ATTR",
    "TFLITE_RUNTIME_ATTR",
    "VAL_ACC_AFTER_ATTR",
    "VAL_ACC_ATTR",
    "VAL_ACC_BEFORE_ATTR",
    "VAL_ACC_BUILT_ATTR",
    "VAL_ACC_TRAIN_MODE_ATTR",
    "VAL_CORRECT_ATTR",
    "VAL_IMAGES_ATTR",
    "WORKER_ATTR",
    "BudgetProbe",
    "BudgetSearch",
    "FinetuneRecord",
    "Measured",
    "OriginalCheck",
    "Resolution",
    "WithinBudget",
]

# -- keys --------------------------------------------------------------------------------------

# the job's source trial (parameter and user attribute); fine-tuning study attributes
SOURCE_TRIAL = "source_trial"
#: The untouched original model, measured like the jobs (:class:`Measured`).
BASELINE_ATTR = "original"
ARTIFACT_DIR_ATTR = "artifact_dir"
SOURCE_STUDY_ATTR = "source_study"
# the recipe a job was enqueued with; the fair-reference flag
RECIPE_ATTR = "recipe"
RECIPE_CONFIG_ATTR = "recipe_config"
RECIPE_TEXT_ATTR = "recipe_text"
REFERENCE_ATTR = "fair_reference"
#: A job's model as the LiteRT file its recipe's ``quantize`` makes, measured in the
#: interpreter (bytes, arena, latency, val / test accuracy and per-image results).
DEPLOYED_ATTR = "deployed"
#: The quantization mode, inside :data:`DEPLOYED_ATTR`.
QUANTIZE_ATTR = "quantize"
#: The model's name, inside :data:`BASELINE_ATTR`.
NAME_ATTR = "name"
# a model measured (:class:`Measured`; with params and flops of lrf_optuna.study.records)
TEST_ACC_ATTR = "test_acc"
VAL_ACC_ATTR = "val_acc"
KERAS_BYTES_ATTR = "keras_bytes"
TFLITE_BYTES_ATTR = "tflite_bytes"
LATENCY_MS_KERAS_ATTR = "latency_ms_keras"
LATENCY_MS_TFLITE_ATTR = "latency_ms_tflite"
TFLITE_RUNTIME_ATTR = "tflite_runtime"
VAL_CORRECT_ATTR = "val_correct"
TEST_CORRECT_ATTR = "test_correct"
VAL_IMAGES_ATTR = "val_images"
TEST_IMAGES_ATTR = "test_images"
VAL_ACC_TRAIN_MODE_ATTR = "val_acc_train_mode"
# a fine-tuned job (:class:`FinetuneRecord`)
VAL_ACC_BEFORE_ATTR = "val_acc_before"
VAL_ACC_AFTER_ATTR = "val_acc_after"
TEST_ACC_BEFORE_ATTR = "test_acc_before"
VAL_ACC_BUILT_ATTR = "val_acc_built"
BN_REESTIMATED_ATTR = "bn_reestimated"
STEPS_ATTR = "steps"
EPOCHS_RUN_ATTR = "epochs_run"
FINETUNE_SECONDS_ATTR = "finetune_seconds"
REVERTED_ATTR = "reverted"
FROM_LOGITS_ATTR = "from_logits"
WORKER_ATTR = "worker"
#: Where the job trained (``lrf_optuna.device.compute_device``: ``"GPU:0"``, ``"CPU:0"``).
DEVICE_ATTR = "device"
# a failed or dropped job
ERROR_ATTR = "error"
SKIPPED_ATTR = "skipped"


# -- records -----------------------------------------------------------------------------------

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
        return cls(params=as_int(a(PARAMS_ATTR)), flops=as_int(a(FLOPS_ATTR)),
                   test_acc=as_float(a(TEST_ACC_ATTR)), val_acc=as_float(a(VAL_ACC_ATTR)),
                   keras_bytes=as_int(a(KERAS_BYTES_ATTR)),
                   tflite_bytes=as_int(a(TFLITE_BYTES_ATTR)),
                   latency_ms_keras=as_float(a(LATENCY_MS_KERAS_ATTR)),
                   latency_ms_tflite=as_float(a(LATENCY_MS_TFLITE_ATTR)),
                   val_correct=as_str(a(VAL_CORRECT_ATTR)),
                   test_correct=as_str(a(TEST_CORRECT_ATTR)),
                   val_images=as_int(a(VAL_IMAGES_ATTR)), test_images=as_int(a(TEST_IMAGES_ATTR)),
                   val_acc_train_mode=as_float(a(VAL_ACC_TRAIN_MODE_ATTR)),
                   tflite_runtime=as_str(a(TFLITE_RUNTIME_ATTR)))

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
        source = as_int(ua.get(SOURCE_TRIAL))
        recipe = ua.get(RECIPE_ATTR)
        config = ua.get(RECIPE_CONFIG_ATTR)
        return cls(job.number, -1 if source is None else source, Measured.from_attrs(ua),
                   as_float(ua.get(VAL_ACC_BEFORE_ATTR)), as_float(ua.get(VAL_ACC_AFTER_ATTR)),
                   as_float(ua.get(TEST_ACC_BEFORE_ATTR)), as_int(ua.get(EPOCHS_RUN_ATTR)),
                   as_float(ua.get(FINETUNE_SECONDS_ATTR)),
                   bool(ua.get(REVERTED_ATTR, False)),
                   readable_plan(ua), str(recipe) if recipe is not None else None,
                   dict(config) if isinstance(config, Mapping) else {},
                   bool(ua.get(REFERENCE_ATTR, False)), as_float(ua.get(VAL_ACC_BUILT_ATTR)),
                   bool(ua.get(BN_REESTIMATED_ATTR, False)), as_int(ua.get(STEPS_ATTR)),
                   Measured.from_attrs(dep) if isinstance(dep := ua.get(DEPLOYED_ATTR),
                                                          Mapping) else None,
                   dict(dep) if isinstance(dep, Mapping) else {})

    @property
    def quantize(self) -> str | None:
        """The mode of the deployed file decisions are taken on (``None``: the Keras
        model's accuracy decides)."""
        mode = self.deployed_info.get(QUANTIZE_ATTR)
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
        balanced: The first recipe's search among the study's balanced plans smaller than
            the front's answer (indices into ``balanced_candidates``; ``None``: none).
        balanced_candidates: Those plans' trial numbers, smallest first.
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
    balanced: BudgetSearch | None = None
    balanced_candidates: list[int] = dataclasses.field(default_factory=list)
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
