"""The arguments over the mode's defaults, and main."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._problem import start_run
from benchmarks._results import (
    add_output_arguments,
    resolve_outputs,
    write_section,
)
from benchmarks.user_nets.config import MAX_DROP, MODES, NETS, Mode, compress_defaults
from benchmarks.user_nets.experiment import run_one
from benchmarks.user_nets.output import _jsonable, markdown

logger = logging.getLogger("benchmarks.user_nets")


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den) if den else float(num)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Mode, str]:
    defaults = compress_defaults()
    import benchmarks.user_nets as package

    about = (package.__doc__ or "").partition("\nLayout of the package:")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_nets", description=about,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="4,000 images, fewer widths")
    group.add_argument("--tiny", action="store_true", help="CI smoke test (synthetic data)")
    parser.add_argument("--nets", type=_csv, default=list(NETS),
                        help=f"subset of {','.join(NETS)}")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in _csv(s)], default=None,
                        help="labelled training images per run (default: 4000,18000; "
                             "quick: 4000)")
    parser.add_argument("--val-fraction", type=float, default=defaults["val_fraction"],
                        help="validation fraction of the compress call and of every "
                             "training (default: compress's, %(default)s: None is 2,000 "
                             "images, at least 10 %% and at most 25 %%)")
    parser.add_argument("--seed", type=int, default=defaults["seed"],
                        help="seed of the splits and of the compress call (default: "
                             "compress's, %(default)s)")
    parser.add_argument("--max-drop", type=float, default=MAX_DROP, help="pp (default 1)")
    parser.add_argument("--widths", type=lambda s: [_fraction(x) for x in _csv(s)],
                        default=None, help="narrow widths relative to the original")
    parser.add_argument("--ratios", type=lambda s: [_fraction(x) for x in _csv(s)],
                        default=None, help="uniform SVD relative ranks, e.g. 1/2,1/4")
    parser.add_argument("--epochs", type=_csv, default=[],
                        help="training epochs of the originals, e.g. plain=12,mobile=20")
    parser.add_argument("--test-images", type=int, default=None)
    add_output_arguments(parser, cache_name="user_nets", writes="results_user_nets.json")
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "tiny" if args.tiny else "full"
    mode = MODES[mode_name]
    resolve_outputs(args, tiny=mode_name == "tiny", cache_name="user_nets")
    args.sizes = args.sizes or list(mode.sizes)
    args.widths = args.widths or list(mode.widths)
    args.ratios = args.ratios or list(mode.ratios)
    args.test_images = args.test_images or mode.test_images
    epochs = {}
    for item in args.epochs:
        k, _, v = item.partition("=")
        epochs[k] = int(v)
    args.epochs = epochs
    unknown = [n for n in [*args.nets, *epochs] if n not in NETS]
    if unknown:
        parser.error(f"unknown nets {unknown}; choose from {','.join(NETS)}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if any(not 0 < w < 1 for w in args.widths) or any(not 0 < r < 1 for r in args.ratios):
        parser.error("--widths and --ratios must be in (0, 1)")
    return args, mode, mode_name


def main(argv: Sequence[str] | None = None) -> int:
    args, mode, mode_name = parse_args(argv)
    head = start_run("benchmarks.user_nets", argv)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "mode": mode_name, **head,
        "max_drop_pp": args.max_drop, "val_fraction": args.val_fraction, "seed": args.seed,
        "compress_defaults": {k: repr(v) for k, v in compress_defaults().items()},
        "widths": args.widths, "ratios": args.ratios, "taus": list(mode.taus), "runs": []}
    for size in args.sizes:
        for net in args.nets:
            logger.info("=== %s, %d images ===", net, size)
            results["runs"].append(run_one(net, size, mode_name, mode, args))
    results["seconds"] = round(time.perf_counter() - start, 1)
    body = markdown(results)
    print(body)
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results_user_nets.json").write_text(json.dumps(_jsonable(results), indent=1)
                                                    + "\n")
        write_section(f"User nets benchmark ({mode_name} mode)", body, args.results_md)
    return 0

