"""Truncated SVD for FC layers: ``W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)``, two matrix products.

``W`` (``n_in x n_out``) becomes a Dense ``n_in -> r`` without bias followed by a Dense
``r -> n_out`` carrying the original bias and activation. One SVD per layer serves every
rank (Eckart-Young: the truncation is the best rank-``r`` approximation in Frobenius norm).

Parameters: ``r (n_in + n_out)`` (+ bias); MACs per position: ``r (n_in + n_out)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lrf_optuna.decompose import _matrix
from lrf_optuna.decompose._base import LayerInfo, register_method


@register_method
class SVD(_matrix.TwoFactorMatrixMethod):
    """Truncated SVD of a Dense / 1x1-conv / pointwise matrix."""

    name = "svd"
    description = "FC: truncated SVD, Dense n_in->r then Dense r->n_out"

    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        u, s, vt = np.linalg.svd(_matrix.matrix_of(info, weights), full_matrices=False)
        return _matrix.prefix_factors(info, weights), u, s, vt

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        prefix, u, s, vt = prepared
        root = np.sqrt(s[:rank])
        return [*prefix, u[:, :rank] * root, root[:, None] * vt[:rank]]
