r"""Tucker-2 for convolutions: 1x1 conv ``c_in -> R1``, core conv ``R1 -> R2``, 1x1 ``R2 -> c_out``.

Math
----
The kernel ``W`` (``(*k, c_in, c_out)``; a ConvTranspose kernel ``(*k, c_out, c_in)`` is
swapped to that layout first) is a 3-way tensor ``(K, c_in, c_out)`` with ``K = prod(k)``.
Tucker-2 compresses only the two channel modes:

    ``W[t, c, o] ~ sum_{a, b} U[c, a] G[t, a, b] V[o, b]``,
    ``U`` (``c_in x R1``) and ``V`` (``c_out x R2``) with orthonormal columns,
    ``G = W x_cin U^T x_cout V^T`` (``(*k, R1, R2)``).

Because ``U`` and ``V`` act on channels only, the convolution splits exactly into

1. a 1x1 (``dense``) stage ``c_in -> R1`` with kernel ``U`` (at the input resolution),
2. the core conv ``(*k, R1, R2)`` carrying the original stride / padding / dilation
   (for ConvTranspose: a transposed conv with kernel ``(*k, R2, R1)``, output padding kept),
3. a 1x1 (``dense``) stage ``R2 -> c_out`` with kernel ``V^T``, then bias and activation.

``U, V`` come from HOOI (higher-order orthogonal iteration, the algorithm of tensorly's
``partial_tucker``) started from the truncated HOSVD: :meth:`Tucker2.prepare` computes, per
group, the eigenbases of the two channel unfoldings' Gram matrices once (the HOSVD of every
rank); :meth:`Tucker2.factorize` runs at most ``n_iter_max`` HOOI sweeps (default
:data:`DEFAULT_N_ITER_MAX` = 8, stopping earlier once the fit ``||G||`` changes by less than
``tol`` = :data:`DEFAULT_TOL` relative to ``||W||``). When one mode is kept whole
(``R1 = c_in`` or ``R2 = c_out``) its factor is the identity and the other one is the exact
optimum (a truncated SVD), without iterating; at the maximum rank both are identities and
the replacement reproduces the layer exactly.

Grouped convolutions are factorized group by group and the factors stay grouped: stages 1
and 3 become grouped 1x1 ``conv`` stages (kernels ``(1.., c_in/g, g R1)`` and
``(1.., R2, c_out)``), the core a grouped conv ``(*k, R1, g R2)``.

Rank knob
---------
One integer ``R`` (per group for grouped convs) sets both ranks:
``R2 = R`` and ``R1 = clip(round(R * c_in / c_out), 1, c_in)`` (per-group channel counts,
round half up), so both channel modes are truncated in proportion to their size.
``max_rank = c_out / g``; there ``R1 = c_in / g``, ``R2 = c_out / g`` and the factorization is
exact.

Costs (``g`` groups, per-group ranks ``R1, R2``, ``K = prod(k)``)
-----------------------------------------------------------------
* parameters: ``c_in R1 + g K R1 R2 + R2 c_out`` (+ ``c_out`` bias)
* MACs (conv): ``in_positions c_in R1 + out_positions (g K R1 R2 + R2 c_out)`` — the first
  1x1 runs before the strided / padded core, at the input resolution
* MACs (ConvTranspose): ``in_positions (c_in R1 + K R1 R2) + out_positions R2 c_out`` — a
  transposed conv scatters from every input position
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lrf_optuna.decompose import _conv
from lrf_optuna.decompose._base import LayerInfo, LRFMethod, register_method
from lrf_optuna.decompose.layers import Stage

__all__ = ["DEFAULT_N_ITER_MAX", "DEFAULT_TOL", "Tucker2", "tucker2_hooi"]

#: Default bound on the HOOI sweeps run per rank.
DEFAULT_N_ITER_MAX = 8
#: Default stopping tolerance: change of ``||G||`` between sweeps, relative to ``||W||``.
DEFAULT_TOL = 1e-6


def _leading_eigvecs(gram: np.ndarray, r: int) -> np.ndarray:
    """The ``r`` eigenvectors of a symmetric PSD matrix with the largest eigenvalues."""
    _, vecs = np.linalg.eigh(gram)
    return np.ascontiguousarray(vecs[:, ::-1][:, :r])


@dataclass(frozen=True)
class _GroupPrep:
    """One group's kernel ``(K, c_in, c_out)`` and the HOSVD bases of its channel modes."""

    w: np.ndarray
    u_full: np.ndarray  # eigenvectors of the c_in unfolding's Gram, descending
    v_full: np.ndarray  # eigenvectors of the c_out unfolding's Gram, descending
    norm: float


