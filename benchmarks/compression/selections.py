"""The selection families: the candidates each selection offers the probe search."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from benchmarks._finetuned import PlanEvaluator, plan_digest
from benchmarks.compression.config import (
    ENERGIES,
    FBP_RATIOS,
    NARROW_FRACTIONS,
    PRUNE_SELECTIONS,
    RATIOS,
    SELECTIONS,
    TAUS,
    ModelSpec,
    PlanDict,
    _is_aware,
    _methods,
    _scaled,
    train_original,
)
from lrf_optuna.plan import CompressionPlan
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR

# -- selections ----------------------------------------------------------------------------------

@dataclass
class BenchCandidate:
    """One member of a selection's family: a plan (or a narrow width), its size, and the
    position the probe search uses."""

    label: str
    params: int
    flops: int
    position: float
    plan: PlanDict | None = None
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

    def proxy(self, plan: PlanDict) -> float:
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

    def proxy(self, plan: PlanDict) -> float: ...


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


def _from_plans(ctx: PlanSource, named: Sequence[tuple[str, PlanDict]]) -> list[BenchCandidate]:
    """Candidates from plans: exact costs of the built model, deduplicated, saving at
    least 1 % of the parameters, smallest first."""
    from lrf_optuna.finetune.select import MIN_REDUCTION

    out: dict[str, BenchCandidate] = {}
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
        out[key] = BenchCandidate(label, before["params"], before["flops"],
                             math.log(max(before["params"], 1)), plan.copy(), proxy=proxy)
    return sorted(out.values(), key=lambda c: (c.params, c.label))


def _study_family(ctx: Context, study: Any) -> list[BenchCandidate]:
    from lrf_optuna.finetune import budget_candidates
    from lrf_optuna.plan import decode_plan

    out = []
    for t in budget_candidates(study):
        proxy = float(t.user_attrs[PROXY_ATTR])
        out.append(BenchCandidate(f"#{t.number}", int(t.user_attrs[PARAMS_ATTR]),
                             int(t.user_attrs[FLOPS_ATTR]), proxy, decode_plan(t), proxy=proxy))
    return out


def _uniform_plans(ctx: PlanSource, conv_method: str, fc_method: str, *,
                   layers: set[str] | None = None,
                   ratios: Sequence[float] = RATIOS) -> list[tuple[str, PlanDict]]:
    """One plan per ratio: ``conv_method`` on every conv, ``fc_method`` on every Dense
    (``"keep"``: none), each layer at the largest rank within ``ratio`` of its
    parameters, the first conv and the classifier kept (:func:`_user_kept`)."""
    from lrf_optuna.search.strategies import UniformRatio

    kept = _user_kept(ctx)
    convs, dense = _layer_kinds(ctx)
    out = []
    for ratio in ratios:
        plan: PlanDict = {}
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


def selection_family(ctx: Context, selection: str) -> list[BenchCandidate]:
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

def narrow_family(ctx: Context) -> list[BenchCandidate]:
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

    out: dict[float, BenchCandidate] = {}
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
        out[f] = BenchCandidate(f"width x{f:g}", int(costs.params), int(costs.flops),
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
