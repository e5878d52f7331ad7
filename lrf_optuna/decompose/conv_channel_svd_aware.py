"""Activation-aware channel SVD: the rank-``r`` kernel with the least *output* error.

The same replacement as :mod:`~lrf_optuna.decompose.conv_channel_svd` (a ``k x k`` conv
``c_in -> r`` with the original stride / padding / dilation, then a 1x1 conv ``r -> c_out``;
identical parameters and MACs), but the unfolded kernel ``W`` (``(k^2 c_in) x c_out``) is
truncated to minimise ``||P W - P W_r||_F``, ``P`` the layer's input patches on calibration
data (exactly the ``k x k`` windows the first conv sees, any stride, padding, dilation, 1-D
to 3-D, one problem per group), plus a small scale-aware damping (see
:mod:`~lrf_optuna.decompose._aware`). The ``(k^2 c_in)^2`` Gram matrix of the patches is
accumulated over batches, never holding all patches. Exact at full rank. Needs the layer's
inputs (the similarity cache passes them and stores the factors).

Example:
    >>> import keras, numpy as np
    >>> from lrf_optuna.decompose import describe_layer, get_method, layer_weights
    >>> conv = keras.layers.Conv2D(8, 3, strides=2, name="c")
    >>> _ = conv.build((None, 9, 9, 4))
    >>> info = describe_layer(conv, input_shape=(9, 9, 4))
    >>> x = np.random.default_rng(0).standard_normal((10, 9, 9, 4)).astype("float32")
    >>> aware = get_method("channel_svd_aware")
    >>> tuple(aware.decompose(info, layer_weights(conv), 3, inputs=x)(x).shape)
    (10, 4, 4, 8)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lrf_optuna.decompose import _aware
from lrf_optuna.decompose._base import LayerInfo, register_method
from lrf_optuna.decompose.conv_channel_svd import ChannelSVD


@register_method
class ChannelSVDAware(_aware.ActivationAware, ChannelSVD):
    """Channel SVD of the unfolded kernel whitened by its input patches' Gram matrix."""

    name = "channel_svd_aware"
    description = "conv: activation-aware channel SVD (least output error on calibration inputs)"

    def prepare_with_inputs(self, info: LayerInfo, weights: Mapping[str, np.ndarray],
                            inputs: np.ndarray) -> Any:
        grams = _aware.input_grams(info, weights, inputs)
        return [_aware.output_basis(w, gram, damping=self.damping)
                for w, gram in zip(_aware.conv_unfoldings(info, weights), grams, strict=True)]

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        return super().factorize(info, [b.truncated_svd(rank) for b in prepared], rank)
