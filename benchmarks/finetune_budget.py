"""The fine-tuning budget (issue 17): which recipe defaults hold at 4,000, 18,000 and
54,000 training images, and what BatchNorm re-estimation does.

For each user-style net of ``benchmarks/user_nets.py`` and each data size: train the
original (cached), build the similarity cache with and without the BatchNorm view
(:class:`lrf_optuna.scoring.similarity.BatchNormView`), run a short NSGA-II search, and take
``--plans`` plans spread along the (params, proxy) front. Each plan and the original (the
fair reference of each recipe) are fine-tuned with every recipe; the table gives, per
recipe, the mean validation and test drop against that recipe's fair reference (paired on
the same images), the steps and seconds; then, per plan, the validation accuracy as built,
after BatchNorm re-estimation and after fine-tuning. The Spearman correlation of the proxy
with the accuracy before fine-tuning (``--spearman-plans`` plans from the front) is given
for both caches, with and without re-estimation.

    python -m benchmarks.finetune_budget --nets mobile,residual --sizes 4000,18000
    python -m benchmarks.finetune_budget --tiny --out /tmp/fb      # CI smoke

Writes the section ``## Fine-tuning budget (<mode> mode)`` of ``benchmarks/RESULTS.md`` and
``benchmarks/results_finetune_budget.json`` (or ``--out``). The validation split decides;
test numbers are only reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._finetuned import PlanEvaluator, spearman
from benchmarks._problem import machine, setup_logging
from benchmarks._results import RESULTS_PATH, markdown_table, write_section
from lrf_optuna.study.records import PARAMS_ATTR, PROXY_ATTR

logger = logging.getLogger("benchmarks.finetune_budget")

HERE = Path(__file__).resolve().parent

#: The recipes compared: the first default (3 epochs, best by val accuracy, patience 1,
#: no re-estimation), it with re-estimation, step budgets and learning rates with
#: cross-entropy, the default (600 steps, distilled) and the escalation recipe.
CE = {"distill": 0.0}
RECIPES: dict[str, dict[str, Any]] = {
    "old": {**CE, "epochs": 3, "patience": 1, "monitor": "val_accuracy", "bn_images": 0},
    "old+bn": {**CE, "epochs": 3, "patience": 1, "monitor": "val_accuracy"},
    "steps300": {**CE, "min_steps": 300},
    "steps600": {**CE},  # the default before distillation (issue 17)
    "steps600-acc-p1": {**CE, "monitor": "val_accuracy", "patience": 1},
    "steps1200": {**CE, "min_steps": 1200},
    "lr3e-4": {**CE, "learning_rate": 3e-4},
    "lr1e-4": {**CE, "learning_rate": 1e-4},
    "longer-lr1e-4": {"min_steps": 2400, "max_epochs": 120, "patience": 6, "distill": 0.9,
                      "learning_rate": 1e-4},
    "longer": {"min_steps": 2400, "max_epochs": 120, "patience": 6, "distill": 0.9},
    # the two halves of "longer", to tell which one helps: distillation alone (the
    # default), steps alone
    "kd600": {"distill": 0.9},
    "steps2400": {**CE, "min_steps": 2400, "max_epochs": 120, "patience": 6},
}


def recipe(name: str, table: dict[str, dict[str, Any]] | None = None) -> Any:
    """The :class:`~lrf_optuna.finetune.FinetuneConfig` of a named recipe (of ``table``,
    default :data:`RECIPES`)."""
    from lrf_optuna.finetune import FinetuneConfig

    return dataclasses.replace(FinetuneConfig(verbose=0), **(table or RECIPES)[name])


def _front_plans(objective: Any, study: Any, k: int) -> list[tuple[int, Any]]:
    """``k`` plans of the (params, proxy) front, evenly spread in log(params)."""
    from lrf_optuna.finetune import budget_candidates
    from lrf_optuna.plan import decode_plan

    front = budget_candidates(study)
    if not front:
        return []
    logp = np.log([float(t.user_attrs[PARAMS_ATTR]) for t in front])
    picks: list[int] = []
    for target in np.linspace(logp[0], logp[-1], k + 2)[1:-1] if k > 0 else []:
        i = int(np.argmin(np.abs(logp - target)))
        if i not in picks:
            picks.append(i)
    return [(front[i].number, decode_plan(front[i])) for i in picks]


def run_one(net: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every recipe on ``--plans`` plans of ``net`` trained on ``size`` images."""
    import optuna

    from benchmarks import user_nets
    from lrf_optuna.data import prepare_splits
    from lrf_optuna.finetune.batchnorm import batchnorm_layers, reestimate_batchnorm
    from lrf_optuna.models.training import evaluate
    from lrf_optuna.problem import Problem
    from lrf_optuna.scoring.cache import SimilarityCache
    from lrf_optuna.search import LRFObjective, SeededNSGAIISampler

    cache_dir = Path(args.cache_dir)
    data = user_nets.load_dataset(args.mode, size, args.test_images, args.seed)
    splits = prepare_splits(data, calibration_size=args.calibration_size, seed=args.seed)
    epochs = args.train_epochs or user_nets.NETS[net].epochs
    trained = user_nets.train_net(net, 1.0, splits, epochs=epochs, seed=args.seed,
                                  cache_dir=cache_dir)
    problem = Problem.from_objects(trained.model, data, seed=args.seed,
                                   calibration_size=args.calibration_size,
                                   cache_dir=cache_dir / "similarity")
    out: dict[str, Any] = {"net": net, "size": size, "train": len(splits.x_train),
                           "val": len(splits.x_val), "test": len(splits.x_test),
                           "params": trained.params, "val_acc": trained.val_acc,
                           "test_acc": trained.test_acc}
    caches = {bn: SimilarityCache.build(problem.model, splits.x_cal,
                                        cache_dir=cache_dir / "similarity", batchnorm=bn,
                                        progress=False) for bn in (True, False)}
    objective = LRFObjective(problem.model, splits.x_cal, cache=caches[True], progress=False)
    study = optuna.create_study(directions=objective.directions,
                                sampler=SeededNSGAIISampler(seed=args.seed))
    objective.describe_study(study)
    objective.seed_study(study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=args.trials)
    plans = _front_plans(objective, study, args.plans)
    evaluator = PlanEvaluator(problem, caches[True], root=cache_dir / "finetuned")

    # the proxy against accuracy before fine-tuning, with and without re-estimation
    spear = _front_plans(objective, study, args.spearman_plans)
    plain_objective = LRFObjective(problem.model, splits.x_cal, cache=caches[False],
                                   progress=False)
    if batchnorm_layers(problem.model) and spear:
        rows = []
        for number, plan in spear:
            trial = study.trials[number]
            model = evaluator.build(plan)
            built = evaluate(model, splits.x_val, splits.y_val)
            reestimate_batchnorm(model, splits.x_train)
            rows.append((float(trial.user_attrs[PROXY_ATTR]),
                         plain_objective.score(plan).proxy, built,
                         evaluate(model, splits.x_val, splits.y_val)))
        proxy, proxy_plain, built, bn = (list(c) for c in zip(*rows))
        out["spearman"] = {"plans": len(rows),
                           "view_vs_reestimated": spearman(proxy, bn),
                           "view_vs_built": spearman(proxy, built),
                           "plain_vs_reestimated": spearman(proxy_plain, bn),
                           "plain_vs_built": spearman(proxy_plain, built),
                           "val_built_mean": float(np.mean(built)),
                           "val_reestimated_mean": float(np.mean(bn))}
    out["recipes"] = {}
    for name in args.recipes:
        config = recipe(name, args.recipe_table)
        start = time.perf_counter()
        ref = evaluator.finetuned({}, config, correctness=True)
        rows = []
        for number, plan in plans:
            r = evaluator.finetuned(plan, config, correctness=True)
            rows.append({"trial": number, "params": r["params"],
                         "reduction": 1 - r["params"] / trained.params,
                         "val_before": r.get("val_before"), "val_after": r["val_after"],
                         "test_after": r["test_after"], "epochs": r.get("epochs_run"),
                         "seconds": r.get("seconds"),
                         "val_drop": _paired(ref, r, "val", len(splits.x_val)),
                         "test_drop": _paired(ref, r, "test", len(splits.x_test))})
        out["recipes"][name] = {
            "describe": config.describe(), "epochs": config.epochs_for(len(splits.x_train)),
            "reference_val": ref["val_after"], "reference_test": ref["test_after"],
            "plans": rows, "seconds": round(time.perf_counter() - start, 1)}
        logger.info("%s n=%d %s: %s", net, size, name,
                    [round(r["val_drop"][0], 2) for r in rows])
    return out


