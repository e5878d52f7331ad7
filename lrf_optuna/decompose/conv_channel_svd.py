"""Channel SVD for convolutions: a ``k x k`` conv to ``r`` channels, then a 1x1 conv.

The kernel ``(*k, c_in, c_out)`` is reshaped to the matrix ``(k^2 c_in) x c_out`` and
truncated by SVD: ``W ~ A B`` with ``A`` a conv kernel ``(*k, c_in, r)`` (it keeps the
stride, padding and dilation) and ``B`` a 1x1 conv ``r -> c_out`` (bias, activation).
Works for 1-D/2-D/3-D, grouped (one SVD per group, the factors stay grouped) and
transposed convolutions (``A`` is then a transposed conv ``c_in -> r``).

Parameters: ``r (k^2 c_in + c_out)`` (+ bias); at ``r = min(k^2 c_in/g, c_out/g)`` exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lrf_optuna.decompose import _conv
from lrf_optuna.decompose._base import LayerInfo, LRFMethod, register_method
from lrf_optuna.decompose.layers import Stage


@register_method
class ChannelSVD(LRFMethod):
    """SVD of the kernel unfolded to ``(k^2 c_in) x c_out``."""

    name = "channel_svd"
    description = "conv: k x k conv c_in->r, then 1x1 conv r->c_out (SVD of the unfolding)"

    def unsupported_reason(self, info: LayerInfo) -> str | None:
        if info.kind not in ("conv", "conv_transpose"):
            return f"applies to Conv and ConvTranspose layers, not {info.class_name}"
        if info.is_pointwise:
            return "1x1 convolutions are matrices; use an FC method (svd, qr, tt)"
        return None

    def max_rank(self, info: LayerInfo) -> int:
        g = info.groups
        return min(_conv.kxk(info) * info.in_channels // g, info.out_channels // g)

    def params(self, info: LayerInfo, rank: int) -> int:
        return rank * (_conv.kxk(info) * info.in_channels + info.out_channels) + (
            info.out_channels if info.use_bias else 0)

    def macs(self, info: LayerInfo, rank: int) -> int:
        k = _conv.kxk(info)
        if info.kind == "conv_transpose":
            return rank * (info.in_positions * k * info.in_channels
                           + info.out_positions * info.out_channels)
        return info.out_positions * rank * (k * info.in_channels + info.out_channels)

    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        kernel = weights["kernel"]
        if info.kind == "conv_transpose":  # (*k, c_out, c_in) -> (*k, c_in, c_out)
            kernel = np.swapaxes(kernel, -1, -2)
        out = []
        for w in _conv.group_kernels(info, kernel):
            u, s, vt = np.linalg.svd(w.reshape(-1, w.shape[-1]), full_matrices=False)
            out.append((u, s, vt))
        return out

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        firsts, seconds = [], []
        for u, s, vt in prepared:
            root = np.sqrt(s[:rank])
            a = (u[:, :rank] * root).reshape(*info.kernel_size, -1, rank)
            firsts.append(a)
            seconds.append(root[:, None] * vt[:rank])
        first = np.concatenate(firsts, axis=-1)              # (*k, c_in/g, g r)
        if info.kind == "conv_transpose":
            first = np.swapaxes(first, -1, -2)                # (*k, r, c_in)
        if info.groups == 1:
            return [first, seconds[0]]
        ones = (1,) * info.spatial_rank
        second = np.concatenate(seconds, axis=-1).reshape(*ones, rank, info.out_channels)
        return [first, second]

    def stages(self, info: LayerInfo, rank: int) -> list[Stage]:
        g = info.groups
        if info.kind == "conv_transpose":
            first = [*info.kernel_size, rank, info.in_channels]
        else:
            first = [*info.kernel_size, info.in_channels // g, g * rank]
        stages = [_conv.spatial_stage(info, first)]
        if g == 1:
            stages.append({"op": "dense", "kernel_shape": [rank, info.out_channels]})
        else:
            ones = [1] * info.spatial_rank
            stages.append({"op": "conv", "kernel_shape": [*ones, rank, info.out_channels],
                           "strides": 1, "padding": "valid", "dilation_rate": 1})
        return stages
