"""``cp`` specifics: the stage chain, the exact construction, ALS against tensorly and its
budgets (the method contract is checked in ``test_contract.py``)."""

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

from .contract import CONV_NAME, CP_CASES, build, rel_err

L = keras.layers
METHOD = "cp"
CASES = CP_CASES


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
    layer = L.Conv2D(128, 3, padding="same", name=CONV_NAME)
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
