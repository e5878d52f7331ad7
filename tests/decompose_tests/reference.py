"""The original layer's output on any CPU: the reference the factorizations are held to.

TensorFlow's plain CPU kernels (without oneDNN, e.g. on CPUs without AVX-512) refuse a
convolution in channels-first layout and a depthwise convolution with unequal row and
column strides, so ``layer(x)`` itself fails there for some of the contract's cases. For
those, :func:`reference_output` computes the same function with a *twin*: the same Keras
class and weights, channels-last, stride 1 and "valid" padding, on the input transposed to
channels-last and padded explicitly by TensorFlow's rule; the strides are then taken by
subsampling the twin's output. It shares nothing with :mod:`lrf_optuna.decompose`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

L = keras.layers
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)


def needs_twin(layer: keras.layers.Layer) -> bool:
    """Whether a plain CPU kernel may refuse ``layer(x)``."""
    cfg = layer.get_config()
    if cfg.get("data_format") == "channels_first":
        return True
    strides = cfg.get("strides")
    return isinstance(layer, _DEPTHWISE) and isinstance(strides, (list, tuple)) and len(
        set(strides)) > 1


def _same_pads(n: int, k_eff: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(n / s) - 1) * s + k_eff - n, 0)
    return total // 2, total - total // 2


def reference_output(layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    """``layer(x)`` as numpy, through the channels-last stride-1 twin when needed."""
    if not needs_twin(layer):
        return ops.convert_to_numpy(layer(x))
    cfg = layer.get_config()
    channels_first = cfg.get("data_format") == "channels_first"
    xs = np.moveaxis(x, 1, -1) if channels_first else x
    twin_cfg = {**cfg, "data_format": "channels_last", "name": f"{layer.name}_twin"}
    transposed = isinstance(layer, _TRANSPOSED)
    if not transposed:
        n = xs.ndim - 2
        k = [int(v) for v in np.broadcast_to(cfg["kernel_size"], (n,))]
        s = [int(v) for v in np.broadcast_to(cfg["strides"], (n,))]
        d = [int(v) for v in np.broadcast_to(cfg["dilation_rate"], (n,))]
        pads = [(0, 0)] * n
        if cfg["padding"] == "same":
            pads = [_same_pads(xs.shape[1 + a], (k[a] - 1) * d[a] + 1, s[a]) for a in range(n)]
        elif cfg["padding"] == "causal":
            pads = [((k[0] - 1) * d[0], 0)]
        xs = np.pad(xs, [(0, 0), *pads, (0, 0)])
        twin_cfg.update(strides=1, padding="valid")
    twin = type(layer).from_config(twin_cfg)
    twin.build(xs.shape)
    twin.set_weights(layer.get_weights())
    y = ops.convert_to_numpy(twin(xs))
    if not transposed:
        y = y[(slice(None), *(slice(None, None, st) for st in s))]
    return np.moveaxis(y, -1, 1) if channels_first else y
