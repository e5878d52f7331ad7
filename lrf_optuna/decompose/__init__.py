"""Decompose: the registry of LRF methods and the replacement layer they build.

One module per method; importing this package registers them all:

=================== ======================== ===========================================
method              module                   applies to
=================== ======================== ===========================================
``tucker2``         ``conv_tucker2``         Conv1D/2D/3D (grouped), ConvTranspose
``cp``              ``conv_cp``              Conv1D/2D/3D
``channel_svd``     ``conv_channel_svd``     Conv1D/2D/3D (grouped), ConvTranspose
``spatial_svd``     ``conv_spatial_svd``     Conv2D (grouped), DepthwiseConv2D
``svd``             ``fc_svd``               Dense, 1x1 Conv, SeparableConv pointwise
``qr``              ``fc_qr``                Dense, 1x1 Conv, SeparableConv pointwise
``tt``              ``fc_tensor_train``      Dense, 1x1 Conv, SeparableConv pointwise
=================== ======================== ===========================================

Example:
    >>> import keras, numpy as np
    >>> from lrf_optuna.decompose import describe_layer, get_method, layer_weights
    >>> dense = keras.layers.Dense(16, name="fc")
    >>> _ = dense.build((None, 32))
    >>> info = describe_layer(dense, input_shape=(32,))
    >>> small = get_method("svd").decompose(info, layer_weights(dense), rank=4)
    >>> small.count_params(), get_method("svd").params(info, 4)
    (208, 208)
"""

from __future__ import annotations

import importlib

from lrf_optuna.decompose._base import (
    DecompositionError,
    LayerInfo,
    LRFMethod,
    UnsupportedLayerError,
    available_methods,
    describe_layer,
    get_method,
    layer_weights,
    methods_for,
    register_method,
    validate_weights,
)
from lrf_optuna.decompose.layers import FactorizedLayer

# Registration order is the order methods are listed everywhere (search space, reports).
for _module in ("conv_tucker2", "conv_cp", "conv_channel_svd", "conv_spatial_svd",
                "fc_svd", "fc_qr", "fc_tensor_train"):
    importlib.import_module(f"lrf_optuna.decompose.{_module}")

__all__ = [
    "DecompositionError",
    "FactorizedLayer",
    "LRFMethod",
    "LayerInfo",
    "UnsupportedLayerError",
    "available_methods",
    "describe_layer",
    "get_method",
    "layer_weights",
    "methods_for",
    "register_method",
    "validate_weights",
]
