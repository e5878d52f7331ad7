"""Fine-tuning jobs: selection, queue, worker loop, artifacts, resumption, concurrency."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from lrf_optuna import cli
from lrf_optuna import finetune as F
from lrf_optuna.costs import model_costs
from lrf_optuna.deploy.files import load_model
from lrf_optuna.deploy.measure import tflite_predict
from lrf_optuna.errors import UserError
from lrf_optuna.export import export_trial
from lrf_optuna.finetune import jobs
from lrf_optuna.finetune.jobs import _claim, _fail
from lrf_optuna.study import open_finetune_study, study_lock
from lrf_optuna.study.artifacts import download_job_files
from lrf_optuna.study.lookup import job_source
from lrf_optuna.study.models import StudyModels
from lrf_optuna.study.storage import heartbeat_storage

#: Small and quick (288 training images: small batches, so that there are some steps).
FAST = F.FinetuneConfig(epochs=2, batch_size=32, learning_rate=1e-3, latency_repeats=5,
                        latency_warmup=1, verbose=0)
ATTRS = ["source_trial", "plan", "lrf_plan", "val_acc_before", "val_acc_after",
         "test_acc_before", "test_acc", "params", "flops", "compression_ratio",
         "keras_bytes", "tflite_bytes", "latency_ms_keras", "latency_ms_tflite", "epochs_run",
         "finetune_seconds", "reverted", "keras_artifact_id", "tflite_artifact_id"]


def _copy_study(tiny_study, dest: Path) -> optuna.Study:
    """A private copy of the tiny study's database (the session fixture stays clean)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_study["dir"] / "study.db", dest / "study.db")
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{dest / 'study.db'}")


def _complete_per_source(study: optuna.Study) -> collections.Counter:
    ft = open_finetune_study(study)
    return collections.Counter(job_source(j) for j in ft.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,)))


def _worker_storage(study: optuna.Study, config: F.FinetuneConfig):
    return heartbeat_storage(study, heartbeat_interval=config.heartbeat_interval,
                             grace_period=config.grace_period, max_retry=config.max_retries)


# -- selection, on a synthetic front -----------------------------------------------------------

def _synthetic_study(proxies, params=(10, 20, 40, 80, 160, 320, 640)) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])

    def add(p: float, proxy: float, plan: dict) -> None:
        study.add_trial(optuna.create_trial(
            values=[p, 2 * p, proxy], params={}, distributions={},
            user_attrs={"params": p, "flops": 2 * p, "proxy": proxy, "lrf_plan": plan}))

    add(700, 1.0, {})  # the original: on the front, never selected
    for i, (p, proxy) in enumerate(zip(params, proxies)):
        add(p, proxy, {"fc": ["svd", i + 1]})
    add(40, proxies[2], {"fc": ["svd", 3]})  # duplicate plan of the 40-parameter trial
    add(100, 0.0, {"fc": ["qr", 1]})  # dominated
    return study


def _params(trials) -> list[int]:
    return [t.user_attrs["params"] for t in trials]


