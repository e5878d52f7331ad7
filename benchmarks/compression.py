"""The compression benchmark (issue 12): selections compared at equal fine-tuning.

For each model: train the original to convergence (cached), build the similarity cache,
run NSGA-II (this tool's search), TPE and random search at the same trial budget, then for
every *selection* -- ``search`` (NSGA-II), ``tau`` (the paper's similarity threshold
alone), ``uniform:<conv>+<fc>`` (one method per layer kind everywhere, the first conv and
the classifier kept as a user would), ``energy``, ``vbmf``, ``random``, ``tpe`` and
``narrow`` (the same architecture made narrower, trained from scratch for the original's
training plus fine-tuning epochs) -- find the largest parameter reduction whose
**validation** accuracy after fine-tuning stays within ``--max-drop`` pp of the **fair
reference** (the original fine-tuned with exactly the same recipe), with the library's own
probe search (:func:`lrf_optuna.finetune.budget.smallest_passing`) and recipe
(:func:`lrf_optuna.finetune.finetune_model`); report it on the **test** split (the test
split decides nothing), with its FLOPs reduction and batch-1 CPU latency speed-ups (Keras,
TFLite). Also: the paper's two claims (hybrid vs the best single method on conv layers; TT
vs SVD and QR on FC layers), the proxy's Spearman against accuracy after fine-tuning (20+
trials spread along the front) and without it (50+ plans), hypervolume against trial count
for the three samplers, the levers (recipes incl. distillation and last-epoch; activation-
aware methods on/off when registered; probe strategy) and the wall time of each stage.

Every fine-tuning result is cached on disk per (model, plan, recipe)
(:class:`benchmarks._finetuned.PlanEvaluator`), trained models by the model cache and
studies in SQLite under ``--cache-dir``: a rerun or a crashed run resumes.

Writes ``benchmarks/results.json`` (numbers), the section ``## Compression benchmark
(<mode> mode)`` of ``benchmarks/RESULTS.md`` and ``benchmarks/compression_<mode>.html``
(plotly accuracy-vs-parameters curves; plotly.js from its CDN, ``--inline-plotlyjs`` for
an offline file).

    python -m benchmarks.compression                # full mode (hours on 2 cores)
    python -m benchmarks.compression --quick        # subsets, short recipe (about 1.5 h on 2 cores)
    python -m benchmarks.compression --tiny --cache-dir /tmp/b --out /tmp/b   # CI smoke
    python -m benchmarks.compression --models vgg_small --selections search,tau,narrow \\
        --recipes ce10,kd10,ce10-last --trials 3000

Recipes: ``ce<E>`` (cross-entropy, E epochs) or ``kd<E>`` (distillation 0.9, T=4), with
optional suffixes ``-last`` (keep the last epoch), ``-p<N>`` (patience), ``-lr<X>``,
``-a<W>`` (distillation weight), ``-t<T>`` (temperature); the first recipe is the main
one (every selection), the others are levers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks._finetuned import PlanEvaluator, plan_digest, spearman
from benchmarks._problem import start_run
from benchmarks._results import (
    add_output_arguments,
    markdown_table,
    resolve_outputs,
    write_section,
)
from benchmarks._results import pct as _pct
from benchmarks._results import pp as _pp
from lrf_optuna.plan import LRF_PLAN_ATTR, CompressionPlan
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR

__all__ = ["MODELS", "MODES", "main", "parse_recipe", "simulate_probe_strategies"]

logger = logging.getLogger("benchmarks.compression")

SELECTIONS = ("search", "tau", "uniform", "energy", "vbmf", "random", "tpe", "narrow")
#: Opt-in selections (issue 13): ``fbp`` (filter pruning alone: uniform ratios and the
#: pruning similarity threshold) and ``search+prune`` (NSGA-II over LRF and pruning).
PRUNE_SELECTIONS = ("fbp", "search+prune")
SAMPLERS = ("nsga2", "tpe", "random")

Plan = dict[str, tuple[str, int]]


# -- models and modes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: a zoo builder, its arguments, the width arguments ``narrow``
    scales, and the epochs that train it to convergence (cosine schedule)."""

    zoo: str
    kwargs: Mapping[str, Any]
    widths: Mapping[str, tuple[int, ...]]
    epochs: int


MODELS: dict[str, ModelSpec] = {
    # VGG-style: ~93 % of the parameters in two dense layers
    "vgg_small": ModelSpec("vgg_small", {}, {"filters": (32, 64, 128),
                                             "dense_units": (512, 256)}, 30),
    # conv-dominated: all but 650 parameters in convolutions, global average pooling head
    "resnet20": ModelSpec("resnet20", {}, {"filters": (16, 32, 64)}, 30),
    # CI smoke models (12x12 synthetic images)
    "tiny_vgg": ModelSpec("vgg_small", {"filters": (4, 8, 8), "dense_units": (32, 16)},
                          {"filters": (4, 8, 8), "dense_units": (32, 16)}, 15),
    "tiny_resnet": ModelSpec("resnet20", {"filters": (4, 4, 8), "blocks_per_stage": 1},
                             {"filters": (4, 4, 8)}, 15),
}


@dataclass(frozen=True)
class Mode:
    """Defaults of a mode (each overridable on the command line)."""

    models: tuple[str, ...]
    train_images: int | None  # None: the whole training set
    test_images: int | None
    train_epochs: Mapping[str, int] | None  # None: the models' own
    trials: int
    recipes: tuple[str, ...]
    uniform: tuple[str, ...]
    spearman_finetuned: int
    spearman_plans: int
    curve_points: int
    claims_models: tuple[str, ...]
    claims_conv: tuple[str, ...]
    claims_fc: tuple[str, ...]
    fixed_reductions: tuple[float, ...]
    latency_repeats: int
    hv_checkpoints: tuple[int, ...]
    max_probes: int | None = None
    val_images: int | None = None  # None: 10 % of the training images


MODES: dict[str, Mode] = {
    "full": Mode(("vgg_small", "resnet20"), None, None, None, 3000,
                 ("ce10", "ce3", "kd10", "ce10-last"), ("channel_svd+svd", "tucker2+svd"), 20,
                 60, 3, ("vgg_small",), ("tucker2", "cp", "channel_svd", "spatial_svd"),
                 ("svd", "qr", "tt"), (0.90, 0.95, 0.97), 50,
                 (50, 100, 200, 300, 500, 1000, 2000, 3000)),
    # 3,600 training images and 2,000 validation images: a 400-image split (1 image =
    # 0.25 pp) made val and test disagree by 2-3 pp on the picks
    "quick": Mode(("vgg_small", "resnet20"), 5600, 2000, {"vgg_small": 10, "resnet20": 10},
                  500, ("ce2", "kd2"), ("channel_svd+svd",), 10, 50, 0, ("vgg_small",),
                  ("tucker2", "channel_svd"), ("svd", "tt"), (0.90, 0.97), 20,
                  (50, 100, 200, 300, 500), val_images=2000),
    "tiny": Mode(("tiny_vgg",), None, None, None, 30, ("ce1", "kd1-last"),
                 ("channel_svd+svd",), 3, 8, 0, ("tiny_vgg",), ("channel_svd",), ("svd",),
                 (0.5,), 2, (10, 20, 30), max_probes=1),
}

