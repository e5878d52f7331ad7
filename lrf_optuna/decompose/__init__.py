"""Decompose: the registry of LRF methods and the replacement layer they build.

One module per method (``conv_*.py`` / ``fc_*.py``); importing this package finds and
registers them all (the ``*_aware`` methods are data-aware: they also need the layer's
calibration inputs, see :class:`LRFMethod`):

===================== ========================== ========================================
method                module                     applies to
===================== ========================== ========================================
``tucker2``           ``conv_tucker2``           Conv1D/2D/3D (grouped), ConvTranspose
``cp``                ``conv_cp``                Conv1D/2D/3D
``channel_svd``       ``conv_channel_svd``       Conv1D/2D/3D (grouped), ConvTranspose
``channel_svd_aware`` ``conv_channel_svd_aware`` same; fitted to the calibration inputs
``spatial_svd``       ``conv_spatial_svd``       Conv2D (grouped), DepthwiseConv2D
``svd``               ``fc_svd``                 Dense, 1x1 Conv, SeparableConv pointwise
``svd_aware``         ``fc_svd_aware``           same; fitted to the calibration inputs
``qr``                ``fc_qr``                  Dense, 1x1 Conv, SeparableConv pointwise
``tt``                ``fc_tensor_train``        Dense, 1x1 Conv, SeparableConv pointwise
===================== ========================== ========================================

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
import pkgutil

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
    verify_replacement,
)
from lrf_optuna.decompose._matrix import matrix_of
from lrf_optuna.decompose.layers import FactorizedLayer

# Every ``conv_*`` / ``fc_*`` module of this package is a method: adding a method is adding
# one file. Registration order -- conv methods, then FC methods, each alphabetical -- is the
# order methods are listed everywhere (search space, reports).
for _module in sorted((m.name for m in pkgutil.iter_modules(__path__)
                       if m.name.startswith(("conv_", "fc_"))),
                      key=lambda name: (not name.startswith("conv_"), name)):
    importlib.import_module(f"{__name__}.{_module}")

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
    "matrix_of",
    "methods_for",
    "register_method",
    "validate_weights",
    "verify_replacement",
]
