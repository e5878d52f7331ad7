"""One model's run: set-up, studies, selections, proxy quality, the paper's claims and
the levers."""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._finetuned import PlanEvaluator, spearman
from benchmarks.compression.config import (
    MODELS,
    SAMPLERS,
    Mode,
    _best_key,
    _is_aware,
    _methods,
    parse_recipe,
    prepare_problem,
    study_storage,
)
from benchmarks.compression.evaluation import best_within, hypervolumes, latency, run_studies
from benchmarks.compression.selections import (
    BenchCandidate,
    Context,
    _from_plans,
    _layer_kinds,
    _study_family,
    _uniform_plans,
    prune_objective,
    selection_family,
)
from lrf_optuna.plan import LRF_PLAN_ATTR
from lrf_optuna.study.records import PARAMS_ATTR

logger = logging.getLogger("benchmarks.compression")


# -- one model ---------------------------------------------------------------------------------

def run_model(name: str, mode: Mode, args: argparse.Namespace, dataset: Any) -> dict[str, Any]:
    from lrf_optuna.costs import model_costs
    from lrf_optuna.finetune import select_trials
    from lrf_optuna.plan import decode_plan
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
    trained, splits, problem = prepare_problem(name, spec, dataset, epochs, cache, args)
    stage("train original")
    aware = [m for m in _methods() if _is_aware(m)]
    methods = None if args.aware != "off" else [m for m in _methods() if not _is_aware(m)]
    objective = LRFObjective(problem.model, splits.x_cal, cache_dir=cache / "similarity",
                             methods=methods, progress=False)
    stage("similarity cache")
    evaluator = PlanEvaluator(problem, objective.cache, root=cache / "finetuned")
    storage = study_storage(cache, name, evaluator.key)
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
    picks: dict[str, BenchCandidate | None] = {}
    families: dict[str, list[BenchCandidate]] = {}
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

        def part(c: BenchCandidate, fixed: int = fixed) -> float:
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
               search_family: list[BenchCandidate], rows: dict[str, dict[str, Any]], storage: str,
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
