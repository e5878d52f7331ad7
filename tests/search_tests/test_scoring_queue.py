"""The similarity cache scored by several workers on one study's storage
(:mod:`lrf_optuna.search.scoring_queue`): every unit once, the same scores as one process,
a killed worker's unit redone by another, failures named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from lrf_optuna.errors import UserError
from lrf_optuna.scoring.cache import GridConfig, SimilarityBuild, SimilarityCache
from lrf_optuna.search import scoring_queue as Q
from lrf_optuna.study.lookup import search_study_names
from search_tests.test_search import _model  # the same small net

GRID = GridConfig(points=4)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A saved model and calibration inputs (what every worker process loads), and the
    cache one process builds from them alone (the reference)."""
    root = tmp_path_factory.mktemp("queue")
    model = _model()
    model.save(root / "model.keras")
    x = np.random.default_rng(0).uniform(0, 1, (48, 10, 10, 2)).astype("float32")
    np.save(root / "x.npy", x)
    local = SimilarityCache.build(keras.models.load_model(root / "model.keras"), x,
                                  cache_dir=root / "local", grid=GRID, progress=False)
    return root, x, local


def assert_same_scores(cache: SimilarityCache, local: SimilarityCache) -> None:
    """The same candidates (choice, costs) with the same scores as ``local``: equal to
    1e-6, since BLAS sums in another order on another thread count, so the data-aware
    methods' fits differ from one process to another around 1e-10."""
    assert sorted(cache.tables) == sorted(local.tables)
    for path, table in local.tables.items():
        got = cache.tables[path].candidates
        assert [(c.method, c.rank, c.params, c.macs) for c in got] == \
            [(c.method, c.rank, c.params, c.macs) for c in table.candidates]
        for mine, ref in zip(got, table.candidates):
            assert mine.scores.keys() == ref.scores.keys()
            for m in ref.scores:
                assert abs(mine.scores[m] - ref.scores[m]) <= 1e-6, (path, mine, ref)


def _queue_study(url: str, name: str = "q") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=url, load_if_exists=True)


