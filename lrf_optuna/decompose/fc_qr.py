"""Truncated column-pivoted QR for FC layers: ``W ~ Q_r (R_r P^T)``, two matrix products.

``W`` (``n_in x n_out``) is factorized once per layer by a rank-revealing QR with column
pivoting, ``W P = Q R`` (``Q`` with orthonormal columns, ``R`` upper triangular with
non-increasing ``|R_ii|``, ``P`` a permutation). Keeping the first ``r`` columns of ``Q`` and
rows of ``R`` gives ``W ~ Q[:, :r] (R[:r] P^T)``: a Dense ``n_in -> r`` without bias followed
by a Dense ``r -> n_out`` carrying the original bias and activation, exactly the layout of
:mod:`~lrf_optuna.decompose.fc_svd`. The rows of the two factors are rescaled by
``sqrt(||R[i, :]||)`` so both carry comparable magnitudes (the analogue of SVD's
``S^1/2`` split; the product is unchanged). At ``r = min(n_in, n_out)`` the factorization
is exact.

The truncation error is ``||W - W_r||_F = ||R[r:, r:]||_F``, which cannot grow with ``r``.

Parameters: ``r (n_in + n_out)`` (+ bias); MACs per position: ``r (n_in + n_out)``.
For separable convolutions the original depthwise kernel is kept in front (its parameters
and MACs are added); a strided 1x1 convolution first subsamples its input (no MACs).

Why QR: a pivoted QR costs ``O(n_in n_out min(n_in, n_out))`` like an SVD, and its first
factor is orthonormal as the SVD's is, but it keeps actual columns of ``W`` in pivot order
(a rank-revealing choice rather than an optimal one). Its time is comparable to the SVD's
here (``benchmarks/RESULTS.md``, "Decomposition speed": single-threaded on 4096 x 1024,
1.6 s against 1.4 s; faster only when a multi-threaded SVD contends for the cores). It is
not optimal: for a given rank its error is at least the SVD's (Eckart-Young), measured
1.2-1.5x the SVD's error there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.linalg

from lrf_optuna.decompose import _matrix
from lrf_optuna.decompose._base import LayerInfo, register_method

__all__ = ["QR"]


@register_method
class QR(_matrix.TwoFactorMatrixMethod):
    """Truncated column-pivoted QR of a Dense / 1x1-conv / pointwise matrix.

    Example:
        >>> import keras
        >>> from lrf_optuna.decompose import describe_layer, layer_weights
        >>> dense = keras.layers.Dense(16, name="fc")
        >>> _ = dense.build((None, 32))
        >>> info = describe_layer(dense, input_shape=(32,))
        >>> QR().decompose(info, layer_weights(dense), rank=4).count_params()
        208
    """

    name = "qr"
    description = "FC: truncated pivoted QR, Dense n_in->r then Dense r->n_out"

    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        w = _matrix.matrix_of(info, weights)
        q, r, piv = scipy.linalg.qr(w, pivoting=True, mode="economic")
        # R P^T: column piv[j] of W is column j of W P, so scatter R's columns back
        r_unpivoted = np.empty_like(r)
        r_unpivoted[:, piv] = r
        return _matrix.prefix_factors(info, weights), q, r_unpivoted

    def factorize(self, info: LayerInfo, prepared: Any, rank: int) -> list[np.ndarray]:
        prefix, q, r_unpivoted = prepared
        rows = r_unpivoted[:rank]
        norms = np.linalg.norm(rows, axis=1)
        scale = np.sqrt(np.where(norms > 0, norms, 1.0))
        return [*prefix, q[:, :rank] * scale, rows / scale[:, None]]
