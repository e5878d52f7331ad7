"""Which similarity metric and aggregation rank compressed models like their accuracy?

For each reference model: build the similarity cache with every metric, draw random plans
(each plan has a global compression level, sqrt(U(0, 1)) so milder plans dominate; each
layer is kept with probability 0.2, else
gets a random method and a rank near that level of its grid), assemble each plan's model
and measure its validation accuracy WITHOUT fine-tuning. Then, for every metric x
aggregation, the Spearman and Kendall rank correlations between the aggregated proxy and
the accuracy. The best pair (mean Spearman over the models) is the documented default.

    python -m benchmarks.similarity_metrics [--plans 60] [--models lenet5 vgg_small]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence

import numpy as np
from scipy import stats

from benchmarks import _problem
from benchmarks._results import markdown_table, write_section
from lrf_optuna.models import evaluate
from lrf_optuna.scoring.cache import SimilarityCache
from lrf_optuna.scoring.similarity import METRICS
from lrf_optuna.search import AGGREGATIONS

SECTION = "Similarity metric vs accuracy (issue 4)"


def random_plans(cache: SimilarityCache, n: int, seed: int) -> list[dict[str, tuple[str, int]]]:
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(n):
        level = rng.uniform(0.0, 1.0) ** 0.5  # skewed towards milder plans
        plan = {}
        for path, table in cache.tables.items():
            if rng.uniform() < 0.2:
                continue
            method = str(rng.choice(table.methods))
            grid = sorted(table.for_method(method), key=lambda c: c.rank)
            idx = int(np.clip(round(level * (len(grid) - 1) + rng.normal(0, 1.0)), 0,
                              len(grid) - 1))
            plan[path] = (method, grid[idx].rank)
        plans.append(plan)
    return plans


def proxies(cache: SimilarityCache, plan: dict[str, tuple[str, int]]) -> dict[str, float]:
    out = {}
    for metric in METRICS:
        sims = [cache.layer(p).lookup(*plan[p]).score(metric) if p in plan else 1.0
                for p in cache.layers]
        for agg, fn in AGGREGATIONS.items():
            out[f"{metric}/{agg}"] = fn(sims)
    return out


def run(models: Sequence[str], n_plans: int, seed: int, val_limit: int) -> str:
    rows, summary = [], {}
    notes = []
    for name in models:
        problem = _problem.load(name, seed=seed)
        t0 = time.perf_counter()
        cache = SimilarityCache.build(problem.model, problem.splits.x_cal,
                                      cache_dir=".lrf_cache/bench", metric="cosine",
                                      extra_metrics=("cka", "nmse"), progress=True)
        build_s = time.perf_counter() - t0
        x_val, y_val = problem.splits.x_val[:val_limit], problem.splits.y_val[:val_limit]
        base = evaluate(problem.model, x_val, y_val)
        plans = random_plans(cache, n_plans, seed)
        accs, scores = [], []
        t0 = time.perf_counter()
        for plan in plans:
            accs.append(evaluate(cache.build_model(problem.model, plan), x_val, y_val))
            scores.append(proxies(cache, plan))
        eval_s = time.perf_counter() - t0
        notes.append(f"- {name}: {len(cache.layers)} layers, original val accuracy "
                     f"{base:.4f}; plans' accuracy from {min(accs):.3f} to {max(accs):.3f} "
                     f"(median {np.median(accs):.3f}); cache (3 metrics) {build_s:.0f} s, "
                     f"{n_plans} assemblies + evaluations {eval_s:.0f} s")
        for key in scores[0]:
            values = [s[key] for s in scores]
            rho = stats.spearmanr(values, accs).statistic
            tau = stats.kendalltau(values, accs).statistic
            summary.setdefault(key, []).append(rho)
            rows.append([name, *key.split("/"), f"{rho:.3f}", f"{tau:.3f}"])
    ranking = sorted(summary.items(), key=lambda kv: -float(np.mean(kv[1])))
    best = ranking[0][0]
    table = markdown_table(["model", "metric", "aggregation", "Spearman", "Kendall"], rows)
    overall = markdown_table(
        ["metric", "aggregation", "mean Spearman over models"],
        [[*k.split("/"), f"{np.mean(v):.3f}"] for k, v in ranking])
    return "\n\n".join([
        f"Command: `python -m benchmarks.similarity_metrics --plans {n_plans} --models "
        f"{' '.join(models)}`, run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{_problem.machine()}.",
        f"Random plans per model: {n_plans} (seed {seed}); accuracy on the first "
        f"{val_limit} validation images, no fine-tuning.",
        "\n".join(notes), table, overall,
        f"Best: **{best}** (highest mean Spearman correlation).",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.similarity_metrics")
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_small"])
    parser.add_argument("--plans", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-limit", type=int, default=3000)
    args = parser.parse_args(argv)
    _problem.setup_logging()
    body = run(args.models, args.plans, args.seed, args.val_limit)
    print(body)
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
