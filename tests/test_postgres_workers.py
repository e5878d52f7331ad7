"""Two fine-tuning worker processes on a throwaway PostgreSQL cluster: each job runs once.

The cluster lives in a temporary directory, listens on a unix socket only (on a free port
number) and is stopped and deleted afterwards. As root, ``initdb`` / ``pg_ctl`` run as the
``postgres`` user through ``runuser``. Skipped when the PostgreSQL server binaries or the
``psycopg`` driver are missing.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lrf_optuna import finetune as F

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres_url():
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg", reason="the psycopg (v3) driver is not installed")
    root = Path(tempfile.mkdtemp(prefix="lrf_pg_"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)

    run(str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run(str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses='' -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import optuna
    from lrf_optuna.finetune import FinetuneConfig, run_finetune_jobs
    config = FinetuneConfig(**json.loads(sys.argv[2]))
    study = optuna.load_study(study_name="tiny", storage=sys.argv[1])
    jobs = run_finetune_jobs(study, config=config)
    print("RAN", json.dumps([j.number for j in jobs]), flush=True)
""")


def test_two_worker_processes_on_postgres(tiny_study, postgres_url, tmp_path) -> None:
    optuna.copy_study(from_study_name="tiny", from_storage=tiny_study["storage"],
                      to_storage=postgres_url)
    study = optuna.load_study(study_name="tiny", storage=postgres_url)
    assert F._lock_path(study) is None  # no file lock: PostgreSQL locks the rows
    chosen = F.select_trials(study, 4)
    assert F.enqueue_finetune(study, chosen) == 4
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
    ft = F.finetune_study_of(study)
    complete = ft.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(ran[0] + ran[1]) == sorted(j.number for j in complete)
    per_source = collections.Counter(j.user_attrs["source_trial"] for j in complete)
    assert per_source == collections.Counter(t.number for t in chosen)
    assert len(ft.get_trials()) == 4
    # non-SQLite storage: artifacts default to studies/artifacts (of the worker's cwd)
    assert Path(ft.user_attrs["artifact_dir"]) == (tmp_path / "studies" / "artifacts")
