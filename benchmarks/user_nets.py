"""The user-nets benchmark (issue 17, item 6): the one-call answer on nets users build.

Three nets written here as plain Keras code, the way a user writes them (none from
``lrf_optuna.models.zoo``), each with a width multiplier: a plain CNN (3 convs and a large
``Dense(256)``, 914,698 params on 28x28x1), a residual net (BatchNorm, ``Add`` shortcuts,
global average pooling, 309,418 params) and a MobileNet-style net (5 depthwise-separable
blocks with BatchNorm and ReLU6, 139,146 params). Each is trained from scratch (Adam,
cosine decay, fixed epochs, seeded; cached on disk) on a stratified subset of the
Fashion-MNIST training set (4,000 and 18,000 images), on the **training part of the
library's own split** (:func:`lrf_optuna.data.prepare_splits` with the validation fraction
and seed the ``compress`` call uses), so no model ever trains on a validation image.

For every (net, size):

* **compress default**: :func:`lrf_optuna.compression.compress_detailed` with the library's
  defaults (``max_drop`` 1 pp; only the locations -- ``out_dir``, ``cache_dir`` -- and the
  progress bar are passed, and ``n_trials``, ``max_probes=2``, ``escalate_probes=1`` in tiny
  mode only). Its answer: parameter and
  FLOPs reduction, validation and test drops against its fair reference and the untouched
  original, probes and wall time; ``none`` when it raises ``UserError`` (nothing within the
  budget).
* **narrow**: the same net at smaller widths, trained from scratch on the same training
  part for the original's epochs plus the most epochs any of compress's probes was
  fine-tuned (``max epochs_run`` over its probe jobs, so a longer or escalated recipe is
  counted), compared with the untouched original (no fine-tuning).
* **uniform SVD**: ``channel_svd`` on every ``k x k`` conv and ``svd`` on every 1x1 conv
  and Dense at one relative rank (several ratios), the first conv and the classifier kept
  as a user would (:func:`uniform_svd_plans`); **tau**: the paper's similarity-threshold
  plans (:class:`lrf_optuna.search.strategies.SimilarityThreshold`). Each fine-tuned with the
  library's default recipe (:func:`lrf_optuna.finetune.finetune_model`,
  ``FinetuneConfig()``) and compared with the fair reference (the original fine-tuned with
  the same recipe; :class:`benchmarks._finetuned.PlanEvaluator` caches every fine-tuning).

Each baseline's answer is the largest parameter reduction that :func:`passes` on the
**validation** split (its candidates probed by the library's bisection,
:func:`lrf_optuna.finetune.smallest_passing`, on the pass/fail verdicts), reported on the
test split; the number of validation images every decision rests on is stated. The table
says whether compress saves more parameters than every baseline and leaves at most half
the parameters of the best one (the issue's targets).

Writes ``benchmarks/results_user_nets.json`` and the section ``## User nets benchmark
(<mode> mode)`` of ``benchmarks/RESULTS.md`` (``--out`` / ``--results-md``; tiny mode
writes into a temporary directory unless told otherwise).

    python -m benchmarks.user_nets                    # full: both sizes (hours on 2 cores)
    python -m benchmarks.user_nets --quick            # 4,000 images, fewer widths / ratios
    python -m benchmarks.user_nets --quick --nets plain
    python -m benchmarks.user_nets --tiny --out /tmp/u          # CI smoke (synthetic data)
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._finetuned import PlanEvaluator
from benchmarks._problem import start_run
from benchmarks._results import (
    add_output_arguments,
    markdown_table,
    resolve_outputs,
    write_section,
)
from benchmarks._results import pct as _pct
from benchmarks._results import pp as _pp
from benchmarks.compression.config import TAUS, PlanDict
from benchmarks.compression.selections import BenchCandidate, _from_plans, _uniform_plans
from lrf_optuna.models.training import correct
from lrf_optuna.paired import DEFAULT_CONFIDENCE, pack_correct, paired_drop, unpack_correct
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR

__all__ = ["MODES", "NETS", "Mode", "build_net", "compress_defaults", "main", "passes"]

logger = logging.getLogger("benchmarks.user_nets")

MAX_DROP = 1.0  # the budget, in percentage points of validation accuracy
BASELINES = ("narrow", "uniform", "tau")


# -- the nets, as a user writes them ---------------------------------------------------------

def _channels(n: int, width: float) -> int:
    return max(1, round(n * width))


def plain_cnn(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> Any:
    """3 convs and a large ``Dense(256)`` head (914,698 params on 28x28x1 at width 1)."""
    import keras
    from keras import layers

    c = lambda n: _channels(n, width)  # noqa: E731
    return keras.Sequential([
        keras.Input(tuple(input_shape), name="image"),
        layers.Conv2D(c(32), 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(c(64), 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Conv2D(c(128), 3, activation="relu", name="conv3"),
        layers.Flatten(name="flatten"),
        layers.Dense(c(256), activation="relu", name="fc1"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="plain")


def residual_net(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> Any:
    """A stem and three residual blocks (32, 64, 128 filters; BatchNorm, ``Add``
    shortcuts, 1x1 projections where the shape changes), global average pooling
    (309,418 params at width 1)."""
    import keras
    from keras import layers

    inputs = keras.Input(tuple(input_shape), name="image")
    x = layers.Conv2D(_channels(32, width), 3, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, (filters, stride) in enumerate(((32, 1), (64, 2), (128, 2)), 1):
        f = _channels(filters, width)
        y = layers.Conv2D(f, 3, strides=stride, padding="same", use_bias=False,
                          name=f"block{i}_conv1")(x)
        y = layers.ReLU(name=f"block{i}_relu1")(layers.BatchNormalization(
            name=f"block{i}_bn1")(y))
        y = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"block{i}_bn2")(y)
        shortcut = x
        if stride != 1 or x.shape[-1] != f:
            shortcut = layers.Conv2D(f, 1, strides=stride, use_bias=False,
                                     name=f"block{i}_proj")(x)
            shortcut = layers.BatchNormalization(name=f"block{i}_proj_bn")(shortcut)
        x = layers.ReLU(name=f"block{i}_out")(layers.Add(name=f"block{i}_add")([y, shortcut]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="residual")


def mobile_net(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> Any:
    """A stride-2 stem and 5 depthwise-separable blocks (DepthwiseConv2D + BatchNorm +
    ReLU6, 1x1 Conv + BatchNorm + ReLU6; 64, 128, 128, 256, 256 filters), global average
    pooling (139,146 params at width 1)."""
    import keras
    from keras import layers

    inputs = keras.Input(tuple(input_shape), name="image")
    x = layers.Conv2D(_channels(32, width), 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.ReLU(6.0, name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, (filters, stride) in enumerate(((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)),
                                          1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                   name=f"block{i}_dw")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(layers.BatchNormalization(
            name=f"block{i}_dw_bn")(x))
        x = layers.Conv2D(_channels(filters, width), 1, use_bias=False,
                          name=f"block{i}_pw")(x)
        x = layers.ReLU(6.0, name=f"block{i}_pw_relu")(layers.BatchNormalization(
            name=f"block{i}_pw_bn")(x))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mobile")


@dataclass(frozen=True)
class NetSpec:
    """A benchmark net: its builder, what it is, and the epochs that train it from scratch
    to convergence (cosine schedule)."""

    build: Callable[..., Any]
    description: str
    epochs: int


NETS: dict[str, NetSpec] = {
    "plain": NetSpec(plain_cnn, "plain CNN, 3 conv + Dense(256)", 12),
    "residual": NetSpec(residual_net, "residual net, BatchNorm, Add, GAP", 15),
    "mobile": NetSpec(mobile_net, "MobileNet-style, 5 depthwise-separable blocks, GAP", 15),
}


def build_net(net: str, input_shape: Sequence[int], num_classes: int, width: float = 1.0,
              *, seed: int = 0) -> Any:
    """Net ``net`` at ``width``, its weights initialised from ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    return NETS[net].build(input_shape, num_classes, width)


