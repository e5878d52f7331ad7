"""The similarity cache of an ImageNet-size network, scored by worker processes sharing one
PostgreSQL study (issue 20).

    python -m benchmarks.scoring_scale                      # ResNet50 at 224x224, 2 workers,
                                                            # one of them SIGKILLed mid-run
    python -m benchmarks.scoring_scale --layers 6 --compare # 1 and 2 workers and the local
                                                            # build on the first 6 layers
    python -m benchmarks.scoring_scale --tiny               # CI: 32x32, 3 layers, SQLite

The network is ``keras.applications.ResNet50`` with random weights (the cost of scoring
does not depend on them) on random calibration images. Every worker is its own process
running :func:`lrf_optuna.search.scoring_queue.score_on_storage` on the same study and
cache directory; it reports the units it scored, their seconds and its peak resident
memory (``ru_maxrss``). Checked after each run: every unit has exactly one COMPLETE,
not-skipped trial (nothing scored twice), the cache is complete, and (``--compare``) its
scores equal the other runs' to 1e-6. Unless ``--no-kill``, the first worker is SIGKILLed
inside its second unit (``--tiny``: its first) and a replacement worker is started at once:
the killed unit is retried after the grace period, nothing else is redone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks import _problem
from benchmarks._results import markdown_table, write_section

SECTION = "Similarity cache scored by many workers (issue 20)"
GRACE = 20  # seconds: the killed worker's unit is retried after this

WORKER = """
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np, optuna
from lrf_optuna.scoring.cache import GridConfig, SimilarityBuild, SimilarityCache
from lrf_optuna.search.scoring_queue import score_on_storage
url, study_name, root, cache_dir, layers, points, grace = sys.argv[1:8]
real = SimilarityBuild.run
def run(self, unit, bar):
    print("START", unit.name, flush=True)
    return real(self, unit, bar)
SimilarityBuild.run = run
model = keras.models.load_model(os.path.join(root, "model.keras"))
x = np.load(os.path.join(root, "x.npy"))
study = optuna.load_study(study_name=study_name, storage=url)
build = SimilarityCache.builder(model, x, cache_dir=cache_dir, layers=json.loads(layers),
                                grid=GridConfig(points=int(points)))
