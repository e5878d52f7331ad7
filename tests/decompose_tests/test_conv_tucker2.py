"""The conv method contract, checked for ``tucker2`` (and imported by the cp / spatial_svd
test files).

The helpers below (``ConvCase``, ``check_*``) take a method name so that every conv method
is held to the same contract: exact at max rank, output error non-increasing in rank,
closed-form params / MACs equal to the built layer's count / an independent brute-force
count (:mod:`.brute_force`), clear errors on bad input and unsupported layers, ``.keras``
round-trip with ``safe_mode=True``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
from lrf_optuna.decompose.conv_tucker2 import Tucker2, tucker2_hooi

from .brute_force import brute_force_macs

L = keras.layers
BATCH = 4
NAME = "conv_case"


@dataclass(frozen=True)
class ConvCase:
    """A layer factory (the layer is named :data:`NAME`) and its input shape (no batch)."""

    id: str
    make: Callable[[], keras.layers.Layer]
    input_shape: tuple[int, ...]


def case_ids(cases: Sequence[ConvCase]) -> list[str]:
    return [c.id for c in cases]


@dataclass
class Built:
    layer: keras.layers.Layer
    info: LayerInfo
    weights: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray


def build(case: ConvCase, seed: int = 0) -> Built:
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


def some_ranks(method_name: str, info: LayerInfo, most: int = 6) -> list[int]:
    """Every rank when there are few, else an even spread including both ends."""
    hi = get_method(method_name).max_rank(info)
    if hi <= most:
        return list(range(1, hi + 1))
    return [int(v) for v in np.unique(np.linspace(1, hi, most).round())]


def output_errors(method_name: str, b: Built, ranks: Sequence[int]) -> list[float]:
    method = get_method(method_name)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    return [rel_err(keras.ops.convert_to_numpy(
        method.decompose(b.info, b.weights, r, prepared=prepared)(b.x)), b.y) for r in ranks]


# -- the contract ---------------------------------------------------------------------------
def check_exact_at_max_rank(method_name: str, case: ConvCase) -> None:
    b = build(case)
    method = get_method(method_name)
    assert method.applies_to(b.info), method.unsupported_reason(b.info)
    new = method.decompose(b.info, b.weights, method.max_rank(b.info))
    assert isinstance(new, FactorizedLayer)
    assert new.name == NAME and new.method == method_name
    out = keras.ops.convert_to_numpy(new(b.x))
    assert out.shape == b.y.shape
    assert rel_err(out, b.y) < 1e-4


def check_error_non_increasing(method_name: str, case: ConvCase, *, slack: float = 0.02,
                               abs_slack: float = 1e-5) -> None:
    b = build(case)
    ranks = some_ranks(method_name, b.info)
    errs = output_errors(method_name, b, ranks)
    for (r0, e0), (r1, e1) in itertools.pairwise(zip(ranks, errs, strict=True)):
        assert e1 <= e0 * (1 + slack) + abs_slack, (
            f"error grew from rank {r0} ({e0}) to {r1} ({e1})")
    assert errs[0] > errs[-1]
    assert errs[-1] < 1e-4


def check_params(method_name: str, case: ConvCase) -> None:
    b = build(case)
    method = get_method(method_name)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    for r in some_ranks(method_name, b.info):
        new = method.decompose(b.info, b.weights, r, prepared=prepared)
        assert method.params(b.info, r) == new.count_params(), f"rank {r}"


def check_macs(method_name: str, case: ConvCase) -> None:
    b = build(case)
    method = get_method(method_name)
    prepared = method.prepare(b.info, validate_weights(b.info, b.weights))
    for r in some_ranks(method_name, b.info, most=4):
        new = method.decompose(b.info, b.weights, r, prepared=prepared)
        assert method.macs(b.info, r) == brute_force_macs(new, case.input_shape), f"rank {r}"


def check_bad_ranks(method_name: str, case: ConvCase) -> None:
    b = build(case)
    method = get_method(method_name)
    hi = method.max_rank(b.info)
    for bad in (0, -1, hi + 1, 2.5, True):
        with pytest.raises(DecompositionError, match=NAME):
            method.decompose(b.info, b.weights, bad)  # type: ignore[arg-type]


def check_non_finite_weights(method_name: str, case: ConvCase) -> None:
    b = build(case)
    method = get_method(method_name)
    for role in b.weights:
        for value in (np.nan, np.inf, -np.inf):
            weights = {k: v.copy() for k, v in b.weights.items()}
            weights[role].flat[-1] = value
            with pytest.raises(DecompositionError, match=rf"'{NAME}'.*NaN or Inf"):
                method.decompose(b.info, weights, 1)


def check_unsupported(method_name: str,
                      layers: Sequence[tuple[keras.layers.Layer, tuple[int, ...], str]]) -> None:
    """Each ``(layer, input_shape, regex)``: the method refuses it with a matching reason."""
    method = get_method(method_name)
    for layer, shape, reason in layers:
        layer.build((None, *shape))
        info = describe_layer(layer, input_shape=shape)
        got = method.unsupported_reason(info)
        assert got is not None, layer.name
        assert not method.applies_to(info)
        assert method.saving_ranks(info) == []
        with pytest.raises(UnsupportedLayerError, match=rf"'{layer.name}'.*{reason}"):
            method.decompose(info, layer_weights(layer), 1)


def check_save_load(method_name: str, case: ConvCase, tmp_path: object) -> None:
    b = build(case)
    method = get_method(method_name)
    rank = max(1, method.max_rank(b.info) // 2)
    new = method.decompose(b.info, b.weights, rank)
    inp = keras.Input(case.input_shape)
    model = keras.Model(inp, L.Activation("linear", name="after")(new(inp)))
    expected = keras.ops.convert_to_numpy(model(b.x))
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(b.x)), expected,
                               rtol=1e-6, atol=1e-6)
    layer = loaded.get_layer(NAME)
    assert isinstance(layer, FactorizedLayer)
    assert (layer.method, layer.rank, layer.stages) == (method_name, rank, new.stages)


# -- tucker2 -------------------------------------------------------------------------------
METHOD = "tucker2"

CASES = [
    ConvCase("conv2d_s2_same_relu",
             lambda: L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name=NAME),
             (9, 9, 6)),
    ConvCase("conv2d_d2_valid_nobias",
             lambda: L.Conv2D(5, (3, 2), dilation_rate=2, use_bias=False, name=NAME),
             (10, 9, 7)),
    ConvCase("conv2d_s2_valid_channels_first",
             lambda: L.Conv2D(6, 3, strides=2, data_format="channels_first", name=NAME),
             (4, 9, 8)),
    ConvCase("conv2d_groups2_s2_same",
             lambda: L.Conv2D(8, 3, strides=2, padding="same", groups=2, name=NAME),
             (9, 9, 6)),
    ConvCase("conv1d_causal_d2",
             lambda: L.Conv1D(8, 3, padding="causal", dilation_rate=2, name=NAME), (12, 6)),
    ConvCase("conv1d_s2_same_groups3",
             lambda: L.Conv1D(6, 5, strides=2, padding="same", groups=3, name=NAME), (11, 9)),
    ConvCase("conv1d_valid", lambda: L.Conv1D(4, 3, name=NAME), (10, 7)),
    ConvCase("conv3d_s2_same",
             lambda: L.Conv3D(6, 3, strides=(2, 1, 2), padding="same", name=NAME), (5, 4, 5, 4)),
    ConvCase("conv2dT_s2_same",
             lambda: L.Conv2DTranspose(8, 3, strides=2, padding="same", name=NAME), (5, 5, 6)),
    ConvCase("conv2dT_s2_valid_outpad_relu",
             lambda: L.Conv2DTranspose(6, 3, strides=2, output_padding=1, activation="relu",
                                       name=NAME), (4, 4, 5)),
    ConvCase("conv1dT_s2_same", lambda: L.Conv1DTranspose(5, 4, strides=2, padding="same",
                                                          name=NAME), (6, 7)),
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


@pytest.mark.parametrize("case", [CASES[0], CASES[8]], ids=[CASE_IDS[0], CASE_IDS[8]])
def test_bad_ranks(case: ConvCase) -> None:
    check_bad_ranks(METHOD, case)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=[CASE_IDS[0], CASE_IDS[3]])
def test_non_finite_weights(case: ConvCase) -> None:
    check_non_finite_weights(METHOD, case)


def test_unsupported_layers() -> None:
    check_unsupported(METHOD, [
        (L.Conv2D(8, 1, name="pointwise"), (5, 5, 4), "FC method"),
        (L.Conv2D(8, 1, groups=2, name="grouped_1x1"), (5, 5, 4), "1x1"),
        (L.DepthwiseConv2D(3, name="dw"), (5, 5, 4), "not DepthwiseConv2D"),
        (L.SeparableConv2D(8, 3, name="sep"), (5, 5, 4), "not SeparableConv2D"),
        (L.Dense(8, name="fc"), (4,), "not Dense"),
    ])


@pytest.mark.parametrize("case", [CASES[3], CASES[9]], ids=[CASE_IDS[3], CASE_IDS[9]])
def test_save_load_round_trip(case: ConvCase, tmp_path: object) -> None:
    check_save_load(METHOD, case, tmp_path)


# -- tucker2 specifics ---------------------------------------------------------------------
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
    case = ConvCase("c", lambda: L.Conv2D(12, 3, name=NAME), (6, 6, 10))
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
