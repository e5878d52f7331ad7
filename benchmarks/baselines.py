"""Baseline accuracy of the reference models on Fashion-MNIST.

Trains (or loads from the training cache) each reference model on the full
Fashion-MNIST training set (minus a 10% stratified validation split), measures test
accuracy, prints a Markdown table and writes it to ``benchmarks/RESULTS.md`` under
``## Baselines`` (replacing that section, keeping the others).

Run from the repository root::

    python -m benchmarks.baselines                       # lenet5 and vgg_small
    python -m benchmarks.baselines --models lenet5 vgg_small resnet20 mobilenetv2_small
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._results import RESULTS_PATH, markdown_table, write_section

__all__ = ["DEFAULT_MODELS", "main"]

logger = logging.getLogger("benchmarks.baselines")

DEFAULT_MODELS: tuple[str, ...] = ("lenet5", "vgg_small")
SECTION = "Baselines"


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _without_note(argv: Sequence[str] | None) -> list[str]:
    """The command-line arguments minus ``--note`` (it is printed separately)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the per-model default epochs"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="directory with the Fashion-MNIST idx files")
    parser.add_argument("--cache-dir", default=None, help="training cache root")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_PATH,
        help="Markdown file to update (default: benchmarks/RESULTS.md)",
    )
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--note", default="", help="extra sentence for the RESULTS.md section")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baselines; returns a process exit code."""
    args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    import keras

    from lrf_optuna.data import load_fashion_mnist
    from lrf_optuna.models.training import train_or_load

    load = _load()
    dataset = load_fashion_mnist(args.data)
    rows: list[list[str]] = []
    for name in args.models:
        result = train_or_load(
            name, dataset, epochs=args.epochs, seed=args.seed, model_cache_dir=args.cache_dir
        )
        rec = result.record
        seconds = "?" if rec.train_seconds is None else f"{rec.train_seconds:.0f} s"
        if result.cached:
            seconds += " (cached)"
        rows.append(
            [
                name,
                f"{rec.params:,}",
                f"{100 * rec.test_accuracy:.2f} %",
                "-" if rec.val_accuracy is None else f"{100 * rec.val_accuracy:.2f} %",
                str(rec.epochs),
                seconds,
            ]
        )
    table = markdown_table(
        ["model", "params", "test accuracy", "val accuracy", "epochs", "train time"], rows
    )
    print(table)

    if not args.no_write:
        command = shlex.join(["python", "-m", "benchmarks.baselines", *_without_note(argv)])
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        body = "\n".join(
            [
                f"Command: `{command}` (from the repository root), run {date}.",
                "",
                f"Fashion-MNIST: {len(dataset.x_train):,} training images (90% train / 10% "
                f"stratified validation, seed {args.seed}), {len(dataset.x_test):,} test images. "
                f"Adam 1e-3 with cosine decay, batch 128. Keras {keras.__version__}, "
                f"{platform.python_implementation()} {platform.python_version()}, "
                f"{os.cpu_count()} CPU cores, no GPU. Train time is the wall-clock time of the "
                "run that filled the cache (recorded in its JSON sidecar), including the "
                "per-epoch validation pass; it depends on what else shares the CPU "
                f"(1-min load average at the start / end of this run: {load:.1f} / {_load():.1f}).",
                *([] if not args.note else ["", args.note]),
                "",
                table,
            ]
        )
        path = write_section(SECTION, body, args.results)
        logger.info("Wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
