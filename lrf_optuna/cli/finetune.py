"""``lrf-optuna finetune`` and ``lrf-optuna compress``: fine-tuning, the max-drop search
and the one-call compression."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING, Any

from lrf_optuna.cli._args import (
    add_memory_args,
    add_problem_args,
    add_quantize_args,
    add_study_args,
    check_int8_io,
)
from lrf_optuna.errors import UserError
from lrf_optuna.plan import LRF_PLAN_ATTR
from lrf_optuna.search.settings import DEFAULT_N_TRIALS
from lrf_optuna.study.finetune_records import ERROR_ATTR, SKIPPED_ATTR

if TYPE_CHECKING:
    import optuna

    from lrf_optuna.finetune import FinetuneConfig

__all__ = ["add_compress_parser", "add_finetune_parser", "finetune_config"]


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
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


def cmd_finetune(args: argparse.Namespace) -> int:
    from optuna.trial import FrozenTrial, TrialState

    from lrf_optuna.finetune import finetune_study, requeue_running_jobs
    from lrf_optuna.report.tables import results_text
    from lrf_optuna.study.finetune_records import SOURCE_TRIAL
    from lrf_optuna.study.lookup import finetune_study_name, load_study

    study = load_study(args.study_name, args.storage, write=True)
    config = finetune_config(args)
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


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    from lrf_optuna.deploy.convert import QUANTIZE_MODES
    from lrf_optuna.finetune import FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune", help="fine-tune selected Pareto-optimal trials (resumable jobs)",
        description="Select Pareto-optimal trials of a search study (or take --trials), "
                    "enqueue one fine-tuning job each in the study '<study>:finetune' of the "
                    "same storage, and run the queued jobs (several workers may run this at "
                    "once; rerunning resumes). Prints the fine-tuned models' accuracy, "
                    "size and latency.")
    add_study_args(p, need_name=True, name_help="the search study")
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
    p.add_argument("--quantize", choices=list(QUANTIZE_MODES), default=None,
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
    p.set_defaults(func=cmd_finetune)


# -- compress ---------------------------------------------------------------------------------

def cmd_compress(args: argparse.Namespace) -> int:
    from lrf_optuna.compression import compress_detailed
    from lrf_optuna.report.tables import within_budget_table, within_budget_text

    config = finetune_config(args)
    check_int8_io(args)
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


def add_compress_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="one command: the smallest model within an accuracy budget, as "
                         ".keras and .tflite files",
        description="Search (NSGA-II), then find the smallest compressed model whose "
                    "validation accuracy after fine-tuning is at most --max-drop percentage "
                    "points below the fair reference (the original fine-tuned the same "
                    "way), and write its .keras and .tflite files. The study lives in "
                    "--out (or --storage): rerunning resumes.")
    add_problem_args(p)
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
    add_quantize_args(p, "decide every probe on its LiteRT file quantized this way, run "
                          "in the interpreter against the fair reference's file quantized "
                          "alike, and write the chosen one beside the float32 file")
    add_memory_args(p)
    p.add_argument("--cache-dir", default=".lrf_cache",
                   help="similarity cache directory (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)


# -- export / report -------------------------------------------------------------------------