def _units(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    queue = Q.find_scoring_queue(study)
    assert queue is not None
    out: dict[str, list] = {}
    for t in queue.get_trials(deepcopy=False):
        out.setdefault(t.user_attrs[Q.UNIT_ATTR], []).append(t)
    return out


def _builder(root: Path, x: np.ndarray, cache_dir: Path) -> SimilarityBuild:
    model = keras.models.load_model(root / "model.keras")
    return SimilarityCache.builder(model, x, cache_dir=cache_dir, grid=GRID)


def test_one_worker_on_the_storage_makes_the_local_cache(problem, tmp_path) -> None:
    root, x, local = problem
    study = _queue_study(f"sqlite:///{tmp_path / 's.db'}")
    build = _builder(root, x, tmp_path / "shared")
    assert build.key == local.fingerprint  # the same cache, written elsewhere
    report = Q.score_on_storage(study, build, progress=False, heartbeat_interval=1,
                                grace_period=3)
    assert report.cache.complete and sorted(report.scored) == sorted(local.layers)
    assert report.candidates == sum(len(t.candidates) for t in local.tables.values())
    assert report.device == "CPU:0"
    assert_same_scores(report.cache, local)
    units = _units(study)
    assert sorted(units) == sorted(local.layers)
    for trials in units.values():
        assert [t.state for t in trials] == [TrialState.COMPLETE]
        assert trials[0].values[0] > 0 and trials[0].user_attrs[Q.DEVICE_ATTR] == "CPU:0"
    # the queue is not a search study, and a second call scores nothing
    assert search_study_names(f"sqlite:///{tmp_path / 's.db'}") == ["q"]
    again = Q.score_on_storage(study, _builder(root, x, tmp_path / "shared"), progress=False)
    assert again.scored == [] and again.cache.complete
    assert all(len(t) == 1 for t in _units(study).values())


def test_a_worker_with_another_cache_dir_or_model_is_refused(problem, tmp_path) -> None:
    root, x, _ = problem
    study = _queue_study(f"sqlite:///{tmp_path / 's.db'}")
    Q.score_on_storage(study, _builder(root, x, tmp_path / "shared"), progress=False,
                       max_units=1)
    with pytest.raises(UserError, match=r"pass --cache-dir .*shared"):
        Q.score_on_storage(study, _builder(root, x, tmp_path / "elsewhere"), progress=False)
    other = SimilarityCache.builder(_model(), x[:40], cache_dir=tmp_path / "shared",
                                    grid=GRID)
    with pytest.raises(UserError, match="every worker must run the same search command"):
        Q.score_on_storage(study, other, progress=False)
    with pytest.raises(UserError, match="differ from the shared build"):
        Q.shared_build(study, _model(), x[:40])
    rebuilt = Q.shared_build(study, keras.models.load_model(root / "model.keras"), x)
    expected = _builder(root, x, tmp_path / "shared")
    assert rebuilt.key == expected.key
    assert rebuilt.cache.directory == (tmp_path / "shared").resolve() / expected.key[:16]


def test_a_failing_unit_is_retried_then_named(problem, tmp_path, monkeypatch) -> None:
    root, x, _ = problem
    study = _queue_study(f"sqlite:///{tmp_path / 's.db'}")
    real = SimilarityBuild.run

    def broken(self, unit, bar):
        if unit.name == "c2":
            raise RuntimeError("out of memory (simulated)")
        return real(self, unit, bar)

    monkeypatch.setattr(SimilarityBuild, "run", broken)
    with pytest.raises(UserError, match=r"'c2' \(2 attempts, last: RuntimeError: out of "
                                        r"memory \(simulated\)\)"):
        Q.score_on_storage(study, _builder(root, x, tmp_path / "shared"), progress=False,
                           max_attempts=2, poll_seconds=0.05)
    units = _units(study)
    assert [t.state for t in units["c2"]] == [TrialState.FAIL] * 2
    assert all([t.state for t in units[p]] == [TrialState.COMPLETE]
               for p in ("c1", "fc1", "fc2"))  # the other units are stored
    cache = SimilarityCache.load(_builder(root, x, tmp_path / "shared").cache.directory)
    assert sorted(cache.tables) == ["c1", "fc1", "fc2"]


WORKER = textwrap.dedent("""
    import json, os, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pathlib import Path
    import keras, numpy as np, optuna
    from lrf_optuna.scoring.cache import GridConfig, SimilarityBuild, SimilarityCache
    from lrf_optuna.search.scoring_queue import score_on_storage
    url, root, cache_dir, slow = sys.argv[1:5]
    real = SimilarityBuild.run
    def run(self, unit, bar):
        print("START", unit.name, flush=True)
        if unit.name == slow:
            time.sleep(600)
        return real(self, unit, bar)
    SimilarityBuild.run = run
    model = keras.models.load_model(Path(root) / "model.keras")
    x = np.load(Path(root) / "x.npy")
    study = optuna.create_study(study_name="q", storage=url, load_if_exists=True)
    build = SimilarityCache.builder(model, x, cache_dir=cache_dir, grid=GridConfig(points=4))
    report = score_on_storage(study, build, heartbeat_interval=1, grace_period=4,
                              poll_seconds=0.2, progress=False)
    print("SCORED", json.dumps(report.scored), flush=True)
""")


def _worker(url: str, root: Path, cache_dir: Path, slow: str = "") -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(root), str(cache_dir),
                             slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _scored(proc: subprocess.Popen, timeout: float = 600) -> list[str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("SCORED "))[7:])


def check_two_workers(url: str, root: Path, x: np.ndarray, local: SimilarityCache,
                      cache_dir: Path) -> None:
    """Two worker processes on ``url``: each unit scored once, the local cache's scores."""
    _queue_study(url)
    procs = [_worker(url, root, cache_dir) for _ in range(2)]
    scored = [_scored(p) for p in procs]
    assert not set(scored[0]) & set(scored[1])
    assert sorted(scored[0] + scored[1]) == sorted(local.layers)
    study = optuna.load_study(study_name="q", storage=url)
    units = _units(study)
    assert sorted(units) == sorted(local.layers)
    assert all([t.state for t in trials] == [TrialState.COMPLETE] and
               not trials[0].user_attrs.get(Q.SKIPPED_ATTR) for trials in units.values())
    cache = SimilarityCache.load(cache_dir / local.fingerprint[:16])
    assert_same_scores(cache, local)


