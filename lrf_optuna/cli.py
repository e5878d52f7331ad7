"""The ``lrf-optuna`` command line: search, show, finetune, export, report, dashboard.

Examples::

    lrf-optuna search --model vgg_small --n-trials 300          # sqlite:///studies/vgg_small.db
    lrf-optuna search --model my_net.keras --dataset data.npz --methods svd tucker2 tt
    lrf-optuna show --study-name vgg_small                      # the Pareto front as a table
    lrf-optuna report --study-name vgg_small                    # reports/vgg_small/report.html
    lrf-optuna dashboard --study-name vgg_small                 # optuna-dashboard on 127.0.0.1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from lrf_optuna.workspace import ProblemError, ProblemSpec, record_problem

__all__ = ["main"]

logger = logging.getLogger("lrf_optuna")


class CLIError(Exception):
    """A user error: printed as one clear line, exit status 2."""


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a reference model name (lenet5, vgg_small, resnet20, "
                        "mobilenetv2_small: trained on the dataset or loaded from the model "
                        "cache) or a path to a trained .keras file")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="'fashion-mnist' (offline Debian copy, LRF_OPTUNA_DATA or keras' "
                        "downloader) or a .npz file with x_train, y_train, x_test, y_test "
                        "(default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the Fashion-MNIST idx files")
    p.add_argument("--calibration-size", type=int, default=512,
                   help="calibration images drawn (stratified) from the training split "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, training and "
                   "the sampler (default: %(default)s)")


def _add_study_args(p: argparse.ArgumentParser, *, need_name: bool = False) -> None:
    p.add_argument("--study-name", required=need_name, default=None,
                   help="study name (default: the model name)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///studies/<study-name>.db; "
                        "postgresql://... for many workers)")


def spec_from_args(args: argparse.Namespace) -> ProblemSpec:
    """The problem the common arguments describe."""
    return ProblemSpec(model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                       seed=args.seed, calibration_size=args.calibration_size,
                       cache_dir=getattr(args, "cache_dir", ".lrf_cache"))


def _cmd_search(args: argparse.Namespace) -> int:
    import optuna

    from lrf_optuna.decompose import available_methods
    from lrf_optuna.search import (
        LRFObjective,
        default_storage,
        finished_trials,
        open_storage,
        run_remaining,
    )

    if args.methods:
        unknown = sorted(set(args.methods) - set(available_methods()))
        if unknown:
            raise CLIError(f"unknown --methods {unknown}; choose from {available_methods()}")
    if args.n_trials < 0:
        raise CLIError(f"--n-trials must be >= 0, but got {args.n_trials}")
    spec = spec_from_args(args)
    problem = spec.load()
    study_name = args.study_name or problem.name
    storage = args.storage or default_storage(study_name)
    objective = LRFObjective(
        problem.model, problem.splits.x_cal, cache_dir=args.cache_dir, metric=args.metric,
        aggregation=args.aggregation, objectives=args.objectives, layers=args.layers,
        methods=args.methods, max_params=args.max_params, max_flops=args.max_flops,
        min_proxy=args.min_proxy)
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage), load_if_exists=True,
        directions=objective.directions,
        sampler=optuna.samplers.NSGAIISampler(seed=args.seed,
                                              population_size=args.population_size))
    record_problem(study, spec)
    added = objective.seed_study(study)
    done = finished_trials(study)
    print(f"study {study_name!r} in {storage}: {done} finished trial(s), {added} strategy "
          f"plan(s) enqueued; target {args.n_trials} finished trials")
    try:
        run_remaining(study, objective, args.n_trials, show_progress_bar=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {finished_trials(study)} finished trial(s) are stored in "
              f"{storage}. Rerun the same command to continue.", file=sys.stderr)
        return 130
    print()
    print(pareto_table(study, top=args.top))
    return 0


def pareto_table(study: Any, *, top: int | None = None) -> str:
    """The study's Pareto front as a plain-text table, smallest model first."""
    from lrf_optuna.report_table import format_table

    original = study.user_attrs.get("lrf_optuna:original", {})
    trials = sorted(study.best_trials, key=lambda t: (t.user_attrs.get("params", 0),
                                                      t.number))
    if top is not None and len(trials) > top:
        step = (len(trials) - 1) / max(top - 1, 1)
        trials = [trials[round(i * step)] for i in range(top)]
    rows = []
    if original:
        rows.append(["orig", f"{original['params']:,}", "1.00x", f"{original['flops']:,}",
                     "0.0%", "1.0000", "", "(original model)"])
    for t in trials:
        ua = t.user_attrs
        plan = ua.get("plan", {})
        changed = {k: v for k, v in plan.items() if v != "keep"}
        summary = ", ".join(f"{k}: {v}" for k, v in changed.items()) or "(all kept)"
        rows.append([str(t.number), f"{ua.get('params', 0):,}",
                     f"{ua.get('compression_ratio', 0):.2f}x", f"{ua.get('flops', 0):,}",
                     f"{100 * ua.get('flops_reduction', 0):.1f}%",
                     f"{ua.get('proxy', float('nan')):.4f}", ua.get("strategy", ""),
                     summary])
    header = ["trial", "params", "compress", "FLOPs", "FLOPs saved", "proxy", "seeded by",
              "plan (changed layers)"]
    title = (f"Pareto front of study {study.study_name!r}: {len(study.best_trials)} trial(s) "
             f"of {len(study.trials)}")
    return title + "\n" + format_table(header, rows)


