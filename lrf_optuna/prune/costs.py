"""Closed-form costs of a pruned (and optionally factorized) layer, without building it.

Pruning changes a layer's channel counts only, never its spatial sizes, so a pruned layer
is described by the original :class:`~lrf_optuna.decompose.LayerInfo` with new channel
counts, and every existing formula (``LayerInfo.original_params`` / ``original_macs``,
each LRF method's ``params`` / ``macs``) applies to it unchanged. Conventions are those of
:mod:`lrf_optuna.costs` (params include BatchNorm statistics; MACs of linear layers only).

Example:
    >>> import keras
    >>> from lrf_optuna.decompose import describe_layer
    >>> conv = keras.layers.Conv2D(16, 3, name="c")
    >>> _ = conv.build((None, 10, 10, 8))
    >>> info = describe_layer(conv, input_shape=(10, 10, 8))
    >>> pruned_layer_cost(info, in_channels=6, out_channels=12)   # (params, MACs)
    (660, 41472)
    >>> pruned_layer_cost(info, in_channels=6, out_channels=12, method="channel_svd", rank=4)
    (276, 16896)
"""

from __future__ import annotations

import dataclasses
import math

from lrf_optuna.decompose import DecompositionError, LayerInfo, get_method

__all__ = ["kept_count", "pruned_layer_cost", "pruned_layer_info"]


def kept_count(channels: int, ratio: float) -> int:
    """How many of ``channels`` filters a pruning ``ratio`` keeps.

    ``floor(ratio * channels)`` filters are removed (never more than the ratio asks; a
    1e-9 slack absorbs float error such as ``0.29 * 100 = 28.999...``), and at least one
    filter is always kept.

    Example:
        >>> kept_count(16, 0.5), kept_count(10, 0.29), kept_count(3, 0.99), kept_count(7, 0.0)
        (8, 8, 1, 7)
    """
    removed = math.floor(float(ratio) * channels + 1e-9)
    return max(1, int(channels) - removed)


def pruned_layer_info(info: LayerInfo, *, in_channels: int | None = None,
                      out_channels: int | None = None) -> LayerInfo:
    """``info`` with new input / output channel counts (``None`` keeps the original).

    A DepthwiseConv's outputs follow its inputs (``in_channels x depth_multiplier``), so
    ``out_channels`` must not be given for one.
    """
    cin = info.in_channels if in_channels is None else int(in_channels)
    if info.kind == "depthwise":
        if out_channels is not None:
            raise ValueError(f"layer {info.name!r} is a depthwise convolution: its output "
                             f"channels follow its inputs, but got out_channels={out_channels}")
        cout = cin * info.depth_multiplier
    else:
        cout = info.out_channels if out_channels is None else int(out_channels)
    if cin < 1 or cout < 1 or (info.groups > 1 and (cin, cout) != (
            info.in_channels, info.out_channels)):
        raise ValueError(f"layer {info.name!r}: cannot have {cin} input and {cout} output "
                         f"channels (it has {info.in_channels} and {info.out_channels}, "
                         f"groups={info.groups})")
    return dataclasses.replace(
        info, in_channels=cin, out_channels=cout,
        input_shape=(*info.input_shape[:-1], cin), output_shape=(*info.output_shape[:-1], cout))


def pruned_layer_cost(info: LayerInfo, *, in_channels: int | None = None,
                      out_channels: int | None = None, method: str | None = None,
                      rank: int | None = None) -> tuple[int, int]:
    """``(params, MACs)`` of a layer pruned to the given channels, then factorized.

    Args:
        info: The original layer (:func:`lrf_optuna.decompose.describe_layer`).
        in_channels: Input channels left by the pruning of its producers.
        out_channels: Its own output channels left (its filters kept).
        method: An LRF method applied to the pruned kernel (``None``/``"keep"``: none).
        rank: The method's rank, valid for the *pruned* layer.

    Raises:
        DecompositionError, UnsupportedLayerError: bad method/rank (names the layer).
    """
    small = pruned_layer_info(info, in_channels=in_channels, out_channels=out_channels)
    if method is None or method == "keep":
        return small.original_params, small.original_macs
    if rank is None:
        raise DecompositionError(f"method {method!r} on layer {info.name!r} needs a rank")
    m = get_method(method)
    m.check(small, rank)
    return m.params(small, rank), m.macs(small, rank)
