"""The smallest model within an accuracy budget: the probe search, its candidates, and the
max-drop search on a real (tiny) study."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from lrf_optuna import cli
from lrf_optuna import finetune as F
from lrf_optuna.finetune.budget import smallest_passing
from lrf_optuna.finetune.select import (
    MIN_REDUCTION,
    PROXY_FLOOR,
    balanced_candidates,
    budget_candidates,
    strategy_trials,
)
from lrf_optuna.report.tables import within_budget_text
from lrf_optuna.study.records import ORIGINAL_ATTR

STRATEGIES = ["bisect", "interpolate"]


class Counting:
    """A fake evaluator over fixed scores that records what was evaluated."""

    def __init__(self, scores) -> None:
        self.scores = list(scores)
        self.calls: list[int] = []

    def __call__(self, i: int) -> float:
        self.calls.append(i)
        return self.scores[i]


def _monotone(rng, n):
    return np.sort(rng.uniform(0.5, 0.95, n))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_monotone_scores_give_the_smallest_passing_candidate(strategy) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 50))
        scores = _monotone(rng, n)
        target = float(rng.uniform(0.45, 1.0))
        ev = Counting(scores)
        found = smallest_passing(list(np.linspace(0.01, 0.99, n)), ev, target,
                                 strategy=strategy, top=(1.0, 0.96))
        truth = next((i for i in range(n) if scores[i] >= target), None)
        assert found.chosen == truth
        assert found.converged
        assert len(ev.calls) == len(set(ev.calls)) == found.n_evaluated  # none twice
        if strategy == "bisect":
            assert len(ev.calls) <= math.ceil(math.log2(n + 1))
        else:  # each probe removes at least a quarter of the bracket
            assert len(ev.calls) <= math.ceil(math.log(n + 1) / math.log(4 / 3)) + 1
        if truth is not None and truth > 0:
            assert truth - 1 in ev.calls  # the failing neighbour was seen
        assert all(p.passed == (p.score >= target) for p in found.probes)


def test_bisection_order_and_edge_cases() -> None:
    acc = [0.60, 0.80, 0.90, 0.925, 0.93, 0.935, 0.94]
    ev = Counting(acc)
    found = smallest_passing(range(7), ev, 0.92)
    assert (found.chosen, ev.calls) == (3, [3, 1, 2])
    none = smallest_passing(range(7), Counting(acc), 0.99)  # nothing passes
    assert none.chosen is None and none.converged
    every = smallest_passing(range(7), Counting(acc), 0.1)  # everything passes
    assert every.chosen == 0 and every.converged
    empty = smallest_passing([], Counting([]), 0.5)
    assert empty.chosen is None and empty.probes == []
    with pytest.raises(ValueError, match="strategy"):
        smallest_passing(range(3), Counting(acc), 0.5, strategy="golden")  # type: ignore


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_non_monotone_answers_always_pass(strategy) -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(2, 40))
        scores = _monotone(rng, n) + rng.normal(0, 0.03, n)  # noisy: not monotone
        target = float(np.quantile(scores, rng.uniform(0.1, 0.9)))
        ev = Counting(scores)
        found = smallest_passing(list(np.linspace(0.01, 0.99, n)), ev, target,
                                 strategy=strategy, top=(1.0, float(scores.max())))
        if found.chosen is None:
            assert all(scores[i] < target for i in ev.calls)
            continue
        assert scores[found.chosen] >= target  # never a failing answer
        # the smallest passing candidate among those evaluated ...
        assert found.chosen == min(i for i in ev.calls if scores[i] >= target)
        # ... with its smaller neighbour evaluated and failing (a local boundary)
        assert found.chosen == 0 or (found.chosen - 1 in ev.calls
                                     and scores[found.chosen - 1] < target)


def test_non_monotone_can_hide_a_smaller_passing_candidate() -> None:
    """The documented limit: a passing candidate below a failing probe is not seen."""
    scores = [0.95, 0.50, 0.50, 0.95, 0.95, 0.95, 0.95]
    ev = Counting(scores)
    found = smallest_passing(range(7), ev, 0.9)
    assert found.chosen == 3 and 0 not in ev.calls and scores[0] >= 0.9


def test_known_results_are_reused_and_a_rerun_probes_nothing() -> None:
    acc = list(np.linspace(0.5, 0.95, 33))
    first = Counting(acc)
    a = smallest_passing(range(33), first, 0.9)
    again = Counting(acc)
    b = smallest_passing(range(33), again, 0.9,
                         known={p.index: p.score for p in a.probes})
    assert again.calls == [] and b.chosen == a.chosen and b.n_evaluated == 0
    assert all(p.known for p in b.probes)
    # a known pass and a known fail narrow the first bracket
    third = Counting(acc)
    smallest_passing(range(33), third, 0.9, known={10: acc[10], 31: acc[31]})
    assert all(10 < i < 31 for i in third.calls)


def test_probe_budget_stops_early_with_a_passing_answer() -> None:
    acc = list(np.linspace(0.5, 0.95, 60))
    found = smallest_passing(range(60), Counting(acc), 0.7, max_probes=2)
    assert found.n_evaluated == 2 and not found.converged
    assert found.chosen == 29 and acc[29] >= 0.7  # 29 passed, 14 failed, 15..28 unknown
    stopped = smallest_passing(range(60), Counting(acc), 0.9, max_probes=2)
    assert stopped.chosen is None and not stopped.converged  # nothing passed yet
    # known results count: rerunning with the first run's results evaluates nothing
    again = Counting(acc)
    rerun = smallest_passing(range(60), again, 0.7, max_probes=2,
                             known={p.index: p.score for p in found.probes})
    assert again.calls == [] and rerun.chosen == 29


def test_interpolation_uses_the_proxy_between_measured_ends() -> None:
    # accuracy linear in the proxy: after the first (middle) probe fails, the line through
    # it and the reference (proxy 1, 0.95) points at the candidate with proxy 0.8
    proxies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    acc = [0.5 + 0.45 * p for p in proxies]
    ev = Counting(acc)
    found = smallest_passing(proxies, ev, 0.5 + 0.45 * 0.8 - 1e-9, strategy="interpolate",
                             top=(1.0, 0.95))
    assert ev.calls[:2] == [4, 7] and found.chosen == 7


# -- candidates and the proxy floor ------------------------------------------------------------

def _study(points) -> optuna.Study:
    """A 3-objective study with the original (1000 params) and ``(params, flops, proxy)``
    trials."""
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    study.add_trial(optuna.create_trial(values=[1000, 2000, 1.0], params={}, distributions={},
                                        user_attrs={"params": 1000, "flops": 2000,
                                                    "proxy": 1.0, "lrf_plan": {}}))
    for i, (p, f, q) in enumerate(points):
        study.add_trial(optuna.create_trial(
            values=[p, f, q], params={}, distributions={},
            user_attrs={"params": p, "flops": f, "proxy": q,
                        "lrf_plan": {"fc": ["svd", i + 1]}}))
    return study


def test_candidates_are_the_useful_two_objective_front() -> None:
    study = _study([(10, 100, 0.0),       # proxy 0: fine-tuning cannot bring it back
                    (20, 300, 0.30),
                    (30, 50, 0.25),       # on the 3-D front (FLOPs), dominated in 2-D
                    (40, 300, 0.60),
                    (40, 250, 0.55),      # same size, lower proxy
                    (995, 1990, 0.9999),  # saves 0.5% of the parameters: useless
                    (500, 900, 0.90)])
    got = [(t.user_attrs["params"], t.user_attrs["proxy"]) for t in budget_candidates(study)]
    assert got == [(20, 0.30), (40, 0.60), (500, 0.90)]
    # -k never takes the useless ends either
    chosen = F.select_trials(study, 10)
    params = sorted(t.user_attrs["params"] for t in chosen)
    assert 10 not in params and 995 not in params and 30 in params
    assert 10 in [t.user_attrs["params"] for t in F.select_trials(study, 10, proxy_floor=0)]
    assert 995 in [t.user_attrs["params"]
                   for t in F.select_trials(study, 10, min_reduction=0.0)]
    assert 0 < PROXY_FLOOR < 0.1 and MIN_REDUCTION == 0.01


def test_candidates_add_the_useful_strategy_plans_off_the_front() -> None:
    study = _study([(20, 300, 0.30), (40, 300, 0.60), (500, 900, 0.90)])

    def strategy(p: int, f: int, q: float, label: str, violation: float = 0.0) -> None:
        trial = optuna.create_trial(
            values=[p, f, q], params={}, distributions={},
            user_attrs={"params": p, "flops": f, "proxy": q, "strategy": label,
                        "lrf_plan": {"fc": ["svd", p]}},
            system_attrs={"constraints": [violation]})
        study.add_trial(trial)

    strategy(45, 400, 0.50, "tau:0.7")          # dominated by (40, 300, 0.60): still probed
    strategy(30, 300, 0.0, "tau:0.5")           # proxy 0: fine-tuning cannot bring it back
    strategy(999, 2000, 0.99, "energy:0.999")   # saves 0.1 %: useless
    strategy(60, 500, 0.55, "vbmf", violation=1.0)  # infeasible
    on_front = [(20, 0.30), (40, 0.60), (500, 0.90)]
    got = [(t.user_attrs["params"], t.user_attrs["proxy"])
           for t in budget_candidates(study, strategies=True)]
    assert got == [(20, 0.30), (40, 0.60), (45, 0.50), (500, 0.90)]
    assert [(t.user_attrs["params"], t.user_attrs["proxy"])
            for t in budget_candidates(study)] == on_front  # the default: the front alone
    assert [t.user_attrs["strategy"] for t in strategy_trials(study)] == [
        "tau:0.7", "tau:0.5", "energy:0.999"]


def test_balanced_candidates_are_the_tau_plans_without_a_proxy_floor() -> None:
    study = _study([(20, 300, 0.30), (500, 900, 0.90)])
    study.set_user_attr(ORIGINAL_ATTR, {"params": 1000, "flops": 2000})
    for i, (p, f, q, label) in enumerate([
            (30, 300, 0.0001, "tau:0.5"),     # below the front's proxy floor: still balanced
            (25, 200, 0.014, "tau:0.7"),
            (60, 2500, 0.5, "tau:0.8"),       # more FLOPs than the original
            (40, 300, 0.6, "energy:0.9"),     # not a similarity-threshold plan
            (999, 1999, 0.99, "tau:0.999")]):  # saves 0.1 %
        study.add_trial(optuna.create_trial(
            values=[p, f, q], params={}, distributions={},
            user_attrs={"params": p, "flops": f, "proxy": q, "strategy": label,
                        "lrf_plan": {"fc": ["tucker2", 100 + i]}}))
    assert [t.user_attrs["strategy"] for t in balanced_candidates(study)] == [
        "tau:0.7", "tau:0.5"]
    assert [t.user_attrs["strategy"] for t in balanced_candidates(study, no_slower=False)] == [
        "tau:0.7", "tau:0.5", "tau:0.8"]


def test_candidates_leave_out_trials_that_compute_more_than_the_original() -> None:
    study = _study([(20, 300, 0.30), (30, 5000, 0.70), (40, 300, 0.60), (500, 900, 0.90)])
    # without the original's description the FLOPs are not known: nothing is left out
    assert [t.user_attrs["params"] for t in budget_candidates(study)] == [20, 30, 500]
    study.set_user_attr(ORIGINAL_ATTR, {"params": 1000, "flops": 2000})
    assert [t.user_attrs["params"] for t in budget_candidates(study)] == [20, 40, 500]
    assert [t.user_attrs["params"]
            for t in budget_candidates(study, no_slower=False)] == [20, 30, 500]


# -- on the tiny study ---------------------------------------------------------------------------

FAST = F.FinetuneConfig(epochs=1, batch_size=32, latency_repeats=3, latency_warmup=1,
                        verbose=0)


@pytest.mark.slow
def test_finetune_within_on_a_study_and_its_rerun(tiny_study, tmp_path, monkeypatch,
                                                  capsys) -> None:
    import shutil

    from lrf_optuna.finetune import jobs

    shutil.copy(tiny_study["dir"] / "study.db", tmp_path / "study.db")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    answer = F.finetune_within(study, max_drop=5.0, config=FAST, escalate=False)
    candidates = budget_candidates(study)
    assert answer.candidates == [t.number for t in candidates]
    assert answer.reference.is_reference and answer.reference.recipe == FAST.recipe_key()
    assert answer.escalation is None and list(answer.references) == [FAST.recipe_key()]
    target = (answer.reference.val_acc_after or 0) - 0.05
    balanced = answer.balanced.probes if answer.balanced is not None else []
    assert len(answer.probes) == answer.search.n_evaluated + len(balanced)
    assert answer.search.n_evaluated == len(answer.search.probes) >= 1  # a fresh study
    # the balanced plans searched are the study's tau plans smaller than the front's answer
    front_answer = (candidates[answer.search.chosen].user_attrs["params"]
                    if answer.search.chosen is not None else math.inf)
    assert answer.balanced_candidates == [
        t.number for t in balanced_candidates(study) if t.user_attrs["params"] < front_answer]
    for trial, _, _ in answer.probes[answer.search.n_evaluated:]:
        assert trial.number in answer.balanced_candidates
        assert trial.user_attrs["strategy"].startswith("tau:")
    for trial, job, probe in answer.probes:
        assert job.source == trial.number and job.recipe == FAST.recipe_key()
        # every decision is paired on the same validation images as the reference
        paired = job.paired(answer.reference, "val")
        assert paired is not None and paired.n == answer.resolution.images
        assert probe.passed == paired.within(5.0, answer.confidence)
    assert answer.resolution is not None and answer.resolution.max_drop == 5.0
    assert answer.original_check is not None and answer.original_check.val_acc is not None
    if answer.chosen is not None:
        assert answer.job is not None and (answer.job.val_acc_after or 0) >= target - 1e-9
        drops = answer.drops_pp()
        assert drops["val_vs_reference"] == pytest.approx(
            100 * ((answer.reference.val_acc_after or 0) - (answer.job.val_acc_after or 0)))
        assert drops["val_vs_reference"] <= 5.0 + 1e-6
    # a rerun trains nothing: every probe is a finished job
    monkeypatch.setattr(jobs, "finetune_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = F.finetune_within(study, max_drop=5.0, config=FAST, escalate=False)
    assert again.search.n_evaluated == 0
    assert again.balanced is None or again.balanced.n_evaluated == 0
    assert (again.chosen.number if again.chosen else None) == (
        answer.chosen.number if answer.chosen else None)
    # the CLI prints the same answer from the stored jobs
    assert cli.main(["finetune", "--study-name", "tiny", "--storage", storage,
                     "--max-drop", "5", "--epochs", "1", "--batch-size", "32",
                     "--no-escalate"]) == 0
    out = capsys.readouterr().out
    assert "Max-drop search" in out and "fair reference" in out
    if answer.chosen is not None:
        assert f"trial #{answer.chosen.number}" in out and "smallest model within 5 pp" in out
    assert cli.main(["finetune", "--study-name", "tiny", "--storage", storage,
                     "--max-drop", "-1"]) == 2


@pytest.mark.slow
def test_escalation_reprobes_the_smaller_candidates_with_a_longer_recipe(
        tiny_study, tmp_path) -> None:
    import shutil

    shutil.copy(tiny_study["dir"] / "study.db", tmp_path / "study.db")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    # a budget of 0 pp at high confidence: the short recipe's answer (if any) is large,
    # so there are smaller candidates to re-probe
    answer = F.finetune_within(study, max_drop=0.0, config=FAST, confidence=0.6,
                               escalate_probes=2)
    longer = FAST.longer()
    below = (answer.search.chosen if answer.search.chosen is not None
             else len(answer.candidates))
    if below == 0:
        pytest.skip("the first recipe chose the smallest candidate: nothing to escalate")
    assert answer.escalation is not None and answer.escalation.n_evaluated <= 2
    assert set(answer.references) == {FAST.recipe_key(), longer.recipe_key()}
    assert answer.escalated_recipe == longer.describe()
    escalated = [(t, j) for t, j, _ in answer.probes if j.recipe == longer.recipe_key()]
    assert len(escalated) == answer.escalation.n_evaluated >= 1
    # only candidates smaller than the first answer are re-probed
    for trial, _ in escalated:
        assert answer.candidates.index(trial.number) < below
    if answer.job is not None:
        assert answer.reference.recipe == answer.job.recipe
        assert answer.reference_of(answer.job) == answer.reference
    text = within_budget_text(answer)
    assert "validation images" in text


@pytest.mark.slow
def test_max_drop_search_decides_on_the_quantized_file(tiny_study, tmp_path) -> None:
    """With ``quantize="int8"`` every job is also converted to a full-integer LiteRT file,
    run in the interpreter, and the search compares that file with the fair reference's
    int8 file (paired on the same validation images)."""
    import dataclasses
    import shutil

    from lrf_optuna.finetune.jobs import find_finetune_study

    shutil.copy(tiny_study["dir"] / "study.db", tmp_path / "study.db")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    config = dataclasses.replace(FAST, quantize="int8")
    assert config.recipe_key() != FAST.recipe_key()
    answer = F.finetune_within(study, max_drop=5.0, config=config, escalate=False,
                               max_probes=2)
    ref = answer.reference
    assert ref.deployed is not None and ref.quantize == "int8"
    assert ref.deployed_info["micro_unsupported"] == [] and ref.deployed_info["arena_bytes"] > 0
    # the float32 fine-tuned model and its int8 file agree closely, but are measured apart
    assert abs((ref.deployed.val_acc or 0) - (ref.val_acc_after or 0)) < 0.1
    for _, job, probe in answer.probes:
        assert job.deployed is not None and (job.deployed.tflite_bytes or 0) > 0
        assert job.quantize == "int8" and job.deployed_info["micro_unsupported"] == []
        drop = job.decided_drop(ref)
        assert drop is not None and drop == job.deployed.drop_against(ref.deployed, "val")
        assert probe.passed == drop.within(5.0, answer.confidence)
    if answer.job is not None:
        assert "deployed as a LiteRT file (int8, decided on it)" in within_budget_text(answer)
    jobs = find_finetune_study(study).get_trials(deepcopy=False)
    from optuna_dashboard._note import get_note_from_system_attrs

    ft = find_finetune_study(study)
    attrs = ft._storage.get_study_system_attrs(ft._study_id)
    done = [j for j in jobs if j.state == optuna.trial.TrialState.COMPLETE]
    body = get_note_from_system_attrs(attrs, done[-1]._trial_id)["body"]
    assert "Deployed as a int8 LiteRT file" in body
