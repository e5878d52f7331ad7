"""How long each LRF method takes to factorize one big layer over a grid of ranks.

For a 3x3x256x256 ``Conv2D`` ("same", on a 32x32x256 input) and a 4096x1024 ``Dense``
layer, every method that applies (conv: tucker2, cp, channel_svd, spatial_svd; dense:
svd, qr, tt) is timed the way the similarity cache uses it:

* ``prepare(info, weights)`` once per layer (median over ``--repeats`` calls),
* ``factorize(info, prepared, rank)`` per rank of the grid (median over repeats, all on
  the same prepared result),
* "whole grid" = prepare + the sum of the factorize medians.

Ranks: conv 8, 16, 32, 64, 128; dense 8, 32, 128, 512 (``--quick``: conv 8, 64; dense 8,
128; one repeat). Ranks above a method's ``max_rank`` are skipped and listed.

Quality: the relative weight reconstruction error ``||W - W_r||_F / ||W||_F`` at every
rank, for all seven methods: the kernel is rebuilt from the factors in numpy
(:func:`reconstruct_kernel`, checked against the replacement layer's outputs by
``tests/benchmarks_tests/test_benchmarks_speed.py``). Not timed.

Weights ("trained-like", seeded, :func:`trained_like_kernel`): a Tucker-structured signal
with power-law mode spectra plus i.i.d. noise, scaled to He-normal magnitude:
``S = G x_1 A x_2 B x_3 D`` over the modes (taps ``K = kh kw``, ``c_in``, ``c_out``; for
Dense just ``n_in``, ``n_out``), with ``A, B, D`` Haar-random orthonormal columns (as many
as the mode's possible rank, e.g. 1024 for the 4096 side of the Dense) and the core
``G[t, i, o] = z * s_t s_i s_o``, ``z ~ N(0, 1)``, ``s_j = (1 + j / 8)^-1``
(spatial mode: ``(1 + j)^-1``); then ``W = S + E`` with ``E`` i.i.d. Gaussian,
``||E|| = 0.1 ||S||``, and ``W`` scaled to standard deviation ``sqrt(2 / fan_in)``. All its
unfoldings have decaying spectra that end in a noise floor, unlike i.i.d. noise (for which
every truncation would be equally bad and ALS / HOOI would converge differently).

Run from the repository root::

    python -m benchmarks.decomposition_speed                  # ~3-5 min on 2 cores
    python -m benchmarks.decomposition_speed --quick          # < 1 min
    python -m benchmarks.decomposition_speed --blas-threads 1 # limit numpy/scipy BLAS

It prints the tables and writes them to ``benchmarks/RESULTS.md`` under
``## Decomposition speed`` (replacing that section only).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._results import RESULTS_PATH, markdown_table, median_time, write_section

__all__ = [
    "CONV_METHODS",
    "DENSE_METHODS",
    "SECTION",
    "MethodTiming",
    "RankTiming",
    "SpeedConfig",
    "SpeedReport",
    "main",
    "reconstruct_kernel",
    "render",
    "run",
    "trained_like_kernel",
]

logger = logging.getLogger("benchmarks.decomposition_speed")

SECTION = "Decomposition speed"
CONV_METHODS: tuple[str, ...] = ("tucker2", "cp", "channel_svd", "spatial_svd")
DENSE_METHODS: tuple[str, ...] = ("svd", "qr", "tt")
DEFAULT_REPEATS = 3
NOISE_RATIO = 0.1


# -- configuration and results ---------------------------------------------------------------
@dataclass(frozen=True)
class SpeedConfig:
    """What to measure: the two layers, the rank grids and the repeats."""

    conv_kernel: int = 3
    conv_in: int = 256
    conv_out: int = 256
    conv_hw: int = 32
    dense_in: int = 4096
    dense_out: int = 1024
    conv_ranks: tuple[int, ...] = (8, 16, 32, 64, 128)
    dense_ranks: tuple[int, ...] = (8, 32, 128, 512)
    repeats: int = DEFAULT_REPEATS
    seed: int = 0
    conv_methods: tuple[str, ...] = CONV_METHODS
    dense_methods: tuple[str, ...] = DENSE_METHODS

    @classmethod
    def quick(cls) -> SpeedConfig:
        return cls(conv_ranks=(8, 64), dense_ranks=(8, 128), repeats=1)


@dataclass
class RankTiming:
    """One (layer, method, rank) measurement."""

    layer: str
    method: str
    rank: int
    params: int
    original_params: int
    factorize_s: float
    rel_error: float
    note: str = ""
    budget_hits: int = 0  # CP: repeats whose ALS stopped on the time budget

    @property
    def saves_params(self) -> bool:
        return self.params < self.original_params


@dataclass
class MethodTiming:
    """One (layer, method): its prepare time and the per-rank rows."""

    layer: str
    method: str
    prepare_s: float
    ranks: list[RankTiming] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # ranks above max_rank
    max_rank: int = 0

    @property
    def grid_s(self) -> float:
        return self.prepare_s + sum(r.factorize_s for r in self.ranks)


@dataclass
class SpeedReport:
    """All measurements plus what is needed to interpret them."""

    config: SpeedConfig
    layers: dict[str, str]                      # label -> description
    methods: list[MethodTiming]
    environment: dict[str, Any]
    seconds: float = 0.0

    @property
    def rows(self) -> list[RankTiming]:
        return [r for m in self.methods for r in m.ranks]


# -- weights ----------------------------------------------------------------------------------
def _orthonormal(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """``n x r`` with Haar-random orthonormal columns."""
    q, upper = np.linalg.qr(rng.standard_normal((n, r)))
    return q * np.sign(np.diag(upper))


def _profile(n: int, scale: float) -> np.ndarray:
    return 1.0 / (1.0 + np.arange(n) / scale)


def trained_like_kernel(shape: Sequence[int], seed: int = 0,
                        noise_ratio: float = NOISE_RATIO) -> np.ndarray:
    """A float32 kernel ``(*k, c_in, c_out)`` (or ``(n_in, n_out)``) with the spectra of a
    trained layer: Tucker signal with power-law mode profiles plus i.i.d. noise (see the
    module docstring), He-normal scale. Deterministic in ``seed``: generated with one BLAS
    thread, so the bits do not depend on ``--blas-threads`` (and an oversubscribed BLAS
    cannot make the set-up slow)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _trained_like_kernel(shape, seed, noise_ratio)


