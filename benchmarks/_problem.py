"""Reference models and splits for the benchmarks (trained once, then cached)."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lrf_optuna.problem import Problem, ProblemSpec

logger = logging.getLogger("benchmarks")


def load(model: str, *, seed: int = 0, calibration_size: int = 512) -> Problem:
    """Train-or-load a reference model on Fashion-MNIST with its splits."""
    return ProblemSpec(model=model, seed=seed, calibration_size=calibration_size).load(
        verbose=False)


def machine() -> str:
    """One line on the machine: cores and load average."""
    with open("/proc/loadavg") as f:
        load_avg = " ".join(f.read().split()[:3])
    return f"{os.cpu_count()} CPU cores, load average {load_avg}"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # benchmarks build many models: no retracing notes


def start_run(module: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """Set up a benchmark run (logging, Optuna quiet) and return the head of its results:
    the command line (``python -m <module> ...``), the machine and the date."""
    import optuna

    setup_logging()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = sys.argv[1:] if argv is None else argv
    return {"command": f"python -m {module} " + " ".join(shlex.quote(a) for a in args),
            "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def describe_problem(p: Problem) -> dict[str, Any]:
    return {"model": p.name, "params": p.model.count_params(),
            "calibration": len(p.splits.x_cal), "val": len(p.splits.x_val)}
