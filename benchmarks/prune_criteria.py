"""Pruning criteria before any fine-tuning: validation accuracy after uniform pruning.

Every prunable layer (one ratio per Add group) of a trained reference model is pruned at
the same ratio with each importance criterion of :mod:`lrf_optuna.prune.importance`, and
with random channel choices (mean of 3 seeds) as the floor a criterion must beat. No
fine-tuning: this compares which channels each criterion keeps, not final accuracy.
Prints a Markdown table (not yet part of ``make bench``; issue 13's benchmark comes with
the search integration).

    python -m benchmarks.prune_criteria [--models lenet5 vgg_small] [--ratios 0.25 0.5]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from benchmarks._problem import load, machine, setup_logging
from lrf_optuna.prune import CRITERIA, PruneGraph, kept_count, select_channels
from lrf_optuna.prune._rebuild import rebuild
from lrf_optuna.scoring.calibration import capture_activations


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    pred = np.asarray(model.predict(x, batch_size=500, verbose=0)).argmax(axis=-1)
    return float((pred == y).mean())


def _random_model(graph: PruneGraph, ratio: float, seed: int):
    rng = np.random.default_rng(seed)
    masks = {}
    a = graph._a
    for entry in graph.prunable.values():
        root = a.root(a.producers[entry.path].gid)  # type: ignore[arg-type]
        if root in masks:
            continue
        mask = np.zeros(entry.channels, dtype=bool)
        mask[select_channels(rng.random(entry.channels), kept_count(entry.channels, ratio))] = 1
        masks[root] = mask
    return rebuild(graph.model, a, masks)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prune_criteria")
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_small"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    args = parser.parse_args(argv)
    setup_logging()
    print(f"machine: {machine()}\n")
    print("| model | ratio | params | " + " | ".join(CRITERIA) + " | random (3 seeds) |")
    print("| --- | --- | --- |" + " --- |" * (len(CRITERIA) + 1))
    for name in args.models:
        problem = load(name)
        model, s = problem.model, problem.splits
        graph = PruneGraph(model)
        acts = capture_activations(model, s.x_cal, graph.activation_layers())
        base = _accuracy(model, s.x_val, s.y_val)
        print(f"| {name} | 0 | {model.count_params()} | " + " | ".join(
            [f"{base:.4f}"] * len(CRITERIA)) + f" | {base:.4f} |")
        for ratio in args.ratios:
            ratios = {e.group[0]: ratio for e in graph.prunable.values()}
            row = []
            for crit in CRITERIA:
                small = graph.prune(ratios, importance=crit, activations=acts)
                row.append(f"{_accuracy(small, s.x_val, s.y_val):.4f}")
            rand = [_accuracy(_random_model(graph, ratio, seed), s.x_val, s.y_val)
                    for seed in range(3)]
            print(f"| {name} | {ratio} | {small.count_params()} | " + " | ".join(row)
                  + f" | {np.mean(rand):.4f} +- {np.std(rand):.4f} |", flush=True)


if __name__ == "__main__":
    main()
