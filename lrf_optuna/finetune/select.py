"""Choosing which Pareto-optimal search trials to fine-tune.

Example:
    >>> chosen = select_trials(study, 3)  # doctest: +SKIP
    >>> [t.user_attrs[PARAMS_ATTR] for t in chosen]  # doctest: +SKIP
    [5012, 21480, 90317]
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.plan import LRF_PLAN_ATTR
from lrf_optuna.study.records import (
    FLOPS_ATTR,
    PARAMS_ATTR,
    PROXY_ATTR,
    STRATEGY_ATTR,
    get_search_trial,
    original_info,
)

__all__ = ["BALANCED_STRATEGY", "MIN_REDUCTION", "PROXY_FLOOR", "Selection",
           "balanced_candidates", "budget_candidates", "choose_trials", "select_trials",
           "strategy_trials"]

#: Where Optuna keeps a trial's constraint values (``optuna.samplers._base``).
_CONSTRAINTS_KEY = "constraints"

#: How :func:`select_trials` spreads its choice along the front.
Selection = Literal["spread", "knee"]

#: Trials whose proxy is below this are never chosen: fine-tuning does not bring them back.
#: Measured with ``benchmarks/proxy_floor.py`` (RESULTS.md, sections "Proxy floor"): on the
#: VGG-style net (Fashion-MNIST, 3 epochs) the three trials with proxy <= 0.0005 stayed at
#: chance (10.0 %) after fine-tuning while the next one (0.0027) reached 77.7 %; LeNet-5's
#: trials never go below 0.03 and all recovered partly (39-85 %).
PROXY_FLOOR = 0.001
#: Trials saving less than this fraction of the original parameters are never chosen
#: (a "compressed" model at 1.0001x is the original at the price of a fine-tuning job).
MIN_REDUCTION = 0.01


def _within(t: FrozenTrial, max_params: float | None, max_flops: float | None,
            min_proxy: float | None) -> bool:
    ua = t.user_attrs
    return ((max_params is None or ua.get(PARAMS_ATTR, math.inf) <= max_params)
            and (max_flops is None or ua.get(FLOPS_ATTR, math.inf) <= max_flops)
            and (min_proxy is None or ua.get(PROXY_ATTR, -math.inf) >= min_proxy))


def _original_params(study: optuna.Study) -> float | None:
    info = original_info(study)
    if info is not None and info.params > 0:
        return float(info.params)
    for t in study.best_trials:  # the original trial (empty plan), for undescribed studies
        if t.user_attrs.get(LRF_PLAN_ATTR) == {} and PARAMS_ATTR in t.user_attrs:
            return float(t.user_attrs[PARAMS_ATTR])
    return None


def _useful(study: optuna.Study, *, max_params: float | None = None,
            max_flops: float | None = None, min_proxy: float | None = None,
            proxy_floor: float = PROXY_FLOOR, min_reduction: float = MIN_REDUCTION,
            pool: Iterable[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """The feasible Pareto-optimal compressed trials worth fine-tuning (or those of
    ``pool``), smallest first:
    made by the search (``lrf_plan``), not the original (empty plan), no duplicate plan
    (lowest trial number kept), saving at least ``min_reduction`` of the original's
    parameters, proxy at least ``proxy_floor``, within the budget."""
    original = _original_params(study)
    seen: set[str] = set()
    out = []
    for t in sorted(study.best_trials if pool is None else pool, key=lambda t: t.number):
        ua = t.user_attrs
        plan = ua.get(LRF_PLAN_ATTR)
        if not plan or PARAMS_ATTR not in ua:
            continue
        key = json.dumps(plan, sort_keys=True)
        if key in seen or not _within(t, max_params, max_flops, min_proxy):
            continue
        if original is not None and ua[PARAMS_ATTR] > (1.0 - min_reduction) * original:
            continue
        if ua.get(PROXY_ATTR, 1.0) < proxy_floor:
            continue
        seen.add(key)
        out.append(t)
    out.sort(key=lambda t: (t.user_attrs[PARAMS_ATTR], t.number))
    return out


def _feasible(t: FrozenTrial) -> bool:
    """No constraint of the trial violated (Optuna's rule: every value ``<= 0``)."""
    return all(c <= 0 for c in t.system_attrs.get(_CONSTRAINTS_KEY, ()))


def strategy_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The finished, feasible trials of the study's enqueued strategy plans (user
    attribute ``strategy``: the paper's similarity thresholds, energy, VBMF, uniform ...),
    whether or not they are Pareto-optimal."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(STRATEGY_ATTR) and _feasible(t)]


def budget_candidates(study: optuna.Study, *, proxy_floor: float = PROXY_FLOOR,
                      min_reduction: float = MIN_REDUCTION,
                      strategies: bool = False, no_slower: bool = True
                      ) -> list[FrozenTrial]:
    """The candidates of the max-drop search (:func:`~lrf_optuna.finetune.budget.finetune_within`),
    smallest first: the useful trials (as :func:`select_trials` filters them) on the
    **two-objective front of (params, proxy)** and, with ``strategies``, the useful
    **strategy plans** of the study (:func:`strategy_trials`) that are not on it. With
    ``no_slower`` (the default), trials that compute more FLOPs than the original are left
    out: a factorization can save parameters and multiply the work (a Tensor-Train plan of
    the MobileNet-style user net saved 52.8 % of the parameters at 6.2x the original's
    FLOPs, and passed), which is not a model to ship to a device.

    Along the front the proxy grows with the size, so "smaller" and "less accurate" go
    together (FLOPs, the third objective, would put trials of equal size and lower proxy
    in between): the bisection of :func:`~lrf_optuna.finetune.budget.smallest_passing`
    relies on that order, and the strategy plans are off by default for that reason.
    The proxy orders plans of nearly equal size imperfectly (the product over layers
    prefers a plan that keeps most layers intact and cuts one hard, while after
    fine-tuning a plan that cuts every layer to the same similarity, ``tau:0.7``, can
    pass), but mixed into the candidates they break the order without a better answer:
    on the MobileNet-style user net (``benchmarks/user_nets/``, 4,000 images, 1,000
    validation images), on one study, the front alone gave 53.7 % of the parameters saved
    (10 probes), the front with the strategy plans 52.8 % (9 probes; three uniform plans of
    79,186 parameters with proxies 0.10, 0.29 and 0.53 fell among the front's candidates)
    and that answer was a Tensor-Train plan at 6.2x the original's FLOPs
    (``benchmarks/RESULTS.md``).
    """
    info = original_info(study)
    useful = functools.partial(
        _useful, study, proxy_floor=proxy_floor, min_reduction=min_reduction,
        max_flops=info.flops if no_slower and info is not None and info.flops > 0 else None)
    out: list[FrozenTrial] = []
    best = -math.inf
    for t in useful():
        proxy = float(t.user_attrs.get(PROXY_ATTR, 1.0))
        if proxy > best:  # not dominated by a smaller (or equal) trial
            if out and out[-1].user_attrs[PARAMS_ATTR] == t.user_attrs[PARAMS_ATTR]:
                out.pop()  # same size, higher proxy: the earlier one is dominated
            out.append(t)
            best = proxy
    if strategies:
        plans = {json.dumps(t.user_attrs[LRF_PLAN_ATTR], sort_keys=True) for t in out}
        for t in useful(pool=strategy_trials(study)):
            key = json.dumps(t.user_attrs[LRF_PLAN_ATTR], sort_keys=True)
            if key not in plans:
                plans.add(key)
                out.append(t)
        out.sort(key=lambda t: (t.user_attrs[PARAMS_ATTR], t.number))
    return out


def _nearest(logp: np.ndarray, target: float, used: set[int]) -> int:
    order = sorted((abs(float(v) - target), i) for i, v in enumerate(logp) if i not in used)
    return order[0][1]


def _spread(front: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    logp = np.log([max(float(t.user_attrs[PARAMS_ATTR]), 1.0) for t in front])
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
                  min_proxy: float | None = None, proxy_floor: float = PROXY_FLOOR,
                  min_reduction: float = MIN_REDUCTION) -> list[FrozenTrial]:
    """Pick up to ``k`` Pareto-optimal search trials to fine-tune (deterministic).

    Candidates: ``study.best_trials`` (feasible ones, for a constrained study) made by
    :class:`~lrf_optuna.search.LRFObjective` (user attribute ``lrf_plan``), without the
    all-"keep" original (empty plan), without duplicate plans (the lowest trial number
    kept), within the budget (user attributes ``params <= max_params``,
    ``flops <= max_flops``, ``proxy >= min_proxy``), and **never a trial that cannot be
    useful**: one saving less than ``min_reduction`` (1%) of the original's parameters, or
    one whose proxy is below ``proxy_floor`` (:data:`PROXY_FLOOR`: below it fine-tuning no
    longer recovers the accuracy; measured in ``benchmarks/RESULTS.md``, section "Proxy
    floor"). With ``k`` or fewer candidates all are returned.

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
    front = _useful(study, max_params=max_params, max_flops=max_flops, min_proxy=min_proxy,
                    proxy_floor=proxy_floor, min_reduction=min_reduction)
    if len(front) <= k:
        return front
    if strategy == "spread":
        chosen = _spread(front, k)
    else:
        knee = _knee_index(front, study.directions)
        logp = np.log([max(float(t.user_attrs[PARAMS_ATTR]), 1.0) for t in front])
        order = sorted(range(len(front)),
                       key=lambda i: (abs(float(logp[i] - logp[knee])), i))
        chosen = [front[i] for i in order[:k]]
    return sorted(chosen, key=lambda t: (t.user_attrs[PARAMS_ATTR], t.number))


#: The strategy whose plans are balanced: every layer's cheapest candidate reaching one
#: similarity (:class:`~lrf_optuna.search.strategies.SimilarityThreshold`, ``tau:<t>``).
BALANCED_STRATEGY = "tau"


def balanced_candidates(study: optuna.Study, *, min_reduction: float = MIN_REDUCTION,
                        no_slower: bool = True) -> list[FrozenTrial]:
    """The study's **balanced plans**, smallest first: its finished similarity-threshold
    plans (``tau:<t>``, every layer cut to the same feature-map similarity), useful
    (saving at least ``min_reduction``, distinct, feasible, no more FLOPs than the original
    with ``no_slower``), whether or not they are on the front.

    They are a family of their own for the max-drop search
    (:func:`~lrf_optuna.finetune.budget.finetune_within` searches it beside the front):
    the size grows with ``tau``, so bisection holds along it, and the proxy, a product
    over layers, ranks these plans far below plans of their size that keep most layers
    and cut one hard, while fine-tuning recovers an even cut better. No proxy floor: the
    threshold bounds every layer's similarity (0.7 on 12 layers is a product of 0.014). On
    the MobileNet-style user net (4,000 images), ``tau:0.7`` saved 80.6 % of the
    parameters within 1 pp while every front plan of 39k-59k parameters failed.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
        >>> balanced_candidates(study)
        []
    """
    info = original_info(study)
    pool = [t for t in strategy_trials(study)
            if str(t.user_attrs[STRATEGY_ATTR]).split(":")[0] == BALANCED_STRATEGY]
    return _useful(study, proxy_floor=0.0, min_reduction=min_reduction, pool=pool,
                   max_flops=info.flops if no_slower and info is not None and info.flops > 0
                   else None)


def choose_trials(study: optuna.Study, k: int = 3, *, strategy: Selection = "spread",
                  trials: Iterable[int] | None = None, max_params: float | None = None,
                  max_flops: float | None = None, min_proxy: float | None = None
                  ) -> list[FrozenTrial]:
    """The search trials a fine-tuning round takes: exactly ``trials`` (by number), else
    :func:`select_trials` of ``k`` with ``strategy`` within the budget.

    Raises:
        UserError: a trial of ``trials`` is not a COMPLETE search trial of ``study``.
    """
    if trials is not None:
        return [get_search_trial(study, n) for n in trials]
    return select_trials(study, k, strategy=strategy, max_params=max_params,
                         max_flops=max_flops, min_proxy=min_proxy)
