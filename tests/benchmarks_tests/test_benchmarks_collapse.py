"""benchmarks.collapse: the rank a one-layer factorization is judged at."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.collapse import closest


def test_closest_candidate_by_params_prefers_the_lower_rank_on_a_tie() -> None:
    cands = [SimpleNamespace(rank=r, params=10 * r) for r in (1, 2, 3, 4)]
    assert closest(cands, 21).rank == 2
    assert closest(cands, 25).rank == 2  # 20 and 30 are equally far
    assert closest(cands, 1000).rank == 4
    assert closest(cands[::-1], 0).rank == 1