def test_spread_takes_extremes_and_log_spaced_middles() -> None:
    study = _synthetic_study([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    assert _params(F.select_trials(study, 3)) == [10, 80, 640]  # 80 = sqrt(10 * 640)
    assert _params(F.select_trials(study, 4)) == [10, 40, 160, 640]
    assert _params(F.select_trials(study, 1)) == [80]
    every = F.select_trials(study, 50)  # k larger than the front: all candidates
    assert _params(every) == [10, 20, 40, 80, 160, 320, 640]
    assert [t.number for t in every][2] == 3  # of the duplicate plans, the first trial
    again = F.select_trials(study, 4)
    assert [t.number for t in again] == [t.number for t in F.select_trials(study, 4)]


def test_knee_and_its_neighbours() -> None:
    study = _synthetic_study([0.1, 0.5, 0.9, 0.91, 0.92, 0.94, 0.95])
    assert _params(F.select_trials(study, 1, strategy="knee")) == [40]
    assert _params(F.select_trials(study, 3, strategy="knee")) == [20, 40, 80]


def test_budget_filters_and_bad_arguments() -> None:
    study = _synthetic_study([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    assert _params(F.select_trials(study, 3, max_params=200)) == [10, 40, 160]
    assert _params(F.select_trials(study, 9, max_flops=100)) == [10, 20, 40]
    assert _params(F.select_trials(study, 9, min_proxy=0.9)) == [160, 320, 640]
    assert F.select_trials(study, 3, max_params=5) == []
    with pytest.raises(ValueError, match="k must be"):
        F.select_trials(study, 0)
    with pytest.raises(ValueError, match="strategy"):
        F.select_trials(study, 2, strategy="best")  # type: ignore[arg-type]


def test_selection_on_the_tiny_study(tiny_study) -> None:
    study = optuna.load_study(study_name="tiny", storage=tiny_study["storage"])
    for strategy in ("spread", "knee"):
        chosen = F.select_trials(study, 3, strategy=strategy)
        assert len(chosen) == 3
        assert all(t.user_attrs["lrf_plan"] for t in chosen)  # never the original
        assert chosen == F.select_trials(study, 3, strategy=strategy)
    front = [t for t in study.best_trials if t.user_attrs.get("lrf_plan")]
    spread = F.select_trials(study, 3)
    assert spread[0].user_attrs["params"] == min(t.user_attrs["params"] for t in front)
    assert spread[-1].user_attrs["params"] == max(t.user_attrs["params"] for t in front)


# -- the queue --------------------------------------------------------------------------------

def test_enqueue_twice_adds_nothing(tiny_study, tmp_path) -> None:
    study = _copy_study(tiny_study, tmp_path)
    chosen = F.select_trials(study, 3)
    original = F.jobs.original_trial(study)
    assert original is not None and original.user_attrs["lrf_plan"] == {}
    assert F.enqueue_finetune(study, chosen) == 4  # and the fair reference, first
    assert F.enqueue_finetune(study, chosen) == 0
    assert F.enqueue_finetune(study, [chosen[0].number]) == 0
    ft = open_finetune_study(study)
    assert ft.study_name == "tiny:finetune"
    waiting = ft.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["source_trial"] for t in waiting] == [
        original.number, *(t.number for t in chosen)]
    assert [bool(t.user_attrs.get("fair_reference")) for t in waiting] == [True] + [False] * 3
    recipe = F.FinetuneConfig().recipe_key()
    assert {t.user_attrs["recipe"] for t in waiting} == {recipe}
    assert waiting[0].user_attrs["recipe_config"] == F.FinetuneConfig().recipe()
    assert ft.metric_names == ["params", "test_accuracy"]
    # another recipe gets its own jobs and its own fair reference
    ten = F.FinetuneConfig(epochs=10)
    assert F.enqueue_finetune(study, chosen[:1], config=ten) == 2
    assert F.enqueue_finetune(study, chosen[:1], config=ten) == 0
    assert F.enqueue_finetune(study, chosen[1:], config=ten, reference=False) == 2
    by_recipe = collections.Counter(t.user_attrs["recipe"] for t in ft.get_trials())
    assert by_recipe == {recipe: 4, ten.recipe_key(): 4}
    with pytest.raises(KeyError, match="no trial"):
        F.enqueue_finetune(study, [10**6])


def _sqlite_jobs_study(tmp_path: Path, n_jobs: int) -> tuple[str, optuna.Study]:
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name="q", storage=storage)
    for i in range(n_jobs):
        study.enqueue_trial({"x": i})
    study.optimize(lambda t: t.suggest_int("x", 0, 100), n_trials=n_jobs)
    return storage, study


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_concurrent_workers_never_claim_the_same_job(tmp_path) -> None:
    """The pop is atomic on SQLite too (Optuna's is not: FOR UPDATE is ignored)."""
    storage, study = _sqlite_jobs_study(tmp_path, 40)
    assert F.enqueue_finetune(study, range(40)) == 40
    ft = open_finetune_study(study)
    ft.enqueue_trial({"source_trial": 7}, skip_if_exists=False,  # a duplicate job
                     user_attrs={"recipe": F.FinetuneConfig().recipe_key()})
    ft.enqueue_trial({"source_trial": 8}, skip_if_exists=False,  # another recipe: no duplicate
                     user_attrs={"recipe": "other"})
    claimed: list[int] = []
    config = dataclass_replace(FAST, heartbeat_interval=5, grace_period=60)

    def worker() -> None:
        mine = optuna.load_study(study_name="q", storage=storage)
        store, rdb = _worker_storage(mine, config)
        fts = open_finetune_study(mine, storage=store)
        while (got := _claim(fts, rdb, lambda: study_lock(mine, "finetune"))) is not None:
            trial, source = got
            claimed.append(source)
            time.sleep(0.01)
            fts.tell(trial, [1.0, 0.5])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted([*range(40), 8])
    assert _complete_per_source(study) == collections.Counter([*range(40), 8])
    skipped = [j for j in ft.get_trials() if "skipped" in j.user_attrs]
    assert len(skipped) == 1 and skipped[0].state == TrialState.FAIL


def dataclass_replace(config: F.FinetuneConfig, **changes) -> F.FinetuneConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_requeue_running_jobs_without_heartbeat(tmp_path) -> None:
    _, study = _sqlite_jobs_study(tmp_path, 2)
    F.enqueue_finetune(study, [0, 1])
    config = dataclass_replace(FAST, heartbeat_interval=None)
    store, rdb = _worker_storage(study, config)
    assert rdb is None
    ft = open_finetune_study(study, storage=store)
    trial, _ = _claim(ft, rdb, lambda: study_lock(study, "finetune"))  # then the worker "dies"
    assert F.requeue_running_jobs(study) == 1
    states = {j.number: j.state for j in ft.get_trials()}
    assert states[trial.number] == TrialState.FAIL
    waiting = ft.get_trials(states=(TrialState.WAITING,))
    assert sorted(job_source(j) for j in waiting) == sorted([0, 1])


def test_failed_jobs_are_retried_up_to_max_attempts(tmp_path) -> None:
    _, study = _sqlite_jobs_study(tmp_path, 1)
    config = dataclass_replace(FAST, heartbeat_interval=None)
    store, rdb = _worker_storage(study, config)
    ft = open_finetune_study(study, storage=store)
    for _ in range(3):
        assert F.enqueue_finetune(study, [0], max_attempts=3) == 1
        trial, _ = _claim(ft, rdb, lambda: study_lock(study, "finetune"))
        _fail(ft, trial, error="RuntimeError: boom")
    assert F.enqueue_finetune(study, [0], max_attempts=3) == 0
    assert F.enqueue_finetune(study, [0], max_attempts=4) == 1


def test_only_finished_search_trials_are_enqueued() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))
    with pytest.raises(ValueError, match=r"trial\(s\) \[0\] of study .* not COMPLETE"):
        F.enqueue_finetune(study, [0])


