""""The smallest model within my accuracy budget": a search along the front.

The question users ask is not "fine-tune three trials" but "how small can the model get
while losing at most ``max_drop`` percentage points". :func:`finetune_within` answers it on
a search study: its candidates are the useful trials on the front of (params, proxy)
(:func:`~lrf_optuna.finetune.select.budget_candidates`), smallest first; a candidate
*passes* when its validation accuracy after fine-tuning is at least the **fair
reference**'s (the original model fine-tuned with the same recipe) minus ``max_drop``.
Below the front's answer the study's balanced plans (the similarity-threshold plans,
:func:`~lrf_optuna.finetune.select.balanced_candidates`) are searched the same way as a
second family. Every probe is a normal fine-tuning job of the study (resumable: a rerun
reuses the finished probes), and the test split decides nothing (it is only reported).

The search itself, :func:`smallest_passing`, is a pure function of the candidates'
positions and an evaluator, shared with the benchmark (``benchmarks/compression/``):

1. The bracket ``(lo, hi)``: ``lo`` the largest candidate known to fail below ``hi``
   (``-1``: none), ``hi`` the smallest candidate known to pass (``n``: none; the original
   model, which passes by definition, stands beyond the last candidate). Results already
   known (finished jobs of the same recipe) are used first.
2. While a candidate lies strictly inside the bracket (and the probe budget lasts): probe
   one, move ``hi`` down to it when it passes, ``lo`` up to it when it fails.
   ``"bisect"`` (default) probes the middle index. ``"interpolate"`` probes the
   candidate whose position (its proxy; log(params) without proxies) is nearest to where
   the straight line through the two measured bracket ends reaches the target accuracy,
   the original (proxy 1, the reference's accuracy) serving as the upper end before a
   passing probe exists; the choice is clamped to the middle half of the bracket, so each
   probe removes at least a quarter of it. The first probe, with no failing end yet, is
   the middle. On 2000 simulated fronts (10-60 candidates, accuracy saturating in the
   proxy, with noise; ``benchmarks/compression/``, section "Probe strategies")
   interpolation needed 4.8 probes on average against 5.0 for bisection, but up to 9
   against 6: bisection, whose ``ceil(log2(n + 1))`` bound holds always, is the default.
3. The answer is ``hi``: the smallest candidate seen to pass.

With accuracy monotone in size (the usual case) that is the smallest passing candidate.
When it is not (two plans of similar size can differ by a point after fine-tuning, and seed
noise is about 0.2 pp), the answer still always passes -- it is the smallest *probed*
candidate that passed, its next smaller neighbour probed and failed -- but a smaller
passing candidate may sit below a failing one unprobed.

Example:
    >>> accuracy = [0.60, 0.80, 0.90, 0.925, 0.93, 0.935, 0.94]   # by size
    >>> found = smallest_passing([1, 2, 3, 4, 5, 6, 7], lambda i: accuracy[i], 0.92)
    >>> found.chosen, [p.index for p in found.probes]
    (3, [3, 1, 2])
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.errors import UserError
from lrf_optuna.finetune.config import FinetuneConfig
from lrf_optuna.finetune.select import (
    MIN_REDUCTION,
    PROXY_FLOOR,
    balanced_candidates,
    budget_candidates,
)
from lrf_optuna.paired import DEFAULT_CONFIDENCE, expected_standard_error
from lrf_optuna.study.finetune_records import (
    BASELINE_ATTR,
    ERROR_ATTR,
    VAL_ACC_AFTER_ATTR,
    BudgetProbe,
    BudgetSearch,
    FinetuneRecord,
    Measured,
    OriginalCheck,
    Resolution,
    WithinBudget,
)
from lrf_optuna.study.lookup import (
    find_finetune_study,
    jobs_by_source,
    latest_jobs,
)
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR

if TYPE_CHECKING:
    import os

    from lrf_optuna.problem import Problem

__all__ = ["BudgetProbe", "BudgetSearch", "ProbeStrategy", "WithinBudget", "finetune_within",
           "smallest_passing"]

logger = logging.getLogger(__name__)

#: How :func:`smallest_passing` chooses the next probe.
ProbeStrategy = Literal["interpolate", "bisect"]


def _next_probe(lo: int, hi: int, positions: Sequence[float], scores: Mapping[int, float],
                target: float, top: tuple[float, float] | None,
                strategy: ProbeStrategy) -> int:
    middle = (lo + hi) // 2
    if strategy == "bisect" or lo < 0:
        return middle
    upper = (positions[hi], scores[hi]) if hi < len(positions) else top
    if upper is None:
        return middle
    x0, y0 = positions[lo], scores[lo]
    x1, y1 = upper
    width = hi - lo
    margin = max(1, math.ceil(width / 4))
    low_i, high_i = lo + margin, hi - margin
    if low_i > high_i:
        return middle
    if y1 <= y0 or x1 == x0:
        return middle
    x_star = x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    inside = range(low_i, high_i + 1)
    return min(inside, key=lambda i: (abs(positions[i] - x_star), i))


def smallest_passing(positions: Sequence[float], evaluate: Callable[[int], float],
                     target: float, *, known: Mapping[int, float] | None = None,
                     strategy: ProbeStrategy = "bisect",
                     top: tuple[float, float] | None = None,
                     max_probes: int | None = None) -> BudgetSearch:
    """The smallest candidate whose score reaches ``target`` (module docstring).

    Args:
        positions: One number per candidate, candidates ordered by size (smallest first);
            increasing along them (the proxy, or log(params)). Used by
            ``"interpolate"`` only.
        evaluate: ``index -> score`` (e.g. validation accuracy after fine-tuning).
        target: A candidate passes when its score is at least this.
        known: Scores known beforehand (``{index: score}``), used before any probe.
        strategy: ``"bisect"`` (default) or ``"interpolate"``.
        top: ``(position, score)`` of the reference beyond the last candidate (e.g.
            ``(1.0, reference accuracy)`` with proxies), for ``"interpolate"``.
        max_probes: Stop once this many candidates are evaluated, ``known`` ones included
            (``None``: until the bracket closes); so rerunning with the results of a run as
            ``known`` evaluates nothing new.

    Returns:
        A :class:`BudgetSearch`.
    """
    n = len(positions)
    if strategy not in ("interpolate", "bisect"):
        raise ValueError(f"strategy must be 'interpolate' or 'bisect', got {strategy!r}")
    scores: dict[int, float] = {}
    probes: list[BudgetProbe] = []
    for i, score in sorted((known or {}).items()):
        if 0 <= i < n:
            scores[i] = float(score)
            probes.append(BudgetProbe(i, float(positions[i]), float(score),
                                      float(score) >= target, True))

    def bracket() -> tuple[int, int]:
        hi = min((i for i, s in scores.items() if s >= target), default=n)
        lo = max((i for i, s in scores.items() if s < target and i < hi), default=-1)
        return lo, hi

    lo, hi = bracket()
    while hi - lo > 1 and (max_probes is None or len(scores) < max_probes):
        i = _next_probe(lo, hi, positions, scores, target, top, strategy)
        score = float(evaluate(i))
        scores[i] = score
        probes.append(BudgetProbe(i, float(positions[i]), score, score >= target, False))
        lo, hi = bracket()
    return BudgetSearch(hi if hi < n else None, probes, target, hi - lo <= 1)


# -- on a study -------------------------------------------------------------------------------

def _wait_for(study: optuna.Study, source: int, recipe: str, run: Callable[[], int],
              poll: float) -> FrozenTrial:
    """Run queued jobs until the job of ``(source, recipe)`` is finished; returns it.

    Raises:
        RuntimeError: its latest job FAILed.
    """
    while True:
        ft = find_finetune_study(study)
        jobs = jobs_by_source(ft, recipe=recipe).get(source, []) if ft is not None else []
        done = [j for j in jobs if j.state == TrialState.COMPLETE]
        if done:
            return done[-1]
        if jobs and all(j.state == TrialState.FAIL for j in jobs):
            error = next((j.user_attrs[ERROR_ATTR] for j in reversed(jobs)
                          if ERROR_ATTR in j.user_attrs), "see the fine-tuning study")
            raise RuntimeError(f"the fine-tuning job of trial {source} failed: {error}; "
                               "rerun to retry it")
        if run() == 0:  # the queue is empty: another worker runs it
            logger.info("trial %d is being fine-tuned by another worker; waiting", source)
            time.sleep(poll)


def _paired_score(job: FinetuneRecord, reference: FinetuneRecord, ref_val: float,
                  confidence: float) -> float:
    """The validation accuracy a probe is judged by: the reference's minus the drop's upper
    bound at ``confidence``, measured paired on the same images (:mod:`lrf_optuna.paired`;
    at confidence 0.5, simply the job's accuracy); without per-image results, the job's
    own accuracy."""
    paired = job.decided_drop(reference)
    if paired is None:
        return float(job.decided_val_acc or 0.0)
    return ref_val - paired.upper_pp(confidence) / 100.0


class _RecipeSearch:
    """The max-drop search of one recipe: its fair reference, then probes (each a job of
    the study's fine-tuning queue)."""

    def __init__(self, study: optuna.Study, candidates: list[FrozenTrial],
                 original: FrozenTrial, config: FinetuneConfig, run: Callable[[int], int],
                 poll: float, confidence: float) -> None:
        from lrf_optuna.finetune.jobs import enqueue_finetune

        self.study, self.candidates, self.config = study, candidates, config
        self.recipe = config.recipe_key()
        self.confidence = confidence
        self._run = run
        self._poll = poll
        self._enqueue = enqueue_finetune
        enqueue_finetune(study, [original.number], config=config)
        self.reference = FinetuneRecord.of(self._wait(original.number))
        if self.reference.decided_val_acc is None:
            raise RuntimeError(f"the fair reference job {self.reference.job} has no "
                               f"{VAL_ACC_AFTER_ATTR}")
        self.ref_val = float(self.reference.decided_val_acc)

    def _wait(self, source: int) -> FrozenTrial:
        return _wait_for(self.study, source, self.recipe, lambda: self._run(1), self._poll)

    def score(self, job: FinetuneRecord) -> float:
        return _paired_score(job, self.reference, self.ref_val, self.confidence)

    def run(self, max_drop: float, indices: Sequence[int], strategy: ProbeStrategy,
            max_probes: int | None, pool: Sequence[FrozenTrial] | None = None
            ) -> tuple[BudgetSearch, dict[int, FinetuneRecord]]:
        """:func:`smallest_passing` over ``pool[i] for i in indices`` (``pool``: the
        candidates by default); returns the search (indices into ``indices``) and the
        finished jobs by trial number."""
        cands = [(self.candidates if pool is None else pool)[i] for i in indices]
        target = self.ref_val - max_drop / 100.0
        has_proxy = all(PROXY_ATTR in t.user_attrs for t in cands)
        positions = [float(t.user_attrs[PROXY_ATTR]) if has_proxy
                     else math.log(max(float(t.user_attrs[PARAMS_ATTR]), 1.0)) for t in cands]
        done = latest_jobs(find_finetune_study(self.study), recipe=self.recipe)
        index_of = {t.number: i for i, t in enumerate(cands)}
        known = {index_of[n]: self.score(FinetuneRecord.of(j)) for n, j in done.items()
                 if n in index_of}

        def evaluate(i: int) -> float:
            trial = cands[i]
            logger.info("max-drop probe: trial %d (%s params, proxy %s), %s", trial.number,
                        f"{trial.user_attrs[PARAMS_ATTR]:,}", trial.user_attrs.get(PROXY_ATTR),
                        self.config.describe())
            self._enqueue(self.study, [trial.number], config=self.config, reference=False)
            return self.score(FinetuneRecord.of(self._wait(trial.number)))

        top = (1.0, self.ref_val) if has_proxy else None
        search = smallest_passing(positions, evaluate, target, known=known,
                                  strategy=strategy, top=top, max_probes=max_probes)
        finished = latest_jobs(find_finetune_study(self.study), recipe=self.recipe)
        return search, {n: FinetuneRecord.of(j) for n, j in finished.items()}


def _resolution(problem: Problem, max_drop: float) -> Resolution:
    """The expected resolution of the budget on the validation split, from the
    untouched original's validation accuracy (one pass, before any fine-tuning)."""
    from lrf_optuna.models.training import evaluate

    splits = problem.splits
    accuracy = evaluate(problem.model, splits.x_val, splits.y_val)
    return Resolution(len(splits.x_val), expected_standard_error(len(splits.x_val), accuracy,
                                                                 max_drop), max_drop)


def finetune_within(study: optuna.Study, max_drop: float = 1.0, *,
                    config: FinetuneConfig | None = None,
                    strategy: ProbeStrategy = "bisect",
                    max_probes: int | None = None,
                    confidence: float = DEFAULT_CONFIDENCE,
                    escalate: bool | FinetuneConfig = True,
                    escalate_probes: int | None = 3,
                    balanced: bool = True,
                    proxy_floor: float = PROXY_FLOOR, min_reduction: float = MIN_REDUCTION,
                    artifact_dir: str | os.PathLike[str] | None = None,
                    problem: Problem | None = None, poll_seconds: float = 5.0
                    ) -> WithinBudget:
    """The smallest model of a search study within ``max_drop`` pp of the fair reference.

    1. Says how finely the validation split resolves the budget (a warning when the
       budget is under three standard errors of a drop: :class:`Resolution`).
    2. Fine-tunes the fair reference (the original with ``config``'s recipe) and checks
       the original against it (:class:`OriginalCheck`: not converged, or stale
       BatchNorm statistics).
    3. Probes the candidates (:func:`~lrf_optuna.finetune.select.budget_candidates`) with
       :func:`smallest_passing`, each probe a normal resumable job of
       ``"<study>:finetune"`` (jobs of the same recipe finished earlier count as known
       results, so a rerun probes nothing twice). A probe passes when its drop against
       the fair reference, measured paired on the same validation images, is within
       ``max_drop`` at ``confidence`` (:mod:`lrf_optuna.paired`).
    4. **Balanced plans** (``balanced``): the study's similarity-threshold plans smaller
       than that answer (:func:`~lrf_optuna.finetune.select.balanced_candidates`, every
       layer cut to one similarity) are searched as a second family with the same recipe
       (bisection along ``tau``); a smaller passing plan becomes the answer. The front is
       ordered by a proxy that ranks even cuts low, while fine-tuning recovers them best.
    5. **Escalation** (``escalate``): the front's candidates smaller than that answer (all
       of them when none passed) are searched again with a longer recipe
       (:meth:`FinetuneConfig.longer`, or the config given), at most ``escalate_probes``
       fine-tunings, against the fair reference of that recipe; a smaller passing
       candidate becomes the answer.

    The test split is only reported. CLI: ``lrf-optuna finetune --max-drop 1.0``.

    Args:
        study: The search study.
        max_drop: Largest accepted drop of validation accuracy, in percentage points,
            against the fair reference.
        config: The recipe (and measurement settings) of every job.
        strategy: ``"bisect"`` (default) or ``"interpolate"`` (module docstring).
        max_probes: At most this many candidates fine-tuned with ``config`` in all, jobs
            of the recipe finished earlier included (the reference not counted): a rerun
            adds none.
        confidence: A probe passes when its drop is within the budget with this
            confidence (0.5: the drop's estimate decides).
        escalate: ``True``: escalate with ``config.longer()``; a config: with that recipe;
            ``False``: no escalation.
        escalate_probes: At most this many candidates fine-tuned with the longer recipe.
        balanced: Search the balanced plans too (step 4), at most ``max_probes`` of them.
        proxy_floor: Candidates need at least this proxy.
        min_reduction: Candidates save at least this fraction of the parameters.
        artifact_dir: Artifact store of the fine-tuned files.
        problem: The loaded problem (default: loaded from the study once).
        poll_seconds: How often to look again when another worker runs a probe.

    Returns:
        A :class:`WithinBudget` (``chosen`` is ``None`` when no candidate is within it).

    Raises:
        UserError: ``max_drop`` is negative, ``confidence`` not in (0, 1), the study has
            no original trial (fair reference) or no candidate.

    Example:
        >>> answer = finetune_within(study, max_drop=1.0)  # doctest: +SKIP
        >>> answer.chosen.number, answer.drops_pp()["val_vs_reference"]  # doctest: +SKIP
        (412, 0.83)
    """
    from lrf_optuna.finetune.jobs import original_trial, run_finetune_jobs
    from lrf_optuna.study.models import StudyModels

    if not max_drop >= 0:
        raise UserError(f"max_drop must be >= 0 percentage points, but got {max_drop}")
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must be in (0, 1), but got {confidence}")
    config = config or FinetuneConfig()
    original = original_trial(study)
    if original is None:
        raise UserError(f"study {study.study_name!r} has no trial of the original model "
                        "(empty plan) to fine-tune as the fair reference; seed the study "
                        "with LRFObjective.seed_study (create_lrf_study does)")
    candidates = budget_candidates(study, proxy_floor=proxy_floor, min_reduction=min_reduction)
    if not candidates:
        raise UserError(f"study {study.study_name!r} has no compressed trial on the front "
                        f"saving at least {min_reduction:.0%} of the parameters with proxy "
                        f">= {proxy_floor}; run more search trials")
    problem = problem or StudyModels(study).problem
    resolution = _resolution(problem, max_drop)
    if resolution.resolved:
        logger.info("%s", resolution.text())
    else:
        logger.warning("%s", resolution.text())

    def run(config_: FinetuneConfig) -> Callable[[int], int]:
        return lambda n: len(run_finetune_jobs(study, config=config_,
                                               artifact_dir=artifact_dir, max_jobs=n,
                                               problem=problem))

    first = _RecipeSearch(study, candidates, original, config, run(config), poll_seconds,
                          confidence)
    ft = find_finetune_study(study)
    base = Measured.from_attrs(ft.user_attrs.get(BASELINE_ATTR) or {}) if ft else Measured()
    check = OriginalCheck(base.val_acc, base.val_acc_train_mode,
                          first.reference.val_acc_before, first.reference.val_acc_after)
    if check.text():
        logger.warning("%s", check.text())
    search, finished = first.run(max_drop, range(len(candidates)), strategy, max_probes)
    probes = [(candidates[p.index], finished[candidates[p.index].number], p)
              for p in search.probes]
    chosen = candidates[search.chosen] if search.chosen is not None else None
    chosen_stage = first
    balanced_search: BudgetSearch | None = None
    family: list[FrozenTrial] = []
    if balanced:
        limit = chosen.user_attrs[PARAMS_ATTR] if chosen is not None else math.inf
        family = [t for t in balanced_candidates(study, min_reduction=min_reduction)
                  if t.user_attrs[PARAMS_ATTR] < limit]
    if family:
        logger.info("balanced plans: the %d similarity-threshold plan(s) smaller than %s",
                    len(family), "the answer" if chosen is not None else "every candidate")
        balanced_search, more = first.run(max_drop, range(len(family)), strategy,
                                          max_probes, pool=family)
        probes += [(family[p.index], more[family[p.index].number], p)
                   for p in balanced_search.probes]
        if balanced_search.chosen is not None:
            chosen = family[balanced_search.chosen]
    stages = {first.recipe: first}
    escalation: BudgetSearch | None = None
    longer = (None if escalate is False
              else config.longer() if escalate is True else escalate)
    below = (len(candidates) if chosen is None
             else sum(t.user_attrs[PARAMS_ATTR] < chosen.user_attrs[PARAMS_ATTR]
                      for t in candidates))
    if longer is not None and below > 0 and longer.recipe_key() != first.recipe:
        logger.info("escalation: the %d candidate(s) smaller than %s again with %s", below,
                    "the answer" if chosen is not None else "the largest one",
                    longer.describe())
        second = _RecipeSearch(study, candidates, original, longer, run(longer),
                               poll_seconds, confidence)
        stages[second.recipe] = second
        indices = list(range(below))
        escalation, more = second.run(max_drop, indices, strategy, escalate_probes)
        probes += [(candidates[indices[p.index]], more[candidates[indices[p.index]].number],
                    p) for p in escalation.probes]
        if escalation.chosen is not None:
            chosen, chosen_stage = candidates[indices[escalation.chosen]], second
    job = None
    if chosen is not None:
        job = latest_jobs(find_finetune_study(study), recipe=chosen_stage.recipe)[chosen.number]
    return WithinBudget(
        max_drop=max_drop, chosen=chosen,
        job=FinetuneRecord.of(job) if job is not None else None,
        reference=chosen_stage.reference, original=base, probes=probes, search=search,
        candidates=[t.number for t in candidates], recipe=config.describe(),
        original_params=int(original.user_attrs[PARAMS_ATTR]),
        original_flops=int(original.user_attrs.get(FLOPS_ATTR, 0)) or None,
        confidence=confidence,
        references={key: stage.reference for key, stage in stages.items()},
        escalation=escalation,
        escalated_recipe=(longer.describe() if escalation is not None and longer
                          else None),
        resolution=resolution, original_check=check, balanced=balanced_search,
        balanced_candidates=[t.number for t in family])
