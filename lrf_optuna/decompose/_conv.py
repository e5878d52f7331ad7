"""Shared by the conv methods: kernel layout, groups and the stage that carries the
original stride / padding / dilation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lrf_optuna.decompose._base import LayerInfo
from lrf_optuna.decompose.layers import Stage, conv_output_length

__all__ = ["axiswise_positions", "concat_groups", "conv_output_length", "group_kernels", "kxk",
           "spatial_stage"]


def kxk(info: LayerInfo) -> int:
    """Number of spatial taps of the kernel (``prod(kernel_size)``)."""
    return math.prod(info.kernel_size)


def spatial_stage(info: LayerInfo, kernel_shape: Sequence[int], *, op: str | None = None,
                  axis: int | None = None) -> Stage:
    """A stage with the original stride, padding and dilation.

    With ``axis`` given, only that spatial axis keeps them (the others get stride and
    dilation 1): used by the spatially separable factorizations, where each stage
    convolves along one axis. "same" padding splits exactly per axis, since TensorFlow's
    padding amount on an axis depends only on that axis.
    """
    strides = list(info.strides)
    dilation = list(info.dilation_rate)
    if axis is not None:
        strides = [s if i == axis else 1 for i, s in enumerate(strides)]
        dilation = [d if i == axis else 1 for i, d in enumerate(dilation)]
    stage: Stage = {"op": op or ("conv_transpose" if info.kind == "conv_transpose" else "conv"),
                    "kernel_shape": [int(k) for k in kernel_shape], "strides": strides,
                    "padding": info.padding, "dilation_rate": dilation}
    if stage["op"] == "conv_transpose":
        stage["output_padding"] = None if info.output_padding is None else list(
            info.output_padding)
    return stage


def group_kernels(info: LayerInfo, kernel: np.ndarray) -> list[np.ndarray]:
    """Split a grouped conv kernel ``(*k, c_in/g, c_out)`` into ``g`` ungrouped kernels
    ``(*k, c_in/g, c_out/g)``; a single-element list when not grouped."""
    g = info.groups
    if g == 1:
        return [kernel]
    return list(np.split(kernel, g, axis=-1))


def concat_groups(per_group: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Stack per-group factors along their output-channel (last) axis, factor by factor.

    The result is the block-diagonal factor a grouped conv with the same number of groups
    computes."""
    return [np.concatenate(parts, axis=-1) for parts in zip(*per_group)]


def axiswise_positions(info: LayerInfo) -> list[int]:
    """Spatial positions after each stage of a per-axis (spatially separable) chain.

    Entry ``a`` is the number of positions once the stages convolving along axes
    ``0..a`` (each with the original stride / padding / dilation on its own axis) have
    run: axes ``<= a`` have their output length, the others still their input length.
    The last entry equals ``info.out_positions`` for a (non-transposed) conv.
    """
    lengths = list(info.input_shape[:-1])
    out: list[int] = []
    for a in range(info.spatial_rank):
        lengths[a] = conv_output_length(lengths[a], info.kernel_size[a],
                                        stride=info.strides[a],
                                        dilation=info.dilation_rate[a], padding=info.padding)
        out.append(math.prod(lengths))
    return out