# -- running jobs on the tiny study ------------------------------------------------------------

@pytest.fixture(scope="module")
def finetuned(tiny_study, tmp_path_factory):
    d = tmp_path_factory.mktemp("finetuned")
    study = _copy_study(tiny_study, d)
    start = time.perf_counter()
    jobs = F.finetune_study(study, k=3, config=FAST)
    return {"study": study, "jobs": jobs, "seconds": time.perf_counter() - start, "dir": d}


@pytest.mark.slow
def test_jobs_complete_with_every_attribute(finetuned) -> None:
    study, jobs = finetuned["study"], finetuned["jobs"]
    chosen = F.select_trials(study, 3)
    assert [j.user_attrs["source_trial"] for j in jobs] == [t.number for t in chosen]
    models = StudyModels(study)
    for job, source in zip(jobs, chosen):
        ua = job.user_attrs
        assert job.state == TrialState.COMPLETE
        assert all(key in ua for key in ATTRS), sorted(set(ATTRS) - set(ua))
        assert job.values == [ua["params"], ua["test_acc"]]
        assert ua["plan"] == source.user_attrs["plan"]
        assert ua["val_acc_after"] >= ua["val_acc_before"] - 0.05
        assert 0 <= ua["test_acc"] <= 1 and 0 <= ua["test_acc_before"] <= 1
        compressed = models.build(source)
        assert ua["params"] == model_costs(compressed).params == source.user_attrs["params"]
        assert ua["flops"] == model_costs(compressed).flops == source.user_attrs["flops"]
        assert ua["keras_bytes"] > 0 and ua["tflite_bytes"] > 0
        assert ua["latency_ms_keras"] > 0 and ua["latency_ms_tflite"] > 0
        assert 1 <= ua["epochs_run"] <= FAST.epochs and ua["finetune_seconds"] > 0
    ft = open_finetune_study(study)
    original = ft.user_attrs["original"]
    assert original["params"] == study.user_attrs["lrf_optuna:original"]["params"]
    assert 0 <= original["test_acc"] <= 1 and original["latency_ms_tflite"] > 0
    assert all(j.user_attrs["compression_ratio"] >= 1 for j in jobs)


