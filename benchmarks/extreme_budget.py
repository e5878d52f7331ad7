"""The extreme budget: what gets a plan at (say) 97 % fewer parameters back within the
accuracy budget -- a search focused on the budget, and/or a longer (distilled) recipe?

For one model of the compression benchmark (same original, splits, similarity cache and
fine-tuning cache, so it reuses a :mod:`benchmarks.compression` run's ``--cache-dir``):

1. the best-proxy plan of at most ``--budget`` of the original's parameters in the harness's
   own NSGA-II study (``nsga2``, run here if missing);
2. the best-proxy plan of a *focused* study per sampler (seeded NSGA-II and TPE), whose
   objective carries the constraint ``max_params`` (:class:`lrf_optuna.search.LRFObjective`);
3. each plan fine-tuned with each ``--recipes`` recipe (names as in
   :func:`benchmarks.compression.parse_recipe`), beside the **fair reference** of that recipe
   (the original fine-tuned with it). ``--references`` limits the recipes whose reference is
   computed (each costs the original's training for the recipe's epochs); for the others the
   untouched original stands in: its validation accuracy is a lower bound of the fair
   reference, since a fine-tuning that does not beat it is reverted, so a plan that misses
   the budget against it misses it against the fair reference too.

The table reports val and test accuracy after fine-tuning and the drops against the fair
reference (the budget is decided on val). Writes the section ``## Extreme budget
(<model>)`` of ``benchmarks/RESULTS.md``.

    python -m benchmarks.extreme_budget --model vgg_small --train-images 20000 \\
        --train-epochs 15 --budget 0.03 --recipes ce3,ce20-p20,kd20-p20,kd40-p40 \\
        --cache-dir /work/bench_med2/cache
    python -m benchmarks.extreme_budget --tiny --cache-dir /tmp/x   # smoke (seconds)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks._finetuned import PlanEvaluator
from benchmarks._problem import machine, setup_logging
from benchmarks._results import RESULTS_PATH, markdown_table, write_section
from benchmarks.compression import (
    MODELS,
    load_dataset,
    parse_recipe,
    prepare_problem,
    run_studies,
    study_storage,
)
from lrf_optuna.study.records import PARAMS_ATTR

__all__ = ["main", "run"]

logger = logging.getLogger("benchmarks.extreme_budget")


def _best_under(study: Any, objective: Any, max_params: float) -> tuple[int, dict] | None:
    """(trial number, plan) of the highest-proxy COMPLETE trial within ``max_params``."""
    from lrf_optuna.plan import decode_plan

    best = None
    for t in study.trials:
        if t.state.name != "COMPLETE" or t.user_attrs.get(PARAMS_ATTR, float("inf")) > max_params:
            continue
        plan = decode_plan(t)
        proxy = objective.score(plan).proxy
        if best is None or proxy > best[0]:
            best = (proxy, t.number, plan)
    return None if best is None else (best[1], best[2])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (see the module docstring); returns the rows and the references."""
    import optuna

    from lrf_optuna.search import LRFObjective, SeededNSGAIISampler, run_remaining

    spec = MODELS[args.model]
    cache = Path(args.cache_dir)
    dataset = load_dataset("tiny" if args.tiny else "full", args.train_images, None)
    trained, splits, problem = prepare_problem(args.model, spec, dataset,
                                               args.train_epochs or spec.epochs, cache, args)
    objective = LRFObjective(problem.model, splits.x_cal, cache_dir=cache / "similarity",
                             progress=False)
    evaluator = PlanEvaluator(problem, objective.cache, root=cache / "finetuned")
    original = int(problem.model.count_params())
    max_params = args.budget * original
    storage = study_storage(cache, args.model, evaluator.key)
    plans: dict[str, tuple[int, dict]] = {}
    found = _best_under(run_studies(SimpleNamespace(objective=objective), args.trials, storage,
                                    samplers=["nsga2"])["nsga2"], objective, max_params)
    if found:
        plans["search (nsga2 study)"] = found
    focused = LRFObjective(problem.model, splits.x_cal, cache=objective.cache,
                           max_params=max_params, progress=False)
    samplers = {"focused nsga2": SeededNSGAIISampler(seed=0, population_size=50),
                "focused tpe": optuna.samplers.TPESampler(seed=0, multivariate=True)}
    for name, sampler in samplers.items():
        study = optuna.create_study(
            study_name=f"{name.replace(' ', '-')}-{args.budget:g}", storage=storage,
            load_if_exists=True, directions=focused.directions, sampler=sampler)
        focused.describe_study(study)
        focused.seed_study(study)
        start = time.perf_counter()
        run_remaining(study, focused, args.trials, show_progress_bar=False)
        logger.info("%s: %d trials in %.0f s", name, args.trials, time.perf_counter() - start)
        found = _best_under(study, objective, max_params)
        if found:
            plans[name] = found
    rows, references = [], {}
    for recipe in args.recipes:
        config = parse_recipe(recipe)
        wanted = args.references == "all" or recipe in args.references.split(",")
        ref = evaluator.finetuned({}, config) if wanted else None
        references[recipe] = ref
        ref_val = ref["val_after"] if ref else trained.record.val_accuracy
        ref_test = ref["test_after"] if ref else trained.record.test_accuracy
        for name, (number, plan) in plans.items():
            r = evaluator.finetuned(plan, config)
            rows.append({"recipe": recipe, "plan": f"{name} #{number}", "params": r["params"],
                         "param_reduction": 1 - r["params"] / original,
                         "proxy": objective.score(plan).proxy, "val": r["val_after"],
                         "test": r["test_after"], "val_drop_pp": 100 * (ref_val - r["val_after"]),
                         "test_drop_pp": 100 * (ref_test - r["test_after"]),
                         "reference": "fair" if ref else "untouched (lower bound)",
                         "seconds": r["seconds"]})
            logger.info("%s", rows[-1])
    return {"original": {"params": original, "val": trained.record.val_accuracy,
                         "test": trained.record.test_accuracy},
            "budget": args.budget, "rows": rows, "references": references}


