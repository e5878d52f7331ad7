"""The contract every LRF method is held to, and the harness its checks run on.

A method must be exact at its max rank, have an output error non-increasing in rank,
closed-form params / MACs equal to the built layer's count / an independent brute-force
count (:mod:`.brute_force`), raise clear errors on bad ranks, non-finite weights and
unsupported layers, and survive a ``.keras`` round-trip with ``safe_mode=True``.
Data-aware methods (``needs_inputs``) are fitted to the case's input batch ``x``, the
inputs the checks then measure on. ``test_contract.py`` runs every ``check_*`` below for
every method; the ``test_<method>`` files use the harness (``build``, the case lists) for
what is specific to one method.

The conv and the FC methods differ only in their cases' :class:`Family`: the name every
case layer has, the input batch size, and how many ranks a check samples.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from lrf_optuna.decompose import (
    DecompositionError,
    FactorizedLayer,
    LayerInfo,
    LRFMethod,
    UnsupportedLayerError,
    describe_layer,
    get_method,
    layer_weights,
    validate_weights,
)

from .brute_force import brute_force_macs
from .reference import reference_output

L = keras.layers


@dataclass(frozen=True)
class Family:
    """What the conv and the FC cases differ in."""

    layer_name: str
    """The name of every case layer (error messages and the saved model are checked by it)."""
    batch: int
    """Rows of the random input batch."""
    most_ranks: int
    """How many ranks :func:`some_ranks` picks at most for the error and params checks."""


CONV = Family("conv_case", batch=4, most_ranks=6)
FC = Family("fc_case", batch=8, most_ranks=8)
CONV_NAME, FC_NAME = CONV.layer_name, FC.layer_name


@dataclass(frozen=True)
class Case:
    """A layer factory (the layer is named ``family.layer_name``) and its input shape (no
    batch); :class:`ConvCase` and :class:`FCCase` fix the family."""

    id: str
    make: Callable[[], keras.layers.Layer]
    input_shape: tuple[int, ...]
    family: ClassVar[Family]


class ConvCase(Case):
    family = CONV


class FCCase(Case):
    family = FC


def case_ids(cases: Sequence[Case]) -> list[str]:
    return [c.id for c in cases]


@dataclass
class Built:
    layer: keras.layers.Layer
    info: LayerInfo
    weights: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray


def build(case: Case, seed: int = 0) -> Built:
    """The original layer with random weights, a random input batch and its output (by
    :func:`.reference.reference_output`, so it runs on any CPU)."""
    rng = np.random.default_rng(seed)
    layer = case.make()
    layer.build((None, *case.input_shape))
    for w in layer.weights:
        w.assign((rng.standard_normal(tuple(w.shape)) * 0.5).astype("float32"))
    x = rng.standard_normal((case.family.batch, *case.input_shape)).astype("float32")
    y = reference_output(layer, x)
    info = describe_layer(layer, input_shape=case.input_shape)
    return Built(layer, info, layer_weights(layer), x, y)


def dense_info(n_in: int, n_out: int, seed: int = 0) -> tuple[LayerInfo, dict[str, np.ndarray]]:
    """A ``Dense(n_out)`` named :data:`FC_NAME` with a standard-normal kernel (zero bias):
    its description and its validated weights."""
    dense = L.Dense(n_out, name=FC_NAME)
    dense.build((None, n_in))
    rng = np.random.default_rng(seed)
    dense.kernel.assign(rng.standard_normal((n_in, n_out)).astype("float32"))
    info = describe_layer(dense, input_shape=(n_in,))
    return info, validate_weights(info, layer_weights(dense))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-30)


def some_ranks(method_name: str, info: LayerInfo, most: int) -> list[int]:
    """Every rank when there are few, else an even spread including both ends."""
    hi = get_method(method_name).max_rank(info)
    if hi <= most:
        return list(range(1, hi + 1))
    return [int(v) for v in np.unique(np.linspace(1, hi, most).round())]


def prepare(method: LRFMethod, b: Built) -> Any:
    """The method's per-layer work on the case; data-aware methods fit the case's input
    batch (weight-only methods ignore it)."""
    return method.prepare_with_inputs(b.info, validate_weights(b.info, b.weights), b.x)


def output_errors(method_name: str, b: Built, ranks: Sequence[int]) -> list[float]:
    method = get_method(method_name)
    prepared = prepare(method, b)
    return [rel_err(keras.ops.convert_to_numpy(
        method.decompose(b.info, b.weights, r, prepared=prepared)(b.x)), b.y) for r in ranks]


# -- the contract ---------------------------------------------------------------------------
def check_exact_at_max_rank(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    assert method.applies_to(b.info), method.unsupported_reason(b.info)
    new = method.decompose(b.info, b.weights, method.max_rank(b.info), inputs=b.x)
    assert isinstance(new, FactorizedLayer)
    assert new.name == b.layer.name == case.family.layer_name and new.method == method_name
    out = keras.ops.convert_to_numpy(new(b.x))
    assert out.shape == b.y.shape
    assert rel_err(out, b.y) < 1e-4


def check_error_non_increasing(method_name: str, case: Case, *, slack: float = 0.02,
                               abs_slack: float = 1e-5) -> None:
    b = build(case)
    ranks = some_ranks(method_name, b.info, case.family.most_ranks)
    errs = output_errors(method_name, b, ranks)
    for (r0, e0), (r1, e1) in itertools.pairwise(zip(ranks, errs, strict=True)):
        assert e1 <= e0 * (1 + slack) + abs_slack, (
            f"error grew from rank {r0} ({e0}) to {r1} ({e1})")
    assert errs[0] > errs[-1]
    assert errs[-1] < 1e-4


def check_params(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    prepared = prepare(method, b)
    for r in some_ranks(method_name, b.info, case.family.most_ranks):
        new = method.decompose(b.info, b.weights, r, prepared=prepared)
        assert method.params(b.info, r) == new.count_params(), f"rank {r}"


def check_macs(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    prepared = prepare(method, b)
    for r in some_ranks(method_name, b.info, 4):
        new = method.decompose(b.info, b.weights, r, prepared=prepared)
        assert method.macs(b.info, r) == brute_force_macs(new, case.input_shape), f"rank {r}"


def check_bad_ranks(method_name: str, case: Case) -> None:
    b = build(case)
    method = get_method(method_name)
    hi = method.max_rank(b.info)
    for bad in (0, -1, hi + 1, 2.5, True):
        with pytest.raises(DecompositionError, match=case.family.layer_name):
            method.decompose(b.info, b.weights, bad)  # type: ignore[arg-type]


def check_non_finite_weights(method_name: str, case: Case) -> None:
    """A NaN or an Inf at either end of any weight is refused, naming the layer."""
    b = build(case)
    method = get_method(method_name)
    for role, index, value in itertools.product(b.weights, (0, -1), (np.nan, np.inf, -np.inf)):
        weights = {k: v.copy() for k, v in b.weights.items()}
        weights[role].flat[index] = value
        with pytest.raises(DecompositionError,
                           match=rf"'{case.family.layer_name}'.*NaN or Inf"):
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


def check_save_load(method_name: str, case: Case, tmp_path: object) -> None:
    """Round trip of a model in which the factorized layer's output is both a model output
    and the input of another layer."""
    b = build(case)
    method = get_method(method_name)
    rank = max(1, method.max_rank(b.info) // 2)
    new = method.decompose(b.info, b.weights, rank, inputs=b.x)
    inp = keras.Input(case.input_shape)
    hidden = new(inp)
    model = keras.Model(inp, [hidden, L.Activation("linear", name="after")(hidden)])
    expected = [keras.ops.convert_to_numpy(t) for t in model(b.x)]
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    got = loaded(b.x)
    assert len(got) == len(expected)
    for out, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out), want, rtol=1e-6, atol=1e-6)
    layer = loaded.get_layer(case.family.layer_name)
    assert isinstance(layer, FactorizedLayer)
    assert (layer.method, layer.rank, layer.stages) == (method_name, rank, new.stages)


# -- the cases ------------------------------------------------------------------------------
TUCKER2_CASES = [
    ConvCase("conv2d_s2_same_relu",
             lambda: L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name=CONV_NAME),
             (9, 9, 6)),
    ConvCase("conv2d_d2_valid_nobias",
             lambda: L.Conv2D(5, (3, 2), dilation_rate=2, use_bias=False, name=CONV_NAME),
             (10, 9, 7)),
    ConvCase("conv2d_s2_valid_channels_first",
             lambda: L.Conv2D(6, 3, strides=2, data_format="channels_first", name=CONV_NAME),
             (4, 9, 8)),
    ConvCase("conv2d_groups2_s2_same",
             lambda: L.Conv2D(8, 3, strides=2, padding="same", groups=2, name=CONV_NAME),
             (9, 9, 6)),
    ConvCase("conv1d_causal_d2",
             lambda: L.Conv1D(8, 3, padding="causal", dilation_rate=2, name=CONV_NAME), (12, 6)),
    ConvCase("conv1d_s2_same_groups3",
             lambda: L.Conv1D(6, 5, strides=2, padding="same", groups=3, name=CONV_NAME), (11, 9)),
    ConvCase("conv1d_valid", lambda: L.Conv1D(4, 3, name=CONV_NAME), (10, 7)),
    ConvCase("conv3d_s2_same",
             lambda: L.Conv3D(6, 3, strides=(2, 1, 2), padding="same", name=CONV_NAME),
             (5, 4, 5, 4)),
    ConvCase("conv2dT_s2_same",
             lambda: L.Conv2DTranspose(8, 3, strides=2, padding="same", name=CONV_NAME), (5, 5, 6)),
    ConvCase("conv2dT_s2_valid_outpad_relu",
             lambda: L.Conv2DTranspose(6, 3, strides=2, output_padding=1, activation="relu",
                                       name=CONV_NAME), (4, 4, 5)),
    ConvCase("conv1dT_s2_same",
             lambda: L.Conv1DTranspose(5, 4, strides=2, padding="same", name=CONV_NAME), (6, 7)),
]

CP_CASES = [
    ConvCase("conv2d_s2_same_relu",
             lambda: L.Conv2D(5, 3, strides=2, padding="same", activation="relu", name=CONV_NAME),
             (9, 9, 4)),
    ConvCase("conv2d_rect_d2_valid_nobias_cin_gt_cout",
             lambda: L.Conv2D(3, (3, 2), dilation_rate=(2, 1), use_bias=False, name=CONV_NAME),
             (10, 9, 5)),
    ConvCase("conv2d_s2x1_valid_channels_first",
             lambda: L.Conv2D(4, 3, strides=(2, 1), data_format="channels_first", name=CONV_NAME),
             (3, 9, 8)),
    ConvCase("conv1d_causal_d2",
             lambda: L.Conv1D(6, 3, padding="causal", dilation_rate=2, name=CONV_NAME), (12, 5)),
    ConvCase("conv1d_s2_same", lambda: L.Conv1D(4, 5, strides=2, padding="same", name=CONV_NAME),
             (11, 6)),
    ConvCase("conv1d_s3_valid", lambda: L.Conv1D(5, 3, strides=3, name=CONV_NAME), (13, 4)),
    ConvCase("conv3d_s121_same_relu",
             lambda: L.Conv3D(4, (3, 2, 3), strides=(1, 2, 1), padding="same",
                              activation="relu", name=CONV_NAME), (5, 5, 4, 3)),
    ConvCase("conv3d_valid_d2", lambda: L.Conv3D(3, 2, dilation_rate=2, name=CONV_NAME),
             (5, 5, 5, 2)),
]

SPATIAL_SVD_CASES = [
    ConvCase("conv2d_s2_same_relu",
             lambda: L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name=CONV_NAME),
             (9, 9, 4)),
    ConvCase("conv2d_rect_d2_valid_nobias",
             lambda: L.Conv2D(5, (3, 2), dilation_rate=2, use_bias=False, name=CONV_NAME),
             (10, 9, 6)),
    ConvCase("conv2d_groups2_s21_same",
             lambda: L.Conv2D(8, 3, strides=(2, 1), padding="same", groups=2, name=CONV_NAME),
             (9, 9, 6)),
    ConvCase("conv2d_groups3_s12_valid_channels_first",
             lambda: L.Conv2D(6, (2, 3), strides=(1, 2), groups=3,
                              data_format="channels_first", name=CONV_NAME), (9, 8, 9)),
    ConvCase("dw_m2_s2_same_relu",
             lambda: L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same",
                                       activation="relu", name=CONV_NAME), (9, 9, 3)),
    ConvCase("dw_m2_rect_d2_valid_nobias",
             lambda: L.DepthwiseConv2D((3, 4), depth_multiplier=2, dilation_rate=(1, 2),
                                       use_bias=False, name=CONV_NAME), (9, 10, 3)),
    ConvCase("dw_m1_5x5_s12_same_channels_first",
             lambda: L.DepthwiseConv2D(5, strides=(1, 2), padding="same",
                                       data_format="channels_first", name=CONV_NAME), (4, 9, 9)),
]

FC_CASES = [
    FCCase("dense_relu", lambda: L.Dense(12, activation="relu", name=FC_NAME), (24,)),
    FCCase("dense_rank3_nobias", lambda: L.Dense(12, use_bias=False, name=FC_NAME), (5, 24)),
    FCCase("conv1x1_s1_same_relu",
           lambda: L.Conv2D(12, 1, padding="same", activation="relu", name=FC_NAME), (6, 6, 18)),
    FCCase("conv1x1_s2_valid_nobias",
           lambda: L.Conv2D(12, 1, strides=2, padding="valid", use_bias=False, name=FC_NAME),
           (7, 7, 18)),
    FCCase("conv1x1_s2_same",
           lambda: L.Conv2D(8, 1, strides=2, padding="same", name=FC_NAME), (7, 7, 18)),
    FCCase("conv1d_k1_relu", lambda: L.Conv1D(12, 1, activation="relu", name=FC_NAME), (9, 20)),
    FCCase("sep2d_dm2_s2_same_relu",
           lambda: L.SeparableConv2D(12, 3, depth_multiplier=2, strides=2, padding="same",
                                     activation="relu", name=FC_NAME), (9, 9, 6)),
    FCCase("sep2d_dm2_s2_valid_nobias",
           lambda: L.SeparableConv2D(10, 3, depth_multiplier=2, strides=2, padding="valid",
                                     use_bias=False, name=FC_NAME), (9, 9, 4)),
]

#: The cases of every method held to the contract.
CASES: dict[str, list[ConvCase] | list[FCCase]] = {
    "tucker2": TUCKER2_CASES, "cp": CP_CASES, "spatial_svd": SPATIAL_SVD_CASES,
    "channel_svd": TUCKER2_CASES,  # the same layer kinds: Conv1D/2D/3D, grouped, transposed
    "svd": FC_CASES, "qr": FC_CASES, "tt": FC_CASES,
    # activation-aware variants: the same layers as their plain counterparts
    "channel_svd_aware": TUCKER2_CASES, "svd_aware": FC_CASES}
