"""How long the similarity cache takes to build, and to load in a fresh process.

    python -m benchmarks.cache_build [--models lenet5 vgg_small] [--workers N]

Builds each reference model's cache with the default grid and metric into a fresh
temporary directory (so nothing is reused), then loads it in a new Python process and
times the load alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from benchmarks import _problem
from benchmarks._results import markdown_table, write_section
from lrf_optuna.scoring.cache import GridConfig, SimilarityCache

SECTION = "Similarity cache build (issue 4)"


def load_seconds(directory: str) -> float:
    code = ("import time; t = time.perf_counter(); "
            "from lrf_optuna.scoring.cache import SimilarityCache; "
            f"SimilarityCache.load({directory!r}); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


def run(models: Sequence[str], workers: int | None) -> str:
    rows = []
    for name in models:
        problem = _problem.load(name)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            cache = SimilarityCache.build(problem.model, problem.splits.x_cal, cache_dir=tmp,
                                          workers=workers, progress=True)
            build = time.perf_counter() - t0
            n = sum(len(t.candidates) for t in cache.tables.values())
            slowest = max(cache.tables.values(), key=lambda t: t.seconds)
            loads = sorted(load_seconds(str(cache.directory)) for _ in range(3))
            size = sum(f.stat().st_size for f in cache.directory.rglob("*") if f.is_file())
        rows.append([name, len(cache.layers), n, f"{build:.1f}", f"{1000 * build / n:.0f}",
                     f"{slowest.path} ({slowest.seconds:.1f} s)",
                     f"{1000 * loads[1]:.1f}", f"{size / 1e6:.2f}"])
    return "\n\n".join([
        f"Command: `python -m benchmarks.cache_build --models {' '.join(models)}"
        f"{'' if workers is None else f' --workers {workers}'}`, run "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {_problem.machine()}; "
        f"workers: {workers or min(4, os.cpu_count() or 1)} thread(s).",
        f"Default grid: {GridConfig().points} log-spaced saving ranks per (layer, method), "
        "every applicable method, metric cosine, 512 calibration images. Build = calibration "
        "pass + every candidate factorized, run on the cached inputs and scored. Load = "
        "`SimilarityCache.load` in a fresh process (median of 3; no TensorFlow import).",
        markdown_table(["model", "layers", "candidates", "build (s)", "ms / candidate",
                        "slowest layer", "load (ms)", "size (MB)"], rows),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_build")
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_small"])
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    _problem.setup_logging()
    body = run(args.models, args.workers)
    print(body)
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
