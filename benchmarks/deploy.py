"""Deployed files of the zoo's originals (and any compressed model): float32 / float16 /
dynamic / int8 ``.tflite`` files, each run in LiteRT.

For every model and quantize mode, :func:`lrf_optuna.deploy.deploy_model` converts a
static batch-1 file (int8 calibrated on ``--representative`` training images) and
measures: file bytes, the tensor arena (TFLite Micro's interpreter, else planned from the
file), the batch-1 latency with the runtime that ran it, and the file's test accuracy
(every test image through the interpreter), beside the Keras model's. Models: the zoo's
``vgg_small`` and ``resnet20`` trained by ``lrf_optuna.models.train_reference_model``
(default epochs, cached under ``~/.cache/lrf_optuna``: the first run trains them, minutes
each) and every ``--model path.keras`` (a compressed model from ``lrf-optuna compress`` /
``export``; load-able with :func:`lrf_optuna.load_model`).

``--representative-sweep 32 100 300 1000``: the int8 file's test accuracy against the
number of representative images, on the first model (how
:data:`lrf_optuna.deploy.DEFAULT_REPRESENTATIVE` was chosen).

Run from the repository root::

    python -m benchmarks.deploy                                   # the two originals
    python -m benchmarks.deploy --model compressed/x_trial42.keras
    python -m benchmarks.deploy --models vgg_small --representative-sweep 32 100 300 1000

It prints the tables and writes them to ``benchmarks/RESULTS.md`` under
``## Deployed files`` (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._results import RESULTS_PATH, markdown_table, write_section

SECTION = "Deployed files"
MODES = ("none", "float16", "dynamic", "int8", "int8_fc_per_tensor")


@dataclass(frozen=True)
class DeployConfig:
    """What to measure."""

    models: tuple[str, ...] = ("vgg_small", "resnet20")
    files: tuple[str, ...] = ()
    dataset: str = "fashion-mnist"
    modes: tuple[str, ...] = MODES
    representative: int = 300
    sweep: tuple[int, ...] = ()
    test_images: int | None = None
    latency_repeats: int = 50
    epochs: int | None = None
    note: str = ""


@dataclass
class Row:
    """One file's figures."""

    model: str
    mode: str
    params: int
    file_bytes: int
    arena_bytes: int
    arena_source: str
    latency_ms: float
    runtime: str
    accuracy: float
    keras_accuracy: float
    micro_outside: list[str] = field(default_factory=list)
    float_ops: int = 0
    ops: dict[str, int] = field(default_factory=dict)


def _models(config: DeployConfig, data: Any) -> list[tuple[str, Any]]:
    import lrf_optuna

    out = []
    for name in config.models:
        out.append((name, lrf_optuna.models.train_reference_model(
            name, data, epochs=config.epochs, verbose=False)))
    for path in config.files:
        out.append((Path(path).stem, lrf_optuna.load_model(path)))
    return out


def run(config: DeployConfig, data: Any = None) -> tuple[list[Row], list[list[Any]]]:
    """The rows of every (model, mode), and the representative sweep's rows."""
    from lrf_optuna.data import load_fashion_mnist, prepare_splits
    from lrf_optuna.deploy import deploy_model
    from lrf_optuna.models.training import evaluate
    from lrf_optuna.problem import ProblemSpec

    if data is None:
        data = (load_fashion_mnist() if config.dataset == "fashion-mnist"
                else ProblemSpec(model="", dataset=config.dataset).load_dataset())
    splits = prepare_splits(data, seed=0)
    n = config.test_images or len(splits.x_test)
    images = (splits.x_test[:n], splits.y_test[:n])
    rows: list[Row] = []
    sweep: list[list[Any]] = []
    for index, (name, model) in enumerate(_models(config, data)):
        keras_acc = evaluate(model, *images)
        for mode in config.modes:
            d = deploy_model(model, splits, mode, images=images,
                             representative=config.representative,
                             latency_repeats=config.latency_repeats)
            rows.append(Row(name, mode, int(model.count_params()), d.file_bytes,
                            d.arena.bytes, d.arena.source, d.latency.ms, d.latency.runtime,
                            d.accuracy, keras_acc, d.micro_unsupported, len(d.float_ops),
                            d.ops))
            print(f"{name:>14s} {mode:8s} {d.file_bytes:>10,d} B  arena {d.arena.bytes:>9,d}"
                  f" B ({d.arena.source})  {d.latency}  acc {100 * d.accuracy:.2f} %",
                  flush=True)
        if index == 0 and config.sweep:
            for count in config.sweep:
                start = time.perf_counter()
                d = deploy_model(model, splits, "int8", images=images, representative=count,
                                 latency_repeats=1, latency_warmup=0, use_tflm=False)
                seconds = time.perf_counter() - start
                sweep.append([name, count, f"{100 * d.accuracy:.2f}",
                              f"{100 * (d.accuracy - keras_acc):+.2f}", f"{seconds:.1f}"])
                print(f"  sweep {count:>5d} images: int8 acc {100 * d.accuracy:.2f} % "
                      f"({seconds:.1f} s)", flush=True)
    return rows, sweep


