"""The ``lrf-optuna`` command line: search, show, finetune, compress, export, report,
dashboard.

This module owns the command line (``argparse``) and nothing else: each subcommand parses
its options and calls the library. A :class:`~lrf_optuna.errors.UserError` becomes one
line on stderr and exit status 2.

Examples::

    lrf-optuna search --model vgg_small --n-trials 300          # sqlite:///studies/vgg_small.db
    lrf-optuna search --model my_net.keras --dataset data.npz --methods svd tucker2 tt
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
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrf_optuna.errors import UserError
from lrf_optuna.plan import LRF_PLAN_ATTR
from lrf_optuna.search.settings import DEFAULT_N_TRIALS
from lrf_optuna.study.finetune_records import ERROR_ATTR, SKIPPED_ATTR

if TYPE_CHECKING:
    import optuna

    from lrf_optuna.finetune import FinetuneConfig

__all__ = ["build_parser", "main"]

logger = logging.getLogger("lrf_optuna")

_STORAGE_HELP = ("Optuna storage URL (default: sqlite:///studies/<study-name>.db; "
                 "postgresql://... for many workers)")


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a reference model name (lenet5, vgg_small, resnet20, "
                        "mobilenetv2_small: trained on the dataset or loaded from the model "
                        "cache) or a path to a trained .keras file")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="'fashion-mnist' (offline Debian copy, LRF_OPTUNA_DATA or keras' "
                        "downloader) or a .npz file with x_train, y_train, x_test, y_test "
                        "(uint8 images are scaled to [0, 1]) (default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="directory holding the Fashion-MNIST idx files")
    p.add_argument("--calibration-size", type=int, default=512,
                   help="calibration images drawn (stratified) from the training split "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, training and "
                   "the sampler (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of the training data held out for validation, which "
                        "decides everything (default: 2,000 images, at least 10 %% and at "
                        "most 25 %%). Your model must not have trained on these images: "
                        "train it on the same split (lrf_optuna.data.prepare_splits)")


def _add_study_args(p: argparse.ArgumentParser, *, need_name: bool = False,
                    name_help: str = "study name (default: the model name)") -> None:
    p.add_argument("--study-name", required=need_name, default=None, help=name_help)
    p.add_argument("--storage", default=None, help=_STORAGE_HELP)


def _add_quantize_args(p: argparse.ArgumentParser, what: str) -> None:
    from lrf_optuna.deploy.convert import DEFAULT_REPRESENTATIVE, QUANTIZE_MODES

    p.add_argument("--quantize", choices=list(QUANTIZE_MODES), default="none",
                   help=f"{what}: none (float32), dynamic (int8 weights, float "
                        "activations), float16, int8 (full integer, calibrated on "
                        f"{DEFAULT_REPRESENTATIVE} training images) (default: %(default)s)")
    p.add_argument("--int8-io", action="store_true",
                   help="with --quantize int8: int8 input and output tensors (default: "
                        "float32 input and output around the integer graph)")


def _add_memory_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", choices=["params", "bytes"], default="params",
                   help="what the memory objective counts: parameters, or the bytes the "
                        "weights take in the .tflite file at --quantize's precision (int8 "
                        "weights + per-channel scales + int32 biases for int8) "
                        "(default: %(default)s)")


def _check_int8_io(args: argparse.Namespace) -> None:
    if getattr(args, "int8_io", False) and args.quantize != "int8":
        raise UserError("--int8-io needs --quantize int8")


# -- search / show ---------------------------------------------------------------------------

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
        prune=prune, memory=args.memory, quantize=args.quantize, progress=not args.quiet)
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

def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    from lrf_optuna.finetune import FinetuneConfig

    overrides = {name: getattr(args, name) for name in
                 ("epochs", "learning_rate", "batch_size", "patience", "distill",
                  "temperature", "keep_epoch", "min_steps", "monitor", "bn_images",
                  "quantize", "latency_repeats")
                 if getattr(args, name, None) is not None}
    try:
        return dataclasses.replace(FinetuneConfig(), **overrides)
    except ValueError as err:
        raise UserError(str(err)) from err


def _cmd_finetune(args: argparse.Namespace) -> int:
    from optuna.trial import FrozenTrial, TrialState

    from lrf_optuna.finetune import finetune_study, requeue_running_jobs
    from lrf_optuna.report.tables import results_text
    from lrf_optuna.study.finetune_records import SOURCE_TRIAL
    from lrf_optuna.study.lookup import finetune_study_name, load_study

    study = load_study(args.study_name, args.storage, write=True)
    config = _finetune_config(args)
    if args.k < 1:
        raise UserError(f"-k must be >= 1, got {args.k}")
    if args.requeue_running:
        print(f"re-enqueued {requeue_running_jobs(study)} RUNNING job(s)")
    if args.max_drop is not None:
        return _finetune_within(args, study, config)

    def enqueued(selected: list[FrozenTrial], added: int) -> None:
        if not selected:
            front = [t for t in study.best_trials if t.user_attrs.get(LRF_PLAN_ATTR)]
            raise UserError(f"no Pareto-optimal compressed trial of study "
                            f"{study.study_name!r} is within the budget (front: {len(front)} "
                            "compressed trial(s)); relax --max-params/--max-flops/--min-proxy")
        how = "chosen with --trials" if args.trials else args.strategy
        numbers = ", ".join(str(t.number) for t in selected)
        print(f"study {study.study_name!r}: selected trial(s) {numbers} ({how}); "
              f"{added} job(s) enqueued in {finetune_study_name(study)!r}")

    failed: list[FrozenTrial] = []

    def note_failure(_: optuna.Study, job: FrozenTrial) -> None:
        if job.state == TrialState.FAIL and SKIPPED_ATTR not in job.user_attrs:
            failed.append(job)

    try:
        finetune_study(study, args.k, strategy=args.strategy, trials=args.trials or None,
                       max_params=args.max_params, max_flops=args.max_flops,
                       min_proxy=args.min_proxy, config=config,
                       artifact_dir=args.artifact_dir, max_jobs=args.max_jobs,
                       on_enqueued=enqueued, callbacks=[note_failure])
    except KeyboardInterrupt:
        print("\ninterrupted: the running job is marked FAIL and re-enqueued by the next "
              "`lrf-optuna finetune`; finished jobs are stored.", file=sys.stderr)
        return 130
    print()
    print(results_text(study))
    for j in failed:
        print(f"job {j.number} (trial {j.user_attrs.get(SOURCE_TRIAL)}) failed: "
              f"{j.user_attrs.get(ERROR_ATTR, '?')}")
    return 1 if failed else 0


def _decision(args: argparse.Namespace) -> dict[str, Any]:
    """The max-drop decision's keyword arguments (:func:`_add_decision_args`)."""
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), but got {args.confidence}")
    if args.escalate_probes < 0:
        raise UserError(f"--escalate-probes must be >= 0, but got {args.escalate_probes}")
    return {"confidence": args.confidence, "escalate": not args.no_escalate,
            "escalate_probes": args.escalate_probes}


