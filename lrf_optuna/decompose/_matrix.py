"""Shared by the FC methods (SVD, QR, Tensor-Train): a layer seen as one matrix.

Dense layers, 1x1 convolutions (not grouped) and the pointwise part of separable
convolutions all multiply the channel vector at each position by one matrix
``W`` of shape ``(n_in, n_out)``. What comes before that matrix product stays as it is:
nothing for Dense, strided sampling for a strided 1x1 conv, the original depthwise
convolution for a separable conv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from lrf_optuna.decompose._base import LayerInfo, LRFMethod
from lrf_optuna.decompose.layers import Stage

__all__ = ["TwoFactorMatrixMethod", "matrix_of", "matrix_unsupported_reason", "prefix_cost",
           "prefix_factors", "prefix_stages"]


def matrix_unsupported_reason(info: LayerInfo) -> str | None:
    """Why an FC method cannot treat the layer as a matrix (``None`` if it can)."""
    if info.is_matrix:
        return None
    if info.kind == "conv" and info.groups > 1:
        return "grouped convolutions are not a single matrix; use a conv method"
    return (f"{info.class_name} with kernel {info.kernel_size} is not a matrix "
            "(FC methods apply to Dense, 1x1 Conv and the pointwise part of SeparableConv)")


def matrix_of(info: LayerInfo, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ``(n_in, n_out)`` matrix the FC methods factorize."""
    w = weights["pointwise_kernel"] if info.kind == "separable" else weights["kernel"]
    return np.reshape(w, info.matrix_shape)


def prefix_stages(info: LayerInfo) -> list[Stage]:
    """The stages kept before the matrix product."""
    if info.kind == "separable":
        return [{"op": "depthwise",
                 "kernel_shape": [*info.kernel_size, info.in_channels, info.depth_multiplier],
                 "strides": list(info.strides), "padding": info.padding,
                 "dilation_rate": list(info.dilation_rate)}]
    if info.kind == "conv" and any(s > 1 for s in info.strides):
        return [{"op": "subsample", "strides": list(info.strides)}]
    return []


def prefix_factors(info: LayerInfo, weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Weights of :func:`prefix_stages` (the original depthwise kernel, if any)."""
    return [np.asarray(weights["depthwise_kernel"])] if info.kind == "separable" else []


def prefix_cost(info: LayerInfo) -> tuple[int, int]:
    """``(params, macs)`` of :func:`prefix_stages`."""
    if info.kind != "separable":
        return 0, 0
    n = math.prod(info.kernel_size) * info.in_channels * info.depth_multiplier
    return n, info.out_positions * n


class TwoFactorMatrixMethod(LRFMethod):
    """``W ~ A B`` with ``A`` (``n_in x r``) and ``B`` (``r x n_out``): a Dense ``n_in -> r``
    without bias, then a Dense ``r -> n_out`` with the original bias and activation.

    Shared by SVD and QR (they differ only in how ``A`` and ``B`` are computed):
    parameters ``r (n_in + n_out)`` (+ bias + prefix), MACs per position
    ``r (n_in + n_out)`` (+ prefix), exact at ``r = min(n_in, n_out)``.
    """

    def unsupported_reason(self, info: LayerInfo) -> str | None:
        return matrix_unsupported_reason(info)

    def max_rank(self, info: LayerInfo) -> int:
        return min(info.matrix_shape)

    def params(self, info: LayerInfo, rank: int) -> int:
        n_in, n_out = info.matrix_shape
        return prefix_cost(info)[0] + rank * (n_in + n_out) + (
            info.out_channels if info.use_bias else 0)

    def macs(self, info: LayerInfo, rank: int) -> int:
        n_in, n_out = info.matrix_shape
        return prefix_cost(info)[1] + info.out_positions * rank * (n_in + n_out)

    def stages(self, info: LayerInfo, rank: int) -> list[Stage]:
        n_in, n_out = info.matrix_shape
        return [*prefix_stages(info),
                {"op": "dense", "kernel_shape": [n_in, rank]},
                {"op": "dense", "kernel_shape": [rank, n_out]}]
