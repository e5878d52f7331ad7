"""What the activation-aware methods are held to beyond the contract, and their harness.

Each check takes the name of an aware method, the name of its plain counterpart and a
contract case. The case's layer is rebuilt with a linear activation (the methods minimise
the error before the activation, which is what can be checked exactly) and fed correlated,
off-centre inputs -- with white inputs the aware and plain truncations nearly coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import pytest

from lrf_optuna.decompose import (
    DecompositionError,
    LayerInfo,
    _aware,
    describe_layer,
    get_method,
    layer_weights,
    validate_weights,
)

from .contract import Case, some_ranks

L = keras.layers


@dataclass
class Linear:
    """A case's layer with a linear activation, its weights and calibration inputs.

    ``layer`` computes channels-last: a channels-first case gets a channels-last twin with
    the same weights (TensorFlow's CPU kernels without oneDNN do not run NCHW convs), and
    :meth:`out` moves the channel axis around it.
    """

    layer: keras.layers.Layer
    info: LayerInfo
    weights: dict[str, np.ndarray]
    x: np.ndarray

    def out(self, x: np.ndarray | None = None) -> np.ndarray:
        x = self.x if x is None else x
        channels_first = self.info.data_format == "channels_first" and x.ndim > 2
        if channels_first:
            x = np.moveaxis(x, 1, -1)
        y = np.asarray(keras.ops.convert_to_numpy(self.layer(x)), np.float64)
        return np.moveaxis(y, -1, 1) if channels_first else y


def correlated_inputs(shape: tuple[int, ...], n: int, *, seed: int = 1,
                      channels_first: bool = False) -> np.ndarray:
    """``n`` samples whose channels are mixed with a fast-decaying spectrum and shifted
    off zero (like post-ReLU activations)."""
    rng = np.random.default_rng(seed)
    c = shape[0] if channels_first else shape[-1]
    q, _ = np.linalg.qr(rng.standard_normal((c, c)))
    mix = (q * 0.5 ** np.arange(c)) @ q.T
    x = rng.standard_normal((n, *shape))
    x = np.moveaxis(x, 1, -1) if channels_first else x
    x = x @ mix + 0.3
    return (np.moveaxis(x, -1, 1) if channels_first else x).astype("float32")


def linear(case: Case, *, n: int = 48, x: np.ndarray | None = None) -> Linear:
    """The case's layer with ``activation="linear"`` and the contract's random weights,
    and correlated inputs (or ``x``)."""
    rng = np.random.default_rng(0)
    cfg = {**case.make().get_config(), "activation": "linear"}
    original = type(case.make()).from_config(cfg)
    original.build((None, *case.input_shape))
    for w in original.weights:
        w.assign((rng.standard_normal(tuple(w.shape)) * 0.5).astype("float32"))
    info = describe_layer(original, input_shape=case.input_shape)
    channels_first = cfg.get("data_format") == "channels_first"
    layer = original
    if channels_first:
        layer = type(original).from_config({**cfg, "data_format": "channels_last"})
        layer.build((None, *info.input_shape))
        layer.set_weights(original.get_weights())
    if x is None:
        x = correlated_inputs(case.input_shape, n, channels_first=channels_first)
    return Linear(layer, info, layer_weights(original), x)


def replaced(method_name: str, lin: Linear, rank: int, *, prepared: object = None,
             x: np.ndarray | None = None) -> np.ndarray:
    """The replacement's output on ``x`` (default: the calibration inputs)."""
    small = get_method(method_name).decompose(lin.info, lin.weights, rank, prepared=prepared,
                                              inputs=lin.x)
    return np.asarray(keras.ops.convert_to_numpy(small(lin.x if x is None else x)), np.float64)


def matrices(lin: Linear) -> list[np.ndarray]:
    """The matrix (one per group) the method factorizes."""
    if lin.info.is_matrix:
        from lrf_optuna.decompose._matrix import matrix_of

        return [matrix_of(lin.info, lin.weights)]
    return _aware.conv_unfoldings(lin.info, lin.weights)


def rows(lin: Linear) -> np.ndarray:
    """All of ``Z`` for the calibration inputs."""
    x = _aware.check_inputs(lin.info, lin.x)
    return np.concatenate(list(_aware.input_rows(lin.info, lin.weights, x))).astype(np.float64)


def channels_last_2d(y: np.ndarray, info: LayerInfo) -> np.ndarray:
    if info.data_format == "channels_first" and y.ndim > 2:
        y = np.moveaxis(y, 1, -1)
    return y.reshape(-1, y.shape[-1])


# -- the checks -----------------------------------------------------------------------------
def check_rows_reproduce_the_layer(case: Case) -> None:
    """``Z W + b`` (block by block for groups) is the layer's output, and the Gram matrices
    are ``Z^T Z``: ``Z`` has the right patches, strides, padding, dilation and order."""
    lin = linear(case, n=6)
    z = rows(lin)
    ws = matrices(lin)
    blocks = np.split(z, len(ws), axis=1)
    y = np.concatenate([b @ w for b, w in zip(blocks, ws, strict=True)], axis=1)
    if lin.info.use_bias:
        y = y + lin.weights["bias"]
    expected = channels_last_2d(lin.out(), lin.info)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    grams = _aware.input_grams(lin.info, lin.weights, lin.x)
    for gram, block in zip(grams, blocks, strict=True):
        np.testing.assert_allclose(gram, block.T @ block, rtol=1e-5,
                                   atol=1e-5 * np.abs(gram).max())


def check_optimal_output_error(aware: str, plain: str, case: Case) -> None:
    """On the calibration inputs the aware truncation's output error is never above the
    plain one's at any rank, is clearly below at some rank, and without damping reaches
    the Eckart-Young bound of the outputs themselves (no rank-``r`` kernel can do better)."""
    lin = linear(case)
    y = lin.out()
    z = rows(lin)
    ws = matrices(lin)
    # singular values of each group's (bias-free) outputs Z_g W_g
    sv = [np.linalg.svd(b @ w, compute_uv=False)
          for b, w in zip(np.split(z, len(ws), axis=1), ws, strict=True)]
    undamped = type(get_method(aware))(damping=0.0)  # type: ignore[call-arg]
    prep0 = undamped.prepare_with_inputs(lin.info, validate_weights(lin.info, lin.weights),
                                         lin.x)
    gains = []
    for r in some_ranks(aware, lin.info, 6):
        e_aware = np.linalg.norm(replaced(aware, lin, r) - y)
        e_plain = np.linalg.norm(replaced(plain, lin, r) - y)
        assert e_aware <= e_plain * (1 + 1e-5) + 1e-5 * np.linalg.norm(y), (r, e_aware, e_plain)
        bound = math.sqrt(sum(float(np.sum(s[r:] ** 2)) for s in sv))
        factors = undamped.factorize(lin.info, prep0, r)
        small = undamped.decompose(lin.info, lin.weights, r, factors=factors)
        e_exact = np.linalg.norm(np.asarray(keras.ops.convert_to_numpy(small(lin.x))) - y)
        assert e_exact == pytest.approx(bound, rel=1e-3, abs=1e-4 * np.linalg.norm(y)), r
        gains.append(e_aware / max(e_plain, 1e-12))
    assert min(gains) < 0.9, gains


def check_degenerate_inputs(aware: str, plain: str, case: Case) -> None:
    """Dead channels, fewer samples than the matrix has rows, constant and all-zero inputs:
    the damping keeps every factor finite and the factorization exact at full rank (on
    fresh inputs); with all-zero inputs the method falls back to the plain SVD."""
    base = linear(case)
    shape = base.x.shape[1:]
    channels_first = base.info.data_format == "channels_first"
    dead = base.x.copy()
    if channels_first:
        dead[:, ::2] = 0.0
    else:
        dead[..., ::2] = 0.0
    variants = {"dead channels": dead, "one sample": base.x[:1],
                "constant": np.ones_like(base.x[:3]), "all zero": np.zeros_like(base.x[:4])}
    fresh = correlated_inputs(shape, 5, seed=7, channels_first=channels_first)
    method = get_method(aware)
    hi = method.max_rank(base.info)
    for label, x in variants.items():
        lin = Linear(base.layer, base.info, base.weights, x)
        prepared = method.prepare_with_inputs(lin.info, validate_weights(lin.info, lin.weights),
                                              x)
        for r in sorted({1, max(1, hi // 2), hi}):
            assert all(np.all(np.isfinite(f)) for f in method.factorize(lin.info, prepared, r))
        y = lin.out(fresh)
        out = replaced(aware, lin, hi, prepared=prepared, x=fresh)
        assert np.linalg.norm(out - y) <= 1e-4 * np.linalg.norm(y), label
    zero = Linear(base.layer, base.info, base.weights, variants["all zero"])
    r = max(1, hi // 2)
    np.testing.assert_allclose(replaced(aware, zero, r, x=fresh),
                               replaced(plain, zero, r, x=fresh), rtol=1e-4, atol=1e-4)


def check_costs_and_stages_equal_plain(aware: str, plain: str, case: Case) -> None:
    """The same replacement layer as the plain method: stages, params and MACs per rank."""
    info = linear(case).info
    a, p = get_method(aware), get_method(plain)
    assert (a.max_rank(info), a.saving_ranks(info)) == (p.max_rank(info), p.saving_ranks(info))
    for r in range(a.min_rank(info), a.max_rank(info) + 1):
        assert (a.params(info, r), a.macs(info, r)) == (p.params(info, r), p.macs(info, r))
        assert a.stages(info, r) == p.stages(info, r)


def check_damping_limits(aware: str, plain: str, case: Case) -> None:
    """A huge damping gives back the plain SVD; the damping is relative, so scaling the
    inputs or repeating them changes nothing."""
    lin = linear(case)
    w = validate_weights(lin.info, lin.weights)
    r = max(1, get_method(aware).max_rank(lin.info) // 3)
    heavy = type(get_method(aware))(damping=1e9)  # type: ignore[call-arg]
    out = replaced(aware, lin, r, prepared=heavy.prepare_with_inputs(lin.info, w, lin.x))
    np.testing.assert_allclose(out, replaced(plain, lin, r), rtol=1e-3,
                               atol=1e-3 * np.abs(out).max())
    method = get_method(aware)
    base = method.factorize(lin.info, method.prepare_with_inputs(lin.info, w, lin.x), r)
    for x in (lin.x * 1000.0, np.concatenate([lin.x, lin.x])):
        again = method.factorize(lin.info, method.prepare_with_inputs(lin.info, w, x), r)
        for f0, f1 in zip(base, again, strict=True):
            np.testing.assert_allclose(np.abs(f1), np.abs(f0), rtol=1e-3,
                                       atol=1e-4 * np.abs(f0).max())


def check_needs_inputs(aware: str, case: Case) -> None:
    """Without inputs (nor prepared/factors) a clear error names the layer and says what to
    pass; wrongly shaped or non-finite inputs are refused the same way."""
    lin = linear(case)
    method = get_method(aware)
    assert method.needs_inputs and method.cache_factors
    name = lin.info.name
    shape = ", ".join(str(d) for d in lin.x.shape[1:])
    with pytest.raises(DecompositionError,
                       match=rf"'{aware}' fits layer '{name}'.*inputs=.*\(n, {shape}\)"):
        method.decompose(lin.info, lin.weights, 1)
    with pytest.raises(DecompositionError, match=rf"layer '{name}'.*inputs="):
        method.prepare(lin.info, validate_weights(lin.info, lin.weights))
    with pytest.raises(DecompositionError, match=rf"layer '{name}'.*shape.*but got \(3, 2\)"):
        method.decompose(lin.info, lin.weights, 1, inputs=np.zeros((3, 2), "float32"))
    bad = lin.x.copy()
    bad.flat[0] = np.nan
    with pytest.raises(DecompositionError, match=rf"layer '{name}'.*NaN or Inf"):
        method.decompose(lin.info, lin.weights, 1, inputs=bad)
    # ready factors need no inputs
    factors = method.factorize(
        lin.info, method.prepare_with_inputs(lin.info, validate_weights(lin.info, lin.weights),
                                             lin.x), 1)
    assert method.decompose(lin.info, lin.weights, 1, factors=factors).rank == 1
