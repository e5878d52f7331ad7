"""A proxy trial against evaluating the same plan end to end.

    python -m benchmarks.proxy_cost [--model vgg_small] [--plans 5]

Proxy trial: ``LRFObjective.__call__`` on a ``FixedTrial`` (cache look-ups only, no
storage), median over many calls. End to end: build the compressed model of the same plan
(reusing the cache's factors) and evaluate it on the whole validation set, median over a
few plans. Also: the per-trial wall time of ``study.optimize`` with SQLite storage, which is
what a user waits for. All measured side by side in one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Sequence

import optuna

from benchmarks import _problem
from benchmarks._results import markdown_table, median_time, write_section
from lrf_optuna.models import evaluate
from lrf_optuna.search import LRFObjective
from lrf_optuna.study.storage import open_storage

SECTION = "Proxy trial vs end-to-end evaluation (issue 5)"


def run(model_name: str, n_plans: int, n_calls: int) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = _problem.load(model_name)
    objective = LRFObjective(problem.model, problem.splits.x_cal, cache_dir=".lrf_cache",
                             progress=False)
    study = optuna.create_study(directions=objective.directions,
                                sampler=optuna.samplers.NSGAIISampler(seed=0))
    study.optimize(objective, n_trials=max(n_plans, 20))
    trials = [t for t in study.trials if objective.plan_of(t)][:n_plans]
    fixed = [optuna.trial.FixedTrial(t.params) for t in trials]

    def proxy_round() -> None:
        for ft in fixed:
            objective(ft)

    per_trial_proxy = median_time(proxy_round, n_calls) / len(fixed)
    x_val, y_val = problem.splits.x_val, problem.splits.y_val
    e2e = []
    for t in trials:
        t0 = time.perf_counter()
        evaluate(objective.build_model(t), x_val, y_val)
        e2e.append(time.perf_counter() - t0)
    per_trial_e2e = statistics.median(e2e)
    stored = {}
    for label, wal in (("plain SQLite URL", False), ("open_storage: SQLite in WAL mode", True)):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/s.db"
            sql = optuna.create_study(storage=open_storage(url) if wal else url,
                                      directions=objective.directions,
                                      sampler=optuna.samplers.NSGAIISampler(seed=0))
            t0 = time.perf_counter()
            sql.optimize(objective, n_trials=200)
            stored[label] = (time.perf_counter() - t0) / 200
    per_trial_sqlite = stored["open_storage: SQLite in WAL mode"]
    rows = [["proxy trial (objective call, no storage)", f"{1000 * per_trial_proxy:.3f}", "1"],
            *[[f"study.optimize per trial, NSGA-II, {label}", f"{1000 * sec:.1f}",
               f"{sec / per_trial_proxy:.0f}"] for label, sec in stored.items()],
            [f"end to end: build + evaluate {len(x_val)} validation images",
             f"{1000 * per_trial_e2e:.0f}", f"{per_trial_e2e / per_trial_proxy:.0f}"]]
    return "\n\n".join([
        f"Command: `python -m benchmarks.proxy_cost --model {model_name} --plans {n_plans}`, "
        f"run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {_problem.machine()}.",
        f"Model {model_name}: {len(objective.spaces)} searched layers. Proxy: median over "
        f"{n_calls} rounds of {len(fixed)} plans; end to end: median over {len(trials)} "
        "plans (the same plans).",
        markdown_table(["what", "ms per plan", "x proxy"], rows),
        f"**End to end costs {per_trial_e2e / per_trial_proxy:,.0f}x a proxy trial** "
        f"({per_trial_e2e / per_trial_sqlite:,.0f}x a trial stored in WAL-mode SQLite, 200 trials "
        "from an empty study).",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_cost")
    parser.add_argument("--model", default="vgg_small")
    parser.add_argument("--plans", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    _problem.setup_logging()
    body = run(args.model, args.plans, args.calls)
    print(body)
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