# The selections' rank-selection sweeps (dense enough for a curve, few enough to build).
TAUS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
ENERGIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
RATIOS = (0.5, 0.3, 0.2, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01)
#: Uniform pruning ratios of the ``fbp`` selection (the pruning cache's default levels).
FBP_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
NARROW_FRACTIONS = (0.5, 0.25, 0.12, 0.06, 0.03, 0.02, 0.01)


def parse_recipe(text: str) -> Any:
    """A :class:`~lrf_optuna.finetune.FinetuneConfig` from a recipe name (module docstring).

    Example:
        >>> c = parse_recipe("kd10-last-t2")
        >>> (c.epochs, c.distill, c.temperature, c.keep_epoch)
        (10, 0.9, 2.0, 'last')
    """
    from lrf_optuna.finetune import FinetuneConfig

    m = re.fullmatch(r"(ce|kd)(\d+)(.*)", text)
    token = r"-(last|p\d+|lr\d*\.?\d+(?:e-?\d+)?|a[0-9.]+|t[0-9.]+)"
    if m is None or re.fullmatch(f"(?:{token})*", m.group(3)) is None:
        raise ValueError(f"recipe must look like ce10, kd10 or ce10-last-p2-lr3e-4, got "
                         f"{text!r}")
    fields: dict[str, Any] = {"epochs": int(m.group(2)), "verbose": 0}
    if m.group(1) == "kd":
        fields.update(distill=0.9, temperature=4.0)
    for part in re.findall(token, m.group(3)):
        if part == "last":
            fields["keep_epoch"] = "last"
        elif part.startswith("p"):
            fields["patience"] = int(part[1:])
        elif part.startswith("lr"):
            fields["learning_rate"] = float(part[2:])
        elif part.startswith("a"):
            fields["distill"] = float(part[1:])
        else:
            fields["temperature"] = float(part[1:])
    return FinetuneConfig(**fields)


# -- data and originals --------------------------------------------------------------------------

def _tiny_dataset() -> Any:
    """Learnable 12x12 images, 4 classes (the bright quadrant is the class)."""
    from lrf_optuna.data import from_arrays

    rng = np.random.default_rng(0)
    n = 600
    y = np.arange(n) % 4
    x = rng.uniform(0, 60, (n, 12, 12)).astype(np.uint8)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, r * 6:(r + 1) * 6, q * 6:(q + 1) * 6] += 150
    return from_arrays(x[:500], y[:500], x[500:], y[500:], name="quadrants")


def load_dataset(mode_name: str, train_images: int | None, test_images: int | None) -> Any:
    from lrf_optuna.data import from_arrays, load_fashion_mnist

    if mode_name == "tiny":
        return _tiny_dataset()
    data = load_fashion_mnist()
    if train_images is None and test_images is None:
        return data
    n, t = train_images or len(data.x_train), test_images or len(data.x_test)
    return from_arrays(data.x_train[:n], data.y_train[:n], data.x_test[:t], data.y_test[:t],
                       name=f"fashion_mnist_{n}")


def _scaled(spec: ModelSpec, factor: float) -> dict[str, Any]:
    return {**spec.kwargs, **{k: tuple(max(1, round(v * factor)) for v in vals)
                              for k, vals in spec.widths.items()}}


def val_fraction(dataset: Any, val_images: int | None) -> float:
    """The validation fraction of the training images: ``val_images`` of them, else 10 %.

    Example:
        >>> from types import SimpleNamespace
        >>> val_fraction(SimpleNamespace(x_train=range(5600)), 2000), val_fraction(None, None)
        (0.35714285714285715, 0.1)
    """
    if val_images is None:
        return 0.1
    n = len(dataset.x_train)
    if not 0 < val_images < n:
        raise ValueError(f"--val-images must be between 1 and the {n - 1} training images, "
                         f"got {val_images}")
    return val_images / n


def train_original(spec: ModelSpec, dataset: Any, epochs: int, cache: Path,
                   val_images: int | None = None, **overrides: Any) -> Any:
    """Train (or load from the model cache) a model of ``spec`` for ``epochs`` (on the
    training part of the harness's split: ``val_images`` held out)."""
    from lrf_optuna.models.training import train_or_load

    return train_or_load(spec.zoo, dataset, epochs=epochs, model_cache_dir=cache / "models",
                         val_fraction=val_fraction(dataset, val_images), verbose=False,
                         **{**spec.kwargs, **overrides})


# -- selections ----------------------------------------------------------------------------------

@dataclass
class Candidate:
    """One member of a selection's family: a plan (or a narrow width), its size, and the
    position the probe search uses."""

    label: str
    params: int
    flops: int
    position: float
    plan: Plan | None = None
    width: float | None = None
    proxy: float | None = None


@dataclass
class Context:
    """Everything one model's run shares."""

    name: str
    spec: ModelSpec
    problem: Any
    objective: Any
    evaluator: PlanEvaluator
    studies: dict[str, Any]
    dataset: Any
    cache: Path
    train_epochs: int
    args: argparse.Namespace
    original_params: int = 0
    original_flops: int = 0
    original_test_acc: float = 0.0
    #: The objective that also searches pruning (built by :func:`prune_objective`).
    pruning_objective: Any = None

    def proxy(self, plan: Plan) -> float:
        if CompressionPlan.of(plan).ratios:
            return float(prune_objective(self).score(plan).proxy)
        return float(self.objective.score(plan).proxy)


class PlanSource(Protocol):
    """What the plan helpers (:func:`_uniform_plans`, :func:`_from_plans`) read: the
    problem, its objective (similarity cache and searched layers), the evaluator and the
    original's size. :class:`Context` is one; ``benchmarks.user_nets`` has another."""

    problem: Any
    objective: Any
    evaluator: PlanEvaluator
    original_params: int

    def proxy(self, plan: Plan) -> float: ...


def prune_objective(ctx: Context) -> Any:
    """The LRF + pruning objective of ``ctx``'s model, on the same similarity cache
    (builds the pruning cache once); the evaluator builds pruned plans with it."""
    from lrf_optuna.search import LRFObjective

    if ctx.pruning_objective is None:
        ctx.pruning_objective = LRFObjective(
            ctx.problem.model, ctx.problem.splits.x_cal, cache=ctx.objective.cache,
            methods=None if ctx.args.aware != "off" else
            [m for m in _methods() if not _is_aware(m)], prune=True, progress=False)
        ctx.evaluator.pruning = ctx.pruning_objective.prune.pruning
    return ctx.pruning_objective


def _layer_kinds(ctx: PlanSource) -> tuple[list[str], list[str]]:
    """The searched conv and dense layer paths, in model order."""
    tables = ctx.objective.cache.tables
    convs = [p for p in ctx.objective.spaces if "Conv" in tables[p].class_name]
    dense = [p for p in ctx.objective.spaces if tables[p].class_name == "Dense"]
    return convs, dense


def _user_kept(ctx: PlanSource) -> set[str]:
    """What a user keeps when applying one method everywhere: the first conv (few
    parameters, the input's only feature extractor) and the classifier."""
    convs, dense = _layer_kinds(ctx)
    return {*convs[:1], *dense[-1:]}


