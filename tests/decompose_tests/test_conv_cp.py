"""The conv method contract for ``cp``, plus its ALS / exact-construction specifics."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from lrf_optuna.decompose import describe_layer, get_method, validate_weights
from lrf_optuna.decompose.conv_cp import (
    DEFAULT_N_ITER_MAX,
    DEFAULT_TIME_BUDGET,
    ConvCP,
    cp_als,
    exact_cp,
    svd_init,
)

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
    rel_err,
)

L = keras.layers
METHOD = "cp"

CASES = [
    ConvCase("conv2d_s2_same_relu",
             lambda: L.Conv2D(5, 3, strides=2, padding="same", activation="relu", name=NAME),
             (9, 9, 4)),
    ConvCase("conv2d_rect_d2_valid_nobias_cin_gt_cout",
             lambda: L.Conv2D(3, (3, 2), dilation_rate=(2, 1), use_bias=False, name=NAME),
             (10, 9, 5)),
    ConvCase("conv2d_s2x1_valid_channels_first",
             lambda: L.Conv2D(4, 3, strides=(2, 1), data_format="channels_first", name=NAME),
             (3, 9, 8)),
    ConvCase("conv1d_causal_d2",
             lambda: L.Conv1D(6, 3, padding="causal", dilation_rate=2, name=NAME), (12, 5)),
    ConvCase("conv1d_s2_same", lambda: L.Conv1D(4, 5, strides=2, padding="same", name=NAME),
             (11, 6)),
    ConvCase("conv1d_s3_valid", lambda: L.Conv1D(5, 3, strides=3, name=NAME), (13, 4)),
    ConvCase("conv3d_s121_same_relu",
             lambda: L.Conv3D(4, (3, 2, 3), strides=(1, 2, 1), padding="same",
                              activation="relu", name=NAME), (5, 5, 4, 3)),
    ConvCase("conv3d_valid_d2", lambda: L.Conv3D(3, 2, dilation_rate=2, name=NAME),
             (5, 5, 5, 2)),
]
CASE_IDS = case_ids(CASES)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_exact_at_max_rank(case: ConvCase) -> None:
    check_exact_at_max_rank(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_error_non_increasing_in_rank(case: ConvCase) -> None:
    # ALS finds a local optimum per rank: allow a little slack between neighbouring ranks
    check_error_non_increasing(METHOD, case, slack=0.05, abs_slack=1e-3)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_params_match_count_params(case: ConvCase) -> None:
    check_params(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_macs_match_brute_force(case: ConvCase) -> None:
    check_macs(METHOD, case)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=[CASE_IDS[0], CASE_IDS[3]])
def test_bad_ranks(case: ConvCase) -> None:
    check_bad_ranks(METHOD, case)


@pytest.mark.parametrize("case", [CASES[0], CASES[6]], ids=[CASE_IDS[0], CASE_IDS[6]])
def test_non_finite_weights(case: ConvCase) -> None:
    check_non_finite_weights(METHOD, case)


def test_unsupported_layers() -> None:
    check_unsupported(METHOD, [
        (L.Conv2D(8, 1, name="pointwise"), (5, 5, 4), "FC method"),
        (L.Conv2D(8, 3, groups=2, name="grouped"), (5, 5, 4), "grouped"),
        (L.Conv2DTranspose(8, 3, name="transposed"), (5, 5, 4), "transposed"),
        (L.DepthwiseConv2D(3, name="dw"), (5, 5, 4), "not DepthwiseConv2D"),
        (L.Dense(8, name="fc"), (4,), "not Dense"),
    ])


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=[CASE_IDS[1], CASE_IDS[6]])
def test_save_load_round_trip(case: ConvCase, tmp_path: object) -> None:
    check_save_load(METHOD, case, tmp_path)


# -- cp specifics --------------------------------------------------------------------------
def test_stage_chain_shape() -> None:
    """1x1, one depthwise per axis with that axis' stride / dilation only, 1x1."""
    b = build(CASES[2])                                     # strides (2, 1)
    stages = get_method(METHOD).stages(b.info, 7)
    assert [s["op"] for s in stages] == ["dense", "depthwise", "depthwise", "dense"]
    assert [s["kernel_shape"] for s in stages] == [[3, 7], [3, 1, 7, 1], [1, 3, 7, 1], [7, 4]]
    assert stages[1]["strides"] == [2, 1] and stages[2]["strides"] == [1, 1]