def _finetune_within(args: argparse.Namespace, study: optuna.Study,
                     config: FinetuneConfig) -> int:
    from lrf_optuna.finetune.budget import finetune_within
    from lrf_optuna.report.tables import within_budget_table, within_budget_text

    if args.trials:
        raise UserError("--max-drop chooses the trials itself; drop --trials")
    if not args.max_drop >= 0:
        raise UserError(f"--max-drop must be >= 0 percentage points, but got {args.max_drop}")
    print(f"study {study.study_name!r}: the smallest model within {args.max_drop:g} pp of "
          f"the fair reference (recipe: {config.describe()})", flush=True)
    try:
        answer = finetune_within(study, args.max_drop, config=config,
                                 strategy=args.probe_strategy, max_probes=args.max_probes,
                                 artifact_dir=args.artifact_dir, **_decision(args))
    except KeyboardInterrupt:
        print("\ninterrupted: finished probes are stored; rerun the same command to "
              "continue.", file=sys.stderr)
        return 130
    except RuntimeError as err:
        raise UserError(str(err)) from err
    print()
    print(within_budget_table(answer).text())
    print()
    print(within_budget_text(answer))
    if answer.chosen is not None:
        print(f"export it: lrf-optuna export --study-name {study.study_name} --trial "
              f"{answer.chosen.number} --out exported/")
    return 0


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The fine-tuning recipe options."""
    from lrf_optuna.finetune import FinetuneConfig

    d = FinetuneConfig()
    p.add_argument("--epochs", type=int, default=None,
                   help="fine-tuning epochs (default: enough for --min-steps optimizer "
                        f"steps, {d.min_epochs} to {d.max_epochs} epochs)")
    p.add_argument("--min-steps", type=int, default=None,
                   help="without --epochs: train at least this many optimizer steps "
                        f"(default: {d.min_steps})")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"initial learning rate, cosine-decayed (default: {d.learning_rate})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"batch size (default: {d.batch_size})")
    p.add_argument("--monitor", choices=["val_loss", "val_accuracy"], default=None,
                   help=f"what picks the epoch kept (default: {d.monitor})")
    p.add_argument("--patience", type=int, default=None,
                   help=f"early-stopping patience in epochs (default: {d.patience})")
    p.add_argument("--bn-images", type=int, default=None,
                   help="re-estimate the BatchNorm statistics on this many training images "
                        f"before fine-tuning, 0 to skip (default: {d.bn_images})")
    p.add_argument("--distill", type=float, default=None,
                   help="knowledge distillation from the original model: weight of the KL "
                        f"term in [0, 1], 0 for plain cross-entropy (default: {d.distill:g})")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"distillation temperature (default: {d.temperature:g})")
    p.add_argument("--keep-epoch", choices=["best", "last"], default=None,
                   help="keep the best epoch by --monitor or the last one (default: "
                        f"{d.keep_epoch})")


def _add_decision_args(p: argparse.ArgumentParser) -> None:
    """How the max-drop search decides (``finetune --max-drop`` and ``compress``)."""
    from lrf_optuna.paired import DEFAULT_CONFIDENCE

    p.add_argument("--max-probes", type=int, default=None,
                   help="at most this many candidates fine-tuned with the first recipe "
                        "(finished jobs of the same recipe count; default: until decided)")
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                   help="a probe passes when its drop, measured paired on the same "
                        "validation images as the fair reference, is within the budget "
                        "with this confidence (default: %(default)s: the drop's estimate)")
    p.add_argument("--no-escalate", action="store_true",
                   help="do not re-probe the candidates smaller than the answer with a "
                        "4x longer recipe")
    p.add_argument("--escalate-probes", type=int, default=3,
                   help="at most this many fine-tunings with the longer recipe (default: "
                        "%(default)s)")


def _add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    from lrf_optuna.finetune import FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune", help="fine-tune selected Pareto-optimal trials (resumable jobs)",
        description="Select Pareto-optimal trials of a search study (or take --trials), "
                    "enqueue one fine-tuning job each in the study '<study>:finetune' of the "
                    "same storage, and run the queued jobs (several workers may run this at "
                    "once; rerunning resumes). Prints the fine-tuned models' accuracy, "
                    "size and latency.")
    _add_study_args(p, need_name=True, name_help="the search study")
    p.add_argument("-k", type=int, default=3, help="trials to fine-tune (default: 3)")
    p.add_argument("--trials", type=int, nargs="+", default=None, metavar="N",
                   help="fine-tune exactly these search trials instead of choosing")
    p.add_argument("--strategy", choices=["spread", "knee"], default="spread",
                   help="spread: extremes + evenly spaced in log(params); knee: the knee "
                        "point and its neighbours (default: spread)")
    p.add_argument("--max-params", type=float, default=None, help="budget: at most this "
                   "many parameters")
    p.add_argument("--max-flops", type=float, default=None, help="budget: at most this many "
                   "FLOPs")
    p.add_argument("--min-proxy", type=float, default=None, help="budget: proxy at least")
    p.add_argument("--max-drop", type=float, default=None, metavar="PP",
                   help="instead of -k: find the smallest model whose validation accuracy "
                        "after fine-tuning is at most PP percentage points below the fair "
                        "reference (the original fine-tuned the same way), probing the "
                        "(params, proxy) front (each probe a resumable job)")
    p.add_argument("--probe-strategy", choices=["bisect", "interpolate"], default="bisect",
                   help="with --max-drop: how the next probe is chosen (default: "
                        "%(default)s)")
    _add_decision_args(p)
    _add_recipe_args(p)
    p.add_argument("--quantize", choices=["none", "dynamic", "float16", "int8"], default=None,
                   help="also convert every job's model to a LiteRT file quantized this way "
                        "and record its bytes, arena, latency and accuracy; --max-drop then "
                        "decides on these files (default: none)")
    p.add_argument("--latency-repeats", type=int, default=None,
                   help=f"timed runs per latency (default: {d.latency_repeats})")
    p.add_argument("--artifact-dir", default=None,
                   help="Optuna artifact store directory (default: <db stem>_artifacts "
                        "beside a SQLite file, else studies/artifacts)")
    p.add_argument("--max-jobs", type=int, default=None,
                   help="run at most this many jobs in this worker")
    p.add_argument("--requeue-running", action="store_true",
                   help="first re-enqueue RUNNING jobs (only when no other worker runs)")
    p.set_defaults(func=_cmd_finetune)


# -- compress ---------------------------------------------------------------------------------

def _cmd_compress(args: argparse.Namespace) -> int:
    from lrf_optuna.compression import compress_detailed
    from lrf_optuna.report.tables import within_budget_table, within_budget_text

    config = _finetune_config(args)
    _check_int8_io(args)
    try:
        done = compress_detailed(
            args.model, args.dataset, args.max_drop, out_dir=args.out,
            study_name=args.study_name, storage=args.storage, n_trials=args.n_trials,
            config=config, max_probes=args.max_probes, seed=args.seed,
            calibration_size=args.calibration_size, val_fraction=args.val_fraction,
            cache_dir=args.cache_dir, show_progress_bar=not args.quiet,
            quantize=args.quantize, int8_io=args.int8_io, memory=args.memory,
            **_decision(args))
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials and probes are stored; rerun the same command "
              "to continue.", file=sys.stderr)
        return 130
    except RuntimeError as err:
        raise UserError(str(err)) from err
    print(within_budget_table(done.answer).text())
    print()
    print(within_budget_text(done.answer))
    for path in (done.keras_path, done.tflite_path, done.quantized_path):
        if path is not None:
            print(f"{path}  ({path.stat().st_size:,} bytes)")
    print("load the .keras file with lrf_optuna.load_model(path)")
    return 0


def _add_compress_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="one command: the smallest model within an accuracy budget, as "
                         ".keras and .tflite files",
        description="Search (NSGA-II), then find the smallest compressed model whose "
                    "validation accuracy after fine-tuning is at most --max-drop percentage "
                    "points below the fair reference (the original fine-tuned the same "
                    "way), and write its .keras and .tflite files. The study lives in "
                    "--out (or --storage): rerunning resumes.")
    _add_problem_args(p)
    p.add_argument("--max-drop", type=float, default=1.0, metavar="PP",
                   help="accepted validation-accuracy drop in percentage points "
                        "(default: %(default)s)")
    p.add_argument("--out", default="compressed", metavar="DIR",
                   help="output directory of the files and the study (default: "
                        "%(default)s)")
    p.add_argument("--study-name", default=None,
                   help="study name (default: compress_<model name>)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///<out>/<study-name>.db)")
    p.add_argument("--n-trials", type=int, default=DEFAULT_N_TRIALS,
                   help="search trials (default: %(default)s)")
    _add_decision_args(p)
    _add_recipe_args(p)
    _add_quantize_args(p, "decide every probe on its LiteRT file quantized this way, run "
                          "in the interpreter against the fair reference's file quantized "
                          "alike, and write the chosen one beside the float32 file")
    _add_memory_args(p)
    p.add_argument("--cache-dir", default=".lrf_cache",
                   help="similarity cache directory (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_compress)


# -- export / report -------------------------------------------------------------------------

def _cmd_export(args: argparse.Namespace) -> int:
    from lrf_optuna.deploy.files import ExportError
    from lrf_optuna.export import export_trial
    from lrf_optuna.study.lookup import load_study

    _check_int8_io(args)
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
    _add_problem_args(p)
    _add_study_args(p)
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
    _add_memory_args(p)
    p.add_argument("--max-params", type=float, default=None, help="constraint")
    p.add_argument("--max-flops", type=float, default=None, help="constraint")
    p.add_argument("--min-proxy", type=float, default=None, help="constraint")
    p.add_argument("--prune", action="store_true",
                   help="also search filter pruning: a pruning ratio per prunable layer "
                        "group, combined with LRF (prune, then factorize the pruned layer)")
    p.add_argument("--prune-importance", default=None, choices=["l1", "l2", "activation"],
                   help="with --prune: which filters go (default: l1)")
    p.add_argument("--quantize", choices=["none", "dynamic", "float16", "int8"],
                   default="none",
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
    p.add_argument("--top", type=int, default=15, help="rows of the final table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("show", help="print a study's Pareto front")
    _add_study_args(p, need_name=True)
    p.add_argument("--top", type=int, default=None, help="at most this many rows, spread "
                   "along the front")
    p.set_defaults(func=_cmd_show)

    _add_finetune_parser(sub)
    _add_compress_parser(sub)

    p = sub.add_parser(
        "export", help="write a trial's compressed model as .keras and .tflite",
        description="Write the .keras and float32 .tflite files of one search trial: the "
                    "fine-tuned weights when `lrf-optuna finetune` has fine-tuned it, "
                    "else the compressed model without fine-tuning (with a warning); "
                    "with --quantize, also <stem>_<mode>.tflite. Every .tflite file is a "
                    "static batch-1 graph. Load the .keras file with "
                    "lrf_optuna.load_model(path).")
    _add_study_args(p, need_name=True, name_help="the search study")
    p.add_argument("--trial", type=int, required=True, metavar="N",
                   help="search trial number")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--artifact-dir", default=None,
                   help="artifact store of the fine-tuning jobs (default: <db "
                        "stem>_artifacts beside a SQLite database, else studies/artifacts)")
    _add_quantize_args(p, "also write the file quantized this way")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "report", help="write an HTML + Markdown report of a study",
        description="Write a self-contained HTML report (interactive Pareto front, "
                    "similarity vs rank per layer, fine-tuning results) and a Markdown "
                    "summary of a search study and its fine-tuning study.")
    _add_study_args(p, name_help="the search study (default: the only one in --storage)")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
