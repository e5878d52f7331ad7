"""The command line: arguments over the mode's defaults, and :func:`main`."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._problem import start_run
from benchmarks._results import add_output_arguments, resolve_outputs, write_section
from benchmarks.compression.config import (
    MODELS,
    MODES,
    PRUNE_SELECTIONS,
    SELECTIONS,
    Mode,
    load_dataset,
    parse_recipe,
)
from benchmarks.compression.evaluation import simulate_probe_strategies
from benchmarks.compression.experiment import run_model
from benchmarks.compression.output import _jsonable, markdown, write_curves

logger = logging.getLogger("benchmarks.compression")

#: Where the package docstring's layout starts (``--help`` shows the text above it).
_LAYOUT = "\nLayout of the package:"


# -- command line ---------------------------------------------------------------------------------

def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Mode, str]:
    import benchmarks.compression as package

    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression",
                                     description=(package.__doc__ or "").partition(_LAYOUT)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="subsets and short recipes")
    group.add_argument("--tiny", action="store_true", help="CI smoke test (seconds)")
    parser.add_argument("--models", type=_csv, default=None)
    parser.add_argument("--selections", type=_csv, default=list(SELECTIONS),
                        help=f"subset of {','.join(SELECTIONS)}; opt-in: "
                             f"{','.join(PRUNE_SELECTIONS)}")
    parser.add_argument("--uniform", type=_csv, default=None,
                        help="conv+fc method pairs of the uniform selections")
    parser.add_argument("--recipes", type=_csv, default=None,
                        help="first: the main recipe; the others: levers")
    parser.add_argument("--aware", choices=["on", "off"], default="on",
                        help="activation-aware methods in the main search (when registered)")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--max-probes", type=int, default=None,
                        help="probes per selection (default: until decided; tiny: 1)")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--train-epochs", type=_csv, default=[],
                        help="e.g. vgg_small=30,resnet20=40 (training of the originals)")
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=None,
                        help="validation images held out of --train-images (default: 10 %%; "
                             "quick: 2000)")
    parser.add_argument("--spearman-finetuned", type=int, default=None)
    parser.add_argument("--spearman-plans", type=int, default=None)
    parser.add_argument("--curve-points", type=int, default=None)
    parser.add_argument("--claims", type=_csv, default=None, help="models of the paper claims")
    parser.add_argument("--claims-conv", type=_csv, default=None)
    parser.add_argument("--claims-fc", type=_csv, default=None)
    parser.add_argument("--fixed-reductions", type=_csv, default=None)
    parser.add_argument("--latency-repeats", type=int, default=None)
    parser.add_argument("--calibration-size", type=int, default=None)
    add_output_arguments(parser, cache_name="compression",
                         writes="results.json and the curves' HTML")
    parser.add_argument("--inline-plotlyjs", action="store_true")
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "tiny" if args.tiny else "full"
    mode = MODES[mode_name]
    resolve_outputs(args, tiny=mode_name == "tiny", cache_name="compression")
    defaults = {"models": list(mode.models), "uniform": list(mode.uniform),
                "recipes": list(mode.recipes), "trials": mode.trials,
                "spearman_finetuned": mode.spearman_finetuned,
                "spearman_plans": mode.spearman_plans, "curve_points": mode.curve_points,
                "claims": list(mode.claims_models), "claims_conv": list(mode.claims_conv),
                "claims_fc": list(mode.claims_fc),
                "fixed_reductions": list(mode.fixed_reductions),
                "latency_repeats": mode.latency_repeats, "max_probes": mode.max_probes,
                "train_images": mode.train_images, "val_images": mode.val_images,
                "calibration_size": 64 if mode_name == "tiny" else 512}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.fixed_reductions = [float(x) for x in args.fixed_reductions]
    epochs = dict(mode.train_epochs or {})
    for item in args.train_epochs:
        k, _, v = item.partition("=")
        epochs[k] = int(v)
    args.train_epochs = epochs
    unknown = [m for m in args.models if m not in MODELS]
    bad = [s for s in args.selections if s not in SELECTIONS + PRUNE_SELECTIONS]
    if unknown or bad:
        parser.error(f"unknown models {unknown} / selections {bad}")
    for r in args.recipes:
        parse_recipe(r)
    return args, mode, mode_name


def main(argv: Sequence[str] | None = None) -> int:
    args, mode, mode_name = parse_args(argv)
    head = start_run("benchmarks.compression", argv)
    start = time.perf_counter()
    dataset = load_dataset(mode_name, args.train_images, mode.test_images)
    results: dict[str, Any] = {"mode": mode_name, **head, "models": {}}
    for name in args.models:
        logger.info("=== %s ===", name)
        results["models"][name] = run_model(name, mode, args, dataset)
    results["probe_strategies"] = simulate_probe_strategies(200 if mode_name == "tiny" else 2000)
    results["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    html_name = f"compression_{mode_name}.html"
    body = markdown(results, None if args.no_write else html_name)
    print(body)
    if not args.no_write:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
        write_curves(results, out / html_name, inline=args.inline_plotlyjs)
        write_section(f"Compression benchmark ({mode_name} mode)", body, args.results_md)
    return 0
