"""NSGA-II with and without the seeded plans in its populations, on the same cache.

    python -m benchmarks.seeded_sampler [--models lenet5 vgg_small] [--trials 500] [--seeds 3]

Optuna's ``NSGAIISampler`` never gives a trial enqueued with every parameter fixed a
generation, so the strategy plans a study is seeded with are never parents;
:class:`lrf_optuna.search.SeededNSGAIISampler` puts them in the population. Both run on the
same similarity cache, with the same seeded plans, population 50, for each sampler seed.
Reported: the hypervolume of (params / original, FLOPs / original, 1 - proxy), reference
point (1.1, 1.1, 1.1), against the trial count; the best proxy among trials with at most 5 %
/ 10 % of the original parameters; the front size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence

import numpy as np
import optuna

from benchmarks import _problem
from benchmarks._results import markdown_table, write_section
from lrf_optuna.search import LRFObjective, SeededNSGAIISampler
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR

SECTION = "Seeded plans in NSGA-II's populations (issue 12)"
CHECKPOINTS = (100, 200, 300, 500, 1000)


def normalized_points(study: optuna.Study) -> np.ndarray:
    """``(params / original, FLOPs / original, 1 - proxy)`` of every COMPLETE trial, in
    trial order (the original is the largest trial: seeded as trial 0)."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    params0 = max(t.user_attrs[PARAMS_ATTR] for t in done)
    flops0 = max(t.user_attrs[FLOPS_ATTR] for t in done)
    return np.array([[t.user_attrs[PARAMS_ATTR] / params0, t.user_attrs[FLOPS_ATTR] / flops0,
                      1 - t.user_attrs[PROXY_ATTR]] for t in done])


def hypervolumes(pts: np.ndarray, checkpoints: Sequence[int]) -> list[float]:
    """The hypervolume of the first ``n`` points for each checkpoint ``n`` (reference
    point 1.1 on every axis)."""
    from optuna._hypervolume import compute_hypervolume  # private, but the one Optuna uses

    ref = np.full(3, 1.1)
    hv = []
    for n in (c for c in checkpoints if c <= len(pts)):
        p = pts[:n][np.all(pts[:n] < ref, axis=1)]
        hv.append(float(compute_hypervolume(p, ref)) if len(p) else 0.0)
    return hv


def _study_row(objective: LRFObjective, sampler: optuna.samplers.BaseSampler,
               trials: int) -> tuple[list[float], float, float, int, float]:
    study = optuna.create_study(directions=objective.directions, sampler=sampler)
    objective.describe_study(study)
    objective.seed_study(study)
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - start
    pts = normalized_points(study)
    hv = hypervolumes(pts, CHECKPOINTS)

    def best(fraction: float) -> float:
        return max((1 - p[2] for p in pts if p[0] <= fraction), default=0.0)

    return hv, best(0.05), best(0.10), len(study.best_trials), seconds


def run(models: Sequence[str], trials: int, seeds: int) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoints = [c for c in CHECKPOINTS if c <= trials]
    rows = []
    for name in models:
        problem = _problem.load(name)
        objective = LRFObjective(problem.model, problem.splits.x_cal, cache_dir=".lrf_cache",
                                 progress=False)
        for label, cls in (("NSGAIISampler", optuna.samplers.NSGAIISampler),
                           ("SeededNSGAIISampler", SeededNSGAIISampler)):
            for seed in range(seeds):
                hv, b5, b10, front, seconds = _study_row(
                    objective, cls(seed=seed, population_size=50), trials)
                rows.append([name, label, seed, *[f"{v:.4f}" for v in hv], f"{b5:.3f}",
                             f"{b10:.3f}", front, f"{seconds:.0f}"])
                print(*rows[-1], flush=True)
    headers = ["model", "sampler", "seed", *[f"HV @{c}" for c in checkpoints],
               "best proxy <= 5% params", "<= 10%", "front", "s"]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Command: `python -m benchmarks.seeded_sampler --models {' '.join(models)} "
            f"--trials {trials} --seeds {seeds}`, run {when} on {_problem.machine()}.\n\n"
            + __doc__.split("\n\n", 2)[2].strip() + "\n\n" + markdown_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seeded_sampler")
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_small"])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    body = run(args.models, args.trials, args.seeds)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
