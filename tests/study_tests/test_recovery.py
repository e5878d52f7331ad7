"""Killed search workers: stale RUNNING trials are failed with the reason, strategy plans
run again, and a search killed mid-trial ends, when rerun, with exactly the requested
COMPLETE trials and no RUNNING one."""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lrf_optuna.problem import ProblemSpec
from lrf_optuna.scoring.cache import SimilarityCache
from lrf_optuna.search import LRFObjective, finished_trials, run_remaining
from lrf_optuna.study import open_storage, original_info, recover_stale_trials
from lrf_optuna.study.recovery import FAIL_REASON_ATTR, record_heartbeat, stale_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _states(study: optuna.Study) -> collections.Counter:
    return collections.Counter(t.state.name for t in study.get_trials(deepcopy=False))


def test_stale_trials_are_failed_with_the_reason(tmp_path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    silent = study.ask()  # killed before its first heartbeat
    beating = study.ask()  # killed after one
    record_heartbeat(study, beating)
    assert stale_trials(study, grace_period=60) == []  # a grace period of a minute: alive
    time.sleep(2.2)  # SQLite's clock counts whole seconds: the heartbeat is >= 2 s old
    live = study.ask()
    record_heartbeat(study, live)
    failed = recover_stale_trials(study, grace_period=1)
    assert sorted(t.number for t in failed) == [silent.number, beating.number]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[silent.number].state == TrialState.FAIL
    assert "recorded no heartbeat" in trials[silent.number].user_attrs[FAIL_REASON_ATTR]
    assert "after its last heartbeat" in trials[beating.number].user_attrs[FAIL_REASON_ATTR]
    assert trials[live.number].state == TrialState.RUNNING  # its worker is alive
    assert FAIL_REASON_ATTR not in trials[live.number].user_attrs
    assert recover_stale_trials(study, grace_period=1) == []  # each trial is failed once
    study.tell(live, 1.0)  # the live worker finishes normally
    assert _states(study) == {"FAIL": 2, "COMPLETE": 1}
    with pytest.raises(ValueError, match="positive number of seconds"):
        stale_trials(study, grace_period=0)


@pytest.fixture(scope="module")
def tiny(tiny_study):
    d = tiny_study["dir"]
    problem = ProblemSpec(model=str(d / "net.keras"), dataset=str(d / "data.npz"),
                          calibration_size=64).load(verbose=False)
    cache = SimilarityCache.load(original_info(optuna.load_study(
        study_name="tiny", storage=tiny_study["storage"])).cache)
    return problem, cache


def test_a_killed_workers_strategy_plan_runs_again(tiny, tmp_path) -> None:
    problem, cache = tiny
    objective = LRFObjective(problem.model, problem.splits.x_cal, cache=cache)
    study = optuna.create_study(
        storage=open_storage(f"sqlite:///{tmp_path / 'p.db'}"), directions=objective.directions,
        sampler=optuna.samplers.NSGAIISampler(seed=0, population_size=10))
    objective.describe_study(study)
    seeded = objective.seed_study(study)
    dead = study.ask()  # a worker takes the first strategy plan, and is killed
    assert dead.user_attrs["strategy"] == "original"
    time.sleep(0.5)
    target = seeded + 10
    assert run_remaining(study, objective, target, show_progress_bar=False,
                         grace_period=0.3) == target
    trials = study.get_trials()
    assert _states(study) == {"COMPLETE": target, "FAIL": 1}
    assert "recorded no heartbeat" in trials[dead.number].user_attrs[FAIL_REASON_ATTR]
    labels = collections.Counter(t.user_attrs["strategy"] for t in trials
                                 if t.state == TrialState.COMPLETE and "strategy" in t.user_attrs)
    assert len(labels) == seeded and set(labels.values()) == {1}  # each plan ran once


def test_seeding_skips_plans_that_are_waiting_running_or_complete_only(tiny, tmp_path) -> None:
    problem, cache = tiny
    objective = LRFObjective(problem.model, problem.splits.x_cal, cache=cache)
    study = optuna.create_study(directions=objective.directions)
    objective.describe_study(study)
    seeded = objective.seed_study(study)
    first = study.ask()
    study.tell(first, state=TrialState.FAIL)  # its plan failed: seeding enqueues it again
    assert objective.seed_study(study) == 1
    assert objective.seed_study(study) == 0
    assert len(study.get_trials(states=(TrialState.WAITING,))) == seeded


# -- a real worker, killed ----------------------------------------------------------------------

def _count(db: Path) -> collections.Counter:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT t.state FROM trials t JOIN studies s USING (study_id) "
                           "WHERE s.study_name = 'tiny'").fetchall()
    finally:
        con.close()
    return collections.Counter(r[0] for r in rows)


def _kill_mid_trial(proc: subprocess.Popen, db: Path, min_complete: int) -> None:
    """SIGKILL ``proc`` while one of its trials is RUNNING (stopped first, to look)."""
    left = _count(db)["RUNNING"]  # by workers killed before
    deadline = time.time() + 300
    while _count(db)["COMPLETE"] < min_complete:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the worker made no progress"
        time.sleep(0.2)
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        if _count(db)["RUNNING"] > left:
            break
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_search_killed_mid_trial_resumes_to_exactly_the_requested_trials(tiny_study,
                                                                         tmp_path) -> None:
    src = tiny_study["dir"]
    with sqlite3.connect(src / "study.db") as a, sqlite3.connect(tmp_path / "study.db") as b:
        a.backup(b)  # the tiny study, 40 trials
    db = tmp_path / "study.db"
    argv = list(tiny_study["argv"])
    argv[argv.index("--storage") + 1] = f"sqlite:///{db}"
    target = 300
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "lrf_optuna.cli", *argv, "--n-trials", str(target)]
    for min_complete in (80, 160):  # two workers killed mid-trial, one after the other
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        _kill_mid_trial(proc, db, min_complete)
        # its trial is left RUNNING (for the default grace period of a minute)
        assert _count(db)["RUNNING"] >= 1
    time.sleep(2.2)  # > the rerun's grace period (SQLite's clock counts whole seconds)
    rerun = subprocess.run([*cmd, "--grace-period", "1"], capture_output=True, text=True,
                           env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    states = _states(study)
    assert states["COMPLETE"] == target and finished_trials(study) == target
    assert "RUNNING" not in states and "WAITING" not in states, states
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 2, states
    assert all("worker lost" in t.user_attrs[FAIL_REASON_ATTR] for t in killed)
    # a strategy plan a killed worker held ran again: each plan COMPLETE exactly once
    plans = collections.Counter(
        (t.user_attrs["strategy"], json.dumps(t.params, sort_keys=True)) for t in trials
        if t.state == TrialState.COMPLETE and "strategy" in t.user_attrs)
    assert plans and set(plans.values()) == {1}
    show = subprocess.run([sys.executable, "-m", "lrf_optuna.cli", "show", "--study-name",
                           "tiny", "--storage", f"sqlite:///{db}"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert f"trial(s) of {target}" in show.stdout, show.stdout[:500]  # the failed ignored