t0 = time.perf_counter()
report = score_on_storage(study, build, grace_period=int(grace),
                          heartbeat_interval=max(1, int(grace) // 4), progress=False)
print("DONE", json.dumps({"scored": report.scored, "seconds": report.seconds,
                          "candidates": report.candidates, "device": report.device,
                          "wall": time.perf_counter() - t0,
                          "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}),
      flush=True)
"""

LOCAL = """
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
from lrf_optuna.scoring.cache import GridConfig, SimilarityCache
root, cache_dir, layers, points = sys.argv[1:5]
model = keras.models.load_model(os.path.join(root, "model.keras"))
x = np.load(os.path.join(root, "x.npy"))
t0 = time.perf_counter()
cache = SimilarityCache.build(model, x, cache_dir=cache_dir, layers=json.loads(layers),
                              grid=GridConfig(points=int(points)), progress=False)
print("DONE", json.dumps({"wall": time.perf_counter() - t0,
                          "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}),
      flush=True)
"""


def make_problem(root: Path, size: int, images: int, n_layers: int | None) -> list[str]:
    """ResNet50 (random weights) at ``size`` and random calibration images, saved in
    ``root``; returns the layers to score (the first ``n_layers`` decomposable ones)."""
    import keras
    import numpy as np

    from lrf_optuna.rewrite import find_layers

    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    model.save(root / "model.keras")
    x = np.random.default_rng(0).uniform(0, 1, (images, size, size, 3)).astype("float32")
    np.save(root / "x.npy", x)
    layers = list(find_layers(model))
    return layers[:n_layers] if n_layers else layers


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def _start(url: str, study: str, root: Path, cache: Path, layers: list[str], points: int
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WORKER, url, study, str(root), str(cache),
                             json.dumps(layers), str(points), str(GRACE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _done(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {err[-3000:]}")
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("DONE "))[5:])


def _kill_in_unit(proc: subprocess.Popen[str], nth: int) -> str:
    """SIGKILL ``proc`` once it started its ``nth`` unit; returns that unit."""
    assert proc.stdout is not None
    started = 0
    for line in proc.stdout:
        if line.startswith("START "):
            started += 1
            if started == nth:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return line.split(" ", 1)[1].strip()
    raise RuntimeError(f"the worker to kill ended before its unit number {nth}")


def run_workers(url: str, name: str, root: Path, cache: Path, layers: list[str],
                points: int, workers: int, kill: int) -> dict[str, Any]:
    """``workers`` processes scoring one study's cache (one killed and replaced with
    inside its ``kill``-th unit, 0: none); the checks of the module docstring."""
    import optuna
    from optuna.trial import TrialState

    from lrf_optuna.scoring.cache import SimilarityCache
    from lrf_optuna.search.scoring_queue import UNIT_ATTR, find_scoring_queue

    study = optuna.create_study(study_name=name, storage=url, load_if_exists=True)
    t0 = time.perf_counter()
    procs = [_start(url, name, root, cache, layers, points) for _ in range(workers)]
    killed = None
    if kill:
        killed = _kill_in_unit(procs[0], kill)
        procs[0] = _start(url, name, root, cache, layers, points)  # the worker restarted
    reports = [_done(p) for p in procs]
    wall = time.perf_counter() - t0
    queue = find_scoring_queue(study)
    assert queue is not None
    states: dict[str, list[str]] = {}
    for t in queue.get_trials(deepcopy=False):
        if not t.user_attrs.get("skipped"):
            states.setdefault(t.user_attrs[UNIT_ATTR], []).append(t.state.name)
    twice = [u for u, s in states.items() if s.count(TrialState.COMPLETE.name) != 1]
    if twice:
        raise AssertionError(f"units not scored exactly once: {twice}")
    failed = sorted(u for u, s in states.items() if TrialState.FAIL.name in s)
    caches = list(cache.iterdir())
    result = SimilarityCache.load(caches[0])
    if not result.complete:
        raise AssertionError(f"the cache {caches[0]} is incomplete")
    return {"wall": wall, "reports": reports, "killed": killed, "failed": failed,
            "cache": result}


def run_local(root: Path, cache: Path, layers: list[str], points: int) -> dict[str, Any]:
    """The default single-machine build (threads), in its own process."""
    from lrf_optuna.scoring.cache import SimilarityCache

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", LOCAL, str(root), str(cache),
                             json.dumps(layers), str(points)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    report = _done(proc)
    return {"wall": time.perf_counter() - t0, "reports": [report], "killed": None,
            "failed": [], "cache": SimilarityCache.load(next(cache.iterdir()))}


def max_difference(a: Any, b: Any) -> float:
    """Largest score difference between two caches of the same candidates."""
    worst = 0.0
    for path, table in a.tables.items():
        other = {(c.method, c.rank): c for c in b.tables[path].candidates}
        assert len(other) == len(table.candidates), path
        for c in table.candidates:
            for m, v in c.scores.items():
                worst = max(worst, abs(v - other[(c.method, c.rank)].scores[m]))
    return worst


@contextlib.contextmanager
def _storage(tiny: bool, tmp: Path) -> Iterator[tuple[str, str]]:
    if not tiny:
        from benchmarks._postgres import PostgresUnavailableError, throwaway_postgres

        with contextlib.suppress(PostgresUnavailableError), throwaway_postgres() as url:
            yield url, "PostgreSQL (throwaway cluster)"
            return
    yield f"sqlite:///{tmp / 'scale.db'}", "SQLite"


def _row(label: str, run: dict[str, Any], reference: Any | None) -> list[Any]:
    cache = run["cache"]
    n = sum(len(t.candidates) for t in cache.tables.values())
    busy = sum(sum(r.get("seconds", [])) for r in run["reports"])
    rss = max(r["rss"] for r in run["reports"])
    diff = "-" if reference is None else f"{max_difference(cache, reference):.1e}"
    killed = run["killed"] or "-"
    return [label, len(cache.layers), n, f"{run['wall']:.0f}", f"{run['wall'] / n:.2f}",
            f"{busy / n:.2f}" if busy else "-", f"{rss / 2**30:.1f}", killed,
            ", ".join(run["failed"]) or "-", diff]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scoring_scale")
    parser.add_argument("--tiny", action="store_true", help="CI: 32x32, 3 layers, SQLite")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128, help="calibration images")
    parser.add_argument("--layers", type=int, default=None, help="the first N layers only")
    parser.add_argument("--points", type=int, default=16, help="ranks per (layer, method)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare", action="store_true",
                        help="also 1 worker and the local build; scores compared")
    parser.add_argument("--no-kill", action="store_true", help="kill no worker")
    parser.add_argument("--results-md", default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.images, args.layers, args.points = 32, 32, 3, 4
    _problem.setup_logging()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lrf_scale_") as tmp_name:
        tmp = Path(tmp_name)
        layers = make_problem(tmp, args.size, args.images, args.layers)
        with _storage(args.tiny, tmp) as (url, kind):
            main_run = run_workers(url, "scale", tmp, tmp / "cache", layers, args.points,
                                   args.workers, kill=0 if args.no_kill else
                                   1 if args.tiny else 2)
            rows.append(_row(f"{args.workers} workers" + ("" if args.no_kill else
                                                           ", one killed"), main_run, None))
            if args.compare:
                one = run_workers(url, "scale1", tmp, tmp / "cache1", layers, args.points, 1,
                                  kill=0)
                rows.append(_row("1 worker", one, main_run["cache"]))
                local = run_local(tmp, tmp / "local", layers, args.points)
                rows.append(_row("local build (threads), default path", local,
                                 main_run["cache"]))
    flags = " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    body = "\n\n".join([
        f"Command: `python -m benchmarks.scoring_scale {flags}`, run "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {_problem.machine()}; storage "
        f"{kind}; every worker a process on this machine.",
        f"keras.applications ResNet50, random weights, {args.size}x{args.size}x3, "
        f"{args.images} random calibration images, {len(layers)} of its layers, "
        f"{args.points} ranks per (layer, method), metric cosine. s/candidate: wall time "
        "over candidates (what a cluster's throughput is); busy s/candidate: the units' own "
        "seconds summed over workers, over candidates (what one worker costs per "
        "candidate). Peak memory: the largest worker's resident set (ru_maxrss). Killed: "
        f"the unit whose worker was SIGKILLed (retried after the {GRACE} s grace period; "
        "failed: its killed attempt). Max difference: largest score difference to the "
        "first row's cache.",
        markdown_table(["run", "layers", "candidates", "wall (s)", "s / candidate",
                        "busy s / candidate", "peak memory (GiB)", "killed in", "failed",
                        "max difference"], rows),
    ])
    print(body)
    write_section(SECTION, body, **({"path": args.results_md} if args.results_md else {}))


if __name__ == "__main__":
    main()