# -- modes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    """Defaults of a mode (each overridable on the command line).

    Attributes:
        sizes: Labelled training images (train + validation), one run per size.
        test_images: Test images (``None``: the whole test set).
        width: The original's width multiplier (1; smaller in tiny mode).
        widths: The narrow baseline's widths, relative to the original's.
        ratios: The uniform baseline's relative ranks.
        epochs: Training epochs of the originals (``None``: the nets' own).
        n_trials: Passed to ``compress`` (``None``: its default; tiny mode only).
    """

    sizes: tuple[int, ...]
    test_images: int | None
    width: float
    widths: tuple[float, ...]
    ratios: tuple[float, ...]
    epochs: int | None = None
    n_trials: int | None = None
    taus: tuple[float, ...] = TAUS


MODES: dict[str, Mode] = {
    "full": Mode((4000, 18000), None, 1.0, (0.75, 0.5, 0.35, 0.25, 0.18, 0.125),
                 (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)),
    "quick": Mode((4000,), None, 1.0, (0.5, 0.35, 0.25, 0.18), (1 / 4, 1 / 8, 1 / 16)),
    # one candidate per baseline and a short search: the harness, not the numbers
    "tiny": Mode((400,), None, 0.25, (0.5,), (1 / 4,), epochs=1, n_trials=12, taus=(0.9,)),
}


def compress_defaults() -> dict[str, Any]:
    """The defaults of :func:`lrf_optuna.compression.compress_detailed` (read from its
    signature, so a changed default is what this benchmark judges).

    Example:
        >>> {"val_fraction", "seed", "calibration_size", "n_trials"} <= set(compress_defaults())
        True
    """
    from lrf_optuna.compression import compress_detailed

    return {name: p.default for name, p in inspect.signature(compress_detailed).parameters.items()
            if p.default is not inspect.Parameter.empty}


# -- the decision ----------------------------------------------------------------------------

def passes(candidate_val_correct: np.ndarray, reference_val_correct: np.ndarray,
           max_drop: float, confidence: float = DEFAULT_CONFIDENCE) -> bool:
    """Whether a candidate is within ``max_drop`` percentage points of its reference, on
    the same validation images (one boolean per image: classified right): the library's own
    decision (:meth:`lrf_optuna.paired.PairedDrop.within`, paired at ``confidence``, the
    default of ``compress``), so every baseline is judged exactly like the answer.

    Raises:
        ValueError: the arrays are empty or not of the same images (lengths differ).

    Example:
        >>> ref = np.array([True] * 99 + [False])              # 99 %
        >>> passes(np.array([True] * 98 + [False] * 2), ref, 1.0)   # 98 %: 1 pp below
        True
        >>> passes(np.array([True] * 97 + [False] * 3), ref, 1.0)   # 97 %: 2 pp below
        False
    """
    cand = np.asarray(candidate_val_correct, dtype=bool).reshape(-1)
    ref = np.asarray(reference_val_correct, dtype=bool).reshape(-1)
    if len(cand) != len(ref) or not len(ref):
        raise ValueError(f"need per-image correctness of the same validation images, got "
                         f"{len(cand)} and {len(ref)}")
    return paired_drop(ref, cand).within(max_drop, confidence)


# -- data and training -----------------------------------------------------------------------

def load_dataset(mode_name: str, size: int, test_images: int | None, seed: int) -> Any:
    """``size`` labelled training images (a stratified subset of the training set) and the
    test set (its first ``test_images``); tiny mode: the synthetic 12x12 quadrant images of
    the compression benchmark."""
    from lrf_optuna.data import from_arrays, load_fashion_mnist
    from lrf_optuna.data.splits import stratified_indices

    if mode_name == "tiny":
        from benchmarks.compression.config import _tiny_dataset

        data, name = _tiny_dataset(), f"quadrants_{size}"
    else:
        data, name = load_fashion_mnist(), f"fashion_mnist_{size}"
    if not 0 < size <= len(data.x_train):
        raise ValueError(f"size must be between 1 and {len(data.x_train)}, got {size}")
    idx = stratified_indices(data.y_train, size, seed=seed)
    t = len(data.x_test) if test_images is None else min(test_images, len(data.x_test))
    return from_arrays(data.x_train[idx], data.y_train[idx], data.x_test[:t], data.y_test[:t],
                       name=name)


@dataclass
class Trained:
    """A trained net and what it scored (``val_correct``: per validation image)."""

    model: Any
    key: str
    params: int
    flops: int
    epochs: int
    val_acc: float
    test_acc: float
    val_correct: np.ndarray = field(repr=False)
    seconds: float
    cached: bool
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                           digest_size=6).hexdigest()


def train_net(net: str, width: float, splits: Any, *, epochs: int, seed: int,
              cache_dir: Path, batch_size: int = 128) -> Trained:
    """Train ``net`` at ``width`` from scratch on ``splits.x_train`` (validated on
    ``splits.x_val``), or load the same run from ``cache_dir/models``.

    What a user writes: Adam, learning rate 1e-3 cosine-decayed to 1e-5 over all steps,
    sparse categorical cross-entropy, ``epochs`` fixed, batch 128, seeded; then the
    BatchNorm statistics re-estimated on the training images (the validation accuracy
    as trained is recorded, ``val_acc_as_trained``). The cache key
    holds the net, width, training images, epochs, seed and a digest of the training and
    validation arrays and the architecture.
    """
    import keras

    from lrf_optuna.costs import model_costs
    from lrf_optuna.data import fingerprint_arrays
    from lrf_optuna.finetune.batchnorm import reestimate_batchnorm
    from lrf_optuna.models.training import evaluate

    model = build_net(net, splits.input_shape, splits.num_classes, width, seed=seed)
    data_fp = fingerprint_arrays(splits.x_train, splits.y_train, splits.x_val, splits.y_val)
    test_fp = fingerprint_arrays(splits.x_test, splits.y_test)
    key = (f"{net}_w{width:g}_n{len(splits.x_train) + len(splits.x_val)}_e{epochs}_s{seed}_"
           + _digest(data_fp, model.get_config(), batch_size, 1e-3, "bn-reestimated"))
    path = cache_dir / "models" / f"{key}.keras"
    record_path = path.with_suffix(".json")
    record: dict[str, Any] = {}
    cached = path.exists() and record_path.exists()
    if cached:
        model = keras.saving.load_model(path)
        record = json.loads(record_path.read_text())
    else:
        steps = epochs * math.ceil(len(splits.x_train) / batch_size)
        model.compile(optimizer=keras.optimizers.Adam(
                          keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.01)),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        hist = model.fit(splits.x_train, splits.y_train, batch_size=batch_size, epochs=epochs,
                         validation_data=(splits.x_val, splits.y_val), shuffle=True, verbose=0)
        # Keras' moving BatchNorm statistics can lag far behind a net trained for a few
        # hundred steps (the MobileNet-style net: val 10 % in inference mode every epoch,
        # 81 % with batch statistics); a user who sees that recomputes them, and a
        # baseline judged against a broken original would mean nothing
        val_fit = evaluate(model, splits.x_val, splits.y_val)
        reestimate_batchnorm(model, splits.x_train, images=None, batch_size=batch_size)
        record = {"seconds": round(time.perf_counter() - start, 2),
                  "val_acc_as_trained": round(val_fit, 6),
                  "history": {k: [round(float(v), 5) for v in vs]
                              for k, vs in hist.history.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        # the saved model, as every later run loads it: a Sequential's weight paths change
        # when it is reloaded, and with them the digests keying the library's caches
        model = keras.saving.load_model(path)
        logger.info("trained %s at width %g (%s params) for %d epochs in %.0f s", net, width,
                    f"{model.count_params():,}", epochs, record["seconds"])
    if record.get("test_fingerprint") != test_fp:  # first time, or another test set
        val = correct(model, splits.x_val, splits.y_val)
        record.update(val_correct=pack_correct(val), val_acc=float(val.mean()),
                      test_acc=float(correct(model, splits.x_test, splits.y_test).mean()),
                      test_fingerprint=test_fp)
        tmp = record_path.with_name(f".{record_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, record_path)
    costs = model_costs(model)
    return Trained(model, key, int(costs.params), int(costs.flops), epochs, record["val_acc"],
                   record["test_acc"], unpack_correct(record["val_correct"], len(splits.x_val)),
                   record["seconds"], cached, record.get("history", {}))


# -- compress, with the library's defaults -----------------------------------------------------

def run_compress(model: Any, dataset: Any, problem: Any, *, out_dir: Path, sim_dir: Path,
                 max_drop: float, val_fraction: float | None, seed: int,
                 n_trials: int | None) -> dict[str, Any]:
    """The default ``compress_detailed`` call and its answer (cached in ``out_dir`` with
    the wall time of the run that computed it; the study there resumes otherwise)."""
    from lrf_optuna.compression import compress_detailed
    from lrf_optuna.errors import UserError

    row_path = out_dir / "answer.json"
    if row_path.exists():
        return dict(json.loads(row_path.read_text()))
    # tiny mode (a smoke test of the harness): fewer trials and fine-tunings, so CI stays short
    extra = {} if n_trials is None else {"n_trials": n_trials, "max_probes": 2,
                                          "escalate_probes": 1}
    start = time.perf_counter()
    try:
        answer = compress_detailed(model, dataset, max_drop=max_drop, out_dir=out_dir,
                                   val_fraction=val_fraction, seed=seed, cache_dir=sim_dir,
                                   show_progress_bar=False, **extra).answer
    except UserError as err:
        answer = _answer_without_pick(out_dir, problem, max_drop, err)
    row = describe_answer(answer)
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["call"] = (f"compress_detailed(model, data, max_drop={max_drop:g}, out_dir=..., "
                   f"val_fraction={val_fraction}, seed={seed}"
                   + "".join(f", {k}={v}" for k, v in extra.items()) + ")")
    out_dir.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row, indent=1))
    return row


def _answer_without_pick(out_dir: Path, problem: Any, max_drop: float, err: Exception) -> Any:
    """The max-drop answer of the study ``compress`` left in ``out_dir`` when it found
    nothing within the budget (re-asked: every probe is a finished job, nothing trains);
    any other ``UserError`` is raised again."""
    import optuna

    from lrf_optuna.finetune import FinetuneConfig, finetune_within

    dbs = sorted(out_dir.glob("*.db"))
    if "within" not in str(err) or len(dbs) != 1:
        raise err
    url = f"sqlite:///{dbs[0]}"
    names = [n for n in optuna.study.get_all_study_names(url) if not n.endswith(":finetune")]
    if len(names) != 1:
        raise err
    study = optuna.load_study(study_name=names[0], storage=url)
    answer = finetune_within(study, max_drop, config=FinetuneConfig(), problem=problem)
    if answer.chosen is not None:
        raise err
    return answer


def describe_answer(answer: Any) -> dict[str, Any]:
    """The numbers of a :class:`~lrf_optuna.study.finetune_records.WithinBudget` answer."""
    ref, orig = answer.reference, answer.original

    def se(job: Any) -> float | None:
        paired = job.decided_drop(answer.reference_of(job))
        return None if paired is None else round(paired.se_pp, 3)

    probes = [{"trial": t.number, "params": int(t.user_attrs[PARAMS_ATTR]),
               "proxy": t.user_attrs.get(PROXY_ATTR), "val_after": job.val_acc_after,
               "test_after": job.measured.test_acc, "epochs_run": job.epochs_run,
               "seconds": job.finetune_seconds, "passed": probe.passed,
               "escalated": job.recipe != answer.search_recipe_key,
               "val_drop_pp": job.drops_pp(answer.reference_of(job))["val_vs_reference"],
               "val_drop_se_pp": se(job)}
              for t, job, probe in answer.probes]
    epochs = [p["epochs_run"] for p in probes if p["epochs_run"] is not None]
    row: dict[str, Any] = {
        "within": answer.chosen is not None, "recipe": answer.recipe,
        "fair_reference_val": ref.val_acc_after, "fair_reference_test": ref.measured.test_acc,
        "fair_reference_epochs_run": ref.epochs_run,
        "original_val": orig.val_acc, "original_test": orig.test_acc,
        "probes": len(probes), "candidates": len(answer.candidates),
        "max_probe_epochs_run": max(epochs, default=None), "probe_list": probes,
        "escalated_recipe": answer.escalated_recipe,
        "val_images": answer.resolution.images if answer.resolution else None,
        "expected_se_pp": (round(answer.resolution.expected_se_pp, 3)
                           if answer.resolution else None),
        "original_check": (answer.original_check.diagnosis
                           if answer.original_check else None)}
    if answer.chosen is None:
        row.update(trial=None, param_reduction=None, flops_reduction=None, val_drop_pp=None,
                   test_drop_pp=None, test_drop_vs_original_pp=None)
        return row
    t, job = answer.chosen, answer.job
    params, flops = int(t.user_attrs[PARAMS_ATTR]), int(t.user_attrs[FLOPS_ATTR])
    drops = answer.drops_pp()
    paired = answer.paired_drops()
    row.update(val_drop_se_pp=(round(paired["val_vs_reference"].se_pp, 3)
                               if paired["val_vs_reference"] else None),
               test_drop_se_pp=(round(paired["test_vs_reference"].se_pp, 3)
                                if paired["test_vs_reference"] else None),
               chosen_recipe="longer" if job.recipe != answer.search_recipe_key else "first")
    row.update(trial=t.number, params=params, flops=flops,
               param_reduction=round(1 - params / answer.original_params, 4),
               flops_reduction=(round(1 - flops / answer.original_flops, 4)
                                if answer.original_flops else None),
               val_acc=job.val_acc_after, test_acc=job.measured.test_acc,
               val_drop_pp=drops["val_vs_reference"], test_drop_pp=drops["test_vs_reference"],
               test_drop_vs_original_pp=drops["test_vs_original"],
               val_drop_vs_original_pp=(None if orig.val_acc is None or job.val_acc_after is None
                                        else 100 * (orig.val_acc - job.val_acc_after)))
    return row


# -- baselines -------------------------------------------------------------------------------

@dataclass
class PlanSource:
    """What the plan helpers of ``benchmarks.compression`` read
    (:class:`benchmarks.compression.PlanSource`)."""

    problem: Any
    objective: Any
    evaluator: PlanEvaluator
    original_params: int

    def proxy(self, plan: PlanDict) -> float:
        return float(self.objective.score(plan).proxy)


@dataclass
class Verdict:
    """One evaluated candidate of a baseline: its accuracies and whether it passed."""

    val_acc: float
    test_acc: float
    passed: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def best_passing(family: list[BenchCandidate], judge: Callable[[BenchCandidate], Verdict], *,
                 original_params: int, original_flops: int, reference_val: float,
                 reference_test: float, original_test: float) -> dict[str, Any]:
    """The largest reduction of ``family`` (smallest first) that passes: the library's
    bisection (:func:`lrf_optuna.finetune.smallest_passing`) over the verdicts of
    :func:`passes`; the row of the answer and every candidate evaluated."""
    from lrf_optuna.finetune import smallest_passing

    seen: dict[int, Verdict] = {}

    def score(i: int) -> float:
        seen[i] = judge(family[i])
        return 1.0 if seen[i].passed else 0.0

    search = smallest_passing([c.position for c in family], score, 0.5) if family else None

    def pp(ref: float, acc: float) -> float:
        return round(100 * (ref - acc), 3)

    evaluated = [{"label": family[i].label, "params": family[i].params,
                  "param_reduction": round(1 - family[i].params / original_params, 4),
                  "val": v.val_acc, "test": v.test_acc, "passed": v.passed,
                  "val_drop_pp": pp(reference_val, v.val_acc), "seconds": v.seconds, **v.extra}
                 for i, v in sorted(seen.items(), key=lambda kv: family[kv[0]].params)]
    row: dict[str, Any] = {"candidates": len(family), "probes": len(seen),
                           "seconds": round(sum(v.seconds for v in seen.values()), 1),
                           "evaluated": evaluated, "within": False, "label": None,
                           "param_reduction": 0.0, "flops_reduction": 0.0,
                           "val_drop_pp": None, "test_drop_pp": None,
                           "test_drop_vs_original_pp": None, "smallest_candidate": False}
    if search is None or search.chosen is None:
        return row
    c, v = family[search.chosen], seen[search.chosen]
    row.update(within=True, label=c.label, params=c.params, flops=c.flops,
               param_reduction=round(1 - c.params / original_params, 4),
               flops_reduction=round(1 - c.flops / original_flops, 4),
               val_acc=v.val_acc, test_acc=v.test_acc,
               val_drop_pp=pp(reference_val, v.val_acc),
               test_drop_pp=pp(reference_test, v.test_acc),
               test_drop_vs_original_pp=pp(original_test, v.test_acc),
               smallest_candidate=search.chosen == 0)
    return row


def uniform_svd_plans(src: PlanSource, ratios: Sequence[float]) -> list[tuple[str, PlanDict]]:
    """SVD everywhere it applies, one relative rank per plan, as a user would: every
    ``k x k`` conv by ``channel_svd``, every 1x1 conv (which ``channel_svd`` refuses: a
    matrix) and every Dense by ``svd``; the first conv and the classifier kept
    (``benchmarks.compression.selections._uniform_plans``)."""
    out = []
    for (label, plan), (_, pointwise) in zip(
            _uniform_plans(src, "channel_svd", "svd", ratios=ratios),
            _uniform_plans(src, "svd", "keep", ratios=ratios)):
        out.append((label, {**pointwise, **plan}))
    return out


def narrow_family(net: str, widths: Sequence[float], base: float, splits: Any
                  ) -> list[BenchCandidate]:
    """The net at ``base * w`` for each ``w`` (untrained, for the sizes), smallest first."""
    from lrf_optuna.costs import model_costs

    out = []
    for w in widths:
        costs = model_costs(build_net(net, splits.input_shape, splits.num_classes, base * w))
        out.append(BenchCandidate(f"width x{w:g}", int(costs.params), int(costs.flops),
                             math.log(max(costs.params, 1)), width=base * w))
    return sorted(out, key=lambda c: c.params)


# -- one (net, size) -------------------------------------------------------------------------

def run_one(net: str, size: int, mode_name: str, mode: Mode, args: argparse.Namespace
            ) -> dict[str, Any]:
    from lrf_optuna.costs import model_costs
    from lrf_optuna.data import prepare_splits
    from lrf_optuna.finetune import FinetuneConfig
    from lrf_optuna.problem import Problem
    from lrf_optuna.search import LRFObjective
    from lrf_optuna.search.strategies import SimilarityThreshold

    cache = Path(args.cache_dir)
    defaults = compress_defaults()
    dataset = load_dataset(mode_name, size, args.test_images, args.seed)
    # the library's split, with the compress call's validation fraction and seed
    splits = prepare_splits(dataset, val_fraction=args.val_fraction,
                            calibration_size=defaults["calibration_size"], seed=args.seed)
    n_val = len(splits.x_val)
    epochs = args.epochs.get(net, mode.epochs or NETS[net].epochs)
    original = train_net(net, mode.width, splits, epochs=epochs, seed=args.seed,
                         cache_dir=cache)
    costs = model_costs(original.model)
    logger.info("%s on %d images: %s params, val %.4f, test %.4f", net, size,
                f"{original.params:,}", original.val_acc, original.test_acc)
    sim_dir = cache / "similarity"
    problem = Problem.from_objects(original.model, dataset, seed=args.seed,
                                   calibration_size=defaults["calibration_size"],
                                   val_fraction=args.val_fraction, cache_dir=sim_dir)
    if not np.array_equal(problem.splits.val_indices, splits.val_indices):
        raise RuntimeError("the compress call's validation split differs from the one the "
                           "nets were trained without")

    # compress, the default call; its study is kept per trained model and library defaults
    out_dir = cache / "compress" / (f"{original.key}-"
                                    + _digest(defaults, FinetuneConfig().recipe_key(),
                                              mode.n_trials))
    compress = run_compress(original.model, dataset, problem, out_dir=out_dir, sim_dir=sim_dir,
                            max_drop=args.max_drop, val_fraction=args.val_fraction,
                            seed=args.seed, n_trials=mode.n_trials)
    logger.info("%s/%d compress: %s", net, size,
                {k: compress.get(k) for k in ("trial", "param_reduction", "val_drop_pp",
                                              "test_drop_pp", "probes", "seconds")})

    # plans: the same similarity cache, the library's default recipe, the fair reference
    objective = LRFObjective(problem.model, splits.x_cal, cache_dir=sim_dir, progress=False)
    evaluator = PlanEvaluator(problem, objective.cache, root=cache / "finetuned")
    config = FinetuneConfig(verbose=0)  # the default recipe (verbosity is not part of it)
    reference = evaluator.finetuned({}, config, correctness=True)
    ref_correct = unpack_correct(reference["val_correct"], n_val)
    src = PlanSource(problem, objective, evaluator, original.params)

    def judge_plan(c: BenchCandidate) -> Verdict:
        assert c.plan is not None
        r = evaluator.finetuned(c.plan, config, correctness=True)
        return Verdict(r["val_after"], r["test_after"],
                       passes(unpack_correct(r["val_correct"], n_val), ref_correct, args.max_drop),
                       r["seconds"], {"epochs_run": r["epochs_run"], "reverted": r["reverted"],
                                      "val_before": r["val_before"]})

    # narrow: original epochs + the longest fine-tuning any probe of compress got
    ft_epochs = compress.get("max_probe_epochs_run") or FinetuneConfig().epochs
    narrow_epochs = epochs + int(ft_epochs)

    def judge_narrow(c: BenchCandidate) -> Verdict:
        assert c.width is not None
        t = train_net(net, c.width, splits, epochs=narrow_epochs, seed=args.seed,
                      cache_dir=cache)
        return Verdict(t.val_acc, t.test_acc, passes(t.val_correct, original.val_correct,
                                                     args.max_drop), t.seconds,
                       {"epochs": t.epochs})

    common = {"original_params": original.params, "original_flops": int(costs.flops),
              "original_test": original.test_acc}
    plan_ref = {"reference_val": reference["val_after"],
                "reference_test": reference["test_after"]}
    baselines: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    baselines["narrow"] = best_passing(
        narrow_family(net, args.widths, mode.width, splits), judge_narrow, **common,
        reference_val=original.val_acc, reference_test=original.test_acc)
    baselines["narrow"].update(reference="untouched original", epochs=narrow_epochs)
    families = {
        "uniform": _from_plans(src, uniform_svd_plans(src, args.ratios)),
        "tau": _from_plans(src, [(p.label, dict(p.plan)) for p in SimilarityThreshold(
            taus=mode.taus).plans(problem.model, objective.cache)])}
    for name, family in families.items():
        baselines[name] = best_passing(family, judge_plan, **common, **plan_ref)
        baselines[name]["reference"] = "fair reference"
    logger.info("%s/%d baselines: %s (%.0f s)", net, size,
                {k: v["param_reduction"] for k, v in baselines.items()},
                time.perf_counter() - start)
    return {"net": net, "description": NETS[net].description, "size": size,
            "train_images": len(splits.x_train), "val_images": n_val,
            "test_images": len(splits.x_test), "one_image_pp": round(100 / n_val, 4),
            "budget_images": math.floor(args.max_drop * n_val / 100 + 1e-9),
            "original": {"params": original.params, "flops": int(costs.flops),
                         "width": mode.width, "epochs": epochs, "val_acc": original.val_acc,
                         "test_acc": original.test_acc, "seconds": original.seconds,
                         "val_acc_by_epoch": [round(v, 4) for v in
                                              original.history.get("val_accuracy", [])]},
            "fair_reference": {k: reference[k] for k in ("val_after", "test_after",
                                                         "epochs_run", "seconds")},
            "compress": compress, "baselines": baselines,
            "targets": targets(compress, baselines)}


def targets(compress: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets on one (net, size): compress saves more parameters than every
    baseline; it leaves at most half the parameters of the best baseline.

    Example:
        >>> t = targets({"param_reduction": 0.8}, {"narrow": {"param_reduction": 0.75},
        ...                                        "tau": {"param_reduction": 0.5}})
        >>> t["best_baseline"], t["beats_every_baseline"], t["at_most_half_params_of_best"]
        ('narrow', True, False)
    """
    best = max(baselines, key=lambda k: baselines[k]["param_reduction"])
    best_red = float(baselines[best]["param_reduction"])
    red = compress.get("param_reduction")
    return {"best_baseline": best, "best_baseline_reduction": best_red,
            "beats_every_baseline": red is not None and red > best_red,
            "at_most_half_params_of_best": red is not None
            and (1 - red) <= 0.5 * (1 - best_red) + 1e-12}


# -- output ----------------------------------------------------------------------------------

def _se(x: float | None) -> str:
    return "" if x is None else f" ± {x:.2f}"


def _baseline_cell(row: dict[str, Any]) -> str:
    if not row["within"]:
        return f"none ({row['probes']} tried; {row['seconds']:.0f} s)"
    more = " (smallest tried)" if row["smallest_candidate"] else ""
    return (f"{_pct(row['param_reduction'])} {row['label']}{more}, test "
            f"{_pp(row['test_drop_pp'])}; {row['seconds']:.0f} s")


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md section: the summary table, every baseline's pick, the targets."""
    mode = results["mode"]
    lines = [f"`{results['command']}` ({results['machine']}; {results['date']}; "
             f"{results['seconds'] / 60:.0f} min in all).", ""]
    if mode != "full":
        lines += [f"**{mode.upper()} MODE**: " + ("synthetic data and tiny nets, a smoke "
                  "test of the harness only." if mode == "tiny" else
                  "4,000 images and fewer widths / ratios; the targets are judged on the "
                  "full mode."), ""]
    lines += [
        f"Nets written as users write them (not from the zoo), trained from scratch on a "
        f"stratified subset of the training images; the validation split is the library's "
        f"(`prepare_splits(val_fraction={results['val_fraction']}, "
        f"seed={results['seed']})`, the one `compress` uses), held out of every training. "
        f"Budget {results['max_drop_pp']:g} pp of **validation** accuracy, decided on "
        "validation, reported on **test**. compress: `compress_detailed` with its "
        "defaults against its fair reference; narrow: the net at smaller widths trained "
        "from scratch for the original's epochs plus the longest fine-tuning a compress "
        "probe got, against the untouched original; uniform SVD (`channel_svd` on k x k "
        "convs, `svd` on 1x1 convs and dense, first conv and classifier kept) and tau "
        "(similarity threshold): fine-tuned with `FinetuneConfig()`, against the fair "
        "reference (the original fine-tuned the same way). Every decision: `passes()`, the "
        "library's paired decision (`PairedDrop.within` at compress's default confidence), "
        "candidates probed by bisection. Drops ± one standard error (paired on the same "
        "images). Cells: params saved, pick, test drop vs its reference (pp), wall time.",
        ""]
    rows, detail = [], []
    for r in results["runs"]:
        c, o, t = r["compress"], r["original"], r["targets"]
        comp = (f"**none** within ({c['probes']} probes)" if not c["within"] else
                f"{_pct(c['param_reduction'])} / {_pct(c['flops_reduction'])}")
        rows.append([r["net"], f"{r['train_images']:,} / {r['val_images']:,}",
                     f"{r['budget_images']} ({r['one_image_pp']:.2g} pp each)",
                     f"{o['params']:,}", f"{100 * o['test_acc']:.2f}", comp,
                     f"{_pp(c['val_drop_pp'])}{_se(c.get('val_drop_se_pp'))} / "
                     f"{_pp(c['test_drop_pp'])}{_se(c.get('test_drop_se_pp'))}"
                     + (" (longer recipe)" if c.get("chosen_recipe") == "longer" else ""),
                     _pp(c["test_drop_vs_original_pp"]), f"{c['seconds']:.0f}",
                     *[_baseline_cell(r["baselines"][b]) for b in BASELINES],
                     "yes" if t["beats_every_baseline"] else "no",
                     "yes" if t["at_most_half_params_of_best"] else "no"])
        for b in BASELINES:
            x = r["baselines"][b]
            detail.append([r["net"], f"{r['size']:,}", b, x["label"] or "(none within)",
                           _pct(x["param_reduction"]),
                           _pct(x["flops_reduction"]) if x["within"] else "-",
                           _pp(x["val_drop_pp"]), _pp(x["test_drop_pp"]),
                           _pp(x["test_drop_vs_original_pp"]), x["reference"],
                           f"{x['probes']}/{x['candidates']}", f"{x['seconds']:.0f}"])
    lines += [markdown_table(
        ["net", "train / val images", "budget in val images", "params", "test acc (%)",
         "compress: params / FLOPs saved", "val / test drop vs ref (pp)",
         "test drop vs orig (pp)", "compress s", "best narrow", "best uniform SVD", "tau",
         "beats every baseline", "<= half the params of the best"], rows), "",
        "Every baseline's pick (narrow: against the untouched original; plans: against "
        "the fair reference):", "",
        markdown_table(["net", "images", "baseline", "pick", "params saved", "FLOPs saved",
                        "val drop (pp)", "test drop (pp)", "test drop vs orig (pp)",
                        "reference", "probes / candidates", "s"], detail), ""]
    runs = results["runs"]
    beats = sum(r["targets"]["beats_every_baseline"] for r in runs)
    half = sum(r["targets"]["at_most_half_params_of_best"] for r in runs)
    lines += [f"Targets: compress saves more parameters than every baseline on {beats} of "
              f"{len(runs)} (target: all), and leaves at most half the parameters of the "
              f"best baseline on {half} of {len(runs)} (target: at least half).", ""]
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


# -- command line ----------------------------------------------------------------------------

def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den) if den else float(num)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Mode, str]:
    defaults = compress_defaults()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_nets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="4,000 images, fewer widths")
    group.add_argument("--tiny", action="store_true", help="CI smoke test (synthetic data)")
    parser.add_argument("--nets", type=_csv, default=list(NETS),
                        help=f"subset of {','.join(NETS)}")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in _csv(s)], default=None,
                        help="labelled training images per run (default: 4000,18000; "
                             "quick: 4000)")
    parser.add_argument("--val-fraction", type=float, default=defaults["val_fraction"],
                        help="validation fraction of the compress call and of every "
                             "training (default: compress's, %(default)s: None is 2,000 "
                             "images, at least 10 %% and at most 25 %%)")
    parser.add_argument("--seed", type=int, default=defaults["seed"],
                        help="seed of the splits and of the compress call (default: "
                             "compress's, %(default)s)")
    parser.add_argument("--max-drop", type=float, default=MAX_DROP, help="pp (default 1)")
    parser.add_argument("--widths", type=lambda s: [_fraction(x) for x in _csv(s)],
                        default=None, help="narrow widths relative to the original")
    parser.add_argument("--ratios", type=lambda s: [_fraction(x) for x in _csv(s)],
                        default=None, help="uniform SVD relative ranks, e.g. 1/2,1/4")
    parser.add_argument("--epochs", type=_csv, default=[],
                        help="training epochs of the originals, e.g. plain=12,mobile=20")
    parser.add_argument("--test-images", type=int, default=None)
    add_output_arguments(parser, cache_name="user_nets", writes="results_user_nets.json")
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "tiny" if args.tiny else "full"
    mode = MODES[mode_name]
    resolve_outputs(args, tiny=mode_name == "tiny", cache_name="user_nets")
    args.sizes = args.sizes or list(mode.sizes)
    args.widths = args.widths or list(mode.widths)
    args.ratios = args.ratios or list(mode.ratios)
    args.test_images = args.test_images or mode.test_images
    epochs = {}
    for item in args.epochs:
        k, _, v = item.partition("=")
        epochs[k] = int(v)
    args.epochs = epochs
    unknown = [n for n in [*args.nets, *epochs] if n not in NETS]
    if unknown:
        parser.error(f"unknown nets {unknown}; choose from {','.join(NETS)}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if any(not 0 < w < 1 for w in args.widths) or any(not 0 < r < 1 for r in args.ratios):
        parser.error("--widths and --ratios must be in (0, 1)")
    return args, mode, mode_name


def main(argv: Sequence[str] | None = None) -> int:
    args, mode, mode_name = parse_args(argv)
    head = start_run("benchmarks.user_nets", argv)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "mode": mode_name, **head,
        "max_drop_pp": args.max_drop, "val_fraction": args.val_fraction, "seed": args.seed,
        "compress_defaults": {k: repr(v) for k, v in compress_defaults().items()},
        "widths": args.widths, "ratios": args.ratios, "taus": list(mode.taus), "runs": []}
    for size in args.sizes:
        for net in args.nets:
            logger.info("=== %s, %d images ===", net, size)
            results["runs"].append(run_one(net, size, mode_name, mode, args))
    results["seconds"] = round(time.perf_counter() - start, 1)
    body = markdown(results)
    print(body)
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results_user_nets.json").write_text(json.dumps(_jsonable(results), indent=1)
                                                    + "\n")
        write_section(f"User nets benchmark ({mode_name} mode)", body, args.results_md)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