def _prepare_group(w: np.ndarray) -> _GroupPrep:
    k, c_in, c_out = w.shape
    unfold_in = np.ascontiguousarray(np.transpose(w, (1, 0, 2))).reshape(c_in, k * c_out)
    unfold_out = w.reshape(k * c_in, c_out)
    return _GroupPrep(w=w, u_full=_leading_eigvecs(unfold_in @ unfold_in.T, c_in),
                      v_full=_leading_eigvecs(unfold_out.T @ unfold_out, c_out),
                      norm=float(np.linalg.norm(w)))


def tucker2_hooi(w: np.ndarray, r1: int, r2: int, *, u_init: np.ndarray | None = None,
                 v_init: np.ndarray | None = None, n_iter_max: int = DEFAULT_N_ITER_MAX,
                 tol: float = DEFAULT_TOL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 of a ``(K, c_in, c_out)`` tensor on its last two modes by HOOI.

    Args:
        w: The tensor (float64).
        r1: Rank of the ``c_in`` mode.
        r2: Rank of the ``c_out`` mode.
        u_init: Initial ``c_in x r1`` factor (orthonormal columns); the truncated HOSVD
            when omitted.
        v_init: Initial ``c_out x r2`` factor; the truncated HOSVD when omitted.
        n_iter_max: At most this many HOOI sweeps (each updates ``U`` then ``V``).
        tol: Stop when ``||G||`` changes by less than ``tol * ||W||`` in a sweep.

    Returns:
        ``(U, G, V)`` with ``G`` of shape ``(K, r1, r2)`` and
        ``W ~ einsum("tab,ca,ob->tco", G, U, V)``. A mode kept whole (``r = c``) gets the
        identity; then the other factor is the exact optimum and no sweep is run.
    """
    k, c_in, c_out = w.shape
    w_in_first = np.ascontiguousarray(np.transpose(w, (1, 0, 2)))  # (c_in, K, c_out)
    if r1 >= c_in:
        u = np.eye(c_in)
        if r2 >= c_out:
            v = np.eye(c_out)
        else:
            unfold_out = w.reshape(k * c_in, c_out)
            v = _leading_eigvecs(unfold_out.T @ unfold_out, r2)
    elif r2 >= c_out:
        v = np.eye(c_out)
        unfold_in = w_in_first.reshape(c_in, k * c_out)
        u = _leading_eigvecs(unfold_in @ unfold_in.T, r1)
    else:
        if u_init is None:
            unfold_in = w_in_first.reshape(c_in, k * c_out)
            u_init = _leading_eigvecs(unfold_in @ unfold_in.T, r1)
        if v_init is None:
            unfold_out = w.reshape(k * c_in, c_out)
            v_init = _leading_eigvecs(unfold_out.T @ unfold_out, r2)
        u, v = u_init, v_init
        norm = float(np.linalg.norm(w))
        previous = -1.0
        for _ in range(max(int(n_iter_max), 0)):
            y = (w_in_first.reshape(c_in * k, c_out) @ v).reshape(c_in, k * r2)
            u = _leading_eigvecs(y @ y.T, r1)
            z = (u.T @ w_in_first.reshape(c_in, k * c_out)).reshape(r1 * k, c_out)
            v = _leading_eigvecs(z.T @ z, r2)
            fit = float(np.linalg.norm(z @ v))
            if abs(fit - previous) <= tol * norm:
                break
            previous = fit
    core = np.einsum("tco,ca,ob->tab", w, u, v, optimize=True)
    return u, core, v


@register_method
class Tucker2(LRFMethod):
    """Tucker-2 of the kernel on its two channel modes (see the module docstring).

    Args:
        n_iter_max: Bound on the HOOI sweeps per rank.
        tol: HOOI stopping tolerance (relative change of the core norm).
    """

    name = "tucker2"
    description = ("conv: 1x1 c_in->R1, k x k core R1->R2, 1x1 R2->c_out "
                   "(Tucker-2 of the channel modes, HOOI)")

    def __init__(self, n_iter_max: int = DEFAULT_N_ITER_MAX, tol: float = DEFAULT_TOL) -> None:
        self.n_iter_max = int(n_iter_max)
        self.tol = float(tol)

    # -- applicability -------------------------------------------------------------------
    def unsupported_reason(self, info: LayerInfo) -> str | None:
        if info.kind not in ("conv", "conv_transpose"):
            return (f"applies to Conv1D/2D/3D and ConvTranspose layers, not {info.class_name}"
                    " (for Dense / SeparableConv use an FC method: svd, qr, tt)")
        if all(k == 1 for k in info.kernel_size):
            return ("1x1 kernels have no spatial mode, Tucker-2 would be three matrix "
                    "products; use an FC method (svd, qr, tt), or channel_svd when grouped")
        return None

    def ranks(self, info: LayerInfo, rank: int) -> tuple[int, int]:
        """Per-group ``(R1, R2)`` of the rank knob: ``R2 = R``,
        ``R1 = clip(round(R c_in / c_out), 1, c_in)`` (per-group channels, half up)."""
        c_in, c_out = info.in_channels // info.groups, info.out_channels // info.groups
        r1 = (2 * rank * c_in + c_out) // (2 * c_out)
        return min(max(r1, 1), c_in), int(rank)

    def max_rank(self, info: LayerInfo) -> int:
        return info.out_channels // info.groups

    # -- costs ---------------------------------------------------------------------------
    def params(self, info: LayerInfo, rank: int) -> int:
        r1, r2 = self.ranks(info, rank)
        k, g = _conv.kxk(info), info.groups
        return (info.in_channels * r1 + g * k * r1 * r2 + r2 * info.out_channels
                + (info.out_channels if info.use_bias else 0))

    def macs(self, info: LayerInfo, rank: int) -> int:
        r1, r2 = self.ranks(info, rank)
        k, g = _conv.kxk(info), info.groups
        first = info.in_positions * info.in_channels * r1
        last = info.out_positions * r2 * info.out_channels
        core_positions = info.in_positions if info.kind == "conv_transpose" else (
            info.out_positions)
        return first + core_positions * g * k * r1 * r2 + last

    # -- factorization -------------------------------------------------------------------
    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        """Per group: the kernel as ``(K, c_in/g, c_out/g)`` and its HOSVD bases."""
        kernel = np.asarray(weights["kernel"], dtype=np.float64)
        if info.kind == "conv_transpose":  # (*k, c_out, c_in) -> (*k, c_in, c_out)
            kernel = np.swapaxes(kernel, -1, -2)
        return [_prepare_group(w.reshape(_conv.kxk(info), w.shape[-2], w.shape[-1]))
                for w in _conv.group_kernels(info, kernel)]

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        r1, r2 = self.ranks(info, rank)
        us, cores, vts = [], [], []
        for p in prepared:
            u, core, v = tucker2_hooi(p.w, r1, r2, u_init=p.u_full[:, :r1],
                                      v_init=p.v_full[:, :r2], n_iter_max=self.n_iter_max,
                                      tol=self.tol)
            us.append(u)
            cores.append(core.reshape(*info.kernel_size, r1, r2))
            vts.append(v.T)
        ones = (1,) * info.spatial_rank
        if info.kind == "conv_transpose":
            return [us[0], np.swapaxes(cores[0], -1, -2), vts[0]]
        if info.groups == 1:
            return [us[0], cores[0], vts[0]]
        first, core, last = _conv.concat_groups(list(zip(us, cores, vts, strict=True)))
        return [first.reshape(*ones, *first.shape), core, last.reshape(*ones, *last.shape)]

    def stages(self, info: LayerInfo, rank: int) -> list[Stage]:
        r1, r2 = self.ranks(info, rank)
        g, c_in, c_out = info.groups, info.in_channels, info.out_channels
        if info.kind == "conv_transpose":
            return [{"op": "dense", "kernel_shape": [c_in, r1]},
                    _conv.spatial_stage(info, [*info.kernel_size, r2, r1]),
                    {"op": "dense", "kernel_shape": [r2, c_out]}]
        core = _conv.spatial_stage(info, [*info.kernel_size, r1, g * r2])
        if g == 1:
            return [{"op": "dense", "kernel_shape": [c_in, r1]}, core,
                    {"op": "dense", "kernel_shape": [r2, c_out]}]
        ones = [1] * info.spatial_rank
        pointwise = {"strides": 1, "padding": "valid", "dilation_rate": 1}
        return [{"op": "conv", "kernel_shape": [*ones, c_in // g, g * r1], **pointwise},
                core,
                {"op": "conv", "kernel_shape": [*ones, r2, c_out], **pointwise}]
