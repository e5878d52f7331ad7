"""``qr`` specifics: the weight error is R's trailing block, zero matrices, closeness to
SVD (the method contract is checked in ``test_contract.py``)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import scipy.linalg

from lrf_optuna.decompose import describe_layer, get_method, layer_weights

from .contract import FC_CASES, FC_NAME, build, dense_info

METHOD = "qr"
CASES = FC_CASES


@pytest.mark.parametrize("shape", [(24, 12), (6, 20)], ids=["tall", "wide"])
def test_weight_error_is_the_trailing_block_of_r(shape: tuple[int, int]) -> None:
    """||W - A_r B_r||_F = ||R[r:, r:]||_F: non-increasing, >= SVD's, 0 at full rank."""
    n_in, n_out = shape
    info, weights = dense_info(n_in, n_out, seed=1)
    w = weights["kernel"]
    _, r_mat, _ = scipy.linalg.qr(w, pivoting=True, mode="economic")
    s = np.linalg.svd(w, compute_uv=False)
    method = get_method(METHOD)
    prepared = method.prepare(info, weights)
    errs = []
    for r in range(1, method.max_rank(info) + 1):
        a, b = method.factorize(info, prepared, r)
        assert a.shape == (n_in, r) and b.shape == (r, n_out)
        err = np.linalg.norm(w - a @ b)
        assert err == pytest.approx(np.linalg.norm(r_mat[r:, r:]), rel=1e-9, abs=1e-9)
        assert err >= np.sqrt(np.sum(s[r:] ** 2)) - 1e-9
        # balanced split: row i of B and column i of A have the same norm
        np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1))
        errs.append(err)
    assert all(e1 <= e0 + 1e-12 for e0, e1 in itertools.pairwise(errs))
    assert errs[-1] < 1e-10


def test_zero_matrix_does_not_divide_by_zero() -> None:
    dense = keras.layers.Dense(4, name=FC_NAME)
    dense.build((None, 6))
    dense.kernel.assign(np.zeros((6, 4), "float32"))
    info = describe_layer(dense, input_shape=(6,))
    new = get_method(METHOD).decompose(info, layer_weights(dense), 2)
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in new.weights)
    x = np.ones((2, 6), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(new(x)), 0.0)


def test_qr_error_not_far_from_svd_on_decaying_spectrum() -> None:
    """Rank-revealing: on a matrix with decaying spectrum, QR is close to optimal."""
    b = build(CASES[0])
    rng = np.random.default_rng(2)
    u, _ = np.linalg.qr(rng.standard_normal((24, 12)))
    v, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    w = (u * 0.5 ** np.arange(12)) @ v.T
    weights = {"kernel": w, "bias": b.weights["bias"]}
    info = b.info
    svd, qr = get_method("svd"), get_method(METHOD)
    p_svd, p_qr = svd.prepare(info, weights), qr.prepare(info, weights)
    for r in (2, 4, 8):
        e_svd = np.linalg.norm(w - np.matmul(*svd.factorize(info, p_svd, r)))
        e_qr = np.linalg.norm(w - np.matmul(*qr.factorize(info, p_qr, r)))
        assert e_svd <= e_qr + 1e-12 < 10 * e_svd