def _from_plans(ctx: PlanSource, named: Sequence[tuple[str, Plan]]) -> list[Candidate]:
    """Candidates from plans: exact costs of the built model, deduplicated, saving at
    least 1 % of the parameters, smallest first."""
    from lrf_optuna.finetune.select import MIN_REDUCTION

    out: dict[str, Candidate] = {}
    for label, plan in named:
        if not plan:
            continue
        key = plan_digest(plan)
        if key in out:
            continue
        before = ctx.evaluator.before(plan)
        if before["params"] > (1 - MIN_REDUCTION) * ctx.original_params:
            continue
        proxy = ctx.proxy(plan)
        out[key] = Candidate(label, before["params"], before["flops"],
                             math.log(max(before["params"], 1)), plan.copy(), proxy=proxy)
    return sorted(out.values(), key=lambda c: (c.params, c.label))


def _study_family(ctx: Context, study: Any) -> list[Candidate]:
    from lrf_optuna.finetune import budget_candidates
    from lrf_optuna.plan import decode_plan

    out = []
    for t in budget_candidates(study):
        proxy = float(t.user_attrs[PROXY_ATTR])
        out.append(Candidate(f"#{t.number}", int(t.user_attrs[PARAMS_ATTR]),
                             int(t.user_attrs[FLOPS_ATTR]), proxy, decode_plan(t), proxy=proxy))
    return out


def _uniform_plans(ctx: PlanSource, conv_method: str, fc_method: str, *,
                   layers: set[str] | None = None,
                   ratios: Sequence[float] = RATIOS) -> list[tuple[str, Plan]]:
    """One plan per ratio: ``conv_method`` on every conv, ``fc_method`` on every Dense
    (``"keep"``: none), each layer at the largest rank within ``ratio`` of its
    parameters, the first conv and the classifier kept (:func:`_user_kept`)."""
    from lrf_optuna.search.strategies import UniformRatio

    kept = _user_kept(ctx)
    convs, dense = _layer_kinds(ctx)
    out = []
    for ratio in ratios:
        plan: Plan = {}
        for method, paths in ((conv_method, convs), (fc_method, dense)):
            if method == "keep":
                continue
            for named in UniformRatio(methods=[method], ratios=[ratio]).plans(
                    ctx.problem.model, ctx.objective.cache):
                plan.update({p: c for p, c in named.plan.items()
                             if p in paths and p not in kept
                             and (layers is None or p in layers)})
        out.append((f"{conv_method}+{fc_method}@{ratio:g}", plan))
    return out


def selection_family(ctx: Context, selection: str) -> list[Candidate]:
    """The candidates of a selection, smallest first."""
    from lrf_optuna.search.strategies import EnergyThreshold, SimilarityThreshold, VBMFRanks

    model, cache = ctx.problem.model, ctx.objective.cache
    if selection in ("search", "random", "tpe"):
        return _study_family(ctx, ctx.studies["nsga2" if selection == "search" else selection])
    if selection == "tau":
        return _from_plans(ctx, [(p.label, dict(p.plan)) for p in
                                 SimilarityThreshold(taus=TAUS).plans(model, cache)])
    if selection == "energy":
        return _from_plans(ctx, [(p.label, dict(p.plan)) for p in
                                 EnergyThreshold(energies=ENERGIES).plans(model, cache)])
    if selection == "vbmf":
        return _from_plans(ctx, [(p.label, dict(p.plan)) for p in
                                 VBMFRanks().plans(model, cache)])
    if selection.startswith("uniform:"):
        conv_method, _, fc_method = selection.split(":", 1)[1].partition("+")
        return _from_plans(ctx, _uniform_plans(ctx, conv_method, fc_method or "svd"))
    if selection == "narrow":
        return narrow_family(ctx)
    if selection == "fbp":
        from lrf_optuna.search.strategies import PruningThreshold, UniformPruning

        pruning = prune_objective(ctx).prune.pruning
        named = [*UniformPruning(ratios=FBP_RATIOS, importance=pruning.config.importance)
                 .plans(model, cache), *PruningThreshold(pruning, taus=TAUS).plans(model, cache)]
        return _from_plans(ctx, [(p.label, p.plan) for p in named])
    if selection == "search+prune":
        return _study_family(ctx, ctx.studies["nsga2-prune"])
    raise ValueError(f"unknown selection {selection!r}; choose from "
                     f"{SELECTIONS + PRUNE_SELECTIONS}")


# -- narrow: the same architecture, narrower, trained from scratch ---------------------------

def narrow_family(ctx: Context) -> list[Candidate]:
    from lrf_optuna.costs import model_costs
    from lrf_optuna.models.zoo import build_reference_model

    shape = tuple(int(d) for d in ctx.problem.splits.x_train.shape[1:])
    classes = int(ctx.problem.splits.y_train.max()) + 1

    memo: dict[str, int] = {}

    def params_at(f: float) -> int:
        kwargs = _scaled(ctx.spec, f)
        key = json.dumps(kwargs, sort_keys=True)
        if key not in memo:
            memo[key] = int(build_reference_model(ctx.spec.zoo, shape, classes,
                                                  **kwargs).count_params())
        return memo[key]

    out: dict[float, Candidate] = {}
    for target in NARROW_FRACTIONS:
        lo, hi = 0.0, 1.0  # the smallest width factor reaching target * original params
        for _ in range(16):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if params_at(mid) < target * ctx.original_params else (lo, mid)
        f = round(hi, 4)
        kwargs = _scaled(ctx.spec, f)
        key = json.dumps(kwargs, sort_keys=True)
        if any(json.dumps(_scaled(ctx.spec, c.width or 0), sort_keys=True) == key
               for c in out.values()):
            continue
        model = build_reference_model(ctx.spec.zoo, shape, classes, **kwargs)
        costs = model_costs(model)
        out[f] = Candidate(f"width x{f:g}", int(costs.params), int(costs.flops),
                           math.log(max(costs.params, 1)), width=f)
    return sorted(out.values(), key=lambda c: c.params)


def _narrow_result(ctx: Context, width: float, epochs: int) -> dict[str, Any]:
    trained = train_original(ctx.spec, ctx.dataset, epochs, ctx.cache, ctx.args.val_images,
                             **{k: v for k, v in _scaled(ctx.spec, width).items()
                                if k in ctx.spec.widths})
    rec = trained.record
    return {"params": rec.params, "val_after": rec.val_accuracy or 0.0,
            "test_after": rec.test_accuracy, "epochs_run": rec.epochs,
            "seconds": rec.train_seconds}


# -- evaluation of a family ---------------------------------------------------------------------

def evaluate(ctx: Context, cand: Candidate, config: Any) -> dict[str, Any]:
    """Accuracy after fine-tuning (narrow: after training from scratch for the original's
    epochs plus the recipe's)."""
    if cand.width is not None:
        out = _narrow_result(ctx, cand.width, ctx.train_epochs + config.epochs)
        return {**out, "flops": cand.flops}
    assert cand.plan is not None
    return ctx.evaluator.finetuned(cand.plan, config)


