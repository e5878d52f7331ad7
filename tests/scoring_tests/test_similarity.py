"""Similarity metrics against hand-computed values and their defining properties."""

from __future__ import annotations

import numpy as np
import pytest

from lrf_optuna.scoring.similarity import DEFAULT_METRIC, METRICS, cka, cosine, nmse, similarity


def test_identical_maps_score_one(rng) -> None:
    y = rng.standard_normal((16, 4, 4, 3))
    for name in METRICS:
        assert similarity(name, y, y) == pytest.approx(1.0)


def test_cosine_by_hand() -> None:
    y = np.array([[1.0, 0.0], [1.0, 1.0]])
    y_hat = np.array([[0.0, 1.0], [2.0, 2.0]])
    assert cosine(y, y_hat) == pytest.approx((0.0 + 1.0) / 2)


def test_nmse_by_hand() -> None:
    y = np.array([[3.0, 4.0]])
    assert nmse(y, np.array([[3.0, 3.0]])) == pytest.approx(1 - 1 / 25)
    assert nmse(y, -y) == pytest.approx(1 - 4)


def test_cka_matches_feature_space_formula(rng) -> None:
    a = rng.standard_normal((20, 7))
    b = a @ rng.standard_normal((7, 5)) + 0.3 * rng.standard_normal((20, 5))
    ac, bc = a - a.mean(0), b - b.mean(0)
    expected = np.linalg.norm(bc.T @ ac) ** 2 / (
        np.linalg.norm(ac.T @ ac) * np.linalg.norm(bc.T @ bc))
    assert cka(a, b) == pytest.approx(expected)


def test_invariances(rng) -> None:
    y = rng.standard_normal((30, 6))
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert cka(y, 3.0 * y @ q) == pytest.approx(1.0)  # orthogonal + scale invariant
    assert cosine(y, 3.0 * y) == pytest.approx(1.0)  # scale invariant
    assert nmse(y, 3.0 * y) < 0  # but not MSE


def test_more_noise_scores_lower(rng) -> None:
    y = rng.standard_normal((40, 32))
    noise = rng.standard_normal((40, 32))
    for name in METRICS:
        scores = [similarity(name, y, y + s * noise) for s in (0.01, 0.1, 0.5, 1.0)]
        assert scores == sorted(scores, reverse=True), name


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown similarity metric 'l2'"):
        similarity("l2", np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="shapes differ"):
        similarity("cosine", np.ones((2, 2)), np.ones((2, 3)))
    assert DEFAULT_METRIC in METRICS
