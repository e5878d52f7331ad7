"""The replacement layer: one composite Keras 3 layer computing with low-rank factors.

Every LRF method turns one original layer into a short chain of *stages* (1x1 convs,
small convs, depthwise convs, matrix products, a Tensor-Train contraction ...) followed by
the original bias and activation. :class:`FactorizedLayer` holds the factors as its own
weights (``add_weight``), applies the stages with ``keras.ops`` only, and never rebuilds the
full kernel, so the saved FLOPs are real. It keeps the original layer's name, so the graph
keeps its shape and plans keep referring to the same names.

Every stage computes channels-last, whatever the layer's ``data_format``, and only with
operations that every TensorFlow CPU kernel runs, with or without oneDNN: a depthwise
stage with unequal row / column strides, or with a stride and a dilation, is rewritten
exactly into one that needs neither (:func:`_depthwise_2d`).

A stage is a plain JSON-able ``dict`` with an ``"op"`` key:

============== ==================================================================
``op``          meaning (channels-last; the layer transposes channels-first input)
============== ==================================================================
conv            N-d convolution; ``kernel_shape = (*k, c_in // groups, c_out)``;
                grouped when the input has more channels than ``kernel_shape[-2]``
depthwise       per-channel N-d convolution; ``kernel_shape = (*k, c, multiplier)``
conv_transpose  N-d transposed convolution; ``kernel_shape = (*k, c_out, c_in)``
dense           matrix product on the channel axis; ``kernel_shape = (n_in, n_out)``
tt              Tensor-Train matrix product on the channel axis; ``in_modes``,
                ``out_modes``, ``ranks`` (``ranks[0] == ranks[-1] == 1``)
subsample       strided slicing of the spatial axes (a strided 1x1 conv's sampling)
group_sum       sums each run of ``group`` adjacent channels into one
============== ==================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

__all__ = ["FactorizedLayer", "conv_output_length", "stage_output_channels", "stage_output_shape",
           "stage_weight_shapes", "tt_matmul"]

Stage = dict[str, Any]


def stage_weight_shapes(stage: Stage) -> list[tuple[int, ...]]:
    """Shapes of the weights a stage holds, in creation order.

    Example:
        >>> stage_weight_shapes({"op": "dense", "kernel_shape": [8, 2]})
        [(8, 2)]
        >>> stage_weight_shapes({"op": "tt", "in_modes": [2, 4], "out_modes": [3, 2],
        ...                      "ranks": [1, 5, 1]})
        [(1, 2, 3, 5), (5, 4, 2, 1)]
    """
    op = stage["op"]
    if op in ("conv", "depthwise", "conv_transpose", "dense"):
        return [tuple(int(s) for s in stage["kernel_shape"])]
    if op == "tt":
        m, n, r = stage["in_modes"], stage["out_modes"], stage["ranks"]
        return [(int(r[k]), int(m[k]), int(n[k]), int(r[k + 1])) for k in range(len(m))]
    if op in ("subsample", "group_sum"):
        return []
    raise ValueError(f"Unknown stage op {op!r}.")


def stage_output_channels(stage: Stage, in_channels: int) -> int:
    """Number of channels a stage outputs for ``in_channels`` input channels."""
    op = stage["op"]
    if op in ("conv", "dense"):
        return int(stage["kernel_shape"][-1])
    if op == "depthwise":
        return in_channels * int(stage["kernel_shape"][-1])
    if op == "conv_transpose":
        return int(stage["kernel_shape"][-2])
    if op == "tt":
        return math.prod(int(n) for n in stage["out_modes"])
    if op == "group_sum":
        return in_channels // int(stage["group"])
    return in_channels


def conv_output_length(n: int, k: int, *, stride: int = 1, dilation: int = 1,
                       padding: str = "valid", transpose: bool = False,
                       output_padding: int | None = None) -> int:
    """Output length of a (transposed) convolution along one axis, as Keras computes it.

    Example:
        >>> conv_output_length(28, 5, padding="valid"), conv_output_length(28, 3, stride=2,
        ...                                                               padding="same")
        (24, 14)
    """
    k_eff = (k - 1) * dilation + 1
    if padding not in ("valid", "same", "causal"):
        raise ValueError(f"unknown padding {padding!r}")
    if transpose:
        if output_padding is None:
            return n * stride if padding == "same" else n * stride + max(k_eff - stride, 0)
        pad = (k_eff // 2) if padding == "same" else 0
        return (n - 1) * stride + k_eff - 2 * pad + output_padding
    if padding in ("same", "causal"):
        return -(-n // stride)
    return max(-(-(n - k_eff + 1) // stride), 0)


def _ntuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(i) for i in v)
    return (int(v),) * n


def stage_output_shape(stage: Stage, in_shape: Sequence[int | None]) -> tuple[int | None, ...]:
    """Shape a stage outputs for one sample of ``in_shape`` (channels-last, no batch axis).

    Unknown (``None``) spatial sizes stay unknown.

    Example:
        >>> stage_output_shape({"op": "depthwise", "kernel_shape": [3, 1, 4, 2],
        ...                     "strides": [2, 1], "padding": "same"}, (9, 9, 4))
        (5, 9, 8)
    """
    op = stage["op"]
    *spatial, c = in_shape
    if c is None:
        raise ValueError(f"a {op!r} stage needs a known channel count, but got {tuple(in_shape)}")
    c_out = stage_output_channels(stage, int(c))
    if op in ("dense", "tt", "group_sum"):
        return (*spatial, c_out)
    nd = len(spatial)
    strides = _ntuple(stage.get("strides", 1), nd)
    if op == "subsample":
        return (*(None if n is None else -(-int(n) // s) for n, s in zip(spatial, strides)), c)
    if op not in ("conv", "depthwise", "conv_transpose"):
        raise ValueError(f"Unknown stage op {op!r}.")
    kernel = [int(k) for k in stage["kernel_shape"][:nd]]
    dilation = _ntuple(stage.get("dilation_rate", 1), nd)
    out_pad = stage.get("output_padding")
    out_spatial = tuple(
        None if n is None else conv_output_length(
            int(n), k, stride=s, dilation=d, padding=stage.get("padding", "valid"),
            transpose=op == "conv_transpose",
            output_padding=None if out_pad is None else int(out_pad[i]))
        for i, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilation)))
    return (*out_spatial, c_out)


def tt_matmul(x: Any, cores: Sequence[Any], in_modes: Sequence[int],
              out_modes: Sequence[int]) -> Any:
    """Multiply ``x`` (``(..., prod(in_modes))``) by a TT-matrix given by its cores.

    Core ``k`` has shape ``(r_{k-1}, m_k, n_k, r_k)``; the full matrix ``W`` has
    ``W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]`` with
    row-major multi-indices (the convention of ``t3f.full``). The product is contracted
    core by core, never forming ``W``: core ``k`` costs
    ``prod(n_<k) * r_{k-1} * m_k * n_k * r_k * prod(m_>k)`` multiply-accumulates per row.
    """
    lead = ops.shape(x)[:-1]
    d = len(cores)
    n_in = math.prod(in_modes)
    # state: (P, r_{k-1} * m_k, Q) with P = batch * prod(n_<k), Q = prod(m_>k)
    state = ops.reshape(x, (-1, 1, n_in))
    for k, core in enumerate(cores):
        r0, m, n, r1 = (int(s) for s in core.shape)
        q = math.prod(in_modes[k + 1:])
        state = ops.reshape(state, (-1, r0 * m, q))
        state = ops.transpose(state, (0, 2, 1))                       # (P, Q, r0*m)
        state = ops.matmul(state, ops.reshape(core, (r0 * m, n * r1)))  # (P, Q, n*r1)
        state = ops.reshape(state, (-1, q, n, r1))
        state = ops.transpose(state, (0, 2, 3, 1))                    # (P, n, r1, Q)
        if k + 1 < d:
            m_next = int(in_modes[k + 1])
            state = ops.reshape(state, (-1, r1 * m_next, q // m_next))
    n_out = math.prod(out_modes)
    return ops.reshape(state, (*lead, n_out))


def _dim(x: Any, axis: int) -> Any:
    """Size of ``x`` along ``axis``: a Python int when static, else a scalar tensor."""
    size = x.shape[axis]
    return int(size) if size is not None else ops.shape(x)[axis]


def _same_pads(n: Any, k_eff: int, stride: int) -> tuple[Any, Any]:
    """TensorFlow's "same" padding of one axis, ``(before, after)`` (extra goes after)."""
    total = ((n + stride - 1) // stride - 1) * stride + k_eff - n
    total = max(total, 0) if isinstance(total, int) else ops.maximum(total, 0)
    return total // 2, total - total // 2


def _slice_axis(x: Any, axis: int, start: Any = 0, stop: Any = None, step: int = 1) -> Any:
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


def _depthwise_2d(x: Any, kernel: Any, strides: Sequence[int], padding: str,
                  dilation: Sequence[int]) -> Any:
    """A 2-D depthwise convolution, channels-last, built only from ops that every
    TensorFlow CPU kernel runs.

    TensorFlow's plain CPU kernel (no oneDNN) refuses unequal row / column strides, and
    ``tf.nn.depthwise_conv2d`` refuses a stride together with a dilation. Both are common
    here: the per-axis stages of ``cp`` and ``spatial_svd`` carry the original stride on one
    axis only. The call is rewritten, exactly and without extra multiplications, into one
    the kernels accept:

    1. "same" padding becomes explicit (TensorFlow's rule), the convolution "valid";
    2. an axis whose kernel is 1 takes its stride as a strided slice (a 1-tap conv reads
       every ``s``-th position); an axis with stride ``s`` and dilation ``d`` first keeps
       every ``gcd(s, d)``-th position (all its taps land there) and divides both by it;
    3. equal strides, not both strided and dilated: the native op;
    4. one axis with a kernel longer than 1 and a stride: the other axis is folded into
       the batch (rows and columns transposed first when the rows move), which leaves a
       size-1 axis that accepts any stride, so the native op runs with equal strides;
    5. anything else (both axes strided unequally, or coprime stride and dilation): the
       sum over taps of strided slices times the tap's weights.
    """
    taps = (int(kernel.shape[0]), int(kernel.shape[1]))
    strides, dilation = list(strides), list(dilation)

    def native_ok() -> bool:
        return strides[0] == strides[1] and (strides == [1, 1] or dilation == [1, 1])

    if native_ok():
        return ops.depthwise_conv(x, kernel, strides=tuple(strides), padding=padding,
                                  data_format="channels_last", dilation_rate=tuple(dilation))
    if padding == "same":
        pads = [_same_pads(_dim(x, 1 + a), (taps[a] - 1) * dilation[a] + 1, strides[a])
                for a in range(2)]
        x = ops.pad(x, ((0, 0), *pads, (0, 0)))
    for a in range(2):
        step = strides[a] if taps[a] == 1 else math.gcd(strides[a], dilation[a])
        if step > 1:
            x = _slice_axis(x, 1 + a, step=step)
            strides[a] //= step
            dilation[a] //= step
        if taps[a] == 1:
            dilation[a] = 1
    if native_ok():
        return ops.depthwise_conv(x, kernel, strides=tuple(strides), padding="valid",
                                  data_format="channels_last", dilation_rate=tuple(dilation))
    moving = [a for a in range(2) if taps[a] > 1]
    h, w, c = _dim(x, 1), _dim(x, 2), int(x.shape[-1])
    mult = int(kernel.shape[-1])
    if len(moving) == 1 and dilation[moving[0]] == 1:
        s = strides[moving[0]]
        if moving[0] == 1:    # (1, kw): rows into the batch, (B H, 1, W, C)
            y = ops.depthwise_conv(ops.reshape(x, (-1, 1, w, c)), kernel, strides=(s, s),
                                   padding="valid", data_format="channels_last")
            return ops.reshape(y, (-1, h, _dim(y, 2), c * mult))
        # (kh, 1): rows and columns swapped, then as (1, kh): columns into the batch,
        # (B W, 1, H, C). (Folding the columns into the channels instead needs the kernel
        # tiled W times at run time: a TILE op, outside TFLite Micro, that the converter
        # leaves unfolded once the tiled kernel is large.)
        xt = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, 1, h, c))
        y = ops.depthwise_conv(xt, ops.transpose(kernel, (1, 0, 2, 3)), strides=(s, s),
                               padding="valid", data_format="channels_last")
        return ops.transpose(ops.reshape(y, (-1, w, _dim(y, 2), c * mult)), (0, 2, 1, 3))
    out = [(n - (k - 1) * d - 1) // s + 1
           for n, k, s, d in zip((h, w), taps, strides, dilation)]
    y = None
    for i in range(taps[0]):
        for j in range(taps[1]):
            patch = _slice_axis(x, 1, i * dilation[0], i * dilation[0]
                                + (out[0] - 1) * strides[0] + 1, strides[0])
            patch = _slice_axis(patch, 2, j * dilation[1], j * dilation[1]
                                + (out[1] - 1) * strides[1] + 1, strides[1])
            term = ops.expand_dims(patch, -1) * kernel[i, j]
            y = term if y is None else y + term
    return ops.reshape(y, (-1, out[0], out[1], c * mult))