def best_within(ctx: Context, family: list[Candidate], config: Any, reference: dict[str, Any],
                *, strategy: str = "bisect", extra_points: int = 0,
                params_of: Callable[[Candidate], float] | None = None,
                base_params: float | None = None) -> dict[str, Any]:
    """The library's probe search over ``family`` against the fair reference; the row of
    the answer and the curve of everything evaluated."""
    from lrf_optuna.finetune.budget import smallest_passing

    target = reference["val_after"] - ctx.args.max_drop / 100.0
    results: dict[int, dict[str, Any]] = {}

    def score(i: int) -> float:
        results[i] = evaluate(ctx, family[i], config)
        return float(results[i]["val_after"])

    has_proxy = all(c.proxy is not None for c in family)
    positions = [c.position for c in family]
    top = (1.0 if has_proxy else math.log(max(ctx.original_params, 1)), reference["val_after"])
    search = smallest_passing(positions, score, target, strategy=strategy,  # type: ignore[arg-type]
                              top=top, max_probes=ctx.args.max_probes)
    if extra_points and family:  # more points for the curve, spread in log(params)
        logs = np.log([max(c.params, 1) for c in family])
        for q in np.linspace(logs[0], logs[-1], extra_points):
            i = int(np.argmin(np.abs(logs - q)))
            if i not in results:
                score(i)
    size = params_of or (lambda c: float(c.params))
    base = float(base_params or ctx.original_params)
    curve = [{"label": family[i].label, "params": family[i].params, "flops": family[i].flops,
              "proxy": family[i].proxy, "val": r["val_after"], "test": r["test_after"],
              "prunes": bool(CompressionPlan.of(family[i].plan).ratios),
              "reduction": 1 - size(family[i]) / base}
             for i, r in sorted(results.items(), key=lambda kv: family[kv[0]].params)]
    row: dict[str, Any] = {"candidates": len(family), "probes": search.n_evaluated,
                           "converged": search.converged, "within": search.chosen is not None}
    if search.chosen is None:
        row.update(param_reduction=0.0, flops_reduction=0.0, label=None, val_drop_pp=None,
                   test_drop_pp=None, test_drop_vs_original_pp=None)
    else:
        c, r = family[search.chosen], results[search.chosen]
        row.update(
            label=c.label + (" (prunes)" if CompressionPlan.of(c.plan).ratios else ""),
            params=c.params, flops=c.flops,
            param_reduction=round(1 - size(c) / base, 4),
            flops_reduction=round(1 - c.flops / ctx.original_flops, 4),
            val_acc=r["val_after"], test_acc=r["test_after"],
            val_drop_pp=round(100 * (reference["val_after"] - r["val_after"]), 3),
            test_drop_pp=round(100 * (reference["test_after"] - r["test_after"]), 3),
            test_drop_vs_original_pp=round(100 * (ctx.original_test_acc - r["test_after"]), 3))
        row["_candidate"] = c
    return {"row": row, "curve": curve, "search": search}


