"""EVBMF recovers the rank of noisy low-rank matrices and finds none in pure noise."""

from __future__ import annotations

import numpy as np
import pytest

from lrf_optuna.vbmf import evbmf_rank


@pytest.mark.parametrize("rank,noise,shape", [
    (1, 0.1, (40, 60)), (5, 0.1, (60, 80)), (12, 0.3, (100, 150)), (8, 0.05, (200, 64)),
])
def test_recovers_planted_rank(rank, noise, shape) -> None:
    rng = np.random.default_rng(rank)
    low = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    assert evbmf_rank(low + noise * rng.standard_normal(shape)) == rank


def test_pure_noise_has_rank_zero_and_orientation_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((50, 70))
    assert evbmf_rank(noise) == 0
    low = rng.standard_normal((50, 3)) @ rng.standard_normal((3, 70)) + 0.1 * noise
    assert evbmf_rank(low) == evbmf_rank(low.T) == 3


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        evbmf_rank(np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        evbmf_rank(np.full((3, 3), np.nan))
