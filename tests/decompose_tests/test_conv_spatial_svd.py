"""``spatial_svd`` specifics (Conv2D, grouped, DepthwiseConv2D): max ranks, Eckart-Young
truncation, depthwise channel order (the method contract is checked in
``test_contract.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from lrf_optuna.decompose import get_method, validate_weights

from .contract import SPATIAL_SVD_CASES, ConvCase, build, case_ids

METHOD = "spatial_svd"
CASES = SPATIAL_SVD_CASES
CASE_IDS = case_ids(CASES)


def test_max_ranks() -> None:
    method = get_method(METHOD)
    assert method.max_rank(build(CASES[0]).info) == min(3 * 4, 3 * 6)
    assert method.max_rank(build(CASES[2]).info) == min(3 * 3, 3 * 4)     # per group
    assert method.max_rank(build(CASES[5]).info) == 3                     # min(kh, kw)


def _reconstruct_conv(factors: list[np.ndarray], groups: int) -> np.ndarray:
    """The ``(kh, kw, c_in/g, c_out)`` kernel the two (grouped) stages compute."""
    first, second = factors                                  # (kh,1,c/g,gR), (1,kw,R,o)
    rank = second.shape[2]
    parts = []
    for g in range(groups):
        a = first[:, 0, :, g * rank:(g + 1) * rank]          # (kh, c/g, R)
        o_g = second.shape[-1] // groups
        b = second[0, :, :, g * o_g:(g + 1) * o_g]           # (kw, R, o/g)
        parts.append(np.einsum("icr,jro->ijco", a, b))
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=[CASE_IDS[0], CASE_IDS[2]])
def test_conv_truncation_is_eckart_young(case: ConvCase) -> None:
    """The kernel error at rank R is the dropped singular values of each group's unfolding."""
    b = build(case)
    method = get_method(METHOD)
    g = b.info.groups
    kernel = b.weights["kernel"].astype(np.float64)
    kh, _, c_g, _ = kernel.shape
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    sing = [np.linalg.svd(np.transpose(w, (0, 2, 1, 3)).reshape(kh * c_g, -1),
                          compute_uv=False) for w in np.split(kernel, g, axis=-1)]
    for r in (1, 3, method.max_rank(b.info)):
        approx = _reconstruct_conv(method.factorize(b.info, prepared, r), g)
        expected = np.sqrt(sum(np.sum(s[r:] ** 2) for s in sing))
        assert np.linalg.norm(approx - kernel) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_depthwise_channel_order_and_truncation() -> None:
    """Output channel ``c m + j`` of the replacement is the rank-R SVD of filter ``(c, j)``."""
    b = build(CASES[4])                                      # 3 channels, multiplier 2
    method = get_method(METHOD)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    kernel = b.weights["kernel"].astype(np.float64)          # (3, 3, 3, 2)
    for r in (1, 2):
        first, second = method.factorize(b.info, prepared, r)
        assert first.shape == (3, 1, 3, 2 * r) and second.shape == (1, 3, 3 * 2 * r, 1)
        for c in range(3):
            for j in range(2):
                u = first[:, 0, c, j * r:(j + 1) * r]                         # (kh, R)
                ch = (c * 2 + j) * r
                v = second[0, :, ch:ch + r, 0]                                # (kw, R)
                f = kernel[:, :, c, j]
                uu, s, vt = np.linalg.svd(f)
                np.testing.assert_allclose(u @ v.T, (uu[:, :r] * s[:r]) @ vt[:r], atol=1e-12)
    stages = method.stages(b.info, 2)
    assert [s["op"] for s in stages] == ["depthwise", "depthwise", "group_sum"]
    assert [s["op"] for s in method.stages(b.info, 1)] == ["depthwise", "depthwise"]
