"""Choosing which Pareto-optimal search trials to fine-tune.

Example:
    >>> chosen = select_trials(study, 3)  # doctest: +SKIP
    >>> [t.user_attrs["params"] for t in chosen]  # doctest: +SKIP
    [5012, 21480, 90317]
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from lrf_optuna.study.records import LRF_PLAN_ATTR

__all__ = ["Selection", "select_trials"]

#: How :func:`select_trials` spreads its choice along the front.
Selection = Literal["spread", "knee"]


def _within(t: FrozenTrial, max_params: float | None, max_flops: float | None,
            min_proxy: float | None) -> bool:
    ua = t.user_attrs
    return ((max_params is None or ua.get("params", math.inf) <= max_params)
            and (max_flops is None or ua.get("flops", math.inf) <= max_flops)
            and (min_proxy is None or ua.get("proxy", -math.inf) >= min_proxy))


def _nearest(logp: np.ndarray, target: float, used: set[int]) -> int:
    order = sorted((abs(float(v) - target), i) for i, v in enumerate(logp) if i not in used)
    return order[0][1]


def _spread(front: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    logp = np.log([max(float(t.user_attrs["params"]), 1.0) for t in front])
    lo, hi = float(logp[0]), float(logp[-1])
    if k == 1:
        return [front[_nearest(logp, (lo + hi) / 2, set())]]
    chosen = [0, len(front) - 1]
    for i in range(1, k - 1):
        chosen.append(_nearest(logp, lo + (hi - lo) * i / (k - 1), set(chosen)))
    return [front[i] for i in chosen]


def _knee_index(front: list[FrozenTrial], directions: Sequence[Any]) -> int:
    values = np.array([t.values for t in front], dtype=float)
    for j, d in enumerate(directions):
        if d == optuna.study.StudyDirection.MAXIMIZE:
            values[:, j] = -values[:, j]
    span = values.max(axis=0) - values.min(axis=0)
    norm = (values - values.min(axis=0)) / np.where(span > 0, span, 1.0)
    a, b = norm[0], norm[-1]
    d = b - a
    w = norm - a
    dd = float(d @ d)
    perp = w - np.outer(w @ d / dd, d) if dd > 0 else w
    dist = np.linalg.norm(perp, axis=1)
    return int(np.argmax(dist))  # first maximum: the smaller model on ties


def select_trials(study: optuna.Study, k: int = 3, *, strategy: Selection = "spread",
                  max_params: float | None = None, max_flops: float | None = None,
                  min_proxy: float | None = None) -> list[FrozenTrial]:
    """Pick up to ``k`` Pareto-optimal search trials to fine-tune (deterministic).

    Candidates: ``study.best_trials`` (feasible ones, for a constrained study) made by
    :class:`~lrf_optuna.search.LRFObjective` (user attribute ``lrf_plan``), without the
    all-"keep" original (empty plan), without duplicate plans (the lowest trial number
    kept), within the budget (user attributes ``params <= max_params``,
    ``flops <= max_flops``, ``proxy >= min_proxy``). With ``k`` or fewer candidates all
    are returned.

    Strategies:
        ``"spread"``: the two extremes of the candidates by parameter count (smallest and
        largest model), then for ``i = 1 .. k-2`` the unused candidate nearest to the
        point ``i / (k-1)`` of the way between them in **log(params)** (evenly spaced
        compression ratios; crowding distance is not used as it mixes the three
        objectives and moves as trials are added). ``k == 1``: the candidate nearest the
        middle in log(params).
        ``"knee"``: the study's objective values are oriented to minimisation and scaled
        to [0, 1] over the candidates; the knee is the candidate farthest (Euclidean) from
        the line joining the smallest and the largest model in that space; then its
        ``k - 1`` nearest candidates in log(params).

    Ties break towards fewer parameters, then the lower trial number.

    Returns:
        The chosen trials, by increasing parameter count.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if strategy not in ("spread", "knee"):
        raise ValueError(f"strategy must be 'spread' or 'knee', got {strategy!r}")
    seen: set[str] = set()
    front = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        plan = t.user_attrs.get(LRF_PLAN_ATTR)
        if not plan or "params" not in t.user_attrs:
            continue
        key = json.dumps(plan, sort_keys=True)
        if key in seen or not _within(t, max_params, max_flops, min_proxy):
            continue
        seen.add(key)
        front.append(t)
    front.sort(key=lambda t: (t.user_attrs["params"], t.number))
    if len(front) <= k:
        return front
    if strategy == "spread":
        chosen = _spread(front, k)
    else:
        knee = _knee_index(front, study.directions)
        logp = np.log([max(float(t.user_attrs["params"]), 1.0) for t in front])
        order = sorted(range(len(front)),
                       key=lambda i: (abs(float(logp[i] - logp[knee])), i))
        chosen = [front[i] for i in order[:k]]
    return sorted(chosen, key=lambda t: (t.user_attrs["params"], t.number))
