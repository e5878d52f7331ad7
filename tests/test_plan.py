"""lrf_optuna.plan: the one way any plan's pruning is read."""

from __future__ import annotations

from lrf_optuna.plan import CompressionPlan


def test_of_reads_every_kind_of_plan() -> None:
    pruned = CompressionPlan({"fc1": ("svd", 4)}, ratios={"c1": 0.5}, importance="activation")
    assert CompressionPlan.of(pruned) is pruned
    plain = CompressionPlan.of({"fc1": ("svd", 4)})
    assert plain.ratios == {} and dict(plain) == {"fc1": ("svd", 4)}
    # candidates without a plan (a narrower net trained from scratch) read as the empty plan
    none = CompressionPlan.of(None)
    assert none.ratios == {} and dict(none) == {}
