"""How many search trials (issue 17, item 5): the front after 300, 1,000 and 3,000
NSGA-II trials on the user-style nets of ``benchmarks/user_nets/``.

A trial is a cache look-up and a storage write, so more trials cost seconds; what they buy
is a better front. For each net (the original trained as ``benchmarks.user_nets`` trains
it, on ``--size`` images; its similarity cache) a seeded NSGA-II study
(:class:`lrf_optuna.search.SeededNSGAIISampler`, the sampler ``compress`` uses) runs
``--trials`` trials in memory; at each checkpoint: the hypervolume of (params, FLOPs,
1 - proxy) normalised by the original (reference 1.1), and the *pick*: the fraction of the
original's parameters the smallest trial keeps whose proxy reaches each level of
``--proxy-levels`` (what the max-drop search can reach near the answer), and the seconds.

    python -m benchmarks.trial_count --nets mobile,residual,plain --size 4000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._problem import machine, setup_logging
from benchmarks._results import markdown_table, write_section
from benchmarks.seeded_sampler import hypervolumes, normalized_points

HERE = Path(__file__).resolve().parent


def smallest_kept(pts: np.ndarray, n: int, level: float) -> float | None:
    """The smallest params fraction among the first ``n`` points with proxy >= ``level``."""
    ok = pts[:n][1 - pts[:n, 2] >= level]
    return float(ok[:, 0].min()) if len(ok) else None


def run_net(net: str, args: argparse.Namespace) -> list[list[str]]:
    import optuna

    from benchmarks import user_nets
    from lrf_optuna.data import prepare_splits
    from lrf_optuna.search import LRFObjective, SeededNSGAIISampler

    cache = Path(args.cache_dir)
    data = user_nets.load_dataset("quick", args.size, None, 0)
    splits = prepare_splits(data, seed=0)
    trained = user_nets.train_net(net, 1.0, splits, epochs=user_nets.NETS[net].epochs,
                                  seed=0, cache_dir=cache)
    objective = LRFObjective(trained.model, splits.x_cal, cache_dir=cache / "similarity",
                             progress=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    # the SQLite files live only as long as the run
    with tempfile.TemporaryDirectory(prefix="trial_count-") as tmp:
        for seed in range(args.seeds):
            storage = None
            if args.sqlite:  # the storage compress writes to: what a user waits for
                db = Path(tmp) / f"trials-{seed}.db"
                storage = f"sqlite:///{db}"
            study = optuna.create_study(directions=objective.directions, storage=storage,
                                        sampler=SeededNSGAIISampler(seed=seed))
            objective.describe_study(study)
            objective.seed_study(study)
            start, seconds = time.perf_counter(), []
            done = 0
            for c in args.checkpoints:
                study.optimize(objective, n_trials=c - done)
                done = c
                seconds.append(time.perf_counter() - start)
            pts = normalized_points(study)
            hv = hypervolumes(pts, args.checkpoints)
            for c, h, s in zip(args.checkpoints, hv, seconds):
                picks = [smallest_kept(pts, c, level) for level in args.proxy_levels]
                rows.append([net, seed, c, f"{h:.4f}",
                             *["-" if p is None else f"{100 * p:.2f}%" for p in picks],
                             f"{s:.0f}"])
                print(*rows[-1], flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trial_count",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="mobile,residual,plain")
    p.add_argument("--size", type=int, default=4000)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[300, 1000, 3000])
    p.add_argument("--proxy-levels", type=float, nargs="+", default=[0.4, 0.6, 0.8, 0.9])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cache-dir", default=str(HERE / ".cache" / "user_nets"))
    p.add_argument("--sqlite", action="store_true",
                   help="run the studies on a SQLite file (as compress does), not in memory")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    args.checkpoints = sorted(args.checkpoints)
    setup_logging()
    rows = [r for net in args.nets.split(",") for r in run_net(net.strip(), args)]
    body = (f"`python -m benchmarks.trial_count {' '.join(sys.argv[1:] if argv is None else argv)}`"
            f" ({machine()}). Hypervolume (normalised, reference 1.1) and the pick: params kept"
            " by the smallest trial whose proxy reaches each level, after each trial count;"
            f" seconds since the study started ({'SQLite file' if args.sqlite else 'in memory'})."
            "\n\n"
            + markdown_table(["net", "seed", "trials", "HV",
                              *[f"kept @ proxy >= {v:g}" for v in args.proxy_levels], "s"],
                             rows))
    print(body)
    if not args.no_write:
        counts = ", ".join(f"{c:,}" for c in args.checkpoints)
        where = ", on SQLite" if args.sqlite else ""
        write_section(f"Search trials: {counts} ({args.size:,} images{where})", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
