"""benchmarks.trial_count and the seeded-sampler helpers it shares: the pick and the
hypervolume read from a study's trials."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from benchmarks.seeded_sampler import hypervolumes, normalized_points
from benchmarks.trial_count import smallest_kept


def _study(points: list[tuple[int, int, float]]) -> optuna.Study:
    study = optuna.create_study(directions=["minimize"] * 3,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for params, flops, proxy in points:
        trial = optuna.trial.create_trial(
            values=[params, flops, 1 - proxy],
            user_attrs={"params": params, "flops": flops, "proxy": proxy})
        study.add_trial(trial)
    return study


def test_points_are_normalised_by_the_original_in_trial_order() -> None:
    pts = normalized_points(_study([(100, 1000, 1.0), (50, 400, 0.9), (20, 900, 0.5)]))
    np.testing.assert_allclose(pts, [[1.0, 1.0, 0.0], [0.5, 0.4, 0.1], [0.2, 0.9, 0.5]])


def test_smallest_kept_reads_only_the_first_n_trials() -> None:
    pts = np.array([[1.0, 1.0, 0.0], [0.5, 0.4, 0.1], [0.2, 0.9, 0.5], [0.3, 0.3, 0.05]])
    assert smallest_kept(pts, 3, 0.9) == 0.5
    assert smallest_kept(pts, 4, 0.9) == 0.3  # the fourth trial is smaller at that proxy
    assert smallest_kept(pts, 4, 0.5) == 0.2
    assert smallest_kept(pts[:1], 1, 1.01) is None


def test_hypervolume_grows_with_a_dominating_point_and_skips_unreached_checkpoints() -> None:
    pts = np.array([[1.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    hv = hypervolumes(pts, [1, 2, 3, 10])
    assert len(hv) == 3
    # one point (1, 1, 0) against reference 1.1: 0.1 * 0.1 * 1.1
    assert hv[0] == pytest.approx(0.1 * 0.1 * 1.1)
    assert hv[0] < hv[1] < hv[2]
    # the third point dominates the second: the volume is the union of two boxes
    box = 0.85 ** 3
    assert hv[2] == pytest.approx(0.1 * 0.1 * 1.1 + box - 0.1 * 0.1 * 0.85)
