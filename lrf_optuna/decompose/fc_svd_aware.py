"""Activation-aware SVD for FC layers: the rank-``r`` matrix with the least *output* error.

The same replacement as :mod:`~lrf_optuna.decompose.fc_svd` (a Dense ``n_in -> r``, then a
Dense ``r -> n_out`` with the original bias and activation; identical parameters and MACs),
but the factors minimise ``||X W - X W_r||_F`` on the layer's calibration inputs ``X``
(plus a small scale-aware damping, see :mod:`~lrf_optuna.decompose._aware`) instead of
``||W - W_r||_F``: directions of ``W`` the inputs rarely excite are dropped first. Exact at
full rank. Needs the layer's inputs (the similarity cache passes them and stores the
factors, so a plan is rebuilt exactly as it was scored).

Example:
    >>> import keras, numpy as np
    >>> from lrf_optuna.decompose import describe_layer, get_method, layer_weights
    >>> layer = keras.layers.Dense(16, name="fc")
    >>> _ = layer.build((None, 32))
    >>> rng = np.random.default_rng(0)
    >>> _ = layer.kernel.assign(rng.standard_normal((32, 16)).astype("float32"))
    >>> info, weights = describe_layer(layer, input_shape=(32,)), layer_weights(layer)
    >>> # inputs with uneven energy across features, as real activations have
    >>> x = (rng.standard_normal((500, 32)) * np.geomspace(1, 0.01, 32)).astype("float32")
    >>> y = keras.ops.convert_to_numpy(layer(x))
    >>> def relative_error(name):
    ...     small = get_method(name).decompose(info, weights, 4, inputs=x)
    ...     out = keras.ops.convert_to_numpy(small(x))
    ...     return round(float(np.linalg.norm(out - y) / np.linalg.norm(y)), 2)
    >>> relative_error("svd"), relative_error("svd_aware")
    (0.77, 0.46)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lrf_optuna.decompose import _aware, _matrix
from lrf_optuna.decompose._base import LayerInfo, register_method
from lrf_optuna.decompose.fc_svd import SVD


@register_method
class SVDAware(_aware.ActivationAware, SVD):
    """Truncated SVD of the matrix whitened by its inputs' Gram matrix."""

    name = "svd_aware"
    description = "FC: activation-aware SVD (least output error on calibration inputs)"

    def prepare_with_inputs(self, info: LayerInfo, weights: Mapping[str, np.ndarray],
                            inputs: np.ndarray) -> Any:
        (gram,) = _aware.input_grams(info, weights, inputs)
        basis = _aware.output_basis(_matrix.matrix_of(info, weights), gram,
                                    damping=self.damping)
        return _matrix.prefix_factors(info, weights), basis

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        prefix, basis = prepared
        return super().factorize(info, (prefix, *basis.truncated_svd(rank)), rank)
