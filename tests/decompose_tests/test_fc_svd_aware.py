"""``svd_aware`` specifics (the method contract is checked in ``test_contract.py``): its
patches of inputs, optimality of the output error, degenerate inputs, damping, errors."""

from __future__ import annotations

import numpy as np
import pytest

from lrf_optuna.decompose import _aware, get_method, validate_weights

from . import aware
from .contract import FC_CASES, FC_NAME, FCCase, L, case_ids

METHOD, PLAIN = "svd_aware", "svd"
#: The contract's FC cases, plus a 1x1 conv in channels_first and an expanding Dense
#: (n_in < n_out: full rank is n_in).
CASES = [*FC_CASES,
         FCCase("conv1x1_s2_channels_first",
                lambda: L.Conv2D(10, 1, strides=2, data_format="channels_first",
                                 name=FC_NAME), (14, 7, 7)),
         FCCase("dense_expanding", lambda: L.Dense(30, name=FC_NAME), (10,))]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_rows_reproduce_the_layer(case: FCCase) -> None:
    aware.check_rows_reproduce_the_layer(case)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_output_error_is_optimal_and_never_worse_than_svd(case: FCCase) -> None:
    aware.check_optimal_output_error(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6], CASES[-1]],
                         ids=case_ids([CASES[0], CASES[3], CASES[6], CASES[-1]]))
def test_degenerate_inputs(case: FCCase) -> None:
    aware.check_degenerate_inputs(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_costs_and_stages_equal_svd(case: FCCase) -> None:
    aware.check_costs_and_stages_equal_plain(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", [CASES[0], CASES[6]], ids=case_ids([CASES[0], CASES[6]]))
def test_damping_limits(case: FCCase) -> None:
    aware.check_damping_limits(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", [CASES[0], CASES[-2]], ids=case_ids([CASES[0], CASES[-2]]))
def test_needs_inputs(case: FCCase) -> None:
    aware.check_needs_inputs(METHOD, case)


def test_factors_are_balanced_like_svd() -> None:
    """``A^T A = B B^T = diag(singular values of W_r)``, the plain SVD's convention."""
    lin = aware.linear(CASES[0])
    method = get_method(METHOD)
    prepared = method.prepare_with_inputs(lin.info, validate_weights(lin.info, lin.weights),
                                          lin.x)
    for r in (1, 4, 9):
        a, b = method.factorize(lin.info, prepared, r)
        s = np.linalg.svd(a @ b, compute_uv=False)[:r]
        np.testing.assert_allclose(a.T @ a, np.diag(s), atol=1e-9 * s[0])
        np.testing.assert_allclose(b @ b.T, np.diag(s), atol=1e-9 * s[0])


@pytest.mark.parametrize(("samples", "damping"), [(40, 0.01), (40, 0.0), (3, 0.0)],
                         ids=["damped", "undamped", "singular"])
def test_output_basis_is_the_eigenbasis_of_the_weighted_output_gram(samples: int,
                                                                    damping: float) -> None:
    """``v`` and ``s^2`` are the eigenvectors and eigenvalues of ``W^T (G + d I) W``,
    whichever square root of the damped Gram matrix is used (Cholesky, or the
    eigendecomposition when it is singular: 3 samples, 12 inputs, no damping)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 7))
    z = rng.standard_normal((samples, 12)) * np.geomspace(1, 0.05, 12)
    gram = z.T @ z
    basis = _aware.output_basis(w, gram, damping=damping)
    d = damping * np.trace(gram) / 12
    lam, vecs = np.linalg.eigh(w.T @ (gram + d * np.eye(12)) @ w)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    np.testing.assert_allclose(basis.s ** 2, np.clip(lam, 0, None), atol=1e-9 * lam[0])
    top = min(7, samples) if damping == 0 else 7  # the null space has no preferred basis
    np.testing.assert_allclose(np.abs(basis.v[:, :top].T @ vecs[:, :top]), np.eye(top),
                               atol=1e-6)
    u, s, vt = basis.truncated_svd(7)
    np.testing.assert_allclose((u * s) @ vt, w, atol=1e-10)
