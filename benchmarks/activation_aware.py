"""Activation-aware vs plain SVD factorization, layer by layer and whole model (issue 12).

    python -m benchmarks.activation_aware [--models lenet5 vgg_small] [--val-limit 3000]

For each reference model (trained once on Fashion-MNIST, then loaded from the training
cache) and each decomposable layer, the plain method (``channel_svd`` for k x k convs,
``svd`` for Dense) and its activation-aware variant (``channel_svd_aware`` / ``svd_aware``,
fitted to the 512 calibration images, as the similarity cache does) at the layer's grid of
saving ranks:

* the relative error of the layer's output (after its activation, as the next layer sees
  it) on held-out validation images -- and, for comparison, on the calibration images the
  aware variant was fitted to;
* with only that layer replaced, before fine-tuning: the model's validation accuracy and
  the relative error of its output (class probabilities) against the original model's.

Then the two lowest and two highest grid ranks of each layer (where fitting 512 images
could overfit) with other dampings and calibration-set sizes; and uniform plans (every
layer, or all but the first and the last, at the largest rank within a fraction of its
parameters), plain vs aware at identical ranks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import _problem
from benchmarks._results import markdown_table, write_section

__all__ = ["LayerPoint", "Problem", "aware_pair", "layer_points", "main", "run",
           "uniform_plans"]

logger = logging.getLogger("benchmarks.activation_aware")

SECTION = "Activation-aware factorization (issue 12)"
DAMPINGS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
CAL_SIZES = (128, 512, 2048)
RATIOS = (0.5, 0.25, 0.1, 0.05)


@dataclass(frozen=True)
class Problem:
    """What a measurement needs: a model, calibration and held-out inputs, labels."""

    name: str
    model: Any
    x_cal: np.ndarray
    x_held: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class LayerPoint:
    """One (layer, rank) compared plain vs aware."""

    layer: str
    rank: int
    max_rank: int
    plain: str
    held: tuple[float, float]
    cal: tuple[float, float]
    acc: tuple[float, float]
    model_err: tuple[float, float]


def aware_pair(info: Any) -> tuple[str, str]:
    """``(plain, aware)`` method names for a layer."""
    return ("svd", "svd_aware") if info.is_matrix else ("channel_svd", "channel_svd_aware")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


def _run(layer: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import keras

    return np.concatenate([keras.ops.convert_to_numpy(layer(x[i:i + batch]))
                           for i in range(0, len(x), batch)])


class _Layers:
    """Per-layer description, weights and captured activations of one model."""

    def __init__(self, p: Problem) -> None:
        from lrf_optuna.decompose import layer_weights, validate_weights
        from lrf_optuna.rewrite import find_layers
        from lrf_optuna.scoring.calibration import capture_activations

        self.p = p
        self.found = find_layers(p.model)
        paths = [path for path, e in self.found.items() if e.info is not None]
        big = 2**31
        self.cal = capture_activations(p.model, p.x_cal, paths, max_bytes_per_layer=big)
        self.held = capture_activations(p.model, p.x_held, paths, max_bytes_per_layer=big)
        self.paths = paths
        self.weights = {path: validate_weights(self.found[path].info,
                                               layer_weights(self.found[path].layer))
                        for path in paths}
        self._memo: dict[tuple[str, str, int], Any] = {}

    def info(self, path: str) -> Any:
        return self.found[path].info

    def prepare(self, path: str, method: Any, x_cal: np.ndarray | None = None) -> Any:
        x = self.cal[path].inputs if x_cal is None else x_cal
        return method.prepare_with_inputs(self.info(path), self.weights[path], x)

    def errors(self, path: str, method: Any, factors: list[np.ndarray], rank: int
               ) -> tuple[float, float]:
        """Relative output error ``(held-out, calibration)`` of the replaced layer."""
        small = method.decompose(self.info(path), self.weights[path], rank, factors=factors)
        return (_rel(_run(small, self.held[path].inputs), self.held[path].outputs),
                _rel(_run(small, self.cal[path].inputs), self.cal[path].outputs))

    def evaluate(self, plan: Mapping[str, tuple[str, int]],
                 factors: Mapping[tuple[str, str, int], list[np.ndarray]]
                 ) -> tuple[float, float]:
        """``(accuracy, relative error of the model's output vs the original's)`` of the
        model with ``plan`` applied, on the validation images."""
        from lrf_optuna.rewrite import rewrite_model

        small = rewrite_model(self.p.model, plan, factors=factors)
        scores = np.asarray(small.predict(self.p.x_val, batch_size=512, verbose=0))
        return (float(np.mean(scores.argmax(axis=-1) == self.p.y_val)),
                _rel(scores, self.reference))

    @functools.cached_property
    def reference(self) -> np.ndarray:
        return np.asarray(self.p.model.predict(self.p.x_val, batch_size=512, verbose=0))

    def point(self, path: str, method: Any, prepared: Any, rank: int, *, memo: bool = False
              ) -> tuple[tuple[float, float], float, float]:
        """``((held-out err, cal err), accuracy, model-output err)`` of one candidate;
        with ``memo``, computed once per ``(path, method name, rank)`` (for the plain
        methods, whose result does not depend on the calibration data or a damping)."""
        key = (path, method.name, rank)
        if memo and key in self._memo:
            return self._memo[key]
        factors = method.factorize(self.info(path), prepared, rank)
        result = (self.errors(path, method, factors, rank),
                  *self.evaluate({path: (method.name, rank)}, {key: factors}))
        if memo:
            self._memo[key] = result
        return result


def _ranks(info: Any, method: Any, points: int) -> list[int]:
    from lrf_optuna.scoring.cache import GridConfig

    return GridConfig(points=points).ranks(method, info)


def layer_points(layers: _Layers, *, points: int = 6, damping: float | None = None,
                 x_cal: Mapping[str, np.ndarray] | None = None,
                 extremes: int | None = None) -> list[LayerPoint]:
    """Plain vs aware for every layer and rank of its grid (or only its ``extremes``
    lowest and highest ranks).

    ``damping`` replaces the aware methods' default; ``x_cal`` the layers' calibration
    inputs (another calibration set).
    """
    from lrf_optuna.decompose import get_method

    out = []
    for path in layers.paths:
        info = layers.info(path)
        plain_name, aware_name = aware_pair(info)
        plain = get_method(plain_name)
        aware = get_method(aware_name)
        if damping is not None:
            aware = type(aware)(damping=damping)  # type: ignore[call-arg]
        prep_p = None  # prepared lazily: the plain results are memoised
        prep_a = layers.prepare(path, aware, None if x_cal is None else x_cal[path])
        ranks = _ranks(info, plain, points)
        if extremes:
            ranks = sorted(set(ranks[:extremes] + ranks[-extremes:]))
        for rank in ranks:
            if (path, plain_name, rank) not in layers._memo and prep_p is None:
                prep_p = plain.prepare(info, layers.weights[path])
            e_p, acc_p, m_p = layers.point(path, plain, prep_p, rank, memo=True)
            e_a, acc_a, m_a = layers.point(path, aware, prep_a, rank)
            out.append(LayerPoint(path, rank, plain.max_rank(info), plain_name,
                                  (e_p[0], e_a[0]), (e_p[1], e_a[1]), (acc_p, acc_a),
                                  (m_p, m_a)))
            logger.info("%s %s r=%d held %.4f/%.4f acc %.4f/%.4f", layers.p.name, path, rank,
                        e_p[0], e_a[0], acc_p, acc_a)
    return out


def uniform_plans(layers: _Layers, ratios: Sequence[float], *, keep: Sequence[str] = ()
                  ) -> list[tuple[float, float, float, float]]:
    """``(ratio, params kept, acc plain, acc aware)``: every layer but ``keep`` at the
    largest rank with at most ``ratio`` of its parameters (a layer with none is kept)."""
    from lrf_optuna.decompose import get_method

    prepared = {}
    for path in layers.paths:
        info = layers.info(path)
        if path in keep:
            continue
        plain_name, aware_name = aware_pair(info)
        prepared[path] = (plain_name, get_method(plain_name).prepare(info, layers.weights[path]),
                          aware_name, layers.prepare(path, get_method(aware_name)))
    total = layers.p.model.count_params()
    out = []
    for ratio in ratios:
        plans: dict[str, dict[str, tuple[str, int]]] = {"plain": {}, "aware": {}}
        factors: dict[tuple[str, str, int], list[np.ndarray]] = {}
        saved = 0
        for path, (plain_name, prep_p, aware_name, prep_a) in prepared.items():
            info = layers.info(path)
            plain = get_method(plain_name)
            fits = [r for r in plain.saving_ranks(info)
                    if plain.params(info, r) <= ratio * info.original_params]
            if not fits:
                continue
            r = max(fits)
            saved += info.original_params - plain.params(info, r)
            plans["plain"][path] = (plain_name, r)
            plans["aware"][path] = (aware_name, r)
            factors[(path, plain_name, r)] = plain.factorize(info, prep_p, r)
            factors[(path, aware_name, r)] = get_method(aware_name).factorize(info, prep_a, r)
        out.append((ratio, 1 - saved / total, layers.evaluate(plans["plain"], factors)[0],
                    layers.evaluate(plans["aware"], factors)[0]))
        logger.info("%s uniform %.2f (keep %s): %s", layers.p.name, ratio, keep, out[-1])
    return out


# -- report ---------------------------------------------------------------------------------
def _med(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "-"


def _summary(points: Sequence[LayerPoint]) -> list[str]:
    """Median error ratios (layer output on calibration / held-out images, model output),
    how often aware is worse held-out, median and extreme accuracy changes."""
    def ratio(pairs: Sequence[tuple[float, float]]) -> str:
        return _med([a / max(p, 1e-12) for p, a in pairs])

    dacc = [100 * (a - p) for p, a in (q.acc for q in points)]
    worse = sum(a > p for p, a in (q.held for q in points))
    return [str(len(points)), ratio([q.cal for q in points]), ratio([q.held for q in points]),
            f"{worse}/{len(points)}", ratio([q.model_err for q in points]),
            f"{statistics.median(dacc):+.2f}" if dacc else "-",
            f"{min(dacc):+.2f} / {max(dacc):+.2f}" if dacc else "-"]


SUMMARY_HEADERS = ["points", "cal err aware/plain", "held-out err aware/plain",
                   "aware worse held-out", "model-output err aware/plain",
                   "acc change (pp)", "acc change min / max"]


def _band(q: LayerPoint) -> str:
    frac = q.rank / q.max_rank
    return "low (r <= 10% of max)" if frac <= 0.1 else (
        "mid (10-40%)" if frac <= 0.4 else "high (> 40%)")


def _sides(head: list[str], points: Sequence[LayerPoint], lowest: set[tuple[str, int]]
           ) -> list[list[str]]:
    """Summary rows of the ``lowest`` (layer, rank) points and of the others."""
    return [[*head, f"2 {side}", *_summary(
        [q for q in points if ((q.layer, q.rank) in lowest) == (side == "lowest")])]
        for side in ("lowest", "highest")]


def _fmt(pair: tuple[float, float], digits: int = 4) -> list[str]:
    return [f"{pair[0]:.{digits}f}", f"{pair[1]:.{digits}f}"]


def run(models: Sequence[str], *, val_limit: int, heldout: int, points: int,
        seed: int = 0) -> str:
    from lrf_optuna.decompose import get_method
    from lrf_optuna.decompose._aware import DEFAULT_DAMPING
    from lrf_optuna.scoring.calibration import capture_activations

    detail_rows, summary_rows, band_rows, sweep_rows, uniform_rows = [], [], [], [], []
    timings = []
    all_points: list[LayerPoint] = []
    for name in models:
        spec = _problem.load(name, seed=seed)
        s = spec.splits
        # held-out images for the errors: the end of the validation split, disjoint from
        # the images the accuracy is measured on
        p = Problem(name, spec.model, s.x_cal, s.x_val[-heldout:], s.x_val[:val_limit],
                    s.y_val[:val_limit])
        t0 = time.perf_counter()
        layers = _Layers(p)
        base = layers.evaluate({}, {})[0]
        for path in layers.paths:
            info = layers.info(path)
            plain_name, aware_name = aware_pair(info)
            t = time.perf_counter()
            get_method(plain_name).prepare(info, layers.weights[path])
            t_p = time.perf_counter() - t
            t = time.perf_counter()
            layers.prepare(path, get_method(aware_name))
            timings.append([name, path, info.class_name, f"{t_p:.3f}",
                            f"{time.perf_counter() - t:.3f}"])
        pts = layer_points(layers, points=points)
        all_points += pts
        for q in pts:
            detail_rows.append([name, q.layer, q.plain, f"{q.rank}/{q.max_rank}",
                                *_fmt(q.held), *_fmt(q.cal), *_fmt(q.model_err),
                                *_fmt(q.acc)])
        summary_rows.append([name, f"{base:.4f}", *_summary(pts)])
        for band in sorted({_band(q) for q in pts}):
            band_rows.append([name, band, *_summary([q for q in pts if _band(q) == band])])
        # the extreme ranks again: other dampings, other calibration-set sizes
        lowest = {(q.layer, q.rank) for q in pts
                  if q.rank in sorted(r.rank for r in pts if r.layer == q.layer)[:2]}

        for damping in DAMPINGS:
            got = layer_points(layers, points=points, extremes=2, damping=damping)
            sweep_rows += _sides([name, f"damping {damping:g}", str(len(p.x_cal))], got,
                                 lowest)
        big = _problem.load(name, seed=seed, calibration_size=max(CAL_SIZES)).splits.x_cal
        caps = capture_activations(p.model, big, layers.paths, max_bytes_per_layer=2**31)
        for size in CAL_SIZES:
            x_cal = {path: caps[path].inputs[:size] for path in layers.paths}
            got = layer_points(layers, points=points, extremes=2, x_cal=x_cal)
            sweep_rows += _sides([name, f"damping {DEFAULT_DAMPING:g}, other set", str(size)],
                                 got, lowest)
        ends = (layers.paths[0], layers.paths[-1])
        for scope, keep in (("all", ()), ("all but first and last", ends)):
            for ratio, kept, acc_p, acc_a in uniform_plans(layers, RATIOS, keep=keep):
                uniform_rows.append([name, scope, f"{ratio:g}", f"{kept:.3f}", f"{acc_p:.4f}",
                                     f"{acc_a:.4f}", f"{100 * (acc_a - acc_p):+.2f}"])
        logger.info("%s done in %.0f s", name, time.perf_counter() - t0)
    summary_rows.append(["all", "-", *_summary(all_points)])
    cmd = (f"python -m benchmarks.activation_aware --models {' '.join(models)} "
           f"--val-limit {val_limit} --heldout {heldout} --points {points}")
    return "\n\n".join([
        f"Command: `{cmd}`, run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{_problem.machine()}.",
        f"Plain (`channel_svd` for k x k convs, `svd` for Dense) vs activation-aware "
        f"(`channel_svd_aware` / `svd_aware`, damping {DEFAULT_DAMPING:g}, fitted to the "
        "512 calibration images) at identical ranks, hence identical params and MACs; no "
        f"fine-tuning. Ranks: each layer's grid of saving ranks ({points} log-spaced "
        "points). With only that layer replaced: the relative Frobenius error of the "
        f"layer's output (after its activation) on {heldout} held-out validation images "
        "(`held`) and on the calibration images (`cal`); the model's accuracy and the "
        f"relative error of its output probabilities on {val_limit} other validation "
        "images. Ratios and changes are medians over (layer, rank) points; `aware worse "
        "held-out` counts points where the aware layer error is the larger one.",
        "### Summary per model\n\n" + markdown_table(
            ["model", "original acc", *SUMMARY_HEADERS], summary_rows),
        "### By rank band (rank / max rank)\n\n" + markdown_table(
            ["model", "band", *SUMMARY_HEADERS], band_rows),
        "### Extreme ranks: damping and calibration-set size\n\nThe two lowest and the "
        "two highest grid ranks of every layer; the aware variant refitted with each "
        "damping (the 512 calibration images), or with the first 128 / 512 / 2048 images "
        "of another, 2048-image calibration set (default damping; `cal` is still measured on "
        "the 512 standard calibration images, so in those rows it is held-out data too). "
        "The plain results are the same in every row.\n\n" + markdown_table(
            ["model", "aware variant", "calibration images", "ranks", *SUMMARY_HEADERS],
            sweep_rows),
        "### Uniform plans\n\nEvery decomposable layer (or all but the first conv and the "
        "classifier, as LRF papers usually do) at the largest rank with at most `ratio` of "
        "its parameters (the same rank for both methods; a layer with no such rank is "
        "kept); `params kept` is the fraction of the model's parameters left.\n\n"
        + markdown_table(
            ["model", "layers", "ratio", "params kept", "acc plain", "acc aware",
             "change (pp)"], uniform_rows),
        "### Prepare time (s, one run, shared CPU)\n\n" + markdown_table(
            ["model", "layer", "class", "plain", "aware"], timings),
        "### Every (layer, rank)\n\n" + markdown_table(
            ["model", "layer", "plain", "rank", "held plain", "held aware", "cal plain",
             "cal aware", "model err plain", "model err aware", "acc plain", "acc aware"],
            detail_rows),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.activation_aware")
    parser.add_argument("--models", nargs="+", default=["lenet5", "vgg_small"])
    parser.add_argument("--val-limit", type=int, default=3000,
                        help="validation images the accuracy is measured on")
    parser.add_argument("--heldout", type=int, default=1000,
                        help="other validation images the output errors are measured on")
    parser.add_argument("--points", type=int, default=6, help="ranks per layer")
    args = parser.parse_args(argv)
    _problem.setup_logging()
    body = run(args.models, val_limit=args.val_limit, heldout=args.heldout,
               points=args.points)
    print(body)
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