def latency(ctx: Context, cand: Candidate | None) -> dict[str, float]:
    """Batch-1 latencies (ms) of a candidate's architecture (weights do not matter),
    measured once and cached beside its fine-tuning results (a rerun reports the same
    numbers instead of a new sample of the machine's noise)."""
    from lrf_optuna.export import measure_model
    from lrf_optuna.models.zoo import build_reference_model

    key = ("original" if cand is None else f"narrow{cand.width:g}" if cand.width is not None
           else plan_digest(cand.plan or {}))
    path = ctx.evaluator.root / "latency" / f"{key}.json"
    if path.exists():
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    if cand is None:
        model = ctx.problem.model
    elif cand.width is not None:
        s = ctx.problem.splits
        model = build_reference_model(ctx.spec.zoo, tuple(s.x_train.shape[1:]),
                                      int(s.y_train.max()) + 1, **_scaled(ctx.spec, cand.width))
    else:
        assert cand.plan is not None
        model = ctx.evaluator.build(cand.plan)
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        m = measure_model(model, ctx.problem.splits, tmp, "m",
                          latency_repeats=ctx.args.latency_repeats,
                          latency_warmup=max(1, ctx.args.latency_repeats // 10)).measured
    out = {"keras_ms": float(m.latency_ms_keras or 0), "tflite_ms": float(m.latency_ms_tflite or 0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


# -- searches and hypervolume ------------------------------------------------------------------

def run_studies(ctx: Context, trials: int, storage: str, *, suffix: str = "",
                objective: Any = None, samplers: Sequence[str] = SAMPLERS) -> dict[str, Any]:
    import optuna

    objective = objective or ctx.objective
    out = {}
    for name in samplers:
        sampler: optuna.samplers.BaseSampler
        if name == "nsga2":
            from lrf_optuna.search import SeededNSGAIISampler

            sampler = SeededNSGAIISampler(seed=0, population_size=50)
        elif name == "tpe":
            sampler = optuna.samplers.TPESampler(seed=0, multivariate=True)
        else:
            sampler = optuna.samplers.RandomSampler(seed=0)
        study = optuna.create_study(study_name=f"{name}{suffix}", storage=storage,
                                    load_if_exists=True, directions=objective.directions,
                                    sampler=sampler)
        objective.describe_study(study)
        objective.seed_study(study)
        from lrf_optuna.search import run_remaining

        run_remaining(study, objective, trials, show_progress_bar=False)
        out[name] = study
    return out


def hypervolumes(ctx: Context, checkpoints: Sequence[int]) -> dict[str, list[list[float]]]:
    """Hypervolume of (params / original, FLOPs / original, 1 - proxy) against the trial
    count, reference point (1.1, 1.1, 1.1)."""
    from optuna._hypervolume import compute_hypervolume  # private, but the one Optuna uses

    ref = np.array([1.1, 1.1, 1.1])
    out = {}
    for name, study in ctx.studies.items():
        if name not in SAMPLERS:
            continue
        trials = sorted((t for t in study.trials if t.state.name == "COMPLETE"),
                        key=lambda t: t.number)
        pts = np.array([[t.user_attrs[PARAMS_ATTR] / ctx.original_params,
                         t.user_attrs[FLOPS_ATTR] / ctx.original_flops,
                         1 - t.user_attrs[PROXY_ATTR]] for t in trials])
        series = []
        for n in checkpoints:
            if n > len(pts):
                break
            p = pts[:n]
            p = p[np.all(p < ref, axis=1)]
            series.append([n, float(compute_hypervolume(p, ref)) if len(p) else 0.0])
        out[name] = series
    return out


# -- one model ---------------------------------------------------------------------------------

def run_model(name: str, mode: Mode, args: argparse.Namespace, dataset: Any) -> dict[str, Any]:
    from lrf_optuna.costs import model_costs
    from lrf_optuna.data import prepare_splits
    from lrf_optuna.finetune import select_trials
    from lrf_optuna.plan import decode_plan
    from lrf_optuna.problem import Problem, ProblemSpec
    from lrf_optuna.search import AGGREGATIONS, LRFObjective

    spec = MODELS[name]
    cache = Path(args.cache_dir)
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(label: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[label] = round(stages.get(label, 0.0) + now - clock, 1)
        clock = now

    epochs = args.train_epochs.get(name, spec.epochs)
    trained = train_original(spec, dataset, epochs, cache, args.val_images)
    splits = prepare_splits(dataset, val_fraction=val_fraction(dataset, args.val_images),
                            calibration_size=args.calibration_size,
                            seed=0)
    problem = Problem(trained.model, splits, name, settings=ProblemSpec(
        model="", cache_dir=str(cache / "similarity")))
    stage("train original")
    aware = [m for m in _methods() if _is_aware(m)]
    methods = None if args.aware != "off" else [m for m in _methods() if not _is_aware(m)]
    objective = LRFObjective(problem.model, splits.x_cal, cache_dir=cache / "similarity",
                             methods=methods, progress=False)
    stage("similarity cache")
    evaluator = PlanEvaluator(problem, objective.cache, root=cache / "finetuned")
    storage = f"sqlite:///{cache / 'studies' / f'{name}-{evaluator.key}.db'}"
    (cache / "studies").mkdir(parents=True, exist_ok=True)
    costs = model_costs(problem.model)
    ctx = Context(name, spec, problem, objective, evaluator, {}, dataset, cache, epochs, args,
                  int(costs.params), int(costs.flops), trained.record.test_accuracy)
    ctx.studies = run_studies(ctx, args.trials, storage,
                              samplers=[s for s in SAMPLERS
                                        if s == "nsga2" or s in args.selections])
    if "search+prune" in args.selections:
        ctx.studies.update({f"{k}-prune": v for k, v in run_studies(
            ctx, args.trials, storage, suffix="-prune", objective=prune_objective(ctx),
            samplers=["nsga2"]).items()})
    stage("search (NSGA-II, TPE, random)")
    hv = hypervolumes(ctx, mode.hv_checkpoints if args.trials >= max(mode.hv_checkpoints)
                      else [*[c for c in mode.hv_checkpoints if c < args.trials], args.trials])
    stage("hypervolume")

    recipes = [parse_recipe(r) for r in args.recipes]
    main_recipe = recipes[0]
    references = {r: evaluator.finetuned({}, c) for r, c in zip(args.recipes, recipes)}
    ref = references[args.recipes[0]]
    stage("fair references")

    selections = [s for s in args.selections if s != "uniform"] + (
        [f"uniform:{u}" for u in args.uniform] if "uniform" in args.selections else [])
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    picks: dict[str, Candidate | None] = {}
    families: dict[str, list[Candidate]] = {}
    for sel in selections:
        start = time.perf_counter()
        families[sel] = selection_family(ctx, sel)
        found = best_within(ctx, families[sel], main_recipe, ref,
                            extra_points=args.curve_points)
        row = found["row"]
        picks[sel] = row.pop("_candidate", None)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows[sel], curves[sel] = row, found["curve"]
        logger.info("%s / %s: %s", name, sel, {k: v for k, v in row.items() if k != "seconds"})
        stage(f"selection {sel}")
    base_latency = latency(ctx, None)
    for sel, cand in picks.items():
        if cand is not None:
            lat = latency(ctx, cand)
            rows[sel]["latency_speedup_keras"] = round(base_latency["keras_ms"]
                                                       / max(lat["keras_ms"], 1e-9), 3)
            rows[sel]["latency_speedup_tflite"] = round(base_latency["tflite_ms"]
                                                        / max(lat["tflite_ms"], 1e-9), 3)
    stage("latency")

    # proxy quality
    proxy: dict[str, Any] = {}
    if args.spearman_finetuned:
        chosen = select_trials(ctx.studies["nsga2"], args.spearman_finetuned)
        pts = []
        for t in chosen:
            r = evaluator.finetuned(decode_plan(t), main_recipe)
            pts.append((decode_plan(t), float(t.user_attrs[PARAMS_ATTR]), r["val_after"]))
        val = [p[2] for p in pts]
        proxy["finetuned"] = {"n": len(pts), "recipe": args.recipes[0],
                              "log_params": spearman([math.log(p[1]) for p in pts], val)}
        for agg in AGGREGATIONS:
            obj = LRFObjective(problem.model, splits.x_cal, cache=objective.cache,
                               aggregation=agg, methods=methods, progress=False)
            proxy["finetuned"][agg] = spearman([obj.score(p[0]).proxy for p in pts], val)
        stage("proxy vs fine-tuned accuracy")
    if args.spearman_plans:
        pool = ctx.studies.get("random", ctx.studies["nsga2"])
        plans = [decode_plan(t) for t in pool.trials
                 if t.state.name == "COMPLETE" and t.user_attrs.get(LRF_PLAN_ATTR)]
        rng = np.random.default_rng(0)
        picked = [plans[i] for i in rng.choice(len(plans), min(args.spearman_plans, len(plans)),
                                               replace=False)]
        before = [evaluator.before(p) for p in picked]
        val = [b["val_before"] for b in before]
        proxy["without_finetuning"] = {"n": len(picked),
                                       "log_params": spearman([math.log(b["params"])
                                                               for b in before], val)}
        for agg in AGGREGATIONS:
            obj = LRFObjective(problem.model, splits.x_cal, cache=objective.cache,
                               aggregation=agg, methods=methods, progress=False)
            proxy["without_finetuning"][agg] = spearman([obj.score(p).proxy for p in picked], val)
        stage("proxy without fine-tuning")

    if "search+prune" in args.selections:
        proxy.update(pruned_proxy_quality(ctx, main_recipe, args.recipes[0]))
        stage("proxy on pruned plans")
    claims = run_claims(ctx, main_recipe, ref, mode, storage) if name in args.claims else {}
    stage("paper claims")
    levers = run_levers(ctx, recipes, references, families.get("search") or [], rows, storage,
                        aware, mode)
    stage("levers")
    history = trained.record.history.get("val_accuracy", [])
    return {
        "original": {"params": ctx.original_params, "flops": ctx.original_flops,
                     "train_epochs": epochs, "val_accuracy": trained.record.val_accuracy,
                     "test_accuracy": trained.record.test_accuracy,
                     "val_accuracy_by_epoch": [round(v, 4) for v in history],
                     "train_images": len(splits.x_train), "val_images": len(splits.x_val),
                     "test_images": len(splits.x_test),
                     "latency_ms": base_latency},
        "recipe": args.recipes[0], "recipe_text": main_recipe.describe(),
        "max_drop_pp": args.max_drop,
        "fair_reference_val_accuracy": ref["val_after"],
        "fair_reference_test_accuracy": ref["test_after"],
        "fair_reference_epochs_run": ref["epochs_run"],
        "untouched_test_accuracy": trained.record.test_accuracy,
        "untouched_val_accuracy": trained.record.val_accuracy,
        _best_key(args.max_drop): rows,
        "curves": curves, "proxy_quality": proxy, "hypervolume": hv, "claims": claims,
        "levers": levers, "stage_seconds": stages,
        "finetunings_run": evaluator.trained,
    }


def pruned_proxy_quality(ctx: Context, recipe: Any, recipe_name: str) -> dict[str, Any]:
    """Spearman of the LRF + pruning search's proxy (and of log params) against accuracy,
    on plans of its study that prune: without fine-tuning (``--spearman-plans`` random
    completed trials) and after the main recipe (``--spearman-finetuned`` trials spread
    along the front)."""
    from lrf_optuna.finetune import select_trials
    from lrf_optuna.plan import decode_plan
    from lrf_optuna.search import AGGREGATIONS, LRFObjective

    study = ctx.studies["nsga2-prune"]
    base = prune_objective(ctx)
    objectives = {agg: LRFObjective(ctx.problem.model, ctx.problem.splits.x_cal,
                                    cache=base.cache, aggregation=agg, prune=True,
                                    pruning=base.prune.pruning, methods=base.restrictions.methods,
                                    progress=False)
                  for agg in AGGREGATIONS}
    out: dict[str, Any] = {}
    plans = [decode_plan(t) for t in study.trials
             if t.state.name == "COMPLETE" and decode_plan(t).ratios]
    if ctx.args.spearman_plans and plans:
        rng = np.random.default_rng(0)
        picked = [plans[i] for i in rng.choice(len(plans),
                                               min(ctx.args.spearman_plans, len(plans)),
                                               replace=False)]
        before = [ctx.evaluator.before(p) for p in picked]
        val = [b["val_before"] for b in before]
        out["pruned_without_finetuning"] = {
            "n": len(picked), "log_params": spearman([math.log(b["params"]) for b in before],
                                                     val),
            **{agg: spearman([obj.score(p).proxy for p in picked], val)
               for agg, obj in objectives.items()}}
    if ctx.args.spearman_finetuned:
        chosen = [t for t in select_trials(study, ctx.args.spearman_finetuned)
                  if decode_plan(t).ratios]
        pts = [(decode_plan(t), float(t.user_attrs[PARAMS_ATTR]),
                ctx.evaluator.finetuned(decode_plan(t), recipe)["val_after"]) for t in chosen]
        val = [p[2] for p in pts]
        out["pruned_finetuned"] = {
            "n": len(pts), "recipe": recipe_name,
            "log_params": spearman([math.log(p[1]) for p in pts], val),
            **{agg: spearman([obj.score(p[0]).proxy for p in pts], val)
               for agg, obj in objectives.items()}}
    return out


def _best_key(max_drop: float) -> str:
    return f"best_within_{max_drop:g}pp"


def _methods() -> list[str]:
    from lrf_optuna.decompose import available_methods

    return available_methods()


def _is_aware(method: str) -> bool:
    from lrf_optuna.decompose import get_method

    return bool(getattr(get_method(method), "needs_inputs", False))


# -- the paper's claims ------------------------------------------------------------------------

def run_claims(ctx: Context, config: Any, reference: dict[str, Any], mode: Mode,
               storage: str) -> dict[str, Any]:
    """Hybrid vs each single method on conv layers; TT vs SVD / QR (and hybrid) on FC
    layers: the largest reduction of *those layers'* parameters within the budget."""
    from lrf_optuna.search import LRFObjective

    convs, dense = _layer_kinds(ctx)
    tables = ctx.objective.cache.tables
    out: dict[str, Any] = {}
    for kind, paths, methods in (("conv", convs, ctx.args.claims_conv),
                                 ("fc", dense, ctx.args.claims_fc)):
        if not paths:
            continue
        layer_params = sum(tables[p].original_params for p in paths)
        fixed = ctx.original_params - layer_params

        def part(c: Candidate, fixed: int = fixed) -> float:
            return float(c.params - fixed)

        objective = LRFObjective(ctx.problem.model, ctx.problem.splits.x_cal,
                                 cache=ctx.objective.cache, layers=paths, progress=False)
        hybrid = run_studies(ctx, ctx.args.trials, storage, suffix=f"-{kind}",
                             objective=objective, samplers=["nsga2"])["nsga2"]
        families = {"hybrid": _study_family(ctx, hybrid)}
        for m in methods:
            conv_m, fc_m = (m, "keep") if kind == "conv" else ("keep", m)
            families[m] = _from_plans(ctx, _uniform_plans(ctx, conv_m, fc_m, layers=set(paths)))
        rows = {}
        for label, family in families.items():
            found = best_within(ctx, family, config, reference, params_of=part,
                                base_params=layer_params)
            row = found["row"]
            row.pop("_candidate", None)
            rows[label] = row
        best_single = max((r["param_reduction"] for k, r in rows.items() if k != "hybrid"),
                          default=0.0)
        out[kind] = {"layers": paths, "layer_params": layer_params, "rows": rows,
                     "hybrid_minus_best_single_pp": round(
                         100 * (rows["hybrid"]["param_reduction"] - best_single), 2)}
        if kind == "fc" and "tt" in rows:
            others = [rows[m]["param_reduction"] for m in ("svd", "qr") if m in rows]
            if others:
                out[kind]["tt_minus_best_of_svd_qr_pp"] = round(
                    100 * (rows["tt"]["param_reduction"] - max(others)), 2)
    return out


# -- levers -------------------------------------------------------------------------------------

def run_levers(ctx: Context, recipes: list[Any], references: dict[str, dict[str, Any]],
               search_family: list[Candidate], rows: dict[str, dict[str, Any]], storage: str,
               aware: list[str], mode: Mode) -> dict[str, Any]:
    out: dict[str, Any] = {"recipes": {}, "aware": {}, "probe_strategy": {}}
    fixed = []
    for r in ctx.args.fixed_reductions:  # the search's candidates nearest these reductions
        if search_family:
            c = min(search_family, key=lambda c: abs((1 - c.params / ctx.original_params) - r))
            if c not in fixed:
                fixed.append(c)
    for name, config in zip(ctx.args.recipes, recipes):
        ref = references[name]
        found = best_within(ctx, search_family, config, ref) if search_family else None
        row = found["row"] if found else {}
        row.pop("_candidate", None)
        at = [{"label": c.label, "param_reduction": round(1 - c.params / ctx.original_params, 4),
               **{k: v for k, v in ctx.evaluator.finetuned(c.plan or {}, config).items()
                  if k in ("val_after", "test_after")}} for c in fixed]
        out["recipes"][name] = {"recipe": config.describe(), "fair_reference_val": ref["val_after"],
                                "fair_reference_test": ref["test_after"], "search": row,
                                "at_fixed_sizes": at}
    if not aware:
        out["aware"] = {"available": False,
                        "note": "no activation-aware method is registered in this build"}
    else:
        on = rows.get("search", {})
        from lrf_optuna.search import LRFObjective

        off_obj = LRFObjective(ctx.problem.model, ctx.problem.splits.x_cal,
                               cache=ctx.objective.cache,
                               methods=[m for m in _methods() if not _is_aware(m)],
                               progress=False)
        off_study = run_studies(ctx, ctx.args.trials, storage, suffix="-noaware",
                                objective=off_obj, samplers=["nsga2"])["nsga2"]
        off = best_within(ctx, _study_family(ctx, off_study), recipes[0],
                          references[ctx.args.recipes[0]])["row"]
        off.pop("_candidate", None)
        out["aware"] = {"available": True, "methods": aware, "on": on, "off": off}
    if search_family:
        ref = references[ctx.args.recipes[0]]
        for strategy in ("bisect", "interpolate"):
            found = best_within(ctx, search_family, recipes[0], ref, strategy=strategy)
            out["probe_strategy"][strategy] = {
                "evaluations": len(found["search"].probes),
                "chosen": found["row"].get("label")}
    return out


# -- probe strategies on simulated fronts ------------------------------------------------------

def simulate_probe_strategies(n_fronts: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Probes needed by bisection and interpolation on simulated fronts: 10-60 candidates,
    accuracy ``ref - a exp(-b proxy)`` plus noise (0, 0.2 or 0.5 pp), target 1 pp below."""
    from lrf_optuna.finetune.budget import smallest_passing

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    fronts = []
    for _ in range(n_fronts):
        n = int(rng.integers(10, 61))
        proxy = np.sort(rng.uniform(0.01, 0.99, n)) ** rng.uniform(0.5, 2)
        acc = (0.93 - rng.uniform(0.2, 0.8) * np.exp(-rng.uniform(3, 25) * proxy)
               + rng.normal(0, rng.choice([0, 0.002, 0.005]), n))
        fronts.append((proxy, acc))
    for strategy in ("bisect", "interpolate"):
        probes, missed = [], 0
        for proxy, acc in fronts:
            found = smallest_passing(list(proxy), lambda i, a=acc: float(a[i]), 0.92,
                                     strategy=strategy, top=(1.0, 0.93))  # type: ignore[arg-type]
            probes.append(found.n_evaluated)
            truth = next((i for i in range(len(acc)) if acc[i] >= 0.92), None)
            missed += found.chosen != truth
        out[strategy] = {"mean_probes": round(float(np.mean(probes)), 2),
                         "max_probes": int(np.max(probes)),
                         "not_the_smallest_passing": missed}
    out["fronts"] = n_fronts
    return out


# -- output -------------------------------------------------------------------------------------

def _acc(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(results: dict[str, Any], html_name: str | None) -> str:
    mode = results["mode"]
    lines = [f"`{results['command']}` ({results['machine']}; {results['date']}; "
             f"{results['seconds'] / 60:.0f} min in all).", ""]
    if mode != "full":
        lines += [f"**{mode.upper()} MODE**: training subsets and short recipes, for the "
                  "harness and a first look only; the targets are judged on the full mode.", ""]
    if html_name:
        lines += [f"Accuracy-vs-parameters curves (plotly, HTML): [{html_name}]({html_name}).",
                  ""]
    sim = results.get("probe_strategies")
    for name, m in results["models"].items():
        o = m["original"]
        key = _best_key(m["max_drop_pp"])
        lines += [f"### {name}", "",
                  f"Original: {o['params']:,} params, {o['flops']:,} FLOPs, trained "
                  f"{o['train_epochs']} epochs on {o['train_images']:,} images (val accuracy by "
                  f"epoch, last 3: {', '.join(_acc(v) for v in o['val_accuracy_by_epoch'][-3:])}"
                  f"); untouched val / test {_acc(m['untouched_val_accuracy'])} / "
                  f"{_acc(m['untouched_test_accuracy'])} %. Fair reference (the original "
                  f"fine-tuned with {m['recipe_text']}): val / test "
                  f"{_acc(m['fair_reference_val_accuracy'])} / "
                  f"{_acc(m['fair_reference_test_accuracy'])} %. Budget: "
                  f"{m['max_drop_pp']:g} pp of val accuracy below the fair reference, "
                  "decided on val, reported on test.", ""]
        rows = []
        for sel, r in sorted(m[key].items(), key=lambda kv: -kv[1]["param_reduction"]):
            rows.append([sel, r.get("label") or "(none within)", _pct(r["param_reduction"]),
                         _pct(r["flops_reduction"]), _pp(r.get("val_drop_pp")),
                         _pp(r.get("test_drop_pp")), _pp(r.get("test_drop_vs_original_pp")),
                         f"{r.get('latency_speedup_keras', 0):.2f}x" if r["within"] else "-",
                         f"{r.get('latency_speedup_tflite', 0):.2f}x" if r["within"] else "-",
                         f"{r['probes']}/{r['candidates']}", f"{r['seconds']:.0f}"])
        lines += [markdown_table(["selection", "pick", "params saved", "FLOPs saved",
                                  "val drop vs ref (pp)", "test drop vs ref (pp)",
                                  "test drop vs orig (pp)", "Keras speed-up",
                                  "TFLite speed-up", "probes / candidates", "s"], rows), ""]
        pq = m["proxy_quality"]
        if pq:
            prow = []
            for label, block in (("after fine-tuning", pq.get("finetuned")),
                                 ("without fine-tuning", pq.get("without_finetuning")),
                                 ("pruned plans (search+prune), after fine-tuning",
                                  pq.get("pruned_finetuned")),
                                 ("pruned plans (search+prune), without fine-tuning",
                                  pq.get("pruned_without_finetuning"))):
                if block and block["n"]:
                    prow.append([label, str(block["n"]), *(f"{block.get(a, float('nan')):.3f}"
                                                          for a in ("product", "mean", "min",
                                                                    "log_params"))])
            lines += ["Proxy quality: Spearman between the proxy and val accuracy "
                      "(aggregations of the same per-layer cosine similarities; log(params) "
                      "alone for comparison; after fine-tuning: trials spread along the "
                      "NSGA-II front).", "",
                      markdown_table(["accuracy", "plans", "product (default)", "mean", "min",
                                      "log(params)"], prow), ""]
        hv = m["hypervolume"]
        if hv:
            counts = [n for n, _ in next(iter(hv.values()))]
            lines += ["Hypervolume of (params, FLOPs, 1 - proxy), normalised by the original, "
                      "reference point 1.1, against the trial count (same cache, same seeded "
                      "strategy plans):", "",
                      markdown_table(["sampler", *[str(n) for n in counts]],
                                     [[s, *[f"{v:.4f}" for _, v in series]]
                                      for s, series in hv.items()]), ""]
        for kind, c in m["claims"].items():
            crow = [[label, _pct(r["param_reduction"]), _pp(r.get("val_drop_pp")),
                     _pp(r.get("test_drop_pp")), f"{r['probes']}/{r['candidates']}"]
                    for label, r in c["rows"].items()]
            extra = (f"; TT minus the best of SVD and QR: {c['tt_minus_best_of_svd_qr_pp']:+.1f}"
                     " pp (paper: up to +20 %)" if "tt_minus_best_of_svd_qr_pp" in c else "")
            lines += [f"Paper claim, {kind} layers ({c['layer_params']:,} params): largest "
                      f"reduction of these layers' parameters within the budget; hybrid minus "
                      f"the best single method: {c['hybrid_minus_best_single_pp']:+.1f} pp"
                      + (" (paper: +11.3 %)" if kind == "conv" else "") + extra + ".", "",
                      markdown_table([f"{kind} selection", "layer params saved",
                                      "val drop vs ref (pp)", "test drop vs ref (pp)",
                                      "probes / candidates"], crow), ""]
        lv = m["levers"]
        lrows = []
        for rname, r in lv["recipes"].items():
            s = r["search"]
            fixed = "; ".join(f"{_pct(a['param_reduction'])}: {_acc(a['val_after'])} / "
                              f"{_acc(a['test_after'])}" for a in r["at_fixed_sizes"])
            lrows.append([rname, r["recipe"], f"{_acc(r['fair_reference_val'])} / "
                          f"{_acc(r['fair_reference_test'])}", _pct(s.get("param_reduction")),
                          _pp(s.get("val_drop_pp")), _pp(s.get("test_drop_pp")), fixed])
        lines += ["Levers, recipes (search selection; absolute val / test accuracy of the same "
                  "plans at fixed sizes, since a recipe that lowers the fair reference "
                  "\"improves\" the drop without a better model):", "",
                  markdown_table(["recipe", "settings", "fair ref val / test (%)",
                                  "search: params saved", "val drop (pp)", "test drop (pp)",
                                  "same plans: saved: val / test (%)"], lrows), ""]
        aw = lv["aware"]
        if aw.get("available"):
            lines += [f"Activation-aware methods ({', '.join(aw['methods'])}): search within "
                      f"the budget with them {_pct(aw['on'].get('param_reduction'))}, without "
                      f"{_pct(aw['off'].get('param_reduction'))} params saved.", ""]
        else:
            lines += [f"Activation-aware methods: {aw.get('note')}.", ""]
        ps = lv["probe_strategy"]
        if ps:
            lines += ["Probe strategy on the search selection: " + ", ".join(
                f"{k} {v['evaluations']} evaluations -> {v['chosen']}" for k, v in ps.items())
                + ".", ""]
        st = m["stage_seconds"]
        lines += ["Wall time by stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in st.items())
                  + f"; {m['finetunings_run']} fine-tuning(s) run now (the rest from the cache).",
                  ""]
    if sim:
        lines += ["### Probe strategies", "",
                  f"On {sim['fronts']} simulated fronts (10-60 candidates, accuracy saturating "
                  "in the proxy, noise 0 / 0.2 / 0.5 pp, target 1 pp below): " + ", ".join(
                      f"{k}: {v['mean_probes']} probes on average, at most {v['max_probes']}, "
                      f"{v['not_the_smallest_passing']} fronts answered with a larger than "
                      "the smallest passing candidate"
                      for k, v in sim.items() if k != "fronts") + ".", ""]
    return "\n".join(lines)


def write_curves(results: dict[str, Any], path: Path, *, inline: bool) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = list(results["models"])
    fig = make_subplots(rows=len(models), cols=1, subplot_titles=models,
                        vertical_spacing=0.12 / max(len(models), 1))
    for i, name in enumerate(models, 1):
        m = results["models"][name]
        for sel, pts in m["curves"].items():
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[p["params"] for p in pts], y=[100 * p["val"] for p in pts],
                mode="lines+markers", name=f"{name}: {sel}", legendgroup=name,
                customdata=[[p["label"], 100 * p["test"]] for p in pts],
                hovertemplate=(f"<b>{sel}</b> %{{customdata[0]}}<br>params %{{x:,}}<br>"
                               "val %{y:.2f} %<br>test %{customdata[1]:.2f} %<extra></extra>")),
                row=i, col=1)
        ref = 100 * m["fair_reference_val_accuracy"]
        for y, dash, label in ((ref, "dash", "fair reference (val)"),
                               (ref - m["max_drop_pp"], "dot", "budget")):
            fig.add_hline(y=y, line_dash=dash, annotation_text=label, row=i, col=1)
        fig.update_xaxes(type="log", title_text="parameters", row=i, col=1)
        fig.update_yaxes(title_text="val accuracy after fine-tuning (%)", row=i, col=1)
    fig.update_layout(height=520 * len(models), template="plotly_white",
                      title=f"Compression benchmark ({results['mode']} mode): accuracy vs "
                            "parameters at equal fine-tuning")
    fig.write_html(str(path), include_plotlyjs=True if inline else "cdn")


# -- command line ---------------------------------------------------------------------------------

def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Mode, str]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="subsets and short recipes")
    group.add_argument("--tiny", action="store_true", help="CI smoke test (seconds)")
    parser.add_argument("--models", type=_csv, default=None)
    parser.add_argument("--selections", type=_csv, default=list(SELECTIONS),
                        help=f"subset of {','.join(SELECTIONS)}; opt-in: "
                             f"{','.join(PRUNE_SELECTIONS)}")
    parser.add_argument("--uniform", type=_csv, default=None,
                        help="conv+fc method pairs of the uniform selections")
    parser.add_argument("--recipes", type=_csv, default=None,
                        help="first: the main recipe; the others: levers")
    parser.add_argument("--aware", choices=["on", "off"], default="on",
                        help="activation-aware methods in the main search (when registered)")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--max-probes", type=int, default=None,
                        help="probes per selection (default: until decided; tiny: 1)")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--train-epochs", type=_csv, default=[],
                        help="e.g. vgg_small=30,resnet20=40 (training of the originals)")
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=None,
                        help="validation images held out of --train-images (default: 10 %%; "
                             "quick: 2000)")
    parser.add_argument("--spearman-finetuned", type=int, default=None)
    parser.add_argument("--spearman-plans", type=int, default=None)
    parser.add_argument("--curve-points", type=int, default=None)
    parser.add_argument("--claims", type=_csv, default=None, help="models of the paper claims")
    parser.add_argument("--claims-conv", type=_csv, default=None)
    parser.add_argument("--claims-fc", type=_csv, default=None)
    parser.add_argument("--fixed-reductions", type=_csv, default=None)
    parser.add_argument("--latency-repeats", type=int, default=None)
    parser.add_argument("--calibration-size", type=int, default=None)
    add_output_arguments(parser, cache_name="compression",
                         writes="results.json and the curves' HTML")
    parser.add_argument("--inline-plotlyjs", action="store_true")
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "tiny" if args.tiny else "full"
    mode = MODES[mode_name]
    resolve_outputs(args, tiny=mode_name == "tiny", cache_name="compression")
    defaults = {"models": list(mode.models), "uniform": list(mode.uniform),
                "recipes": list(mode.recipes), "trials": mode.trials,
                "spearman_finetuned": mode.spearman_finetuned,
                "spearman_plans": mode.spearman_plans, "curve_points": mode.curve_points,
                "claims": list(mode.claims_models), "claims_conv": list(mode.claims_conv),
                "claims_fc": list(mode.claims_fc),
                "fixed_reductions": list(mode.fixed_reductions),
                "latency_repeats": mode.latency_repeats, "max_probes": mode.max_probes,
                "train_images": mode.train_images, "val_images": mode.val_images,
                "calibration_size": 64 if mode_name == "tiny" else 512}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.fixed_reductions = [float(x) for x in args.fixed_reductions]
    epochs = dict(mode.train_epochs or {})
    for item in args.train_epochs:
        k, _, v = item.partition("=")
        epochs[k] = int(v)
    args.train_epochs = epochs
    unknown = [m for m in args.models if m not in MODELS]
    bad = [s for s in args.selections if s not in SELECTIONS + PRUNE_SELECTIONS]
    if unknown or bad:
        parser.error(f"unknown models {unknown} / selections {bad}")
    for r in args.recipes:
        parse_recipe(r)
    return args, mode, mode_name


def main(argv: Sequence[str] | None = None) -> int:
    args, mode, mode_name = parse_args(argv)
    head = start_run("benchmarks.compression", argv)
    start = time.perf_counter()
    dataset = load_dataset(mode_name, args.train_images, mode.test_images)
    results: dict[str, Any] = {"mode": mode_name, **head, "models": {}}
    for name in args.models:
        logger.info("=== %s ===", name)
        results["models"][name] = run_model(name, mode, args, dataset)
    results["probe_strategies"] = simulate_probe_strategies(200 if mode_name == "tiny" else 2000)
    results["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    html_name = f"compression_{mode_name}.html"
    body = markdown(results, None if args.no_write else html_name)
    print(body)
    if not args.no_write:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
        write_curves(results, out / html_name, inline=args.inline_plotlyjs)
        write_section(f"Compression benchmark ({mode_name} mode)", body, args.results_md)
    return 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    if dataclasses.is_dataclass(x):
        return _jsonable(dataclasses.asdict(x))  # type: ignore[arg-type]
    return x


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
