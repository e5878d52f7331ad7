r"""CP (CANDECOMP/PARAFAC) for convolutions: 1x1, one depthwise conv per spatial axis, 1x1.

Math
----
The kernel ``W`` (``(k_1, .., k_n, c_in, c_out)``, ``n`` = 1, 2 or 3) is approximated by a
sum of ``R`` rank-one tensors (the CP weights ``lambda`` folded into the ``c_out`` factor):

    ``W[i_1, .., i_n, c, o] ~ sum_r A_1[i_1, r] .. A_n[i_n, r] C[c, r] D[o, r]``.

Each term separates every mode, so the convolution becomes the chain

1. ``dense`` ``c_in -> R`` with kernel ``C`` (at the input resolution),
2. for each spatial axis ``a``: a ``depthwise`` conv on the ``R`` channels (multiplier 1)
   with kernel ``A_a`` along axis ``a`` only (``(k_1, 1)`` then ``(1, k_2)`` for Conv2D),
   carrying the original stride, padding and dilation of that axis only (TensorFlow's
   "same" padding splits exactly per axis; "causal" Conv1D keeps its left padding),
3. ``dense`` ``R -> c_out`` with kernel ``D^T``, then bias and activation.

Factorization
-------------
* ``R >= prod(k) * min(c_in, c_out)`` (= :meth:`ConvCP.max_rank`): an **exact** CP is built
  directly, no ALS: one term per spatial tap ``t`` and channel of the smaller side, e.g. for
  ``c_in <= c_out``: ``e_t (x) e_c (x) W[t, c, :]``.
* below: CP-ALS (alternating least squares, the algorithm of tensorly's ``parafac``)
  with ``init="svd"`` (leading left singular vectors of each unfolding, computed once per
  layer in :meth:`ConvCP.prepare`; modes smaller than ``R`` are padded with Gaussian columns
  from a fixed ``random_state``), at most ``n_iter_max`` sweeps (default
  :data:`DEFAULT_N_ITER_MAX` = 50), stopping when the relative reconstruction error changes
  by less than ``tol`` (:data:`DEFAULT_TOL`) or once ``time_budget`` seconds
  (:data:`DEFAULT_TIME_BUDGET` = 10 s, checked after every sweep) have passed since the
  start of :meth:`ConvCP.factorize`. The budget is per rank; override it with the
  constructor (``ConvCP(n_iter_max=.., time_budget=..)``) or the module-level defaults.

  The ALS is implemented here (it is checked against ``tensorly.decomposition.parafac`` in
  the tests) because tensorly forms the Khatri-Rao product of all other modes explicitly:
  for the tiny spatial modes of a conv kernel that is a ``(K/k_a c_in c_out) x R`` matrix
  (3x3x256x256 at ``R = 128``: 200 MB, seconds per sweep). Here the ``c_out`` mode is
  contracted first by one matrix product shared by all other modes, so a sweep costs two
  products of ``K c_in c_out R`` multiplications and little memory.

Costs (``K = prod(k)``)
-----------------------
* parameters: ``R (c_in + sum(k) + c_out)`` (+ ``c_out`` bias)
* MACs: ``in_positions c_in R + sum_a positions_a k_a R + out_positions R c_out``, where
  ``positions_a`` counts the spatial positions after the depthwise stage of axis ``a``
  (axes ``<= a`` at their output length: "same" ``ceil(n/s)``, "valid"
  ``ceil((n - (k-1) d)/s)``, the others still at the input length).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from lrf_optuna.decompose import _conv
from lrf_optuna.decompose._base import (
    DecompositionError,
    LayerInfo,
    LRFMethod,
    register_method,
)
from lrf_optuna.decompose.layers import Stage

__all__ = ["DEFAULT_N_ITER_MAX", "DEFAULT_RANDOM_STATE", "DEFAULT_TIME_BUDGET", "DEFAULT_TOL",
           "ConvCP", "cp_als", "exact_cp"]

#: Default bound on ALS sweeps per rank.
DEFAULT_N_ITER_MAX = 50
#: Default wall-clock budget of the ALS per rank, in seconds.
DEFAULT_TIME_BUDGET = 10.0
#: Default tolerance on the change of the relative reconstruction error between sweeps.
DEFAULT_TOL = 1e-7
#: Seed of the Gaussian columns padding the SVD init of modes smaller than the rank.
DEFAULT_RANDOM_STATE = 0


def khatri_rao(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Column-wise Kronecker product, rows in row-major order of the factors' rows."""
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, None, :] * f[None, :, :]).reshape(-1, f.shape[1])
    return out


