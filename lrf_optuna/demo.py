"""End-to-end demo: load Fashion-MNIST and train (or load) the reference models.

Run with ``python -m lrf_optuna.demo`` (or ``make demo``). Trained models are cached
(see :mod:`lrf_optuna.models.training`), so the second run only loads them.

Example:
    $ python -m lrf_optuna.demo --models lenet5 vgg_small
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["DEMO_MODELS", "format_table", "main"]

logger = logging.getLogger("lrf_optuna.demo")

#: Reference models trained by default.
DEMO_MODELS: tuple[str, ...] = ("lenet5", "vgg_small")


def format_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Render rows as a Markdown table with aligned columns.

    Example:
        >>> print(format_table([["lenet5", "61,706"]], ["model", "params"]))
        | model  | params |
        |--------|--------|
        | lenet5 | 61,706 |
    """
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from lrf_optuna.models.zoo import REFERENCE_MODELS

    parser = argparse.ArgumentParser(
        prog="python -m lrf_optuna.demo",
        description="Train (or load from cache) reference CNNs on Fashion-MNIST.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEMO_MODELS),
        choices=sorted(REFERENCE_MODELS),
        help="reference models to train or load (default: %(default)s)",
    )
    parser.add_argument("--data", default=None, help="directory with the Fashion-MNIST idx files")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache root (default: $LRF_OPTUNA_CACHE or ~/.cache/lrf_optuna)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the per-model default epochs"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print the table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Load Fashion-MNIST, train or load the demo models, print a summary table.

    Args:
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        Process exit code: 0 on success, 2 if the dataset could not be found.
    """
    args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from lrf_optuna.data import DataNotFoundError, load_fashion_mnist
    from lrf_optuna.models.training import train_or_load

    try:
        dataset = load_fashion_mnist(args.data)
    except DataNotFoundError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("Dataset: %r", dataset)

    rows = []
    for name in args.models:
        result = train_or_load(
            name,
            dataset,
            epochs=args.epochs,
            seed=args.seed,
            cache_dir=args.cache_dir,
            verbose=not args.quiet,
        )
        rec = result.record
        if result.cached:
            when = "cached"
        else:
            when = f"{rec.train_seconds:.0f} s" if rec.train_seconds is not None else "?"
        rows.append([name, f"{rec.params:,}", f"{rec.test_accuracy:.4f}", str(rec.epochs), when])
    print()
    print(format_table(rows, ["model", "params", "test accuracy", "epochs", "train time"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
