"""Soak: several ``lrf-optuna search`` workers on one PostgreSQL study (issue 10).

    python -m benchmarks.search_soak [--workers 3] [--trials 2000] [--model lenet5]

A throwaway PostgreSQL cluster (:mod:`benchmarks._postgres`) holds one new study; the
workers start at the same time on the empty database (so they also race to create
Optuna's tables and to seed the strategy plans) and share ``--n-trials``. The similarity
cache is built first, once, outside the measurement. Then one worker runs the same study
size alone on a second study, for comparison.

Checked (the run fails otherwise): every trial is COMPLETE (none lost as FAIL, RUNNING or
WAITING); the trials the workers report having run add up to the trials stored, numbered
``0 .. n-1`` (none lost, none counted twice); every strategy plan ran exactly once, and the
workers' reports of plans enqueued add up to the plans stored. Reported: trials per second
of each worker (its own trials over its own wall time, from its
``this worker ran N trial(s) in T s`` line).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from benchmarks import _problem
from benchmarks._postgres import PostgresUnavailableError, throwaway_postgres
from benchmarks._results import markdown_table, write_section
from lrf_optuna.study.records import STRATEGY_ATTR

SECTION = "Search workers on one PostgreSQL study: soak (issue 10)"


@dataclass(frozen=True)
class WorkerRun:
    trials: int
    seconds: float
    enqueued: int

    @property
    def rate(self) -> float:
        return self.trials / self.seconds if self.seconds else 0.0


def _cli(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "lrf_optuna.cli", *args]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _workers(argv: list[str], n: int, cwd: Path) -> tuple[list[WorkerRun], float, float]:
    """Run ``n`` workers at once; their reports, the wall time and their CPU seconds (all
    together, start-up included)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cpu = _children_cpu()
    start = time.perf_counter()
    procs = [subprocess.Popen(_cli(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=cwd) for _ in range(n)]
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=7200)
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode}):\n{err[-4000:]}")
        ran = re.search(r"this worker ran (\d+) trial\(s\) in ([\d.]+) s", out)
        enq = re.search(r"(\d+) strategy plan\(s\) enqueued", out)
        if not ran or not enq:
            raise SystemExit(f"unexpected worker output:\n{out[-3000:]}")
        runs.append(WorkerRun(int(ran.group(1)), float(ran.group(2)), int(enq.group(1))))
    return runs, time.perf_counter() - start, _children_cpu() - cpu


