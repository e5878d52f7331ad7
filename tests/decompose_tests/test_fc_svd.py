"""The FC method contract, checked for ``svd`` (and imported by the qr / tt test files).

The helpers below (``CASES``, ``check_*``) take a method name so that every FC method is
held to the same contract: exact at max rank, error non-increasing in rank, closed-form
params/MACs equal to the built layer's count / an independent brute-force count, clear
errors on bad input, ``.keras`` round-trip with ``safe_mode=True``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pytest

from lrf_optuna.decompose import (
    DecompositionError,
    FactorizedLayer,
    LayerInfo,
    UnsupportedLayerError,
    describe_layer,
    get_method,
    layer_weights,
    validate_weights,
)

from .brute_force import brute_force_macs

L = keras.layers
BATCH = 8


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], keras.layers.Layer]
    input_shape: tuple[int, ...]


CASES = [
    Case("dense_relu", lambda: L.Dense(12, activation="relu", name="fc_case"), (24,)),
    Case("dense_rank3_nobias", lambda: L.Dense(12, use_bias=False, name="fc_case"), (5, 24)),
    Case("conv1x1_s1_same_relu",
         lambda: L.Conv2D(12, 1, padding="same", activation="relu", name="fc_case"),
         (6, 6, 18)),
    Case("conv1x1_s2_valid_nobias",
         lambda: L.Conv2D(12, 1, strides=2, padding="valid", use_bias=False, name="fc_case"),
         (7, 7, 18)),
    Case("conv1x1_s2_same",
         lambda: L.Conv2D(8, 1, strides=2, padding="same", name="fc_case"), (7, 7, 18)),
    Case("conv1d_k1_relu", lambda: L.Conv1D(12, 1, activation="relu", name="fc_case"), (9, 20)),
    Case("sep2d_dm2_s2_same_relu",
         lambda: L.SeparableConv2D(12, 3, depth_multiplier=2, strides=2, padding="same",
                                   activation="relu", name="fc_case"), (9, 9, 6)),
    Case("sep2d_dm2_s2_valid_nobias",
         lambda: L.SeparableConv2D(10, 3, depth_multiplier=2, strides=2, padding="valid",
                                   use_bias=False, name="fc_case"), (9, 9, 4)),
]
CASE_IDS = [c.id for c in CASES]


@dataclass
class Built:
    layer: keras.layers.Layer
    info: LayerInfo
    weights: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray


def build(case: Case, seed: int = 0) -> Built:
    """The original layer with random weights, a random input batch and its output."""
    rng = np.random.default_rng(seed)
    layer = case.make()
    layer.build((None, *case.input_shape))
    for w in layer.weights:
        w.assign((rng.standard_normal(tuple(w.shape)) * 0.5).astype("float32"))
    x = rng.standard_normal((BATCH, *case.input_shape)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    info = describe_layer(layer, input_shape=case.input_shape)
    return Built(layer, info, layer_weights(layer), x, y)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-30)


def some_ranks(method_name: str, info: LayerInfo, most: int = 8) -> list[int]:
    """Every rank when there are few, else an even spread including both ends."""
    hi = get_method(method_name).max_rank(info)
    if hi <= most:
        return list(range(1, hi + 1))
    return [int(v) for v in np.unique(np.linspace(1, hi, most).round())]


def output_errors(method_name: str, b: Built, ranks: list[int]) -> list[float]:
    method = get_method(method_name)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    return [rel_err(keras.ops.convert_to_numpy(
        method.decompose(b.info, b.weights, r, prepared=prepared)(b.x)), b.y) for r in ranks]


# -- the contract ---------------------------------------------------------------------------
def check_exact_at_max_rank(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    new = method.decompose(b.info, b.weights, method.max_rank(b.info))
    assert isinstance(new, FactorizedLayer)
    assert new.name == b.layer.name and new.method == method_name
    out = keras.ops.convert_to_numpy(new(b.x))
    assert out.shape == b.y.shape
    assert rel_err(out, b.y) < 1e-4


def check_error_non_increasing(method_name: str, case: Case) -> None:
    b = build(case)
    ranks = some_ranks(method_name, b.info)
    errs = output_errors(method_name, b, ranks)
    for (r0, e0), (r1, e1) in itertools.pairwise(zip(ranks, errs, strict=True)):
        assert e1 <= e0 * 1.02 + 1e-5, f"error grew from rank {r0} ({e0}) to {r1} ({e1})"
    if len(ranks) > 1:
        assert errs[0] > errs[-1]


def check_params(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    for r in some_ranks(method_name, b.info):
        new = method.decompose(b.info, b.weights, r, prepared=prepared)
        assert method.params(b.info, r) == new.count_params(), f"rank {r}"


def check_macs(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    for r in some_ranks(method_name, b.info, most=4):
        new = method.decompose(b.info, b.weights, r, prepared=prepared)
        assert method.macs(b.info, r) == brute_force_macs(new, case.input_shape), f"rank {r}"


def check_bad_ranks(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    hi = method.max_rank(b.info)
    for bad in (0, -1, hi + 1, 2.5, True):
        with pytest.raises(DecompositionError, match="fc_case"):
            method.decompose(b.info, b.weights, bad)  # type: ignore[arg-type]


def check_non_finite_weights(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    for role in b.weights:
        for value in (np.nan, np.inf):
            weights = {k: v.copy() for k, v in b.weights.items()}
            weights[role].flat[0] = value
            with pytest.raises(DecompositionError, match=r"'fc_case'.*NaN or Inf"):
                method.decompose(b.info, weights, 1)


def check_unsupported(method_name: str) -> None:
    method = get_method(method_name)
    for layer, shape, reason in [
        (L.Conv2D(8, 1, groups=2, name="grouped"), (5, 5, 4), "grouped"),
        (L.Conv2D(8, 3, name="kxk"), (5, 5, 4), "not a matrix"),
        (L.DepthwiseConv2D(3, name="dw"), (5, 5, 4), "not a matrix"),
    ]:
        layer.build((None, *shape))
        info = describe_layer(layer, input_shape=shape)
        assert method.unsupported_reason(info) is not None
        assert not method.applies_to(info)
        with pytest.raises(UnsupportedLayerError, match=f"{layer.name}.*{reason}"):
            method.decompose(info, layer_weights(layer), 1)


def check_save_load(method_name: str, case: Case, tmp_path: object) -> None:
    b = build(case)
    method = get_method(method_name)
    rank = max(1, method.max_rank(b.info) // 2)
    new = method.decompose(b.info, b.weights, rank)
    inp = keras.Input(case.input_shape)
    model = keras.Model(inp, new(inp))
    expected = keras.ops.convert_to_numpy(model(b.x))
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(b.x)), expected,
                               rtol=1e-6, atol=1e-6)
    layer = loaded.get_layer("fc_case")
    assert isinstance(layer, FactorizedLayer)
    assert (layer.method, layer.rank, layer.stages) == (method_name, rank, new.stages)


# -- svd -----------------------------------------------------------------------------------
METHOD = "svd"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_exact_at_max_rank(case: Case) -> None:
    check_exact_at_max_rank(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_error_non_increasing_in_rank(case: Case) -> None:
    check_error_non_increasing(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_params_match_count_params(case: Case) -> None:
    check_params(METHOD, case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_macs_match_brute_force(case: Case) -> None:
    check_macs(METHOD, case)


@pytest.mark.parametrize("case", CASES[:1] + CASES[-1:], ids=[CASE_IDS[0], CASE_IDS[-1]])
def test_bad_ranks(case: Case) -> None:
    check_bad_ranks(METHOD, case)


@pytest.mark.parametrize("case", CASES[:1] + CASES[-2:-1], ids=[CASE_IDS[0], CASE_IDS[-2]])
def test_non_finite_weights(case: Case) -> None:
    check_non_finite_weights(METHOD, case)


def test_unsupported_layers() -> None:
    check_unsupported(METHOD)


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=[CASE_IDS[1], CASE_IDS[6]])
def test_save_load_round_trip(case: Case, tmp_path: object) -> None:
    check_save_load(METHOD, case, tmp_path)


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