def _cmd_show(args: argparse.Namespace) -> int:
    from lrf_optuna.dashboard import load_study

    study = load_study(args.study_name, args.storage)  # clear errors: no database / study
    if not study.best_trials:
        print(f"study {study.study_name!r} has no finished trial yet")
        return 0
    print(pareto_table(study, top=args.top))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lrf_optuna.search import AGGREGATIONS, DEFAULT_AGGREGATION
    from lrf_optuna.similarity import DEFAULT_METRIC, METRICS

    parser = argparse.ArgumentParser(
        prog="lrf-optuna",
        description="Compress a trained Keras CNN by per-layer low-rank factorization, "
                    "searched with Optuna's NSGA-II over memory, FLOPs and a feature-map "
                    "similarity proxy.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="build the similarity cache and run (or resume) the "
                       "NSGA-II study", description="Build (or reuse) the similarity cache, "
                       "enqueue the rank-selection strategies' plans and run NSGA-II until "
                       "the study has --n-trials finished trials. Rerunning continues.")
    _add_problem_args(p)
    _add_study_args(p)
    p.add_argument("--n-trials", type=int, default=300,
                   help="total finished trials wanted (default: %(default)s)")
    p.add_argument("--population-size", type=int, default=50,
                   help="NSGA-II population size (default: %(default)s)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="restrict the LRF methods (default: all registered)")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                   help="restrict the searched layers (default: all decomposable)")
    p.add_argument("--metric", default=DEFAULT_METRIC, choices=sorted(METRICS),
                   help="similarity metric of the proxy (default: %(default)s)")
    p.add_argument("--aggregation", default=DEFAULT_AGGREGATION, choices=sorted(AGGREGATIONS),
                   help="how layer similarities combine (default: %(default)s)")
    p.add_argument("--objectives", nargs="+", default=["params", "flops", "proxy"],
                   choices=["params", "bytes", "flops", "macs", "proxy"],
                   help="objectives (default: params flops proxy)")
    p.add_argument("--max-params", type=float, default=None, help="constraint")
    p.add_argument("--max-flops", type=float, default=None, help="constraint")
    p.add_argument("--min-proxy", type=float, default=None, help="constraint")
    p.add_argument("--cache-dir", default=".lrf_cache",
                   help="similarity cache directory (default: %(default)s)")
    p.add_argument("--top", type=int, default=15, help="rows of the final table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("show", help="print a study's Pareto front")
    _add_study_args(p, need_name=True)
    p.add_argument("--top", type=int, default=None, help="at most this many rows, spread "
                   "along the front")
    p.set_defaults(func=_cmd_show)

    from lrf_optuna.dashboard import add_dashboard_parser
    from lrf_optuna.export import add_export_parser
    from lrf_optuna.finetune import add_finetune_parser
    from lrf_optuna.report import add_report_parser

    add_finetune_parser(sub)
    add_export_parser(sub)
    add_report_parser(sub)
    add_dashboard_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lrf-optuna``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return int(args.func(args))
    except (CLIError, ProblemError) as err:
        print(f"lrf-optuna {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"lrf-optuna {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