def _check(study: optuna.Study, runs: Sequence[WorkerRun], target: int) -> list[str]:
    """The invariants, as lines of the report; raises SystemExit when one fails."""
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in trials)
    seeded = collections.Counter(
        (t.user_attrs[STRATEGY_ATTR], json.dumps(t.params, sort_keys=True))
        for t in trials if STRATEGY_ATTR in t.user_attrs)
    checks = {
        f"every trial COMPLETE ({dict(states)})": set(states) == {"COMPLETE"},
        f"COMPLETE trials {len(trials)} within [{target}, {target + len(runs) - 1}]":
            target <= len(trials) <= target + len(runs) - 1,
        f"trials the workers ran ({' + '.join(str(r.trials) for r in runs)}) = trials "
        f"stored ({len(trials)})": sum(r.trials for r in runs) == len(trials),
        "trial numbers 0 .. n-1, each once":
            sorted(t.number for t in trials) == list(range(len(trials))),
        f"{len(seeded)} strategy plans, each run exactly once":
            bool(seeded) and set(seeded.values()) == {1},
        f"plans the workers enqueued ({' + '.join(str(r.enqueued) for r in runs)}) = plans "
        f"stored ({sum(seeded.values())})": sum(r.enqueued for r in runs) == sum(seeded.values()),
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        raise SystemExit("soak check(s) failed: " + "; ".join(failed))
    return [f"- {what}: yes" for what in checks]


def run(model: str, n_workers: int, n_trials: int, population_size: int,
        calibration_size: int) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="lrf_soak_"))
    cache = work / "cache"
    base = ["search", "--model", model, "--calibration-size", str(calibration_size),
            "--cache-dir", str(cache), "--population-size", str(population_size), "-q"]
    # the similarity cache, once, outside the measurement (a SQLite study of 0 trials)
    subprocess.run(_cli([*base, "--storage", f"sqlite:///{work / 'warm.db'}",
                         "--n-trials", "0"]), check=True, cwd=work,
                   capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = _problem.machine()
    with throwaway_postgres() as url:
        argv = [*base, "--storage", url, "--study-name", "soak", "--n-trials", str(n_trials)]
        runs, wall, cpu = _workers(argv, n_workers, work)
        checks = _check(optuna.load_study(study_name="soak", storage=url), runs, n_trials)
        solo_argv = [*base, "--storage", url, "--study-name", "solo", "--n-trials",
                     str(n_trials)]
        (solo,), _, solo_cpu = _workers(solo_argv, 1, work)
        _check(optuna.load_study(study_name="solo", storage=url), [solo], n_trials)
    rows = [[f"worker {i + 1} of {n_workers}", r.trials, f"{r.seconds:.1f}", f"{r.rate:.1f}",
             "-"] for i, r in enumerate(runs)]
    total = sum(r.trials for r in runs)
    rows.append([f"all {n_workers} together", total, f"{wall:.1f}", f"{total / wall:.1f}",
                 f"{1000 * cpu / total:.0f}"])
    rows.append(["one worker alone (study `solo`)", solo.trials, f"{solo.seconds:.1f}",
                 f"{solo.rate:.1f}", f"{1000 * solo_cpu / solo.trials:.0f}"])
    mean_rate = sum(r.rate for r in runs) / len(runs)
    load_after = _problem.machine().split("load average ")[-1]
    return "\n".join([
        f"Command: `python -m benchmarks.search_soak --workers {n_workers} --trials "
        f"{n_trials} --model {model}`, run {started} on {load_before} at the start, "
        f"{load_after} at the end.",
        "",
        f"{n_workers} `lrf-optuna search` processes started together on one new study of a "
        f"throwaway PostgreSQL {_pg_version()} cluster (unix socket, `fsync=off`), "
        f"`--n-trials {n_trials}` shared, NSGA-II population {population_size}, model "
        f"{model} (similarity cache built beforehand). Trials per second: each worker's "
        "own COMPLETE trials over its own wall time (model loading excluded; the "
        "\"together\" row includes process start-up). CPU ms per trial: the workers' "
        "user + system CPU time (start-up included, the PostgreSQL server's not) over "
        "their trials.",
        "",
        markdown_table(["run", "trials", "seconds", "trials/s", "worker CPU ms/trial"], rows),
        "",
        f"Per worker, {mean_rate:.1f} trials/s with {n_workers} workers against "
        f"{solo.rate:.1f} alone ({mean_rate / solo.rate:.2f}x); together "
        f"{total / wall:.1f} trials/s. The workers' CPU time per trial is "
        f"{cpu / total / (solo_cpu / solo.trials):.1f}x that of one worker alone: each "
        "worker also reads and sorts the trials the others finish (Optuna's storage cache "
        "and NSGA-II see the whole study), and the workers and the database server share "
        f"the machine's {os.cpu_count()} cores with whatever else runs. More workers pay off "
        "when each has cores of its own; on this machine they "
        + ("added" if total / max(r.seconds for r in runs) > solo.rate else "did not add")
        + f" throughput ({total / max(r.seconds for r in runs):.1f} trials/s while all ran, "
        "start-up aside).",
        "",
        "Checked on the shared study:",
        "",
        *checks,
    ])


def _pg_version() -> str:
    from benchmarks._postgres import pg_bin

    bin_dir = pg_bin()
    return bin_dir.parent.name if bin_dir is not None else "?"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_soak")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--population-size", type=int, default=50)
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    _problem.setup_logging()
    try:
        body = run(args.model, args.workers, args.trials, args.population_size,
                   args.calibration_size)
    except PostgresUnavailableError as err:
        print(f"search soak skipped: {err}")
        return
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