def markdown(out: dict[str, Any], command: str) -> str:
    o = out["original"]
    lines = [f"`{command}` ({machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "",
             f"Original: {o['params']:,} params, untouched val / test {100 * o['val']:.2f} / "
             f"{100 * o['test']:.2f} %. Budget: at most {100 * out['budget']:g} % of the "
             f"parameters.", ""]
    refs = [f"{k}: val / test {100 * v['val_after']:.2f} / {100 * v['test_after']:.2f} %"
            + (" (reverted: no better than the untouched original)" if v.get("reverted") else "")
            for k, v in out["references"].items() if v]
    if refs:
        lines += ["Fair references: " + "; ".join(refs) + ".", ""]
    header = ["recipe", "plan", "params", "saved", "proxy", "val %", "test %",
              "val drop (pp)", "test drop (pp)", "against", "s"]
    body = [[r["recipe"], r["plan"], f"{r['params']:,}", f"{100 * r['param_reduction']:.1f}%",
             f"{r['proxy']:.3f}", f"{100 * r['val']:.2f}", f"{100 * r['test']:.2f}",
             f"{r['val_drop_pp']:+.2f}", f"{r['test_drop_pp']:+.2f}", r["reference"],
             f"{r['seconds']:.0f}"] for r in out["rows"]]
    return "\n".join(lines) + "\n" + markdown_table(header, body)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="smoke: the harness's tiny model")
    p.add_argument("--model", default="vgg_small", choices=sorted(MODELS))
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--train-epochs", type=int, default=None)
    p.add_argument("--calibration-size", type=int, default=None)
    p.add_argument("--budget", type=float, default=0.03,
                   help="at most this fraction of the original's parameters")
    p.add_argument("--trials", type=int, default=2000, help="per study")
    p.add_argument("--recipes", default="ce3,kd20-p20")
    p.add_argument("--references", default="all",
                   help="recipes whose fair reference is computed: all, none or a list (the "
                        "others: drops against the untouched original, a lower bound)")
    p.add_argument("--cache-dir", default=str(Path(__file__).resolve().parent / ".cache"
                                              / "compression"))
    p.add_argument("--results-md", default=str(RESULTS_PATH))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.tiny:
        args.model, args.trials, args.budget = "tiny_vgg", min(args.trials, 30), 0.5
        args.recipes = "ce1"
    if args.calibration_size is None:  # the compression benchmark's defaults
        args.calibration_size = 64 if args.tiny else 512
    if not 0 < args.budget < 1:
        p.error(f"--budget must be a fraction in (0, 1), got {args.budget}")
    args.recipes = [r for r in args.recipes.split(",") if r]
    for recipe in args.recipes:
        try:
            parse_recipe(recipe)
        except ValueError as exc:
            p.error(f"--recipes: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import optuna

    args = parse_args(argv)
    setup_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = run(args)
    command = "python -m benchmarks.extreme_budget " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    body = markdown(out, command)
    print(body)
    if not args.no_write:
        write_section(f"Extreme budget ({args.model})", body, args.results_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
