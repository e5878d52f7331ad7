"""Two fine-tuning worker processes on a throwaway PostgreSQL cluster: each job runs once.

The cluster comes from the ``postgres_url`` fixture of ``conftest.py`` (a temporary
directory, a unix socket only, stopped and deleted afterwards). Skipped when the PostgreSQL
server binaries or the ``psycopg`` driver are missing.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from finetune_tests.test_finetune import WORKER  # the same worker script, on another storage
from optuna.trial import TrialState

from lrf_optuna import finetune as F
from lrf_optuna.study import open_finetune_study, study_lock

pytestmark = pytest.mark.slow




def _check_advisory_lock_excludes(study) -> None:
    """study_lock on PostgreSQL (an advisory lock, one connection each) really excludes."""
    import threading
    import time

    events: list[str] = []

    def holder() -> None:
        with study_lock(study, "finetune"):
            events.append("held")
            time.sleep(1.0)
            events.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    while not events:
        time.sleep(0.01)
    t0 = time.perf_counter()
    with study_lock(study, "finetune"):
        waited = time.perf_counter() - t0
        events.append("acquired")
    thread.join()
    assert events == ["held", "released", "acquired"] and waited > 0.5, (events, waited)


def test_two_worker_processes_on_postgres(tiny_study, postgres_url, tmp_path) -> None:
    optuna.copy_study(from_study_name="tiny", from_storage=tiny_study["storage"],
                      to_storage=postgres_url)
    study = optuna.load_study(study_name="tiny", storage=postgres_url)
    _check_advisory_lock_excludes(study)
    chosen = F.select_trials(study, 4)
    assert F.enqueue_finetune(study, chosen) == 5  # and the fair reference
    reference = F.jobs.original_trial(study).number
    settings = {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "latency_repeats": 3,
                "latency_warmup": 1, "verbose": 0, "heartbeat_interval": 2,
                "grace_period": 60}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url,
                               json.dumps(settings)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]
    ran = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        ran.append(json.loads(next(ln for ln in out.splitlines()
                                   if ln.startswith("RAN "))[4:]))
    assert not set(ran[0]) & set(ran[1])
    ft = open_finetune_study(study)
    complete = ft.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(ran[0] + ran[1]) == sorted(j.number for j in complete)
    per_source = collections.Counter(j.user_attrs["source_trial"] for j in complete)
    assert per_source == collections.Counter([reference, *(t.number for t in chosen)])
    assert len(ft.get_trials()) == 5
    # non-SQLite storage: artifacts default to studies/artifacts (of the worker's cwd)
    assert Path(ft.user_attrs["artifact_dir"]) == (tmp_path / "studies" / "artifacts")


def test_shared_scoring_on_postgres(postgres_url, tmp_path_factory) -> None:
    """Two scoring workers on PostgreSQL score every unit once, with the scores of one
    process; a SIGKILLed worker's unit is redone by the next worker (issue 20)."""
    from search_tests import test_scoring_queue as T

    from lrf_optuna.scoring.cache import SimilarityCache

    root = tmp_path_factory.mktemp("pg_queue")
    model = T._model()
    model.save(root / "model.keras")
    x = np.random.default_rng(0).uniform(0, 1, (48, 10, 10, 2)).astype("float32")
    np.save(root / "x.npy", x)
    import keras

    local = SimilarityCache.build(keras.models.load_model(root / "model.keras"), x,
                                  cache_dir=root / "local", grid=T.GRID, progress=False)
    T.check_two_workers(postgres_url, root, x, local, root / "two")
    optuna.delete_study(study_name="q:scoring", storage=postgres_url)
    T.check_killed_worker(postgres_url, root, x, local, root / "killed")
