"""Two ``lrf-optuna search`` worker processes on one PostgreSQL study.

Both workers start at the same time on a new study of the tiny problem (the model, dataset
and similarity cache of the ``tiny_study`` fixture) in a throwaway PostgreSQL cluster (the
``postgres_url`` fixture of ``conftest.py``). Both call ``seed_study`` at start, so this is
also the test that the rank-selection strategies' plans are enqueued, and run, once: a
duplicated plan would show up as two COMPLETE trials with the same ``strategy`` label and
parameters. Skipped when the PostgreSQL server binaries or the ``psycopg`` driver are
missing.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import optuna
import pytest

pytestmark = pytest.mark.slow

N_TRIALS = 40
STUDY = "tiny_pg"


def _search_argv(tiny_study, storage: str) -> list[str]:
    """The tiny study's search arguments, on ``storage`` under the study name ``STUDY``."""
    argv = list(tiny_study["argv"])
    for flag, value in (("--storage", storage), ("--study-name", STUDY),
                        ("--population-size", "8")):
        argv[argv.index(flag) + 1] = value
    return [*argv, "--n-trials", str(N_TRIALS)]


def _strategy_key(trial: optuna.trial.FrozenTrial) -> tuple[str, str]:
    params = trial.params or trial.system_attrs.get("fixed_params", {})  # also if WAITING
    return trial.user_attrs["strategy"], json.dumps(params, sort_keys=True)


def test_two_search_workers_on_postgres(tiny_study, postgres_url, tmp_path) -> None:
    argv = _search_argv(tiny_study, postgres_url)
    # both workers start on an EMPTY database: they race to create Optuna's tables too
    assert "-q" in argv and str(tiny_study["dir"] / "cache") in argv
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-m", "lrf_optuna.cli", *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=tmp_path)
             for _ in range(2)]
    added, ran = [], []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, f"stdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
        match = re.search(r"(\d+) strategy plan\(s\) enqueued", out)
        assert match, out[-2000:]
        added.append(int(match.group(1)))
        match = re.search(r"this worker ran (\d+) trial\(s\)", out)
        assert match, out[-2000:]
        ran.append(int(match.group(1)))
        assert f"Pareto front of study {STUDY!r}" in out

    study = optuna.load_study(study_name=STUDY, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in trials)
    # every trial ran to the end: nothing failed, pruned, left RUNNING or still WAITING
    assert states == {"COMPLETE": len(trials)}, states
    # --n-trials is the study's total: each worker stops once the study has N_TRIALS
    # finished trials (at most one trial per other worker was already running then)
    assert N_TRIALS <= len(trials) <= N_TRIALS + len(procs) - 1, states
    # no trial lost or counted twice: what the workers ran is exactly what is stored
    assert sum(ran) == len(trials) and all(ran), ran
    assert sorted(t.number for t in trials) == list(range(len(trials)))

    for attr in ("lrf_optuna:space", "lrf_optuna:original", "lrf_optuna:problem"):
        assert attr in study.user_attrs, attr
    assert study.user_attrs["lrf_optuna:original"]["model"] == "tiny"

    show = subprocess.run([sys.executable, "-m", "lrf_optuna.cli", "show", "--storage",
                           postgres_url, "--study-name", STUDY], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert show.returncode == 0, show.stderr[-3000:]
    title = (f"Pareto front of study {STUDY!r}: {len(study.best_trials)} trial(s) of "
             f"{len(trials)}")
    assert title in show.stdout, show.stdout
    assert "seeded by" in show.stdout and "(original model)" in show.stdout

    # every strategy plan ran exactly once: the same plans (label and parameters) as the
    # tiny study, seeded by a single process with the same problem and search space
    tiny = optuna.load_study(study_name=tiny_study["study_name"],
                             storage=tiny_study["storage"])
    expected = collections.Counter(_strategy_key(t) for t in tiny.get_trials(deepcopy=False)
                                   if "strategy" in t.user_attrs)
    assert expected and max(expected.values()) == 1
    seeded = collections.defaultdict(list)
    for t in trials:
        if "strategy" in t.user_attrs:
            seeded[_strategy_key(t)].append(t.number)
    duplicated = {label: numbers for (label, _), numbers in seeded.items()
                  if len(numbers) > 1}
    assert not duplicated, (
        f"{len(duplicated)} strategy plan(s) enqueued and run more than once (label: trial "
        f"numbers): {duplicated}; the workers reported {added} plan(s) enqueued")
    assert set(seeded) == set(expected)
    assert sum(added) == len(seeded), added  # what the workers report is what they added


def test_storage_checks_on_postgres(postgres_url) -> None:
    """check_storage on a server: an empty database, one with studies, a read-only role;
    its write probe leaves nothing behind."""
    import sqlalchemy

    from lrf_optuna.errors import UserError
    from lrf_optuna.study.storage import check_storage

    assert not check_storage(postgres_url).has_studies  # empty: created when opened
    optuna.create_study(study_name="x", storage=postgres_url)
    assert check_storage(postgres_url).has_studies
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE ROLE reader LOGIN"))
        conn.execute(sqlalchemy.text("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader"))
    reader = postgres_url.replace("postgres@", "reader@", 1)
    assert check_storage(reader, write=False).has_studies  # show, export, report: fine
    with pytest.raises(UserError, match=r"cannot write to the storage postgresql\+psycopg://"
                                        r"reader@.*permission denied for table version_info"):
        check_storage(reader)
    with engine.connect() as conn:
        assert "lrf_optuna_write_probe" not in sqlalchemy.inspect(conn).get_table_names()
    engine.dispose()