@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (2, 3, 5, 2), (3, 4, 2)])
def test_exact_cp_reconstructs_both_branches(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal(shape)
    factors = exact_cp(w)
    assert factors[0].shape[1] == int(np.prod(shape[:-2])) * min(shape[-2:])
    np.testing.assert_allclose(_cp_full(factors), w, atol=1e-12)


def _cp_full(factors: list[np.ndarray]) -> np.ndarray:
    rank = factors[0].shape[1]
    out = np.ones((rank,))
    for f in factors:
        out = out[..., None, :] * f
    return out.sum(axis=-1)


def test_als_matches_tensorly_parafac() -> None:
    """Same init, same number of sweeps: our ALS and tensorly's ``parafac`` agree."""
    from tensorly.decomposition import parafac

    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 3, 5, 6))
    method = ConvCP()
    b = build(CASES[0])
    prepared = method.prepare(b.info, {"kernel": w})
    for rank in (2, 7):
        init = svd_init(prepared.bases, rank)
        ours = cp_als(w, init, n_iter_max=6, tol=0.0, time_budget=None)
        assert ours.n_iter == 6 and ours.stopped_by == "n_iter_max"
        cp = parafac(w, rank, n_iter_max=6, init=(np.ones(rank), [f.copy() for f in init]),
                     tol=0.0)
        theirs = np.asarray(cp.to_tensor())
        np.testing.assert_allclose(_cp_full(ours.factors), theirs, rtol=1e-6, atol=1e-6)
        assert ours.rel_error == pytest.approx(rel_err(_cp_full(ours.factors), w), rel=1e-6)


def test_budget_defaults_and_overrides() -> None:
    registered = get_method(METHOD)
    assert isinstance(registered, ConvCP)
    assert (registered.n_iter_max, registered.time_budget) == (DEFAULT_N_ITER_MAX,
                                                               DEFAULT_TIME_BUDGET)
    b = build(CASES[0])
    prepared = registered.prepare(b.info, validate_weights(b.info, b.weights))
    few = ConvCP(n_iter_max=3, tol=0.0)
    few.factorize(b.info, prepared, 5)
    assert few.last_result is not None and few.last_result.n_iter == 3
    rushed = ConvCP(time_budget=0.0, tol=0.0)                 # one sweep, then out of time
    rushed.factorize(b.info, prepared, 5)
    assert rushed.last_result is not None
    assert (rushed.last_result.n_iter, rushed.last_result.stopped_by) == (1, "time_budget")
    exact = ConvCP()
    exact.factorize(b.info, prepared, exact.max_rank(b.info))
    assert exact.last_result is None                           # exact construction, no ALS


def test_deterministic() -> None:
    b = build(CASES[0])
    method = get_method(METHOD)
    one = method.factorize(b.info, method.prepare(b.info, validate_weights(b.info, b.weights)), 6)
    two = method.factorize(b.info, method.prepare(b.info, validate_weights(b.info, b.weights)), 6)
    for f1, f2 in zip(one, two, strict=True):
        np.testing.assert_array_equal(f1, f2)


@pytest.mark.slow
def test_time_budget_bounds_a_big_kernel() -> None:
    """A 3x3x128x128 kernel at rank 256: the ALS stops on the wall-clock budget."""
    layer = L.Conv2D(128, 3, padding="same", name=NAME)
    layer.build((None, 8, 8, 128))
    info = describe_layer(layer, input_shape=(8, 8, 128))
    w = np.random.default_rng(0).standard_normal((3, 3, 128, 128))
    method = ConvCP(n_iter_max=10_000, time_budget=1.0)
    prepared = method.prepare(info, {"kernel": w})
    start = time.perf_counter()
    method.factorize(info, prepared, 256)
    elapsed = time.perf_counter() - start
    assert method.last_result is not None and method.last_result.stopped_by == "time_budget"
    assert elapsed < 1.0 + 5.0                                 # budget + at most one sweep