def _paired(ref: dict[str, Any], r: dict[str, Any], split: str, n: int
            ) -> tuple[float, float]:
    from lrf_optuna.paired import paired_drop, unpack_correct

    d = paired_drop(unpack_correct(ref[f"{split}_correct"], n),
                    unpack_correct(r[f"{split}_correct"], n))
    return round(d.drop_pp, 3), round(d.se_pp, 3)


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    lines = [f"Command: `{results['command']}` ({results['machine']}, {results['date']}; "
             f"{results['seconds']:.0f} s). Drops in pp against the fair reference of the "
             "same recipe, paired on the same images (mean over the plans, ± the mean "
             "standard error); decided on validation, test only reported.", ""]
    for run in results["runs"]:
        lines += [f"**{run['net']}, {run['size']:,} images** ({run['train']:,} train / "
                  f"{run['val']:,} val / {run['test']:,} test; original {run['params']:,} "
                  f"params, val {100 * run['val_acc']:.2f} %, test "
                  f"{100 * run['test_acc']:.2f} %)", ""]
        rows = []
        for name, r in run["recipes"].items():
            plans = r["plans"]
            if not plans:
                continue
            val = np.mean([p["val_drop"][0] for p in plans])
            val_se = np.mean([p["val_drop"][1] for p in plans])
            test = np.mean([p["test_drop"][0] for p in plans])
            rows.append([name, r["describe"], r["epochs"], f"{100 * r['reference_val']:.2f}",
                         f"{val:+.2f} ± {val_se:.2f}", f"{test:+.2f}",
                         " / ".join(f"{p['val_drop'][0]:+.2f}" for p in plans),
                         f"{r['seconds']:.0f}"])
        lines += [markdown_table(["recipe", "what", "epochs", "fair ref val %",
                                  "val drop (pp)", "test drop (pp)", "val drop per plan",
                                  "s (all jobs)"], rows), ""]
        first = next(iter(run["recipes"].values()), None)
        if first and first["plans"]:
            lines += ["Plans: " + ", ".join(f"#{p['trial']} ({100 * p['reduction']:.1f} % "
                                            "params saved)" for p in first["plans"]), ""]
        sp = run.get("spearman")
        if sp:
            lines += [f"Proxy Spearman with val accuracy before fine-tuning, {sp['plans']} "
                      f"front plans: BatchNorm-view proxy {sp['view_vs_reestimated']:.3f} "
                      f"(re-estimated) / {sp['view_vs_built']:.3f} (as built); plain proxy "
                      f"{sp['plain_vs_reestimated']:.3f} / {sp['plain_vs_built']:.3f}. Mean "
                      f"val accuracy before fine-tuning: {100 * sp['val_built_mean']:.1f} % "
                      f"as built, {100 * sp['val_reestimated_mean']:.1f} % re-estimated.",
                      ""]
    return "\n".join(lines)


