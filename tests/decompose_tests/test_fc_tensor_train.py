"""``tt`` specifics: index conventions against t3f, the mode factorisation rule, degenerate
sizes, and that the TT layer trains (the method contract is checked in
``test_contract.py``)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from lrf_optuna.decompose import (
    DecompositionError,
    fc_tensor_train,
    get_method,
)
from lrf_optuna.decompose.fc_tensor_train import (
    TensorTrain,
    balanced_factors,
    prime_factors,
    tt_macs_per_position,
    tt_modes,
    tt_rank_bounds,
    tt_ranks,
)
from lrf_optuna.decompose.layers import tt_matmul

from .brute_force import brute_force_macs
from .contract import FC_CASES, build, dense_info, rel_err

METHOD = "tt"
CASES = FC_CASES


def tt_method() -> TensorTrain:
    method = get_method(METHOD)
    assert isinstance(method, TensorTrain)
    return method


def tt_full(cores: list[np.ndarray]) -> np.ndarray:
    """``W`` from its cores with row-major multi-indices, in plain numpy."""
    res = np.ones((1, 1, 1))
    for g in cores:
        rows, cols, _ = res.shape
        _, m, n, r1 = g.shape
        res = np.einsum("IJa,aijb->IiJjb", res, g).reshape(rows * m, cols * n, r1)
    return res[:, :, 0]


# -- conventions ----------------------------------------------------------------------------
def test_t3f_full_and_tt_matmul_agree_with_w() -> None:
    """Cores from the method rebuild W (t3f.full and numpy), and tt_matmul is x @ W."""
    import t3f

    info, weights = dense_info(24, 30)
    method = tt_method()
    m, n = method.modes(info)
    cores = method.factorize(info, method.prepare(info, weights), method.max_rank(info))
    w = weights["kernel"]
    full_t3f = t3f.full(t3f.TensorTrain([np.asarray(c) for c in cores], (m, n))).numpy()
    np.testing.assert_allclose(full_t3f, w, atol=1e-10)
    np.testing.assert_allclose(tt_full(cores), w, atol=1e-10)
    x = np.random.default_rng(3).standard_normal((4, 5, 24))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tt_matmul(x, cores, m, n)),
                               x @ w, atol=1e-10)


@pytest.mark.parametrize("modes", [([4, 3, 2], [2, 2, 3]), ([2, 5], [3, 1]),
                                   ([1, 3, 2, 2], [2, 1, 2, 3]), ([6], [5])])
def test_tt_matmul_matches_t3f_full_for_random_cores(modes) -> None:
    """Independent of any decomposition: random cores, arbitrary ranks."""
    import t3f

    m, n = modes
    rng = np.random.default_rng(4)
    ranks = [1] + [2 + k for k in range(len(m) - 1)] + [1]
    cores = [rng.standard_normal((ranks[k], m[k], n[k], ranks[k + 1])) for k in range(len(m))]
    w = tt_full(cores)
    if len(m) > 1:  # t3f cannot represent a single core
        np.testing.assert_allclose(t3f.full(t3f.TensorTrain(cores, (m, n))).numpy(), w,
                                   atol=1e-10)
    x = rng.standard_normal((3, math.prod(m)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tt_matmul(x, cores, m, n)), x @ w,
                               atol=1e-10)


def test_macs_formula_is_the_matmul_sizes_of_tt_matmul(monkeypatch) -> None:
    """Count the multiply-adds of every matmul tt_matmul actually issues."""
    counted = []
    real = keras.ops.matmul

    def counting(a, b):
        counted.append(math.prod(a.shape[:-1]) * a.shape[-1] * b.shape[-1])
        return real(a, b)

    monkeypatch.setattr(keras.ops, "matmul", counting)
    rng = np.random.default_rng(5)
    for m, n in [([16, 16, 16], [8, 8, 16]), ([4, 3, 2], [2, 2, 3]), ([7, 1], [1, 5])]:
        for r in (1, 3, 64):
            ranks = tt_ranks(m, n, r)
            cores = [rng.standard_normal((ranks[k], m[k], n[k], ranks[k + 1])).astype("float32")
                     for k in range(len(m))]
            counted.clear()
            tt_matmul(np.ones((1, math.prod(m)), "float32"), cores, m, n)
            assert len(counted) == len(m)
            assert sum(counted) == tt_macs_per_position(m, n, ranks)


def test_stage_records_actual_ranks_and_max_rank_is_the_largest_bound() -> None:
    info, _ = dense_info(4096, 1024)
    method = tt_method()
    m, n = method.modes(info)
    assert (m, n) == ([16, 16, 16], [8, 8, 16])
    assert tt_rank_bounds(m, n) == [128, 256]
    assert method.max_rank(info) == 256
    for r, ranks in [(1, [1, 1, 1, 1]), (64, [1, 64, 64, 1]), (200, [1, 128, 200, 1]),
                     (256, [1, 128, 256, 1])]:
        (stage,) = method.stages(info, r)
        assert stage == {"op": "tt", "in_modes": m, "out_modes": n, "ranks": ranks}
    # 16*16*16 x 8*8*16 at r=16: 16*8*16 + 16*16*8*16 + 16*16*16
    assert method.params(info, 16) == 2048 + 32768 + 4096 + 1024


# -- the mode factorisation rule ------------------------------------------------------------
def test_prime_factors() -> None:
    assert prime_factors(1) == []
    assert prime_factors(97) == [97]
    assert prime_factors(360) == [5, 3, 3, 2, 2, 2]
    for k in range(1, 500):
        assert math.prod(prime_factors(k)) == k


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_balanced_factors_rule(d: int) -> None:
    for k in range(1, 1200):
        f = balanced_factors(k, d)
        assert len(f) == d and math.prod(f) == k
        assert f == sorted(f, reverse=True)
        assert f == balanced_factors(k, d)  # deterministic
        ps = prime_factors(k)
        # balanced: each factor is within the largest prime of the smallest one
        assert f[0] <= max(ps, default=1) * f[-1]
        if len(ps) >= d:
            assert f[-1] > 1  # no size-1 mode when there are enough primes
        else:
            assert sorted(f[:len(ps)]) == sorted(ps) and f[len(ps):] == [1] * (d - len(ps))


def test_balanced_factors_examples() -> None:
    assert balanced_factors(4096, 3) == [16, 16, 16]
    assert balanced_factors(1024, 3) == [16, 8, 8]
    assert balanced_factors(784, 3) == [14, 8, 7]
    assert balanced_factors(1000, 3) == [10, 10, 10]
    assert balanced_factors(512, 4) == [8, 4, 4, 4]
    assert balanced_factors(13, 3) == [13, 1, 1]
    with pytest.raises(ValueError):
        balanced_factors(8, 0)


def test_tt_modes_pairing() -> None:
    assert tt_modes(4096, 1024) == ([16, 16, 16], [8, 8, 16])
    assert tt_modes(784, 256) == ([14, 8, 7], [4, 8, 8])
    assert tt_modes(512, 10) == ([8, 8, 8], [1, 2, 5])
    assert tt_modes(7, 5) == ([7, 1], [1, 5])      # the (1, 1) pair is dropped
    assert tt_modes(7, 1) == ([7], [1])
    assert tt_modes(1, 1) == ([1], [1])
    assert tt_modes(64, 64, d=2) == ([8, 8], [8, 8])
    for n_in, n_out in [(24, 12), (60, 35), (1, 12), (12, 1), (97, 89)]:
        m, n = tt_modes(n_in, n_out)
        assert math.prod(m) == n_in and math.prod(n) == n_out and len(m) == len(n) <= 3
        assert m == sorted(m, reverse=True) and n == sorted(n)
        assert all((a, b) != (1, 1) for a, b in zip(m, n, strict=True))


# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 4])
def test_num_cores_configurable(d: int) -> None:
    info, weights = dense_info(48, 16)
    method = TensorTrain(num_cores=d)
    m, n = method.modes(info)
    assert len(m) == d and (m, n) == tt_modes(48, 16, d)
    new = method.decompose(info, weights, method.max_rank(info))
    x = np.random.default_rng(6).standard_normal((3, 48)).astype("float32")
    assert rel_err(keras.ops.convert_to_numpy(new(x)), x @ weights["kernel"]
                   + weights["bias"]) < 1e-4
    assert new.count_params() == method.params(info, method.max_rank(info))


def test_module_default_num_cores(monkeypatch) -> None:
    info, _ = dense_info(48, 16)
    assert len(tt_method().modes(info)[0]) == 3
    monkeypatch.setattr(fc_tensor_train, "DEFAULT_NUM_CORES", 2)
    assert len(tt_method().modes(info)[0]) == 2
    assert len(TensorTrain(num_cores=4).modes(info)[0]) == 4
    for bad in (0, -2, True):
        with pytest.raises(ValueError):
            TensorTrain(num_cores=bad)


# -- degenerate sizes never crash ---------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 5), (7, 1), (1, 1), (13, 26), (2, 3), (97, 4)])
def test_degenerate_sizes_work_at_every_rank(shape: tuple[int, int]) -> None:
    info, weights = dense_info(*shape)
    method = get_method(METHOD)
    prepared = method.prepare(info, weights)
    hi = method.max_rank(info)
    for r in range(1, hi + 1):
        cores = method.factorize(info, prepared, r)
        (stage,) = method.stages(info, r)
        assert [c.shape for c in cores] == [
            (stage["ranks"][k], stage["in_modes"][k], stage["out_modes"][k],
             stage["ranks"][k + 1]) for k in range(len(cores))]
    np.testing.assert_allclose(tt_full(method.factorize(info, prepared, hi)),
                               weights["kernel"], atol=1e-10)
    new = method.decompose(info, weights, hi)
    assert new.count_params() == method.params(info, hi)
    assert brute_force_macs(new, (shape[0],)) == method.macs(info, hi)


def test_direct_factorize_rejects_bad_ranks_before_t3f() -> None:
    info, weights = dense_info(24, 12)
    method = tt_method()
    prepared = method.prepare(info, weights)
    for bad in (0, method.max_rank(info) + 1):
        with pytest.raises(DecompositionError, match="fc_case"):
            method.factorize(info, prepared, bad)


def test_no_saving_is_reported_not_raised() -> None:
    info, _ = dense_info(7, 1)  # a single core: W itself
    method = get_method(METHOD)
    assert method.max_rank(info) == 1
    assert method.params(info, 1) == info.original_params
    assert method.saving_ranks(info) == []


# -- training ---------------------------------------------------------------------------
def test_tt_layer_trains() -> None:
    """One fit step moves every core: the cores are tracked trainable variables (what
    t3f.nn.KerasDense gets wrong under Keras 3)."""
    b = build(CASES[0])
    method = get_method(METHOD)
    new = method.decompose(b.info, b.weights, 3)
    n_cores = len(new.stages[0]["in_modes"])
    assert len(new.trainable_weights) == n_cores + 1  # cores + bias
    model = keras.Sequential([keras.Input(CASES[0].input_shape), new])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [keras.ops.convert_to_numpy(w).copy() for w in new.trainable_weights]
    target = np.random.default_rng(7).standard_normal(b.y.shape).astype("float32")
    model.fit(b.x, target, epochs=1, batch_size=len(b.x), verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in new.trainable_weights]
    for w, w0, w1 in zip(new.trainable_weights, before, after, strict=True):
        assert not np.allclose(w0, w1), f"{w.path} did not change"
