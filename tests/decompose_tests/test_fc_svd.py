"""``svd`` specifics: Eckart-Young optimality (the method contract is checked in
``test_contract.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from lrf_optuna.decompose import get_method, validate_weights

from .contract import FC_CASES, build

METHOD = "svd"
CASES = FC_CASES


def test_svd_is_the_optimal_rank_r_approximation() -> None:
    """Eckart-Young: the SVD's weight error at rank r is sqrt(sum of the dropped s^2)."""
    b = build(CASES[0])
    method = get_method(METHOD)
    w = b.weights["kernel"].astype(np.float64)
    s = np.linalg.svd(w, compute_uv=False)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    for r in (1, 4, 11):
        a, c = method.factorize(b.info, prepared, r)
        assert np.linalg.norm(w - a @ c) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)),
                                                          rel=1e-9, abs=1e-9)