def check_killed_worker(url: str, root: Path, x: np.ndarray, local: SimilarityCache,
                        cache_dir: Path) -> None:
    """A worker SIGKILLed inside a unit: another worker redoes that unit (after the grace
    period) and nothing else; nothing is lost."""
    _queue_study(url)
    victim = _worker(url, root, cache_dir, slow="c2")
    assert victim.stdout is not None
    for line in victim.stdout:  # wait until it holds c2
        if line.startswith("START c2"):
            break
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    study = optuna.load_study(study_name="q", storage=url)
    before = {p: [t.state for t in ts] for p, ts in _units(study).items()}
    assert TrialState.RUNNING in before["c2"]
    t0 = time.perf_counter()
    rescuer = _scored(_worker(url, root, cache_dir))
    assert "c2" in rescuer and time.perf_counter() - t0 >= 3  # waited for the grace period
    units = _units(study)
    states = {p: sorted(t.state.name for t in ts) for p, ts in units.items()}
    assert states["c2"] == ["COMPLETE", "FAIL"]  # the killed attempt, then the retry
    done_before = [p for p, s in before.items() if s == [TrialState.COMPLETE]]
    assert not set(done_before) & set(rescuer)  # what the victim finished stays done
    assert all(s == ["COMPLETE"] for p, s in states.items() if p != "c2")
    cache = SimilarityCache.load(cache_dir / local.fingerprint[:16])
    assert_same_scores(cache, local)


@pytest.mark.slow
def test_two_worker_processes_on_sqlite(problem, tmp_path) -> None:
    root, x, local = problem
    check_two_workers(f"sqlite:///{tmp_path / 's.db'}", root, x, local, tmp_path / "c")


@pytest.mark.slow
def test_a_killed_worker_unit_is_redone_on_sqlite(problem, tmp_path) -> None:
    root, x, local = problem
    check_killed_worker(f"sqlite:///{tmp_path / 's.db'}", root, x, local, tmp_path / "c")


def test_search_with_shared_scoring_and_a_scoring_only_worker(tmp_path, capsys) -> None:
    """``create_lrf_study(shared_scoring=True)`` scores the cache through the queue (the
    same cache a local search builds) and then searches; ``lrf-optuna score`` is a
    scoring-only worker that finds nothing left, and refuses a study without a queue."""
    from lrf_optuna import cli
    from lrf_optuna.data import from_arrays
    from lrf_optuna.search import create_lrf_study

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (120, 10, 10, 2), dtype=np.uint8)
    data = from_arrays(x[:100], np.arange(100) % 4, x[100:], np.arange(20) % 4, name="toy")
    model = _model()
    kwargs = dict(grid=GRID, population_size=10, show_progress_bar=False, progress=False,
                  calibration_size=32, n_trials=12)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study, objective = create_lrf_study(model, data, study_name="sh", storage=url,
                                        cache_dir=tmp_path / "c", shared_scoring=True,
                                        **kwargs)
    units = _units(study)
    assert sorted(units) == sorted(objective.cache.layers)
    assert all([t.state for t in ts] == [TrialState.COMPLETE] for ts in units.values())
    assert len(study.trials) >= 12 and objective.cache.complete
    _, alone = create_lrf_study(model, data, study_name="alone",
                                storage=f"sqlite:///{tmp_path / 'alone.db'}",
                                cache_dir=tmp_path / "c2", **kwargs)
    assert alone.cache.fingerprint == objective.cache.fingerprint
    assert_same_scores(objective.cache, alone.cache)
    assert cli.main(["score", "--study-name", "sh", "--storage", url, "-q"]) == 0
    out = capsys.readouterr().out
    assert "this worker scored 0 layer(s), 0 candidates" in out and "is complete" in out
    for unit in list((objective.cache.directory / "layers").glob("00[01]-*.json")):
        unit.unlink()  # two layers' results lost: the scoring-only worker redoes them
    assert cli.main(["score", "--study-name", "sh", "--storage", url, "-q"]) == 0
    out = capsys.readouterr().out
    assert "this worker scored 2 layer(s)" in out and "is complete" in out
    assert_same_scores(SimilarityCache.load(objective.cache.directory), alone.cache)
    assert cli.main(["score", "--study-name", "alone", "--storage",
                     f"sqlite:///{tmp_path / 'alone.db'}", "-q"]) == 2
    err = capsys.readouterr().err
    assert "has no shared scoring" in err and "--shared-scoring" in err