def _csv(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_budget",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CI smoke: synthetic images")
    p.add_argument("--nets", type=_csv, default=None)
    p.add_argument("--sizes", type=lambda t: [int(x) for x in _csv(t)], default=None)
    p.add_argument("--recipes", type=_csv, default=None)
    p.add_argument("--plans", type=int, default=None, help="plans fine-tuned per recipe")
    p.add_argument("--spearman-plans", type=int, default=None)
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--train-epochs", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=str(HERE / ".cache" / "finetune_budget"))
    p.add_argument("--out", default=None, help="results directory (default: benchmarks/)")
    p.add_argument("--no-write", action="store_true",
                   help="print the table only (no RESULTS.md section, no JSON)")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.mode = "tiny" if tiny else "full"
    defaults = {"nets": ["mobile"] if tiny else ["plain", "residual", "mobile"],
                "sizes": [200] if tiny else [4000, 18000, 54000],
                "recipes": ["old", "steps600"] if tiny else list(RECIPES),
                "plans": 1 if tiny else 2, "spearman_plans": 3 if tiny else 12,
                "trials": 30 if tiny else 300, "train_epochs": 1 if tiny else None,
                "test_images": 100 if tiny else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.recipe_table = dict(RECIPES)
    if tiny:  # every recipe at most two epochs
        args.calibration_size = 32
        args.recipe_table = {k: {**v, **({"epochs": 1} if "epochs" in v else
                                         {"min_steps": 4, "min_epochs": 1, "max_epochs": 2})}
                             for k, v in RECIPES.items()}
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from datetime import datetime, timezone

    args = parse_args(argv)
    setup_logging()
    start = time.perf_counter()
    runs = [run_one(net, size, args) for size in args.sizes for net in args.nets]
    results = {"command": "python -m benchmarks.finetune_budget " + " ".join(
                   sys.argv[1:] if argv is None else argv),
               "machine": machine(), "date": datetime.now(timezone.utc).date().isoformat(),
               "seconds": time.perf_counter() - start, "runs": runs}
    body = markdown(results)
    print(body)
    if args.no_write:
        return 0
    out = Path(args.out) if args.out else HERE
    out.mkdir(parents=True, exist_ok=True)
    (out / "results_finetune_budget.json").write_text(json.dumps(results, indent=1,
                                                                 default=str))
    write_section(f"Fine-tuning budget ({args.mode} mode)", body,
                  out / "RESULTS.md" if args.out else RESULTS_PATH)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