def _trained_like_kernel(shape: Sequence[int], seed: int, noise_ratio: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    *k, c_in, c_out = (int(s) for s in shape)
    taps = int(np.prod(k)) if k else 1
    dims = (taps, c_in, c_out)
    # a mode's rank cannot exceed the product of the others: a smaller core is the same law
    ranks = [min(d, int(np.prod(dims)) // d) for d in dims]
    profiles = [_profile(ranks[0], 1.0), _profile(ranks[1], 8.0), _profile(ranks[2], 8.0)]
    core = rng.standard_normal(ranks)
    core *= profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    bases = [_orthonormal(rng, d, r) for d, r in zip(dims, ranks)]
    signal = np.einsum("tio,at,bi,co->abc", core, *bases, optimize=True)
    noise = rng.standard_normal(dims)
    noise *= noise_ratio * np.linalg.norm(signal) / np.linalg.norm(noise)
    w = signal + noise
    w *= np.sqrt(2.0 / (taps * c_in)) / w.std()
    return w.reshape(*k, c_in, c_out).astype(np.float32)


# -- reconstruction ---------------------------------------------------------------------------
def _tt_full(cores: Sequence[np.ndarray]) -> np.ndarray:
    """The matrix of a TT-matrix (row-major multi-indices, as ``t3f.full``)."""
    full = np.ones((1, 1, 1))                                    # (rows, cols, rank)
    for core in cores:
        rows, cols, _ = full.shape
        _, m, n, r1 = core.shape
        full = np.einsum("abr,rcds->acbds", full, core).reshape(rows * m, cols * n, r1)
    return full[:, :, 0]


def reconstruct_kernel(method: str, info: Any, factors: Sequence[np.ndarray]) -> np.ndarray:
    """Rebuild the (ungrouped, non-transposed) kernel from a method's factors.

    Returns ``(*k, c_in, c_out)`` for the conv methods and ``(n_in, n_out)`` for the FC
    methods (Dense / 1x1 conv only: no separable prefix).
    """
    f = [np.asarray(x, dtype=np.float64) for x in factors]
    if method in ("svd", "qr"):
        return f[0] @ f[1]
    if method == "tt":
        return _tt_full(f)
    if method == "channel_svd":                       # (*k, c_in, r) @ (r, c_out)
        return f[0] @ f[1]
    if method == "spatial_svd":                       # (kh, 1, c, R), (1, kw, R, o)
        return np.einsum("icr,jro->ijco", f[0][:, 0], f[1][0])
    if method == "tucker2":                           # (c_in, R1), (*k, R1, R2), (R2, c_out)
        return np.einsum("ca,...ab,bo->...co", f[0], f[1], f[2], optimize=True)
    if method == "cp":  # (c_in, R), per axis (.., k_a, .., R, 1), (R, c_out)
        n = info.spatial_rank
        axes = [f[1 + a].reshape(info.kernel_size[a], -1) for a in range(n)]
        letters = "ijk"[:n]
        spec = ",".join(f"{c}r" for c in letters) + ",cr,ro->" + letters + "co"
        return np.einsum(spec, *axes, f[0], f[-1], optimize=True)
    raise ValueError(f"no reconstruction for method {method!r}")


def _rel_error(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), 1e-300))


# -- measurement ------------------------------------------------------------------------------
def _layers(config: SpeedConfig) -> list[tuple[str, str, Any, dict[str, np.ndarray],
                                               tuple[str, ...], tuple[int, ...]]]:
    """``(label, description, info, validated weights, methods, ranks)`` per layer."""
    import keras

    from lrf_optuna.decompose import describe_layer, validate_weights

    k, hw = config.conv_kernel, config.conv_hw
    conv = keras.layers.Conv2D(config.conv_out, k, padding="same", name="conv")
    conv.build((None, hw, hw, config.conv_in))
    conv_info = describe_layer(conv, input_shape=(hw, hw, config.conv_in))
    dense = keras.layers.Dense(config.dense_out, name="dense")
    dense.build((None, config.dense_in))
    dense_info = describe_layer(dense, input_shape=(config.dense_in,))
    out = []
    for label, desc, info, shape, seed, methods, ranks in (
            (f"conv {k}x{k}x{config.conv_in}x{config.conv_out}",
             f'Conv2D {k}x{k}, {config.conv_in}->{config.conv_out}, "same", input '
             f"{hw}x{hw}x{config.conv_in}", conv_info,
             (k, k, config.conv_in, config.conv_out), config.seed, config.conv_methods,
             config.conv_ranks),
            (f"dense {config.dense_in}x{config.dense_out}",
             f"Dense {config.dense_in}->{config.dense_out}", dense_info,
             (config.dense_in, config.dense_out), config.seed + 1, config.dense_methods,
             config.dense_ranks)):
        weights = {"kernel": trained_like_kernel(shape, seed),
                   "bias": np.zeros(shape[-1], np.float32)}
        out.append((label, desc, info, validate_weights(info, weights), methods, ranks))
    return out


def _warm_up(methods: Sequence[str]) -> None:
    """Run every method once on a tiny layer: imports (t3f / TensorFlow) and first-call
    overheads must not land in the first timed call."""
    cfg = SpeedConfig(conv_in=8, conv_out=8, conv_hw=4, dense_in=32, dense_out=16,
                      conv_ranks=(2,), dense_ranks=(2,), repeats=1)
    from lrf_optuna.decompose import get_method

    for _, _, info, weights, layer_methods, ranks in _layers(cfg):
        for name in layer_methods:
            if name in methods:
                m = get_method(name)
                m.factorize(info, m.prepare(info, weights), ranks[0])


def _measure_method(label: str, info: Any, weights: dict[str, np.ndarray], name: str,
                    ranks: Sequence[int], repeats: int) -> MethodTiming:
    from lrf_optuna.decompose import get_method

    method = get_method(name)
    method.check(info)
    prepared: list[Any] = []
    gc.collect()
    prepare_s = median_time(lambda: prepared.append(method.prepare(info, weights)), repeats)
    prep = prepared[-1]
    del prepared[:-1]
    hi = method.max_rank(info)
    timing = MethodTiming(label, name, prepare_s, max_rank=hi,
                          skipped=[r for r in ranks if not method.min_rank(info) <= r <= hi])
    kernel = weights["kernel"].reshape(info.matrix_shape) if info.is_matrix else weights["kernel"]
    for rank in ranks:
        if rank in timing.skipped:
            continue
        results: list[list[np.ndarray]] = []
        als: list[Any] = []

        def once(rank: int = rank, results: list = results, als: list = als) -> None:
            results.append(method.factorize(info, prep, rank))
            als.append(getattr(method, "last_result", None))

        gc.collect()
        seconds = median_time(once, repeats)
        approx = reconstruct_kernel(name, info, results[-1])
        row = RankTiming(label, name, rank, method.params(info, rank), info.original_params,
                         seconds, _rel_error(approx, kernel))
        if name == "cp":
            runs = [a for a in als if a is not None]
            if runs:
                iters = sorted({a.n_iter for a in runs})
                stops = sorted({a.stopped_by for a in runs})
                row.budget_hits = sum(a.stopped_by == "time_budget" for a in runs)
                row.note = (f"ALS {'/'.join(map(str, iters))} sweeps, stop: {'/'.join(stops)}")
            else:
                row.note = "exact CP (no ALS)"
        timing.ranks.append(row)
        logger.info("%s %s rank %d: factorize %.4f s, rel. error %.4f %s", label, name, rank,
                    seconds, row.rel_error, row.note)
    logger.info("%s %s: prepare %.4f s, whole grid %.3f s", label, name, prepare_s,
                timing.grid_s)
    return timing


def _blas_info() -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_info

    return [{key: lib.get(key) for key in ("user_api", "internal_api", "version",
                                           "num_threads", "threading_layer", "architecture")}
            | {"library": os.path.basename(str(lib.get("filepath", "")))}
            for lib in threadpool_info()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def run(config: SpeedConfig, *, blas_threads: int | None = None,
        results_path: str | os.PathLike[str] | None = None,
        command: str | None = None) -> SpeedReport:
    """Measure every (layer, method, rank) of ``config``; write the section if asked.

    Args:
        config: Layers, rank grids and repeats.
        blas_threads: Limit the BLAS thread pools (threadpoolctl) to this many threads for
            the whole measurement; ``None`` leaves them as they are.
        results_path: Markdown file whose ``## Decomposition speed`` section to replace.
        command: The command line to record in that section.
    """
    from threadpoolctl import threadpool_limits

    import lrf_optuna.decompose.conv_cp as conv_cp

    start = time.perf_counter()
    load_before = _loadavg()
    with ExitStack() as stack:
        if blas_threads is not None:
            stack.enter_context(threadpool_limits(limits=int(blas_threads), user_api="blas"))
        layers = _layers(config)
        _warm_up((*config.conv_methods, *config.dense_methods))
        blas = _blas_info()  # after the imports (scipy, TF) and inside the limit
        methods = [
            _measure_method(label, info, weights, name, ranks, config.repeats)
            for label, _, info, weights, names, ranks in layers for name in names]
    from lrf_optuna.decompose import get_method

    cp = get_method("cp")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 0
    environment = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "nproc": affinity,
        "cpu": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": np.__version__,
        "blas": blas,
        "blas_threads": blas_threads,
        "load_before": load_before,
        "load_after": _loadavg(),
        "cp_defaults": (conv_cp.DEFAULT_N_ITER_MAX, conv_cp.DEFAULT_TIME_BUDGET,
                        conv_cp.DEFAULT_TOL),
        "cp_instance": (getattr(cp, "n_iter_max", None), getattr(cp, "time_budget", None),
                        getattr(cp, "tol", None)),
    }
    report = SpeedReport(config, {label: desc for label, desc, *_ in layers}, methods,
                         environment, seconds=time.perf_counter() - start)
    if results_path is not None:
        write_section(SECTION, render(report), results_path)
        logger.info("Wrote %s", results_path)
    return report


# -- rendering --------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    ms = 1000.0 * seconds
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 1:
        return f"{ms:.1f}"
    return f"{ms:.3g}"


def summary_table(report: SpeedReport) -> str:
    """One row per (layer, method): prepare, sum of factorize, whole grid."""
    rows = []
    for m in report.methods:
        ranks = ", ".join(str(r.rank) for r in m.ranks)
        if m.skipped:
            ranks += f" (skipped {', '.join(map(str, m.skipped))} > max {m.max_rank})"
        rows.append([m.layer, m.method, _ms(m.prepare_s),
                     _ms(sum(r.factorize_s for r in m.ranks)), _ms(m.grid_s), ranks])
    return markdown_table(["layer", "method", "prepare (ms)", "sum factorize (ms)",
                           "whole grid (ms)", "ranks"], rows)


def rank_table(report: SpeedReport) -> str:
    """One row per (layer, method, rank)."""
    rows = []
    for r in report.rows:
        rows.append([r.layer, r.method, r.rank, _ms(r.factorize_s), f"{r.rel_error:.4f}",
                     f"{r.params:,}", f"{100.0 * r.params / r.original_params:.1f}",
                     "yes" if r.saves_params else "no", r.note or "-"])
    return markdown_table(["layer", "method", "rank", "factorize (ms)", "rel. weight error",
                           "params", "% of original", "saves params", "notes"], rows)


def _oversubscription_note(env: dict[str, Any]) -> str:
    """A warning when multi-threaded BLAS ran while the load exceeded the core count."""
    threads = max((int(b.get("num_threads") or 1) for b in env["blas"]), default=1)
    try:
        load = max(float(env["load_before"].split()[0]), float(env["load_after"].split()[0]))
    except (ValueError, IndexError):
        return ""
    if threads <= 1 or load <= env["nproc"]:
        return ""
    return (f" **The 1-min load ({load:.1f}) exceeded the {env['nproc']} cores while BLAS ran "
            f"{threads} threads: oversubscribed OpenBLAS threads can make BLAS-heavy steps "
            "(SVDs, ALS) many times slower than with `--blas-threads 1`.**")


def render(report: SpeedReport) -> str:
    """The Markdown body of the ``## Decomposition speed`` section."""
    env, cfg = report.environment, report.config
    blas = "; ".join(
        f"{b['internal_api']} {b['version']} ({b['library']}, {b['threading_layer']}, "
        f"{b['num_threads']} threads)" for b in env["blas"]) or "none found"
    threads = ("left as is" if env["blas_threads"] is None
               else f"limited to {env['blas_threads']} via threadpoolctl.threadpool_limits")
    n_iter, budget, tol = env["cp_defaults"]
    inst = env["cp_instance"]
    cp_rows = [r for r in report.rows if r.method == "cp"]
    hit = [f"rank {r.rank} ({r.budget_hits} of {cfg.repeats} repeat(s))"
           for r in cp_rows if r.budget_hits]
    if not cp_rows:
        cp_hit = "CP was not measured."
    elif hit:
        cp_hit = (f"**The time budget stopped the ALS at {', '.join(hit)}**; those factors "
                  "(and errors) depend on the machine's speed at the time.")
    else:
        cp_hit = "No rank hit the time budget."
    inst_note = "" if tuple(inst) == (n_iter, budget, tol) else (
        f" (the registered instance uses n_iter_max={inst[0]}, time_budget={inst[1]})")
    skipped = [f"{m.method} rank {', '.join(map(str, m.skipped))} (max_rank {m.max_rank})"
               for m in report.methods if m.skipped]
    no_save = sorted({f"{r.method} {r.rank}" for r in report.rows if not r.saves_params})
    command = env["command"] or "python -m benchmarks.decomposition_speed"
    lines = [
        f"Command: `{command}` (from the repository root), run {env['date']}, "
        f"{report.seconds:.0f} s in total.",
        "",
        f"Machine: {env['nproc']} CPU cores (nproc), {env['cpu']}, no GPU; {env['python']}, "
        f"numpy {env['numpy']}; BLAS (threadpoolctl): {blas}; BLAS threads {threads}. "
        f"Load average (1/5/15 min) {env['load_before']} at start, {env['load_after']} at "
        "the end: other processes shared the machine, so absolute times are indicative."
        + _oversubscription_note(env),
        "",
        "Layers: " + "; ".join(f"{label}: {desc}" for label, desc in report.layers.items())
        + ". Weights are trained-like (seeded): a Tucker signal with random orthonormal "
        "(Haar) mode bases and power-law mode profiles `(1 + j/8)^-1` (spatial taps "
        "`(1 + j)^-1`) times a "
        f"Gaussian core, plus i.i.d. noise of {NOISE_RATIO:.0%} of its norm, scaled to "
        "He-normal std (`trained_like_kernel`).",
        "",
        f"Times are medians over {cfg.repeats} repeat(s) (`time.perf_counter`): `prepare` once "
        "per layer, `factorize` per rank on the same prepared result; whole grid = prepare + "
        "sum of factorize. Every method ran once on a tiny layer first (imports, TF start-up). "
        "Rel. weight error is `||W - W_r||_F / ||W||_F` for all seven methods, with the "
        "kernel rebuilt from the factors in numpy (`reconstruct_kernel`); \"saves params\" "
        "compares the replacement's parameter count (bias included) with the original's.",
        "",
        "The SVD-based methods (svd, channel_svd, spatial_svd) do one SVD per layer in "
        "`prepare` and only truncate per rank, so their `factorize` is a few ms or less; qr "
        "likewise does one pivoted QR in `prepare`. tucker2's `prepare` is the HOSVD (two "
        "Gram eigendecompositions); its `factorize` runs up to 8 HOOI sweeps per rank. cp's "
        "`prepare` is the SVD init (eigh of each unfolding's Gram); its `factorize` runs "
        "CP-ALS per rank. tt's `prepare` only copies the matrix: the TT-SVD (t3f, on "
        "TensorFlow, whose threads threadpoolctl does not limit) depends on the rank from its "
        "first cut on, so it is all in `factorize`.",
        "",
        f"CP budget: `conv_cp.DEFAULT_N_ITER_MAX` = {n_iter} ALS sweeps, "
        f"`DEFAULT_TIME_BUDGET` = {budget} s per rank (checked after each sweep), "
        f"`DEFAULT_TOL` = {tol}{inst_note}. {cp_hit}",
    ]
    if skipped:
        lines += ["", "Skipped ranks (above the method's max_rank): " + "; ".join(skipped) + "."]
    lines += ["", "Ranks that do not save parameters: "
              + (", ".join(no_save) if no_save else "none") + ".",
              "", summary_table(report), "", rank_table(report)]
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decomposition_speed",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per measurement, median kept (default "
                             f"{DEFAULT_REPEATS}; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer ranks (conv 8, 64; dense 8, 128) and one repeat")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="limit numpy/scipy BLAS threads (default: leave as is)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH,
                        help="Markdown file to update (default: benchmarks/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="only print the tables")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.blas_threads is not None and args.blas_threads < 1:
        parser.error("--blas-threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns a process exit code."""
    args = _parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S")
    config = SpeedConfig.quick() if args.quick else SpeedConfig()
    config = SpeedConfig(**{**config.__dict__, "seed": args.seed,
                            **({"repeats": args.repeats} if args.repeats else {})})
    cli_args = list(argv) if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", "benchmarks.decomposition_speed", *cli_args])
    report = run(config, blas_threads=args.blas_threads,
                 results_path=None if args.no_write else args.results, command=command)
    print(summary_table(report))
    print()
    print(rank_table(report))
    print(f"\n{report.seconds:.1f} s in total; load average {report.environment['load_before']}"
          f" -> {report.environment['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
