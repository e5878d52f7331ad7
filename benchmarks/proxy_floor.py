"""Where fine-tuning stops recovering: accuracy after fine-tuning against the proxy.

Runs an NSGA-II search and a random search on a reference model, takes for each of a
ladder of proxy levels (0 ... 0.5) the trial whose proxy is nearest (the Pareto-optimal one
first, the largest on ties: the most favourable to recovery), fine-tunes each with the
default recipe (:class:`lrf_optuna.finetune.FinetuneConfig`, cached per plan by
:class:`benchmarks._finetuned.PlanEvaluator`) and writes the table to
``benchmarks/RESULTS.md`` under ``## Proxy floor``. The lowest proxy level that still
recovers decides :data:`lrf_optuna.finetune.select.PROXY_FLOOR` (below it ``-k`` and the
max-drop search never spend a fine-tuning job).

    python -m benchmarks.proxy_floor                  # LeNet-5, 1000 trials
    python -m benchmarks.proxy_floor --model vgg_small --train-images 10000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks._finetuned import PlanEvaluator
from benchmarks._problem import load, machine, setup_logging
from benchmarks._results import RESULTS_PATH, markdown_table, write_section
from lrf_optuna.plan import LRF_PLAN_ATTR
from lrf_optuna.study.records import PARAMS_ATTR, PROXY_ATTR

SECTION = "Proxy floor"
LEVELS = (0.0, 0.0003, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def main(argv: Sequence[str] | None = None) -> int:
    import optuna

    from lrf_optuna.finetune import FinetuneConfig
    from lrf_optuna.plan import decode_plan
    from lrf_optuna.search import LRFObjective

    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_floor")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tuning epochs (default: FinetuneConfig's)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="fine-tune on the first N training images only (faster)")
    parser.add_argument("--cache-root", default="benchmarks/.cache/finetuned")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    problem = load(args.model)
    if args.train_images is not None:
        import dataclasses

        s = problem.splits
        problem = dataclasses.replace(problem, splits=dataclasses.replace(
            s, x_train=s.x_train[:args.train_images], y_train=s.y_train[:args.train_images]))
    objective = LRFObjective(problem.model, problem.splits.x_cal, progress=False)
    study = optuna.create_study(directions=objective.directions,
                                sampler=optuna.samplers.NSGAIISampler(seed=0))
    objective.describe_study(study)
    objective.seed_study(study)
    study.optimize(objective, n_trials=args.trials)
    random = optuna.create_study(directions=objective.directions,
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    random.optimize(objective, n_trials=args.trials)
    original = float(objective.original_params)
    front = {t.number for t in study.best_trials}
    pool = [(t, t.number in front) for s in (study, random) for t in s.trials
            if t.user_attrs.get(LRF_PLAN_ATTR)]
    picked: list = []
    for level in LEVELS:
        t, _ = min(pool, key=lambda p: (round(abs(p[0].user_attrs[PROXY_ATTR] - level), 4),
                                               not p[1], -p[0].user_attrs[PARAMS_ATTR]))
        if all(t.user_attrs[LRF_PLAN_ATTR] != q.user_attrs[LRF_PLAN_ATTR] for q in picked):
            picked.append(t)
    config = FinetuneConfig(verbose=0) if args.epochs is None else FinetuneConfig(
        epochs=args.epochs, verbose=0)
    ev = PlanEvaluator(problem, objective.cache, root=args.cache_root)
    reference = ev.finetuned({}, config)
    chance = 1.0 / (int(problem.splits.y_train.max()) + 1)
    rows = []
    for t in sorted(picked, key=lambda t: t.user_attrs[PROXY_ATTR]):
        r = ev.finetuned(decode_plan(t), config)
        rows.append([f"{t.user_attrs[PROXY_ATTR]:.4f}", f"{r['params']:,}",
                     f"{100 * (1 - r['params'] / original):.1f}%",
                     f"{100 * r['val_before']:.2f}", f"{100 * r['val_after']:.2f}",
                     f"{100 * (reference['val_after'] - r['val_after']):+.2f}"])
    table = markdown_table(["proxy", "params", "params saved", "val acc before (%)",
                            "val acc after (%)", "drop vs fair ref (pp)"], rows)
    subset = f" --train-images {args.train_images}" if args.train_images else ""
    body = "\n".join([
        f"`python -m benchmarks.proxy_floor --model {args.model} --trials {args.trials}"
        f"{subset}` "
        f"({machine()}, {time.perf_counter() - start:.0f} s). Of a {args.trials}-trial "
        "NSGA-II search and as many random trials, the trial nearest to each of the proxy "
        f"levels {', '.join(f'{v:g}' for v in LEVELS)}, fine-tuned with "
        f"{config.describe()}. Fair reference (the original fine-tuned the same way): "
        f"val {100 * reference['val_after']:.2f} %; chance {100 * chance:.0f} %.", "",
        table])
    print(body)
    if not args.no_write:
        write_section(f"{SECTION}: {args.model}", body, RESULTS_PATH)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