def _solve_normal(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``rhs @ inv(gram)`` for a symmetric PSD ``gram`` (Cholesky, least squares if
    singular)."""
    r = gram.shape[0]
    ridge = 1e-12 * max(float(np.trace(gram)) / r, 1e-300)
    try:
        factor = scipy.linalg.cho_factor(gram + ridge * np.eye(r), check_finite=False)
        return scipy.linalg.cho_solve(factor, rhs.T, check_finite=False).T
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(gram, rhs.T, rcond=None)[0].T


def _normalize_columns(f: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(f, axis=0)
    return f / np.where(norms > 0, norms, 1.0)


def svd_init(bases: Sequence[np.ndarray], rank: int,
             random_state: int = DEFAULT_RANDOM_STATE) -> list[np.ndarray]:
    """tensorly's ``init="svd"`` from precomputed bases: the ``rank`` leading left singular
    vectors of each unfolding, modes smaller than ``rank`` padded with Gaussian columns."""
    rng = np.random.default_rng(random_state)
    out = []
    for u in bases:
        f = u[:, :rank]
        if f.shape[1] < rank:
            f = np.concatenate([f, rng.standard_normal((f.shape[0], rank - f.shape[1]))], axis=1)
        out.append(np.array(f))
    return out


@dataclass
class ALSResult:
    """Factors (``lambda`` in the last one), relative error, sweeps run, stop reason."""

    factors: list[np.ndarray]
    rel_error: float
    n_iter: int
    stopped_by: str


def cp_als(tensor: np.ndarray, init: Sequence[np.ndarray], *,
           n_iter_max: int = DEFAULT_N_ITER_MAX, tol: float = DEFAULT_TOL,
           time_budget: float | None = DEFAULT_TIME_BUDGET,
           start_time: float | None = None) -> ALSResult:
    """CP-ALS of a tensor whose last mode is the largest-cost mode to contract.

    Each sweep updates the modes in order ``0 .. N-1`` by the exact least-squares solution
    (like ``tensorly.decomposition.parafac``); the factors of modes ``< N-1`` are
    normalized to unit columns, the last one carries the scale.

    Args:
        tensor: The ``N``-way tensor (float64), ``N >= 2``.
        init: ``N`` initial factors, ``shape[m] x R``.
        n_iter_max: At most this many sweeps.
        tol: Stop when the relative error changes by less than this in a sweep.
        time_budget: Stop after the sweep during which this many seconds (since
            ``start_time``) ran out; ``None`` for no limit.
        start_time: ``time.perf_counter()`` the budget counts from (default: now).

    Returns:
        The :class:`ALSResult`.
    """
    t0 = time.perf_counter() if start_time is None else start_time
    shape = tensor.shape
    n = tensor.ndim
    factors = [np.array(f, dtype=np.float64) for f in init]
    rank = factors[0].shape[1]
    t_last = tensor.reshape(-1, shape[-1])          # (prod of modes < N-1, d_last)
    norm2 = float(np.sum(tensor * tensor))
    grams = [f.T @ f for f in factors]
    rel, previous, n_iter, stopped = 1.0, math.inf, 0, "n_iter_max"
    for n_iter in range(1, int(n_iter_max) + 1):  # noqa: B007
        # the last mode's contraction is shared by the updates of all other modes
        p = (t_last @ factors[-1]).reshape(*shape[:-1], rank)
        for m in range(n - 1):
            others = [factors[j] for j in range(n - 1) if j != m]
            pm = np.moveaxis(p, m, 0).reshape(shape[m], -1, rank)
            mttkrp = (np.einsum("ijr,jr->ir", pm, khatri_rao(others)) if others
                      else pm.reshape(shape[m], rank))
            gram = np.prod([grams[j] for j in range(n) if j != m], axis=0)
            factors[m] = _normalize_columns(_solve_normal(gram, mttkrp))
            grams[m] = factors[m].T @ factors[m]
        mttkrp = t_last.T @ khatri_rao(factors[:-1])
        gram = np.prod(grams[:-1], axis=0)
        factors[-1] = _solve_normal(gram, mttkrp)
        grams[-1] = factors[-1].T @ factors[-1]
        err2 = norm2 - 2.0 * float(np.sum(mttkrp * factors[-1])) + float(
            np.sum(gram * grams[-1]))
        rel = math.sqrt(max(err2, 0.0) / norm2) if norm2 > 0 else 0.0
        if abs(previous - rel) < tol:
            stopped = "tol"
            break
        previous = rel
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            stopped = "time_budget"
            break
    return ALSResult(factors, rel, n_iter, stopped)


def exact_cp(tensor: np.ndarray) -> list[np.ndarray]:
    """An exact CP of a ``(*k, c_in, c_out)`` tensor with ``prod(k) min(c_in, c_out)`` terms.

    One term per spatial tap and channel of the smaller side: unit vectors on the tap's
    axes and on that channel, the remaining channel fibre of the kernel on the other side.
    """
    *k, c_in, c_out = tensor.shape
    taps = math.prod(k)
    small = min(c_in, c_out)
    rank = taps * small
    term_tap = np.repeat(np.arange(taps), small)        # term -> tap (row-major)
    term_ch = np.tile(np.arange(small), taps)           # term -> channel of the small side
    tap_index = np.unravel_index(term_tap, k) if k else ()
    factors = []
    for axis, size in enumerate(k):
        f = np.zeros((size, rank))
        f[tap_index[axis], np.arange(rank)] = 1.0
        factors.append(f)
    fibres = tensor.reshape(taps, c_in, c_out)
    unit = np.zeros((small, rank))
    unit[term_ch, np.arange(rank)] = 1.0
    if c_in <= c_out:
        factors += [unit, fibres[term_tap, term_ch, :].T]            # D[:, term] = W[t, c, :]
    else:
        factors += [fibres[term_tap, :, term_ch].T, unit]            # C[:, term] = W[t, :, o]
    return factors


@dataclass(frozen=True)
class _Prepared:
    tensor: np.ndarray                  # (*k, c_in, c_out), float64
    bases: list[np.ndarray]             # per mode: left singular vectors, descending


@register_method
class ConvCP(LRFMethod):
    """CP of the full conv kernel (see the module docstring).

    Args:
        n_iter_max: Bound on the ALS sweeps per rank.
        time_budget: Wall-clock seconds of ALS per rank (``None``: no limit).
        tol: Stop when the relative error changes by less than this between sweeps.
        random_state: Seed of the random part of the SVD init.
    """

    name = "cp"
    cache_factors = True  # ALS under a wall-clock budget: store factors, do not recompute
    description = ("conv: 1x1 c_in->R, one depthwise conv per spatial axis, 1x1 R->c_out "
                   "(CP-ALS of the kernel)")

    def __init__(self, n_iter_max: int = DEFAULT_N_ITER_MAX,
                 time_budget: float | None = DEFAULT_TIME_BUDGET, tol: float = DEFAULT_TOL,
                 random_state: int = DEFAULT_RANDOM_STATE) -> None:
        self.n_iter_max = int(n_iter_max)
        self.time_budget = time_budget
        self.tol = float(tol)
        self.random_state = int(random_state)
        #: The :class:`ALSResult` of the last ALS run (``None`` after an exact CP), for
        #: reports and tests.
        self.last_result: ALSResult | None = None

    # -- applicability -------------------------------------------------------------------
    def unsupported_reason(self, info: LayerInfo) -> str | None:
        if info.kind == "conv_transpose":
            return ("transposed convolutions are not supported by CP (the per-axis stages "
                    "would need transposed depthwise convs); use tucker2 or channel_svd")
        if info.kind != "conv":
            return (f"applies to Conv1D/2D/3D layers, not {info.class_name} "
                    "(for Dense / SeparableConv use an FC method: svd, qr, tt)")
        if info.groups > 1:
            return ("grouped convolutions are not supported by CP (one CP of the whole "
                    "kernel would mix the groups' channels); use tucker2 or channel_svd")
        if all(k == 1 for k in info.kernel_size):
            return "1x1 convolutions are matrices; use an FC method (svd, qr, tt)"
        return None

    def max_rank(self, info: LayerInfo) -> int:
        return _conv.kxk(info) * min(info.in_channels, info.out_channels)

    # -- costs ---------------------------------------------------------------------------
    def params(self, info: LayerInfo, rank: int) -> int:
        return rank * (info.in_channels + sum(info.kernel_size) + info.out_channels) + (
            info.out_channels if info.use_bias else 0)

    def macs(self, info: LayerInfo, rank: int) -> int:
        positions = _conv.axiswise_positions(info)
        spatial = sum(p * k for p, k in zip(positions, info.kernel_size, strict=True))
        return rank * (info.in_positions * info.in_channels + spatial
                       + info.out_positions * info.out_channels)

    # -- factorization -------------------------------------------------------------------
    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        """The kernel and the left singular vectors of its unfoldings (the SVD init)."""
        tensor = np.asarray(weights["kernel"], dtype=np.float64)
        bases = []
        for mode in range(tensor.ndim):
            unfold = np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)
            _, vecs = np.linalg.eigh(unfold @ unfold.T)
            bases.append(np.ascontiguousarray(vecs[:, ::-1]))
        return _Prepared(tensor, bases)

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        start = time.perf_counter()
        tensor = prepared.tensor
        if rank >= self.max_rank(info):
            factors = exact_cp(tensor)
            self.last_result = None
        else:
            init = svd_init(prepared.bases, rank, self.random_state)
            result = cp_als(tensor, init, n_iter_max=self.n_iter_max, tol=self.tol,
                            time_budget=self.time_budget, start_time=start)
            self.last_result = result
            factors = result.factors
            if not all(np.all(np.isfinite(f)) for f in factors):
                raise DecompositionError(
                    f"layer {info.name!r}: CP-ALS at rank {rank} diverged (non-finite factors)")
        r = factors[0].shape[1]
        n = info.spatial_rank
        out = [factors[n]]                                             # (c_in, R)
        for axis in range(n):
            shape = [info.kernel_size[a] if a == axis else 1 for a in range(n)]
            out.append(factors[axis].reshape(*shape, r, 1))
        out.append(factors[n + 1].T)                                   # (R, c_out)
        return out

    def stages(self, info: LayerInfo, rank: int) -> list[Stage]:
        n = info.spatial_rank
        stages: list[Stage] = [{"op": "dense", "kernel_shape": [info.in_channels, rank]}]
        for axis in range(n):
            shape = [info.kernel_size[a] if a == axis else 1 for a in range(n)]
            stages.append(_conv.spatial_stage(info, [*shape, rank, 1], op="depthwise",
                                              axis=axis))
        stages.append({"op": "dense", "kernel_shape": [rank, info.out_channels]})
        return stages