def render(rows: Sequence[Row], sweep: Sequence[Sequence[Any]], config: DeployConfig,
           argv: Sequence[str]) -> str:
    """The RESULTS.md section body."""
    label = {"none": "float32", "float16": "float16", "dynamic": "dynamic range",
             "int8": "int8 (full integer)", "int8_fc_per_tensor": "int8, FC per tensor"}
    float_bytes = {r.model: r.file_bytes for r in rows if r.mode == "none"}
    float_acc = {r.model: r.accuracy for r in rows if r.mode == "none"}
    table = []
    for r in rows:
        table.append([
            r.model, label.get(r.mode, r.mode), f"{r.params:,}", f"{r.file_bytes:,}",
            f"{r.file_bytes / float_bytes[r.model]:.3f}" if r.model in float_bytes else "",
            f"{r.arena_bytes:,} ({'TFLM' if r.arena_source == 'tflite-micro' else 'planned'})",
            f"{r.latency_ms:.3f} ({r.runtime})", f"{100 * r.accuracy:.2f}",
            f"{100 * (r.accuracy - float_acc[r.model]):+.2f}" if r.model in float_acc else "",
            ", ".join(r.micro_outside) or "none", r.float_ops])
    n = config.test_images or "all"
    shown = list(argv)
    if "--note" in shown:  # the note follows below the table
        at = shown.index("--note")
        shown[at:at + 2] = ["--note", "TEXT"]
    lines = [
        f"`python -m benchmarks.deploy {shlex.join(shown)}`",
        f"({datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; test images: {n}; int8 calibrated on "
        f"{config.representative} training images). Every file is a static batch-1 graph "
        "(`lrf_optuna.deploy.convert`), run in the interpreter on the test images; "
        "latency: median batch-1 `invoke()`, with the runtime that ran it; arena: TFLite "
        "Micro's total (TFLM) or, where TFLM cannot run the file (float16 and dynamic-range "
        "files: TFLM has no kernels for float16 weights or hybrid int8-weight ops), the "
        "planned memory of its non-constant tensors, which for float16 includes the "
        "float32 copies of the weights its DEQUANTIZE ops make at run time.",
        "",
        markdown_table(["model", "file", "params", "file bytes", "x float32",
                        "arena bytes", "latency ms (runtime)", "test acc %",
                        "vs float32 pp", "ops outside TFLM", "float ops"], table),
    ]
    if config.note:
        lines += ["", config.note]
    if rows:
        ops = {}
        for r in rows:
            if r.mode == "int8":
                ops[r.model] = ", ".join(f"{k} {v}" for k, v in r.ops.items())
        if ops:
            lines += ["", "Ops of the int8 files: " + "; ".join(
                f"{m}: {o}" for m, o in ops.items()) + "."]
    if sweep:
        lines += ["", "### Representative images for int8", "",
                  "Test accuracy of the int8 file against the number of training images "
                  "the converter calibrates on (and the time of the conversion + test "
                  "run):", "",
                  markdown_table(["model", "images", "int8 test acc %",
                                  "vs Keras float pp", "seconds"], list(sweep))]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["vgg_small", "resnet20"],
                   help="zoo models (trained or loaded from the model cache)")
    p.add_argument("--model", action="append", default=[], metavar="PATH",
                   help="a .keras model to add (e.g. a compressed one); repeatable")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--representative", type=int, default=300)
    p.add_argument("--representative-sweep", type=int, nargs="*", default=[])
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--latency-repeats", type=int, default=50)
    p.add_argument("--note", default="", help="a sentence added to the section (e.g. how "
                   "a --model was made)")
    p.add_argument("--results", default=str(RESULTS_PATH))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    config = DeployConfig(models=tuple(args.models), files=tuple(args.model),
                          dataset=args.dataset, modes=tuple(args.modes),
                          representative=args.representative,
                          sweep=tuple(args.representative_sweep),
                          test_images=args.test_images, latency_repeats=args.latency_repeats,
                          note=args.note)
    rows, sweep = run(config)
    body = render(rows, sweep, config, argv)
    print()
    print(body)
    if not args.no_write:
        print(f"wrote {write_section(SECTION, body, args.results)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
