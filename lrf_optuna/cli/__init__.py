"""The ``lrf-optuna`` command line: search, score, show, finetune, compress, export, report,
dashboard.

This package owns the command line (``argparse``) and nothing else: each subcommand parses
its options and calls the library. ``__init__`` builds the parser and holds the search,
scoring, export, report and dashboard commands; :mod:`~lrf_optuna.cli.finetune` the
fine-tuning and compression commands; :mod:`~lrf_optuna.cli._args` the arguments several
share. A :class:`~lrf_optuna.errors.UserError` becomes one
line on stderr and exit status 2.

Examples::

    lrf-optuna search --model vgg_small --n-trials 300          # sqlite:///studies/vgg_small.db
    lrf-optuna search --model my_net.keras --dataset data.npz --methods svd tucker2 tt
    lrf-optuna search --model vgg_small --storage postgresql://... --shared-scoring \
        --cache-dir /shared/cache                               # on every machine
    lrf-optuna score --study-name vgg_small --storage postgresql://...  # scoring only
    lrf-optuna show --study-name vgg_small                      # the Pareto front as a table
    lrf-optuna finetune --study-name vgg_small -k 3             # or --trials 42 57
    lrf-optuna finetune --study-name vgg_small --max-drop 1.0   # smallest within 1 pp
    lrf-optuna compress --model my_net.keras --dataset data.npz --max-drop 1.0 --out small/
    lrf-optuna export --study-name vgg_small --trial 42 --out exported/
    lrf-optuna report --study-name vgg_small                    # reports/vgg_small/report.html
    lrf-optuna dashboard --study-name vgg_small                 # optuna-dashboard on 127.0.0.1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lrf_optuna.cli._args import (
    add_memory_args,
    add_problem_args,
    add_quantize_args,
    add_study_args,
    check_int8_io,
)
from lrf_optuna.cli.finetune import add_compress_parser, add_finetune_parser, finetune_config
from lrf_optuna.errors import UserError
from lrf_optuna.search.settings import DEFAULT_N_TRIALS

__all__ = ["build_parser", "finetune_config", "main"]

logger = logging.getLogger("lrf_optuna")

def _cmd_search(args: argparse.Namespace) -> int:
    import time

    from lrf_optuna.decompose import available_methods
    from lrf_optuna.problem import ProblemSpec
    from lrf_optuna.report.tables import front_text
    from lrf_optuna.search import finished_trials, prepare_lrf_study

    if args.methods:
        unknown = sorted(set(args.methods) - set(available_methods()))
        if unknown:
            raise UserError(f"unknown --methods {unknown}; choose from {available_methods()}")
    if args.n_trials < 0:
        raise UserError(f"--n-trials must be >= 0, but got {args.n_trials}")
    if args.prune_importance and not args.prune:
        raise UserError("--prune-importance needs --prune")
    prune = None
    if args.prune:
        from lrf_optuna.prune import PruneConfig

        prune = PruneConfig(importance=args.prune_importance or "l1")
    spec = ProblemSpec(model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                       seed=args.seed, calibration_size=args.calibration_size,
                       val_fraction=args.val_fraction, cache_dir=args.cache_dir)
    search = prepare_lrf_study(  # checks everything cheap, then loads the spec
        spec, study_name=args.study_name, storage=args.storage, seed=args.seed,
        population_size=args.population_size, objectives=args.objectives,
        cache_dir=args.cache_dir, grace_period=args.grace_period, metric=args.metric,
        aggregation=args.aggregation, layers=args.layers, methods=args.methods,
        max_params=args.max_params, max_flops=args.max_flops, min_proxy=args.min_proxy,
        prune=prune, memory=args.memory, quantize=args.quantize, progress=not args.quiet,
        shared_scoring=args.shared_scoring)
    study = search.study
    print(f"study {study.study_name!r} in {search.storage}: {finished_trials(study)} finished "
          f"trial(s), {search.enqueued} strategy plan(s) enqueued; target {args.n_trials} "
          "finished trials")
    try:
        start = time.perf_counter()
        ran = search.optimize(args.n_trials, show_progress_bar=not args.quiet)
        seconds = time.perf_counter() - start
        print(f"this worker ran {ran} trial(s) in {seconds:.1f} s"
              + (f" ({ran / seconds:.1f} trials/s)" if ran and seconds > 0 else ""))
    except KeyboardInterrupt:
        print(f"\ninterrupted: {finished_trials(study)} finished trial(s) are stored in "
              f"{search.storage}. Rerun the same command to continue.", file=sys.stderr)
        return 130
    print()
    print(front_text(study, top=args.top))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from lrf_optuna.search.scoring_queue import score_study
    from lrf_optuna.study.lookup import load_study

    report = score_study(load_study(args.study_name, args.storage), max_units=args.max_units,
                         wait=args.wait, progress=not args.quiet)
    total = sum(report.seconds)
    print(f"this worker scored {len(report.scored)} layer(s), {report.candidates} candidates "
          f"in {total:.1f} s on {report.device or '-'}; the cache "
          f"{report.cache.directory} is {'complete' if report.cache.complete else 'partial'}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from lrf_optuna.report.tables import front_text
    from lrf_optuna.study.lookup import load_study

    study = load_study(args.study_name, args.storage)
    if not study.best_trials:
        print(f"study {study.study_name!r} has no finished trial yet")
        return 0
    print(front_text(study, top=args.top))
    return 0


# -- finetune --------------------------------------------------------------------------------

def _cmd_export(args: argparse.Namespace) -> int:
    from lrf_optuna.deploy.files import ExportError
    from lrf_optuna.export import export_trial
    from lrf_optuna.study.lookup import load_study

    check_int8_io(args)
    study = load_study(args.study_name, args.storage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            keras_path, tflite_path = export_trial(study, args.trial, args.out,
                                                   artifact_dir=args.artifact_dir,
                                                   quantize=args.quantize,
                                                   int8_io=args.int8_io)
        except ExportError as err:
            raise UserError(f"trial {args.trial} of study {args.study_name!r}: {err}") from err
    for w in caught:
        if issubclass(w.category, UserWarning) and "fine-tun" in str(w.message):
            print(f"warning: {w.message}")
    paths = [keras_path, tflite_path]
    if args.quantize != "none":
        paths.insert(1, tflite_path.with_name(f"{keras_path.stem}.tflite"))
    for path in paths:
        print(f"{path}  ({path.stat().st_size:,} bytes)")
    if args.quantize != "none":
        from lrf_optuna.deploy.micro import micro_unsupported
        from lrf_optuna.deploy.tflite_file import read_tflite

        f = read_tflite(tflite_path)
        ops = ", ".join(f"{k} x{v}" for k, v in f.op_report().items())
        outside = micro_unsupported(f)
        print(f"{tflite_path.name}: {ops}; TFLite Micro: "
              + (f"ops outside it: {', '.join(outside)}" if outside else "all ops supported"))
    print("load the .keras file with lrf_optuna.load_model(path)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lrf_optuna.report import write_report
    from lrf_optuna.study.lookup import load_study
    from lrf_optuna.study.storage import safe_name

    study = load_study(args.study_name, args.storage)
    out = Path(args.out) if args.out else Path("reports") / safe_name(study.study_name)
    html_path, md_path = write_report(study, out, cache_dir=args.cache_dir)
    print(f"wrote {html_path} (self-contained, open it in a browser) and {md_path}")
    return 0


# -- dashboard -------------------------------------------------------------------------------

def _url(host: str, port: int, path: str = "/dashboard") -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{path}"


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna

    from lrf_optuna.dashboard import check_can_serve, run_dashboard
    from lrf_optuna.study.lookup import load_study, resolve_storage, search_study_names
    from lrf_optuna.study.notes import add_study_notes
    from lrf_optuna.study.records import ORIGINAL_ATTR
    from lrf_optuna.study.storage import artifact_dir_for, check_storage

    storage = resolve_storage(args.study_name, args.storage)
    check_storage(storage, write=False)
    check_can_serve(args.host, args.port)
    if args.study_name is not None:
        studies = [load_study(args.study_name, storage)]
    else:
        studies = [optuna.load_study(study_name=n, storage=storage)
                   for n in search_study_names(storage)]
    for study in studies:
        if ORIGINAL_ATTR in study.user_attrs:
            try:
                add_study_notes(study, storage_url=storage)
            except Exception as err:  # a note is a nicety: serve anyway
                print(f"warning: could not write the note of study {study.study_name!r}: "
                      f"{err}", file=sys.stderr)
    # never a directory a study names: a study file is not trusted with paths
    artifact_dir = Path(args.artifact_dir) if args.artifact_dir else artifact_dir_for(storage)
    path = (f"/dashboard/studies/{studies[0]._study_id}" if args.study_name is not None
            else "/dashboard")
    print(f"optuna-dashboard for {storage} (artifacts: {artifact_dir})", flush=True)
    print(f"open {_url(args.host, args.port, path)}   (Ctrl-C to stop)", flush=True)
    try:
        run_dashboard(storage, host=args.host, port=args.port, artifact_dir=artifact_dir)
    except OSError as err:  # port in use, address not available, unwritable artifact dir
        raise UserError(f"cannot serve on {args.host}:{args.port} with artifacts in "
                        f"{artifact_dir}: {err}") from err
    print("dashboard stopped", flush=True)
    return 0


# -- the parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``lrf-optuna`` parser with every subcommand."""
    from lrf_optuna.deploy.convert import QUANTIZE_MODES
    from lrf_optuna.scoring.similarity import DEFAULT_METRIC, METRICS
    from lrf_optuna.search import AGGREGATIONS, DEFAULT_AGGREGATION
    from lrf_optuna.study.recovery import DEFAULT_GRACE_PERIOD

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
    add_problem_args(p)
    add_study_args(p)
    p.add_argument("--n-trials", type=int, default=DEFAULT_N_TRIALS,
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
    add_memory_args(p)
    p.add_argument("--max-params", type=float, default=None, help="constraint")
    p.add_argument("--max-flops", type=float, default=None, help="constraint")
    p.add_argument("--min-proxy", type=float, default=None, help="constraint")
    p.add_argument("--prune", action="store_true",
                   help="also search filter pruning: a pruning ratio per prunable layer "
                        "group, combined with LRF (prune, then factorize the pruned layer)")
    p.add_argument("--prune-importance", default=None, choices=["l1", "l2", "activation"],
                   help="with --prune: which filters go (default: l1)")
    p.add_argument("--quantize", choices=list(QUANTIZE_MODES), default="none",
                   help="with --memory bytes: the precision the files will be exported at "
                        "(default: %(default)s, float32)")
    p.add_argument("--cache-dir", default=".lrf_cache",
                   help="similarity cache directory (default: %(default)s)")
    p.add_argument("--grace-period", type=float, default=DEFAULT_GRACE_PERIOD,
                   metavar="SECONDS",
                   help="a RUNNING trial without a sign of its worker for this long belongs "
                        "to a killed worker and is marked FAIL (a live trial takes "
                        "milliseconds; keep it above any pause of a live worker) "
                        "(default: %(default)s)")
    p.add_argument("--shared-scoring", action="store_true",
                   help="score the similarity cache with every other worker of the study "
                        "(claimable units on --storage, written into a --cache-dir all "
                        "workers see); the search starts once all are scored")
    p.add_argument("--top", type=int, default=15, help="rows of the final table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("score", help="a scoring-only worker of a --shared-scoring study",
                       description="Claim and score the waiting similarity-cache units of "
                       "a study searched with --shared-scoring (any machine that sees its "
                       "storage and cache directory); leaves when none is waiting.")
    add_study_args(p, need_name=True)
    p.add_argument("--max-units", type=int, default=None, help="score at most this many")
    p.add_argument("--wait", action="store_true",
                   help="stay until every unit is scored (others' too)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("show", help="print a study's Pareto front")
    add_study_args(p, need_name=True)
    p.add_argument("--top", type=int, default=None, help="at most this many rows, spread "
                   "along the front")
    p.set_defaults(func=_cmd_show)

    add_finetune_parser(sub)
    add_compress_parser(sub)

    p = sub.add_parser(
        "export", help="write a trial's compressed model as .keras and .tflite",
        description="Write the .keras and float32 .tflite files of one search trial: the "
                    "fine-tuned weights when `lrf-optuna finetune` has fine-tuned it, "
                    "else the compressed model without fine-tuning (with a warning); "
                    "with --quantize, also <stem>_<mode>.tflite. Every .tflite file is a "
                    "static batch-1 graph. Load the .keras file with "
                    "lrf_optuna.load_model(path).")
    add_study_args(p, need_name=True, name_help="the search study")
    p.add_argument("--trial", type=int, required=True, metavar="N",
                   help="search trial number")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--artifact-dir", default=None,
                   help="artifact store of the fine-tuning jobs (default: <db "
                        "stem>_artifacts beside a SQLite database, else studies/artifacts)")
    add_quantize_args(p, "also write the file quantized this way")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "report", help="write an HTML + Markdown report of a study",
        description="Write a self-contained HTML report (interactive Pareto front, "
                    "similarity vs rank per layer, fine-tuning results) and a Markdown "
                    "summary of a search study and its fine-tuning study.")
    add_study_args(p, name_help="the search study (default: the only one in --storage)")
    p.add_argument("--out", default=None,
                   help="output directory (default: reports/<study-name>)")
    p.add_argument("--cache-dir", default=None,
                   help="similarity cache directory, if it moved since the search "
                        "(default: the one recorded in the study)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "dashboard", help="browse the search and fine-tuning studies in optuna-dashboard",
        description="Serve optuna-dashboard on the study storage, with the fine-tuned "
                    "models' artifact store, after writing an explanatory note on each "
                    "search study. Serves until Ctrl-C.")
    p.add_argument("--study-name", default=None,
                   help="study to open (its storage defaults to sqlite:///studies/"
                        "<study-name>.db, like `lrf-optuna search`)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: from --study-name); without "
                        "--study-name every study in it is listed")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the dashboard to the "
                        "network (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    p.add_argument("--artifact-dir", default=None,
                   help="artifact store of the fine-tuned models (default: <db "
                        "stem>_artifacts beside a SQLite database, else studies/artifacts)")
    p.set_defaults(func=_cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lrf-optuna``; returns the exit status (2 for a user error)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return int(args.func(args))
    except (UserError, FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"lrf-optuna {args.command}: error: {msg}", file=sys.stderr)
        return 2

