"""The conv method contract for ``spatial_svd`` (Conv2D, grouped, DepthwiseConv2D)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lrf_optuna.decompose import get_method, validate_weights

from .test_conv_tucker2 import (
    NAME,
    ConvCase,
    build,
    case_ids,
    check_bad_ranks,
    check_error_non_increasing,
    check_exact_at_max_rank,
    check_macs,
    check_non_finite_weights,
    check_params,
    check_save_load,
    check_unsupported,
)

L = keras.layers
METHOD = "spatial_svd"

CASES = [
    ConvCase("conv2d_s2_same_relu",
             lambda: L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name=NAME),
             (9, 9, 4)),
    ConvCase("conv2d_rect_d2_valid_nobias",
             lambda: L.Conv2D(5, (3, 2), dilation_rate=2, use_bias=False, name=NAME),
             (10, 9, 6)),
    ConvCase("conv2d_groups2_s21_same",
             lambda: L.Conv2D(8, 3, strides=(2, 1), padding="same", groups=2, name=NAME),
             (9, 9, 6)),
    ConvCase("conv2d_groups3_s12_valid_channels_first",
             lambda: L.Conv2D(6, (2, 3), strides=(1, 2), groups=3,
                              data_format="channels_first", name=NAME), (9, 8, 9)),
    ConvCase("dw_m2_s2_same_relu",
             lambda: L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same",
                                       activation="relu", name=NAME), (9, 9, 3)),
    ConvCase("dw_m2_rect_d2_valid_nobias",
             lambda: L.DepthwiseConv2D((3, 4), depth_multiplier=2, dilation_rate=(1, 2),
                                       use_bias=False, name=NAME), (9, 10, 3)),
    ConvCase("dw_m1_5x5_s12_same_channels_first",
             lambda: L.DepthwiseConv2D(5, strides=(1, 2), padding="same",
                                       data_format="channels_first", name=NAME), (4, 9, 9)),
]
CASE_IDS = case_ids(CASES)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_exact_at_max_rank(case: ConvCase) -> None:
    check_exact_at_max_rank(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_error_non_increasing_in_rank(case: ConvCase) -> None:
    check_error_non_increasing(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_params_match_count_params(case: ConvCase) -> None:
    check_params(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_macs_match_brute_force(case: ConvCase) -> None:
    check_macs(METHOD, case)


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=[CASE_IDS[0], CASE_IDS[4]])
def test_bad_ranks(case: ConvCase) -> None:
    check_bad_ranks(METHOD, case)


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=[CASE_IDS[2], CASE_IDS[4]])
def test_non_finite_weights(case: ConvCase) -> None:
    check_non_finite_weights(METHOD, case)


def test_unsupported_layers() -> None:
    check_unsupported(METHOD, [
        (L.Conv2D(8, 1, name="pointwise"), (5, 5, 4), "1x1"),
        (L.Conv1D(8, 3, name="conv1d"), (9, 4), "has 1"),
        (L.Conv3D(8, 3, name="conv3d"), (5, 5, 5, 4), "has 3"),
        (L.DepthwiseConv1D(3, name="dw1d"), (9, 4), "has 1"),
        (L.Conv2DTranspose(8, 3, name="transposed"), (5, 5, 4), "transposed"),
        (L.SeparableConv2D(8, 3, name="sep"), (5, 5, 4), "SeparableConv"),
        (L.Dense(8, name="fc"), (4,), "Dense"),
    ])


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=[CASE_IDS[2], CASE_IDS[4]])
def test_save_load_round_trip(case: ConvCase, tmp_path: object) -> None:
    check_save_load(METHOD, case, tmp_path)


# -- spatial_svd specifics -----------------------------------------------------------------
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