@pytest.mark.slow
def test_dashboard_notes_are_saved(finetuned) -> None:
    from optuna_dashboard._note import get_note_from_system_attrs

    ft = open_finetune_study(finetuned["study"])
    attrs = ft._storage.get_study_system_attrs(ft._study_id)
    assert "original model" in get_note_from_system_attrs(attrs, None)["body"]
    job = finetuned["jobs"][0]
    body = get_note_from_system_attrs(attrs, job._trial_id)["body"]
    assert f"Fine-tuned trial {job.user_attrs['source_trial']}" in body
    assert "val accuracy" in body and "| layer | choice |" in body


@pytest.mark.slow
def test_artifacts_exist_and_download(finetuned, tmp_path) -> None:
    from optuna.artifacts import get_all_artifact_meta

    study, job = finetuned["study"], finetuned["jobs"][0]
    ft = open_finetune_study(study)
    store = Path(ft.user_attrs["artifact_dir"])
    assert store == finetuned["dir"] / "study_artifacts"  # default: beside the database
    metas = get_all_artifact_meta(job, storage=ft._storage)
    assert {m.artifact_id for m in metas} == {job.user_attrs["keras_artifact_id"],
                                              job.user_attrs["tflite_artifact_id"]}
    download_job_files(study, job, tmp_path / "m.keras", tmp_path / "m.tflite")
    assert (tmp_path / "m.keras").stat().st_size == job.user_attrs["keras_bytes"]
    assert (tmp_path / "m.tflite").stat().st_size == job.user_attrs["tflite_bytes"]
    model = load_model(tmp_path / "m.keras")
    assert model.count_params() == job.user_attrs["params"]
    x = np.random.default_rng(0).random((6, 16, 16, 1)).astype("float32")
    assert np.max(np.abs(tflite_predict(tmp_path / "m.tflite", x) - np.asarray(model(x)))) < 1e-4


@pytest.mark.slow
def test_export_uses_the_finetuned_weights(finetuned, tmp_path, recwarn) -> None:
    study, job = finetuned["study"], finetuned["jobs"][1]
    keras_path, tflite_path = export_trial(study, job.user_attrs["source_trial"], tmp_path)
    assert not [w for w in recwarn if "WITHOUT fine-tuning" in str(w.message)]
    assert keras_path.stat().st_size == job.user_attrs["keras_bytes"]
    assert tflite_path.stat().st_size == job.user_attrs["tflite_bytes"]


@pytest.mark.slow
def test_rerun_does_nothing_and_cli_prints_the_table(finetuned, capsys,
                                                    monkeypatch) -> None:
    study = finetuned["study"]
    assert F.enqueue_finetune(study, F.select_trials(study, 3), config=FAST) == 0
    assert F.run_finetune_jobs(study, config=FAST) == []

    def no_training(*args, **kwargs):
        raise AssertionError("a finished job was fine-tuned again")

    monkeypatch.setattr(jobs, "finetune_model", no_training)
    storage = f"sqlite:///{finetuned['dir'] / 'study.db'}"
    assert cli.main(["finetune", "--study-name", "tiny", "--storage", storage,
                     "-k", "3", "--epochs", "2", "--batch-size", "32"]) == 0  # = FAST
    out = capsys.readouterr().out
    assert "0 job(s) enqueued in 'tiny:finetune'" in out
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("trial"))
    assert lines[header + 2].startswith("original")
    assert lines[header + 3].startswith("fair reference")
    rows = {ln.split()[0]: ln.split() for ln in lines[header + 4:] if ln.strip()}
    assert set(rows) == {f"#{j.user_attrs['source_trial']}" for j in finetuned["jobs"]}
    for job in finetuned["jobs"]:
        row = rows[f"#{job.user_attrs['source_trial']}"]
        assert row[1] == f"{job.user_attrs['params']:,}"
        assert f"{job.user_attrs['test_acc']:.4f}" in row
    reference = F.jobs.original_trial(study).number
    assert _complete_per_source(study) == collections.Counter(
        [reference, *(j.user_attrs["source_trial"] for j in finetuned["jobs"])])


