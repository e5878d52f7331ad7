"""Evaluation of a family: fine-tuning, the probe search within the budget, latency,
the studies, hypervolume and the probe strategies on simulated fronts."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks._finetuned import plan_digest
from benchmarks.compression.config import SAMPLERS, _scaled
from benchmarks.compression.selections import BenchCandidate, Context, _narrow_result
from lrf_optuna.plan import CompressionPlan
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR

# -- evaluation of a family ---------------------------------------------------------------------

def evaluate_candidate(ctx: Context, cand: BenchCandidate, config: Any) -> dict[str, Any]:
    """Accuracy after fine-tuning (narrow: after training from scratch for the original's
    epochs plus the recipe's)."""
    if cand.width is not None:
        out = _narrow_result(ctx, cand.width, ctx.train_epochs + config.epochs)
        return {**out, "flops": cand.flops}
    assert cand.plan is not None
    return ctx.evaluator.finetuned(cand.plan, config)


def best_within(ctx: Context, family: list[BenchCandidate], config: Any, reference: dict[str, Any],
                *, strategy: str = "bisect", extra_points: int = 0,
                params_of: Callable[[BenchCandidate], float] | None = None,
                base_params: float | None = None) -> dict[str, Any]:
    """The library's probe search over ``family`` against the fair reference; the row of
    the answer and the curve of everything evaluated."""
    from lrf_optuna.finetune.budget import smallest_passing

    target = reference["val_after"] - ctx.args.max_drop / 100.0
    results: dict[int, dict[str, Any]] = {}

    def score(i: int) -> float:
        results[i] = evaluate_candidate(ctx, family[i], config)
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


def latency(ctx: Context, cand: BenchCandidate | None) -> dict[str, float]:
    """Batch-1 latencies (ms) of a candidate's architecture (weights do not matter),
    measured once and cached beside its fine-tuning results (a rerun reports the same
    numbers instead of a new sample of the machine's noise)."""
    from lrf_optuna.models.zoo import build_reference_model
    from lrf_optuna.study.artifacts import measure_model

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