def _depthwise(x: Any, kernel: Any, strides: Sequence[int], padding: str,
               dilation: Sequence[int]) -> Any:
    """Depthwise convolution of a channels-last ``x`` with any spatial rank."""
    n = len(strides)
    if n == 1:  # as 2-D on a size-1 first axis
        y = _depthwise_2d(ops.expand_dims(x, 1), ops.expand_dims(kernel, 0), (1, strides[0]),
                          padding, (1, dilation[0]))
        return ops.squeeze(y, 1)
    if n == 2:
        return _depthwise_2d(x, kernel, strides, padding, dilation)
    # no native 3-D depthwise op: a grouped conv with one input channel per group (XLA)
    c, mult = int(kernel.shape[-2]), int(kernel.shape[-1])
    grouped = ops.reshape(kernel, (*kernel.shape[:-2], 1, c * mult))
    return ops.conv(x, grouped, strides=tuple(strides), padding=padding,
                    data_format="channels_last", dilation_rate=tuple(dilation))


def _apply_stage(stage: Stage, x: Any, weights: Sequence[Any]) -> Any:
    op = stage["op"]
    if op == "dense":
        return ops.matmul(x, weights[0])
    if op == "tt":
        return tt_matmul(x, weights, stage["in_modes"], stage["out_modes"])
    if op == "group_sum":
        g = int(stage["group"])
        c = int(x.shape[-1])
        y = ops.reshape(x, (*ops.shape(x)[:-1], c // g, g))
        return ops.sum(y, axis=-1)
    n = len(x.shape) - 2
    strides = _ntuple(stage.get("strides", 1), n)
    if op == "subsample":
        index = (slice(None), *(slice(None, None, s) for s in strides), slice(None))
        return x[index]
    dilation = _ntuple(stage.get("dilation_rate", 1), n)
    padding = stage.get("padding", "valid")
    kernel = weights[0]
    if padding == "causal":  # Conv1D only: left-pad, then a valid convolution
        k = int(kernel.shape[0])
        x = ops.pad(x, ((0, 0), (dilation[0] * (k - 1), 0), (0, 0)))
        padding = "valid"
    if op == "conv":
        return ops.conv(x, kernel, strides=strides, padding=padding,
                        data_format="channels_last", dilation_rate=dilation)
    if op == "depthwise":
        return _depthwise(x, kernel, strides, padding, dilation)
    if op == "conv_transpose":
        out_pad = stage.get("output_padding")
        return ops.conv_transpose(x, kernel, strides=strides, padding=padding,
                                  output_padding=out_pad, data_format="channels_last",
                                  dilation_rate=dilation)
    raise ValueError(f"Unknown stage op {op!r}.")


@keras.saving.register_keras_serializable(package="lrf_optuna")
class FactorizedLayer(keras.layers.Layer):
    """A conv or dense layer computed through low-rank factors.

    Built by the LRF methods in :mod:`lrf_optuna.decompose`; users rarely construct it by
    hand. The weights are the stage factors in stage order, then the original bias.

    Args:
        stages: The chain of operations (see the module docstring).
        method: Registry name of the LRF method that produced the factors.
        rank: The rank knob the method was applied with.
        use_bias: Whether the original layer had a bias (added after the last stage).
        activation: The original activation (name or serialized config).
        data_format: ``"channels_last"`` or ``"channels_first"`` (the layer computes
            channels-last internally and transposes around it).
        original_class: Class name of the replaced layer, for reports.
        kernel_initializer: Initializer of the stage weights. The LRF methods set the
            factors right after building and use ``"zeros"`` (cheap: drawing random
            values for a large model's factors, only to overwrite them, took seconds).
        **kwargs: Base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Input shape:
        That of the replaced layer.

    Output shape:
        That of the replaced layer.

    Example:
        >>> import numpy as np
        >>> layer = FactorizedLayer(
        ...     [{"op": "dense", "kernel_shape": [8, 2]},
        ...      {"op": "dense", "kernel_shape": [2, 4]}], method="svd", rank=2)
        >>> tuple(layer(np.ones((3, 8), "float32")).shape)
        (3, 4)
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        method: str,
        rank: int,
        use_bias: bool = True,
        activation: Any = None,
        data_format: str = "channels_last",
        original_class: str | None = None,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.stages = [dict(s) for s in stages]
        self.method = method
        self.rank = int(rank)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.data_format = data_format
        self.original_class = original_class
        self._stage_weights: list[list[Any]] = []
        self.bias = None

    def build(self, input_shape: Any) -> None:
        channel_axis = 1 if self.data_format == "channels_first" else -1
        channels = int(input_shape[channel_axis])
        self._stage_weights = []
        for i, stage in enumerate(self.stages):
            names = ["kernel"] if stage["op"] != "tt" else [
                f"core{k}" for k in range(len(stage["in_modes"]))]
            ws = [
                self.add_weight(name=f"stage{i}_{nm}", shape=shape,
                                initializer=self.kernel_initializer, trainable=True)
                for nm, shape in zip(names, stage_weight_shapes(stage))
            ]
            self._stage_weights.append(ws)
            channels = stage_output_channels(stage, channels)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros",
                                        trainable=True)
        self.out_channels = channels

    def call(self, inputs: Any) -> Any:
        x = inputs
        channels_first = self.data_format == "channels_first" and len(inputs.shape) > 2
        if channels_first:
            x = ops.moveaxis(x, 1, -1)
        for stage, ws in zip(self.stages, self._stage_weights):
            x = _apply_stage(stage, x, ws)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        x = self.activation(x)
        if channels_first:
            x = ops.moveaxis(x, -1, 1)
        return x

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        """The output shape for ``input_shape`` (batch axis included), from the stages'
        shape arithmetic alone (no tensor is computed)."""
        batch, *rest = tuple(input_shape)
        channels_first = self.data_format == "channels_first" and len(rest) > 1
        shape: tuple[int | None, ...] = tuple(rest)
        if channels_first:
            shape = (*shape[1:], shape[0])
        for stage in self.stages:
            shape = stage_output_shape(stage, shape)
        if channels_first:
            shape = (shape[-1], *shape[:-1])
        return (batch, *shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            stages=[dict(s) for s in self.stages],
            method=self.method,
            rank=self.rank,
            use_bias=self.use_bias,
            activation=keras.activations.serialize(self.activation),
            data_format=self.data_format,
            original_class=self.original_class,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