@pytest.mark.slow
def test_fair_reference_is_the_original_finetuned_with_the_recipe(finetuned) -> None:
    from lrf_optuna.study.finetune_records import FinetuneRecord
    from lrf_optuna.study.lookup import fair_reference

    study = finetuned["study"]
    ft = open_finetune_study(study)
    job = fair_reference(ft, FAST.recipe_key())
    assert job is not None and job.user_attrs["fair_reference"] is True
    ref = FinetuneRecord.of(job)
    original = ft.user_attrs["original"]
    assert ref.is_reference and ref.recipe == FAST.recipe_key()
    assert ref.measured.params == original["params"]
    assert all(v == "keep" for v in ref.plan.values())
    assert ref.val_acc_before == pytest.approx(original["val_acc"], abs=1e-6)
    assert ref.recipe_config == FAST.recipe()
    assert fair_reference(ft, F.FinetuneConfig(epochs=7).recipe_key()) is None
    # every compressed job's note shows the drop against it
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = ft._storage.get_study_system_attrs(ft._study_id)
    body = get_note_from_system_attrs(attrs, finetuned["jobs"][-1]._trial_id)["body"]
    assert "|  | fine-tuned | fair reference | original |" in body
    assert "Drop against the fair reference" in body


def test_config_defaults_validation_and_cli_overrides() -> None:
    d = F.FinetuneConfig()
    assert (d.epochs, d.batch_size, d.optimizer, d.learning_rate, d.patience) == (
        None, 128, "adam", 1e-3, 3)
    assert (d.min_steps, d.min_epochs, d.max_epochs, d.monitor, d.bn_images) == (
        600, 3, 30, "val_loss", 2048)
    # the budget is counted in steps: 600 steps are 25 epochs of 3,000 images, 3 of 54,000
    assert [d.epochs_for(n) for n in (100, 3_000, 54_000)] == [30, 25, 3]
    assert F.FinetuneConfig(epochs=2).epochs_for(54_000) == 2
    with pytest.raises(ValueError, match="monitor"):
        F.FinetuneConfig(monitor="loss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_epochs"):
        F.FinetuneConfig(min_epochs=5, max_epochs=4)
    with pytest.raises(ValueError, match="epochs"):
        F.FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        F.FinetuneConfig(heartbeat_interval=60, grace_period=60)
    args = cli.build_parser().parse_args(["finetune", "--study-name", "s", "--epochs", "5",
                                          "--learning-rate", "0.01", "--batch-size", "64"])
    c = cli.finetune_config(args)
    assert (c.epochs, c.learning_rate, c.batch_size, c.latency_repeats) == (5, 0.01, 64, 50)
    args = cli.build_parser().parse_args(["finetune", "--study-name", "s", "--epochs", "0"])
    with pytest.raises(UserError, match="epochs"):
        cli.finetune_config(args)


