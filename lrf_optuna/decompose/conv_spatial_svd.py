r"""Spatial SVD: a ``kh x kw`` conv becomes a ``kh x 1`` conv followed by a ``1 x kw`` conv.

Conv2D (also grouped, one SVD per group, factors kept grouped)
---------------------------------------------------------------
The kernel ``W`` (``(kh, kw, c_in, c_out)``, per group ``(kh, kw, c_in/g, c_out/g)``) is
unfolded to the ``(kh c_in) x (kw c_out)`` matrix ``M[(i, c), (j, o)] = W[i, j, c, o]`` and
truncated by SVD, ``M ~ (U_R S_R^1/2)(S_R^1/2 V_R^T)``. Hence

1. a ``conv`` ``(kh, 1, c_in/g, g R)`` with kernel ``U_R S_R^1/2`` reshaped to
   ``(kh, c_in, R)``, carrying the original stride / padding / dilation of axis 0 only,
2. a ``conv`` ``(1, kw, R, c_out)`` (grouped when ``g > 1``) with kernel
   ``S_R^1/2 V_R^T`` reshaped to ``(R, kw, c_out)``, with those of axis 1, then bias and
   activation. TensorFlow's "same" padding splits exactly per axis.

Rank ``R`` is per group; ``max_rank = min(kh c_in/g, kw c_out/g)``, where the SVD is exact.

DepthwiseConv2D (depth multiplier ``m``)
-----------------------------------------
Every ``kh x kw`` filter ``F_{c,j}`` (output channel ``c m + j``) gets its own rank-``R``
SVD ``F_{c,j} ~ sum_r u_{c,j,r} v_{c,j,r}^T`` (singular values split as square roots):

1. a ``depthwise`` ``(kh, 1)`` with multiplier ``m R`` (output channel ``c m R + j R + r``
   holds ``u_{c,j,r}``), stride / padding / dilation of axis 0,
2. a ``depthwise`` ``(1, kw)`` with multiplier 1 (``v_{c,j,r}``), those of axis 1,
3. ``group_sum`` of each run of ``R`` adjacent channels (channel ``c m + j``); omitted
   when ``R = 1``. ``max_rank = min(kh, kw)``, exact there.

All SVDs of a layer are one batched ``np.linalg.svd`` in :meth:`SpatialSVD.prepare`;
:meth:`SpatialSVD.factorize` truncates it (Eckart-Young: best rank-``R`` unfolding).

Costs (``P0`` = spatial positions after stage 1: axis 0 at its output length
``ceil(n/s)`` ("same") or ``ceil((n - (k-1) d)/s)`` ("valid"), axis 1 still at the input
length)
-------------------------------------------------------------------------------------
* Conv2D: parameters ``R (kh c_in + kw c_out)`` (+ bias);
  MACs ``P0 kh c_in R + out_positions kw R c_out``
* DepthwiseConv2D: parameters ``c_in m R (kh + kw)`` (+ bias);
  MACs ``(P0 kh + out_positions kw) c_in m R`` (the group sum only adds)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lrf_optuna.decompose import _conv
from lrf_optuna.decompose._base import LayerInfo, LRFMethod, register_method
from lrf_optuna.decompose.layers import Stage

__all__ = ["SpatialSVD"]


@register_method
class SpatialSVD(LRFMethod):
    """SVD of the kernel unfolded to ``(kh c_in) x (kw c_out)`` (see the module docstring)."""

    name = "spatial_svd"
    description = ("conv2d / depthwise2d: kh x 1 conv to R channels, then 1 x kw conv "
                   "(SVD separating the two spatial axes)")

    # -- applicability -------------------------------------------------------------------
    def unsupported_reason(self, info: LayerInfo) -> str | None:
        if info.kind not in ("conv", "depthwise"):
            return (f"applies to Conv2D (grouped too) and DepthwiseConv2D, not "
                    f"{info.class_name}; use tucker2 / channel_svd for transposed convs and "
                    "an FC method (svd, qr, tt) for Dense / SeparableConv")
        if info.spatial_rank != 2:
            return (f"separates the two spatial axes of a 2-D kernel, but {info.class_name} "
                    f"has {info.spatial_rank}; use tucker2, cp or channel_svd")
        if all(k == 1 for k in info.kernel_size):
            return ("a 1x1 kernel has nothing to separate spatially; use an FC method "
                    "(svd, qr, tt), or channel_svd when grouped")
        return None

    def max_rank(self, info: LayerInfo) -> int:
        kh, kw = info.kernel_size
        if info.kind == "depthwise":
            return min(kh, kw)
        g = info.groups
        return min(kh * info.in_channels // g, kw * info.out_channels // g)

    # -- costs ---------------------------------------------------------------------------
    def params(self, info: LayerInfo, rank: int) -> int:
        kh, kw = info.kernel_size
        bias = info.out_channels if info.use_bias else 0
        if info.kind == "depthwise":
            return info.in_channels * info.depth_multiplier * rank * (kh + kw) + bias
        return rank * (kh * info.in_channels + kw * info.out_channels) + bias

    def macs(self, info: LayerInfo, rank: int) -> int:
        kh, kw = info.kernel_size
        p0 = _conv.axiswise_positions(info)[0]
        if info.kind == "depthwise":
            return (p0 * kh + info.out_positions * kw) * info.in_channels * (
                info.depth_multiplier * rank)
        return rank * (p0 * kh * info.in_channels + info.out_positions * kw * info.out_channels)

    # -- factorization -------------------------------------------------------------------
    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        """One batched SVD: of every group's unfolding (Conv2D) or every filter (depthwise).

        Returns ``(U, S, Vt)`` of a stack of matrices, each ``(kh c) x (kw o)`` for Conv2D
        (``g`` of them) and ``kh x kw`` for DepthwiseConv2D (``c_in m`` of them, in output
        channel order)."""
        kernel = np.asarray(weights["kernel"], dtype=np.float64)
        kh, kw = info.kernel_size
        if info.kind == "depthwise":                   # (kh, kw, c, m) -> (c m, kh, kw)
            mats = np.transpose(kernel, (2, 3, 0, 1)).reshape(-1, kh, kw)
        else:                                          # per group: (kh c, kw o)
            mats = np.stack([
                np.transpose(w, (0, 2, 1, 3)).reshape(kh * w.shape[2], kw * w.shape[3])
                for w in _conv.group_kernels(info, kernel)])
        return np.linalg.svd(mats, full_matrices=False)

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        u, s, vt = prepared
        kh, kw = info.kernel_size
        root = np.sqrt(s[:, :rank])                              # (B, R)
        left = u[:, :, :rank] * root[:, None, :]                 # (B, kh [c], R)
        right = root[:, :, None] * vt[:, :rank, :]               # (B, R, kw [o])
        if info.kind == "depthwise":
            c, m = info.in_channels, info.depth_multiplier
            # first: (kh, 1, c, m R), channel c m R + j R + r  <- left[c m + j, :, r]
            first = np.transpose(left.reshape(c, m, kh, rank), (2, 0, 1, 3))
            first = first.reshape(kh, 1, c, m * rank)
            # second: (1, kw, c m R, 1), channel (c m + j) R + r  <- right[c m + j, r, :]
            second = np.transpose(right, (2, 0, 1)).reshape(1, kw, c * m * rank, 1)
            return [first, second]
        g = info.groups
        c_g, o_g = info.in_channels // g, info.out_channels // g
        firsts = [left[i].reshape(kh, 1, c_g, rank) for i in range(g)]
        seconds = [np.transpose(right[i].reshape(rank, kw, o_g), (1, 0, 2)).reshape(
            1, kw, rank, o_g) for i in range(g)]
        return [np.concatenate(firsts, axis=-1), np.concatenate(seconds, axis=-1)]

    def stages(self, info: LayerInfo, rank: int) -> list[Stage]:
        kh, kw = info.kernel_size
        if info.kind == "depthwise":
            c, m = info.in_channels, info.depth_multiplier
            stages = [
                _conv.spatial_stage(info, [kh, 1, c, m * rank], op="depthwise", axis=0),
                _conv.spatial_stage(info, [1, kw, c * m * rank, 1], op="depthwise", axis=1)]
            if rank > 1:
                stages.append({"op": "group_sum", "group": rank})
            return stages
        g = info.groups
        return [_conv.spatial_stage(info, [kh, 1, info.in_channels // g, g * rank], axis=0),
                _conv.spatial_stage(info, [1, kw, rank, info.out_channels], axis=1)]
