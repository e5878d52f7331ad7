"""``tucker2`` specifics: the rank knob, HOOI against tensorly, grouped factors (the
method contract is checked in ``test_contract.py``)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lrf_optuna.decompose import describe_layer, get_method, validate_weights
from lrf_optuna.decompose.conv_tucker2 import Tucker2, tucker2_hooi

from .contract import CONV_NAME, TUCKER2_CASES, Built, ConvCase, build

L = keras.layers
METHOD = "tucker2"
CASES = TUCKER2_CASES


def test_rank_knob_mapping() -> None:
    """R2 = R, R1 = clip(round(R c_in / c_out), 1, c_in), per group; max_rank = c_out / g."""
    b = build(CASES[0])                                     # c_in 6, c_out 8
    method = Tucker2()
    assert method.max_rank(b.info) == 8
    assert [method.ranks(b.info, r) for r in (1, 2, 3, 4, 8)] == [
        (1, 1), (2, 2), (2, 3), (3, 4), (6, 8)]            # 1.5 -> 2, 2.25 -> 2, 3 -> 3
    g = build(CASES[5])                                     # Conv1D 9 -> 6, groups 3
    assert method.max_rank(g.info) == 2
    assert [method.ranks(g.info, r) for r in (1, 2)] == [(2, 1), (3, 2)]
    wide = L.Conv2D(40, 3, name="wide")                     # 3 -> 40: R1 clipped to >= 1
    wide.build((None, 6, 6, 3))
    info = describe_layer(wide, input_shape=(6, 6, 3))
    assert [method.ranks(info, r) for r in (1, 13, 14, 40)] == [(1, 1), (1, 13), (1, 14),
                                                                (3, 40)]


def _tucker_weight_error(b: Built, rank: int, method: Tucker2) -> float:
    """Relative error of the reconstructed kernel (conv layout) at ``rank``."""
    u, core, vt = method.factorize(
        b.info, method.prepare(b.info, validate_weights(b.info, b.weights)), rank)
    w = np.einsum("ca,...ab,bo->...co", u, core, vt)
    ref = b.weights["kernel"].astype(np.float64)
    return float(np.linalg.norm(w - ref) / np.linalg.norm(ref))


def test_factors_orthonormal_and_hooi_improves_on_hosvd() -> None:
    case = ConvCase("c", lambda: L.Conv2D(12, 3, name=CONV_NAME), (6, 6, 10))
    b = build(case)
    hooi, hosvd = Tucker2(n_iter_max=20, tol=0.0), Tucker2(n_iter_max=0)
    prepared = hooi.prepare(b.info, validate_weights(b.info, b.weights))
    for r in (2, 5, 9):
        u, _, vt = hooi.factorize(b.info, prepared, r)
        r1, r2 = hooi.ranks(b.info, r)
        np.testing.assert_allclose(u.T @ u, np.eye(r1), atol=1e-10)
        np.testing.assert_allclose(vt @ vt.T, np.eye(r2), atol=1e-10)
        assert _tucker_weight_error(b, r, hooi) <= _tucker_weight_error(b, r, hosvd) + 1e-12


def test_hooi_matches_tensorly_partial_tucker() -> None:
    """Our HOOI reaches the fit of tensorly's ``partial_tucker`` (the same algorithm)."""
    from tensorly.decomposition import partial_tucker

    rng = np.random.default_rng(3)
    w = rng.standard_normal((9, 10, 12))
    for r1, r2 in [(3, 4), (6, 5)]:
        u, core, v = tucker2_hooi(w, r1, r2, n_iter_max=100, tol=1e-12)
        ours = np.linalg.norm(np.einsum("tab,ca,ob->tco", core, u, v) - w)
        (tl_core, (tl_u, tl_v)), _ = partial_tucker(w, rank=[r1, r2], modes=[1, 2],
                                                     n_iter_max=100, tol=1e-12)
        theirs = np.linalg.norm(np.einsum("tab,ca,ob->tco", tl_core, tl_u, tl_v) - w)
        assert ours <= theirs * (1 + 1e-6)


def test_one_full_mode_is_exact_truncated_svd() -> None:
    """With ``R1 = c_in`` the best Tucker-2 is the truncated SVD of the c_out unfolding."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((9, 4, 10))
    u, core, v = tucker2_hooi(w, 4, 3)
    np.testing.assert_allclose(u, np.eye(4))
    s = np.linalg.svd(w.reshape(-1, 10), compute_uv=False)
    err = np.linalg.norm(np.einsum("tab,ca,ob->tco", core, u, v) - w)
    assert err == pytest.approx(np.sqrt(np.sum(s[3:] ** 2)), rel=1e-9)


def test_grouped_factors_stay_block_diagonal() -> None:
    """Group i's channels only reach group i's ranks: the grouped stages see no cross terms."""
    b = build(CASES[3])                                     # 6 -> 8, groups 2
    method = get_method(METHOD)
    new = method.decompose(b.info, b.weights, 3)
    ops = [s["op"] for s in new.stages]
    assert ops == ["conv", "conv", "conv"]
    first, core, last = (s["kernel_shape"] for s in new.stages)
    r1, r2 = method.ranks(b.info, 3)                        # type: ignore[attr-defined]
    assert first == [1, 1, 3, 2 * r1] and core == [3, 3, r1, 2 * r2] and last == [1, 1, r2, 8]