def test_cli_errors_name_the_study(tiny_study, tmp_path, capsys) -> None:
    _copy_study(tiny_study, tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert cli.main(["finetune", "--study-name", "tiny", "--storage", storage,
                     "--max-params", "1"]) == 2
    assert "no Pareto-optimal compressed trial of study 'tiny'" in capsys.readouterr().err
    assert cli.main(["finetune", "--study-name", "other", "--storage", storage]) == 2
    assert "no study 'other'" in capsys.readouterr().err
    assert cli.main(["finetune", "--study-name", "tiny", "--storage",
                     f"sqlite:///{tmp_path / 'missing.db'}"]) == 2
    assert "no study database" in capsys.readouterr().err
    assert cli.main(["finetune", "--study-name", "tiny", "--storage", storage,
                     "--trials", "9999"]) == 2
    assert "study 'tiny' has no trial 9999" in capsys.readouterr().err


# -- interruption and recovery -------------------------------------------------------------------

def test_ctrl_c_fails_the_job_and_the_next_run_redoes_it(tiny_study, tmp_path,
                                                        monkeypatch) -> None:
    study = _copy_study(tiny_study, tmp_path)  # one job, no fair reference: the queue only
    source = F.select_trials(study, 1)[0].number
    assert F.enqueue_finetune(study, [source], reference=False) == 1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "finetune_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        F.run_finetune_jobs(study, config=FAST)
    monkeypatch.undo()
    ft = open_finetune_study(study)
    (job,) = ft.get_trials()
    assert job.state == TrialState.FAIL and job.user_attrs["error"].startswith("Keyboard")
    assert F.enqueue_finetune(study, [source], reference=False) == 1  # a failed job is retried
    (done,) = F.run_finetune_jobs(study, config=FAST)
    assert done.state == TrialState.COMPLETE and done.user_attrs["source_trial"] == source
    assert F.enqueue_finetune(study, [source], reference=False) == 0


def test_a_killed_workers_job_is_recovered_by_heartbeat(tiny_study, tmp_path) -> None:
    study = _copy_study(tiny_study, tmp_path)  # one job, no fair reference: the queue only
    source = F.select_trials(study, 1)[0].number
    F.enqueue_finetune(study, [source], reference=False)
    config = dataclass_replace(FAST, heartbeat_interval=1, grace_period=2)
    store, rdb = _worker_storage(study, config)
    ft = open_finetune_study(study, storage=store)
    trial, _ = _claim(
        ft, rdb, lambda: study_lock(study, "finetune"))  # claimed, then the worker "dies"
    assert F.run_finetune_jobs(study, config=config) == []  # not stale yet: left alone
    time.sleep(3)
    (done,) = F.run_finetune_jobs(study, config=config)
    assert done.state == TrialState.COMPLETE and done.user_attrs["source_trial"] == source
    states = {j.number: j.state for j in ft.get_trials()}
    assert states[trial.number] == TrialState.FAIL  # failed by the heartbeat check
    assert _complete_per_source(study) == {source: 1}


def test_a_job_killed_before_its_first_heartbeat_is_recovered(tiny_study, tmp_path) -> None:
    # a worker killed between popping a job (RUNNING) and recording its first heartbeat
    # leaves a job Optuna's fail_stale_trials never sees (it only fails trials with one)
    study = _copy_study(tiny_study, tmp_path)
    source = F.select_trials(study, 1)[0].number
    F.enqueue_finetune(study, [source], reference=False)
    config = dataclass_replace(FAST, heartbeat_interval=1, grace_period=2)
    store, _ = _worker_storage(study, config)
    ft = open_finetune_study(study, storage=store)
    popped = ft.ask()  # RUNNING, no heartbeat: the worker "dies" here
    assert F.run_finetune_jobs(study, config=config) == []  # too young: a live worker's
    time.sleep(3)
    (done,) = F.run_finetune_jobs(study, config=config)
    assert done.state == TrialState.COMPLETE and done.user_attrs["source_trial"] == source
    lost = ft._storage.get_trial(popped._trial_id)
    assert lost.state == TrialState.FAIL and "no heartbeat" in lost.user_attrs["error"]
    assert _complete_per_source(study) == {source: 1}


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


def _worker_process(storage: str, **config) -> subprocess.Popen:
    settings = {"epochs": 2, "batch_size": 32, "learning_rate": 1e-3, "latency_repeats": 5,
                "latency_warmup": 1, "verbose": 0, **config}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, storage, json.dumps(settings)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _ran(proc: subprocess.Popen, timeout: float = 600) -> list[int]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("RAN "))
    return json.loads(line[4:])


@pytest.mark.slow
def test_two_worker_processes_run_each_job_once(tiny_study, tmp_path) -> None:
    study = _copy_study(tiny_study, tmp_path)
    chosen = F.select_trials(study, 4)
    assert F.enqueue_finetune(study, chosen) == 5  # and the fair reference
    reference = F.jobs.original_trial(study).number
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    procs = [_worker_process(storage, heartbeat_interval=2, grace_period=60)
             for _ in range(2)]
    ran = [_ran(p) for p in procs]
    assert not set(ran[0]) & set(ran[1])
    ft = open_finetune_study(study)
    complete = ft.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(ran[0] + ran[1]) == sorted(j.number for j in complete)
    assert _complete_per_source(study) == collections.Counter(
        [reference, *(t.number for t in chosen)])
    assert len(ft.get_trials()) == 5  # no duplicate, failed or skipped job


@pytest.mark.slow
def test_sigkilled_worker_process_is_recovered(tiny_study, tmp_path) -> None:
    study = _copy_study(tiny_study, tmp_path)
    source = F.select_trials(study, 1)[0].number
    F.enqueue_finetune(study, [source], reference=False)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _worker_process(storage, heartbeat_interval=1, grace_period=3)
    ft = open_finetune_study(study)
    deadline = time.time() + 120
    while not ft.get_trials(states=(TrialState.RUNNING,)):
        assert proc.poll() is None and time.time() < deadline, "the worker never started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = ft.get_trials(states=(TrialState.RUNNING,))
    time.sleep(4)  # > grace period
    config = dataclass_replace(FAST, heartbeat_interval=1, grace_period=3)
    (done,) = F.run_finetune_jobs(study, config=config)
    assert done.state == TrialState.COMPLETE and done.user_attrs["source_trial"] == source
    states = {j.number: j.state for j in ft.get_trials()}
    assert states[killed.number] == TrialState.FAIL
    assert _complete_per_source(study) == {source: 1}
