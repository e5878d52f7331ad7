"""Fine-tuning as resumable, multi-worker Optuna jobs.

Fine-tuning results live in the search study's fine-tuning study
``"<study_name>:finetune"`` (:func:`lrf_optuna.study.open_finetune_study`). Each of its
trials is one *job*:

* parameter ``source_trial`` (``IntDistribution(0, 10**9)``): the search trial fine-tuned;
* values ``(params, test_accuracy)`` (minimize, maximize; metric names set), so the
  dashboard plots the fine-tuned front;
* user attributes: ``source_trial``, ``plan`` (readable), ``lrf_plan``, ``recipe`` (digest
  of the training settings) and ``recipe_config`` (the settings), ``val_acc_before``,
  ``val_acc_after``, ``test_acc_before``, ``test_acc``, ``params``, ``flops``,
  ``compression_ratio``, ``keras_bytes``, ``tflite_bytes``, ``latency_ms_keras``,
  ``latency_ms_tflite``, ``epochs_run``, ``finetune_seconds``, ``reverted``,
  ``from_logits``, ``keras_artifact_id``, ``tflite_artifact_id``, ``artifact_dir``,
  ``worker`` (read back with :class:`lrf_optuna.study.finetune_records.FinetuneRecord`);
* Optuna artifacts: the fine-tuned ``.keras`` (no optimizer state) and float32 ``.tflite``
  (:func:`lrf_optuna.study.artifacts.upload_model_files`);
* an optuna-dashboard Markdown note (:func:`lrf_optuna.study.notes.job_note`).

The fine-tuning study also holds user attribute ``original`` (the untouched original model
measured the same way, once) with a study note, ``artifact_dir`` and ``source_study``. The
**fair reference** of each recipe is a job too: the original model (the search trial with
the empty plan) fine-tuned with that recipe (user attribute ``fair_reference``), enqueued
first by :func:`enqueue_finetune`; read it with :func:`lrf_optuna.study.lookup.fair_reference`.

Workflow: :func:`~lrf_optuna.finetune.select.select_trials` -> :func:`enqueue_finetune` ->
:func:`run_finetune_jobs` (or all three: :func:`finetune_study`; CLI:
``lrf-optuna finetune``).

Workers and resumption
----------------------
Any number of workers (processes, machines for a server database) may run
:func:`run_finetune_jobs` on the same storage; each takes one WAITING job at a time.

* **No job runs twice.** Optuna pops an enqueued trial by setting it RUNNING; on
  PostgreSQL/MySQL that update is row-locked (``SELECT ... FOR UPDATE``), but SQLite ignores
  ``FOR UPDATE`` and two processes *can* pop the same trial (observed with Optuna 5.0). So
  every pop, enqueue and stale-job check holds :func:`lrf_optuna.study.study_lock`: a file
  lock on ``<db>.finetune.lock`` beside a SQLite database, a PostgreSQL advisory lock on a
  server database (two ``finetune`` commands started together would otherwise enqueue the
  same jobs twice). In addition a worker drops a popped job when another job of the same
  source trial and recipe is already COMPLETE or started earlier and still RUNNING; the
  dropped job is marked FAIL with user attribute ``skipped``.
* **A COMPLETE job is never redone**, and :func:`enqueue_finetune` adds nothing for a
  source trial with a COMPLETE, WAITING or RUNNING job of the same recipe (so enqueueing
  twice adds nothing). A job is trained with the recipe it was enqueued with
  (``recipe_config``), whatever the worker's own config says; the worker's config only
  decides how models are measured (latency repeats, TFLite threads) and heartbeats.
* **Killed workers** (SIGKILL, power loss): for RDB storages the worker opens its own
  storage with a heartbeat (``FinetuneConfig.heartbeat_interval``, default 10 s) and
  ``grace_period`` (default 60 s) and
  ``optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)``. Before popping, each
  worker fails RUNNING jobs whose heartbeat is older than the grace period; the callback
  re-enqueues them as WAITING copies, which are then run normally. A job that never
  recorded a heartbeat (its worker died between popping it and the first beat) is failed
  and re-enqueued the same way once it started longer than the grace period ago. So
  rerunning the same command after the grace period resumes a killed job. (A job that
  is RUNNING but not yet stale belongs to a live worker, or becomes stale later: the log says so.)
* **Errors and Ctrl-C** mark the job FAIL (user attribute ``error``); the next
  :func:`enqueue_finetune` (e.g. rerunning ``lrf-optuna finetune``) enqueues a new job for
  that source trial, up to ``max_attempts`` (3) failed attempts.
* Storages without heartbeat (in-memory, journal): :func:`requeue_running_jobs` re-enqueues
  RUNNING jobs explicitly (only when no worker is alive).

Example:
    >>> study = optuna.load_study(study_name="lenet5",  # doctest: +SKIP
    ...                           storage="sqlite:///studies/lenet5.db")
    >>> jobs = finetune_study(study, k=3, config=FinetuneConfig(epochs=2))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna.device import on_compute_device
from lrf_optuna.finetune.batchnorm import batchnorm_layers, train_mode_accuracy
from lrf_optuna.finetune.config import FinetuneConfig
from lrf_optuna.finetune.recipe import (
    TeacherOutputs,
    finetune_model,
    outputs_probabilities,
    teacher_outputs,
)
from lrf_optuna.finetune.select import Selection, choose_trials
from lrf_optuna.formatting import kib
from lrf_optuna.paired import pack_correct
from lrf_optuna.plan import LRF_PLAN_ATTR, PLAN_ATTR
from lrf_optuna.study.artifacts import measure_model, upload_model_files
from lrf_optuna.study.finetune_records import (
    ARTIFACT_DIR_ATTR,
    BASELINE_ATTR,
    BN_REESTIMATED_ATTR,
    DEPLOYED_ATTR,
    DEVICE_ATTR,
    EPOCHS_RUN_ATTR,
    ERROR_ATTR,
    FINETUNE_SECONDS_ATTR,
    FROM_LOGITS_ATTR,
    KERAS_BYTES_ATTR,
    LATENCY_MS_KERAS_ATTR,
    LATENCY_MS_TFLITE_ATTR,
    NAME_ATTR,
    RECIPE_ATTR,
    RECIPE_CONFIG_ATTR,
    RECIPE_TEXT_ATTR,
    REFERENCE_ATTR,
    REVERTED_ATTR,
    SKIPPED_ATTR,
    SOURCE_TRIAL,
    STEPS_ATTR,
    TEST_ACC_ATTR,
    TEST_ACC_BEFORE_ATTR,
    TEST_CORRECT_ATTR,
    TEST_IMAGES_ATTR,
    TFLITE_BYTES_ATTR,
    TFLITE_RUNTIME_ATTR,
    VAL_ACC_AFTER_ATTR,
    VAL_ACC_ATTR,
    VAL_ACC_BEFORE_ATTR,
    VAL_ACC_BUILT_ATTR,
    VAL_CORRECT_ATTR,
    VAL_IMAGES_ATTR,
    WORKER_ATTR,
    FinetuneRecord,
)
from lrf_optuna.study.lookup import (
    artifact_store_dir,
    fair_reference,
    find_finetune_study,
    job_recipe,
    job_source,
    jobs_by_source,
    latest_jobs,
    open_finetune_study,
)
from lrf_optuna.study.models import StudyModels
from lrf_optuna.study.notes import job_note, original_note, save_note_quietly
from lrf_optuna.study.queue import claim_next, fail_trial, worker_id
from lrf_optuna.study.records import (
    COMPRESSION_RATIO_ATTR,
    FLOPS_ATTR,
    PARAMS_ATTR,
    get_search_trial,
)
from lrf_optuna.study.recovery import HeartbeatThread
from lrf_optuna.study.storage import heartbeat_storage, safe_name, study_lock

if TYPE_CHECKING:
    from lrf_optuna.problem import Problem

__all__ = ["JOB_DISTRIBUTION", "JobCallback", "enqueue_finetune", "finetune_study",
           "original_trial", "requeue_running_jobs", "run_finetune_jobs"]

logger = logging.getLogger(__name__)

#: Any trial number fits (enqueued jobs never sample it).
JOB_DISTRIBUTION = optuna.distributions.IntDistribution(0, 10**9)
#: Called with the fine-tuning study and a job a worker finished (COMPLETE or FAIL).
JobCallback = Callable[[optuna.Study, FrozenTrial], None]


# -- the queue -----------------------------------------------------------------------------

def _attempts(jobs: Iterable[FrozenTrial]) -> int:
    return sum(1 for j in jobs if j.state == TrialState.FAIL and SKIPPED_ATTR not in j.user_attrs)


def original_trial(study: optuna.Study) -> FrozenTrial | None:
    """The search trial of the original model (COMPLETE, empty plan; trial 0 of a study
    seeded by :meth:`~lrf_optuna.search.LRFObjective.seed_study`), or ``None``."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(LRF_PLAN_ATTR) == {} and PARAMS_ATTR in t.user_attrs:
            return t
    return None


def enqueue_finetune(study: optuna.Study, trials: Iterable[FrozenTrial | int], *,
                     config: FinetuneConfig | None = None,
                     max_attempts: int | None = None, reference: bool = True) -> int:
    """Enqueue one fine-tuning job per source trial and recipe; returns how many were
    added.

    Every job records the recipe of ``config`` (:meth:`FinetuneConfig.recipe`; user
    attributes ``recipe`` and ``recipe_config``) and is trained with it by whichever worker
    runs it. With ``reference`` (default), the **fair reference** of the recipe -- a job
    fine-tuning the original model (the search trial with the empty plan) with the same
    recipe -- is enqueued first when the recipe has none yet, so that every drop can be
    measured against the original given exactly the same training.

    A source trial with a COMPLETE, WAITING or RUNNING job of this recipe gets nothing (so
    calling this twice adds nothing; another recipe gets its own jobs); one whose jobs of
    this recipe all FAILed gets a new job until it has ``max_attempts`` failed attempts
    (default ``config.max_attempts``). Jobs carry user attributes ``source_trial`` and
    ``plan`` from the start, so the dashboard shows what is queued.

    Raises:
        KeyError: a trial number is not in ``study``.
        ValueError: a trial is not COMPLETE.
    """
    config = config or FinetuneConfig()
    max_attempts = config.max_attempts if max_attempts is None else max_attempts
    numbers = [t if isinstance(t, int) else t.number for t in trials]
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    missing = [n for n in numbers if n not in by_number]
    if missing:
        raise KeyError(f"study {study.study_name!r} has no trial(s) {missing}")
    unfinished = [n for n in numbers if by_number[n].state != TrialState.COMPLETE]
    if unfinished:
        raise ValueError(f"trial(s) {unfinished} of study {study.study_name!r} are not "
                         "COMPLETE; only finished search trials can be fine-tuned")
    original = original_trial(study) if reference and numbers else None
    if reference and numbers and original is None:
        logger.warning("study %r has no trial of the original model (empty plan): no fair "
                       "reference can be fine-tuned; drops are shown against the untouched "
                       "original only", study.study_name)
    if original is not None:
        numbers = [original.number, *numbers]
    recipe = config.recipe_key()
    ft = open_finetune_study(study)
    added = 0
    with study_lock(study, "finetune"):
        existing = jobs_by_source(ft, recipe=recipe)
        for n in dict.fromkeys(numbers):
            jobs = existing.get(n, [])
            if any(j.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
                   for j in jobs):
                continue
            if _attempts(jobs) >= max_attempts:
                logger.warning("trial %d of study %r failed fine-tuning %d time(s); not "
                               "enqueued again (see the %r attribute of jobs %s of %r)",
                               n, study.study_name, _attempts(jobs), ERROR_ATTR,
                               [j.number for j in jobs], ft.study_name)
                continue
            attrs: dict[str, Any] = {SOURCE_TRIAL: n,
                                     PLAN_ATTR: by_number[n].user_attrs.get(PLAN_ATTR, {}),
                                     RECIPE_ATTR: recipe, RECIPE_CONFIG_ATTR: config.recipe()}
            if original is not None and n == original.number:
                attrs[REFERENCE_ATTR] = True
            ft.enqueue_trial({SOURCE_TRIAL: n}, user_attrs=attrs)
            added += 1
    logger.info("enqueued %d fine-tuning job(s) in %r (recipe %s: %s)", added, ft.study_name,
                recipe, config.describe())
    return added


def _job_config(job: FrozenTrial | optuna.Trial, base: FinetuneConfig) -> FinetuneConfig:
    """``base`` with the recipe the job was enqueued with (``base`` itself for a job made
    before recipes were recorded)."""
    recipe = job.user_attrs.get(RECIPE_CONFIG_ATTR)
    return base.with_recipe(dict(recipe)) if isinstance(recipe, dict) else base


def requeue_running_jobs(study: optuna.Study) -> int:
    """Mark every RUNNING job FAIL and enqueue a new job for its source trial (same
    recipe).

    For storages without heartbeat, after a worker was killed. Only call it when no
    worker is running: a live worker's job would run twice.
    """
    ft = find_finetune_study(study)
    if ft is None:
        return 0
    killed: list[tuple[int, FinetuneConfig]] = []
    with study_lock(study, "finetune"):
        for job in ft.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                ft.tell(job.number, state=TrialState.FAIL)
                source = job_source(job)
                if source is not None:
                    killed.append((source, _job_config(job, FinetuneConfig())))
    return sum(enqueue_finetune(study, [source], config=config, max_attempts=10**9,
                                reference=False) for source, config in killed)


def _job(ft: optuna.Study, number: int) -> FrozenTrial:
    return next(j for j in ft.get_trials(deepcopy=False) if j.number == number)


def _fail(ft: optuna.Study, trial: optuna.Trial, **attrs: Any) -> None:
    fail_trial(ft, trial, **attrs)


def _started(job: FrozenTrial) -> tuple[datetime.datetime, int]:
    return (job.datetime_start or datetime.datetime.min, job.number)


def _claim(ft: optuna.Study, rdb: optuna.storages.RDBStorage | None,
           lock: Callable[[], contextlib.AbstractContextManager[None]]
           ) -> tuple[optuna.Trial, int] | None:
    """Pop the next WAITING job (under the study lock); ``None`` when the queue is empty.

    Also fails stale RUNNING jobs first (their callback re-enqueues them) and drops
    duplicate jobs of a source trial that is done or being done by another worker.
    """
    while True:
        claimed = claim_next(ft, rdb, lock, error_attr=ERROR_ATTR)
        if claimed is None:
            return None
        trial, jobs = claimed
        mine = next(j for j in jobs if j.number == trial.number)
        source = job_source(mine)
        if source is None:
            _fail(ft, trial, **{ERROR_ATTR: "the fine-tuning queue emptied while this worker "
                              "asked for a job (another worker took the last one): nothing "
                              "to do"})
            return None
        trial.suggest_int(SOURCE_TRIAL, JOB_DISTRIBUTION.low, JOB_DISTRIBUTION.high)
        recipe = job_recipe(mine)
        other = [j for j in jobs if j.number != mine.number and job_source(j) == source
                 and job_recipe(j) == recipe and (
            j.state == TrialState.COMPLETE or (
                j.state == TrialState.RUNNING and _started(j) < _started(mine)))]
        if other:
            logger.info("job %d: trial %d is already handled by job %d; skipped",
                        trial.number, source, other[0].number)
            _fail(ft, trial, **{SKIPPED_ATTR: f"duplicate of job {other[0].number}"})
            continue
        return trial, source


# -- the worker ----------------------------------------------------------------------------

def _correctness(val: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """The per-image results a job (or the original) records, for paired drops
    (:mod:`lrf_optuna.paired`)."""
    return {VAL_CORRECT_ATTR: pack_correct(val), VAL_IMAGES_ATTR: len(val),
            TEST_CORRECT_ATTR: pack_correct(test), TEST_IMAGES_ATTR: len(test)}


class _Worker:
    """Runs jobs: what it loads (problem, cache, the original's numbers, the teacher's
    logits) is loaded once."""

    def __init__(self, study: optuna.Study, ft: optuna.Study, config: FinetuneConfig,
                 store_dir: Path, problem: Problem | None) -> None:
        self.study, self.ft, self.config = study, ft, config
        self.store_dir = store_dir
        self.models = StudyModels(study, problem=problem)
        self._from_logits: bool | None = None
        self._teacher: TeacherOutputs | None = None

    @property
    def from_logits(self) -> bool:
        if self._from_logits is None:
            problem = self.models.problem
            self._from_logits = not outputs_probabilities(problem.model, problem.splits.x_val)
        return self._from_logits

    @property
    def teacher(self) -> TeacherOutputs:
        """The original model's logits on the training and validation images (computed
        once per worker, cached on disk beside the similarity cache)."""
        if self._teacher is None:
            problem = self.models.problem
            settings = problem.spec or problem.settings
            cache_dir = Path(settings.cache_dir) / "teacher" if settings is not None else None
            self._teacher = teacher_outputs(problem.model, problem.splits, cache_dir=cache_dir)
        return self._teacher

    def _measure(self, model: Any, directory: str, stem: str) -> Any:
        c = self.config
        return measure_model(model, self.models.problem.splits, directory, stem,
                             latency_repeats=c.latency_repeats,
                             latency_warmup=c.latency_warmup,
                             tflite_threads=c.tflite_threads)

    def _deployed(self, model: Any, config: FinetuneConfig, directory: str, source: int
                  ) -> dict[str, Any] | None:
        """The job's model as the LiteRT file ``config.quantize`` makes, run in the
        interpreter on the validation and test images (``None`` without ``quantize``)."""
        if config.quantize == "none":
            return None
        from lrf_optuna.deploy import deploy_model, file_accuracy

        splits = self.models.problem.splits
        d = deploy_model(model, splits, config.quantize, split="val", out_dir=directory,
                         stem=safe_name(f"{self.study.study_name}_trial{source}_deployed"),
                         latency_repeats=self.config.latency_repeats,
                         latency_warmup=self.config.latency_warmup)
        assert d.path is not None
        test_acc, test_correct = file_accuracy(d.path, splits.x_test, splits.y_test)
        return {**d.to_json(), VAL_ACC_ATTR: round(d.accuracy, 6),
                TEST_ACC_ATTR: round(test_acc, 6),
                TFLITE_BYTES_ATTR: d.file_bytes, LATENCY_MS_TFLITE_ATTR: d.latency.ms,
                TFLITE_RUNTIME_ATTR: d.latency.runtime,
                **_correctness(d.correct, test_correct)}

    def ensure_original(self) -> dict[str, Any]:
        """The original model measured like the jobs (once per fine-tuning study), with
        its per-image results and, for a net with BatchNorm, its validation accuracy
        with batch statistics (:func:`~lrf_optuna.finetune.batchnorm.train_mode_accuracy`:
        far above the inference-mode accuracy, the moving statistics are stale)."""
        from lrf_optuna.models.training import correct

        original = self.ft.user_attrs.get(BASELINE_ATTR)
        if original is not None:
            return dict(original)
        problem = self.models.problem
        with tempfile.TemporaryDirectory(prefix="lrf_original_") as tmp:
            measured = self._measure(problem.model, tmp, "original").measured
        splits = problem.splits
        val_correct = correct(problem.model, splits.x_val, splits.y_val)
        measured = dataclasses.replace(
            measured, val_acc=float(np.mean(val_correct)),
            **_correctness(val_correct, correct(problem.model, splits.x_test, splits.y_test)),
            val_acc_train_mode=(round(train_mode_accuracy(problem.model, splits.x_val,
                                                          splits.y_val), 6)
                                if batchnorm_layers(problem.model) else None))
        original = {**dataclasses.asdict(measured), NAME_ATTR: problem.name}
        self.ft.set_user_attr(BASELINE_ATTR, original)
        save_note_quietly(self.ft, original_note(self.study.study_name, original))
        logger.info("original model: test acc %.4f, %s params, .keras %s KiB, .tflite %s "
                    "KiB, latency %.3f / %.3f ms", original[TEST_ACC_ATTR],
                    f"{original[PARAMS_ATTR]:,}", kib(original[KERAS_BYTES_ATTR]),
                    kib(original[TFLITE_BYTES_ATTR]), original[LATENCY_MS_KERAS_ATTR],
                    original[LATENCY_MS_TFLITE_ATTR])
        return original

    def run(self, trial: optuna.Trial, source: int) -> FrozenTrial:
        from lrf_optuna.models.training import correct, evaluate

        src = get_search_trial(self.study, source)
        queued = trial.user_attrs
        config = _job_config(trial, self.config)
        recipe = config.recipe_key()
        is_reference = bool(queued.get(REFERENCE_ATTR, False))
        ua: dict[str, Any] = {SOURCE_TRIAL: source, PLAN_ATTR: src.user_attrs.get(PLAN_ATTR, {}),
                              LRF_PLAN_ATTR: src.user_attrs[LRF_PLAN_ATTR],
                              RECIPE_ATTR: recipe, RECIPE_CONFIG_ATTR: config.recipe(),
                              RECIPE_TEXT_ATTR: config.describe(), WORKER_ATTR: worker_id()}
        if is_reference:
            ua[REFERENCE_ATTR] = True
        for key, value in ua.items():
            trial.set_user_attr(key, value)
        original = self.ensure_original()
        splits = self.models.problem.splits
        model = self.models.build(src)
        test_before = evaluate(model, splits.x_test, splits.y_test)
        with on_compute_device() as device:
            trial.set_user_attr(DEVICE_ATTR, device)
            outcome = finetune_model(model, splits, config, from_logits=self.from_logits,
                                     seed=config.seed + source,
                                     teacher=self.teacher if config.distill > 0 else None)
        with tempfile.TemporaryDirectory(prefix="lrf_finetune_") as tmp:
            files = self._measure(model, tmp,
                                  safe_name(f"{self.study.study_name}_trial{source}"))
            ids = upload_model_files(self.store_dir, trial, files)
            deployed = self._deployed(model, config, tmp, source)
        m = files.measured
        assert m.params is not None and m.test_acc is not None
        ua.update({
            **_correctness(correct(model, splits.x_val, splits.y_val),
                           correct(model, splits.x_test, splits.y_test)),
            VAL_ACC_BUILT_ATTR: round(outcome.val_acc_built if outcome.val_acc_built is not None
                                   else outcome.val_acc_before, 6),
            BN_REESTIMATED_ATTR: outcome.bn_reestimated, STEPS_ATTR: outcome.steps,
            VAL_ACC_BEFORE_ATTR: round(outcome.val_acc_before, 6),
            VAL_ACC_AFTER_ATTR: round(outcome.val_acc_after, 6),
            TEST_ACC_BEFORE_ATTR: round(test_before, 6),
            TEST_ACC_ATTR: round(m.test_acc, 6),
            PARAMS_ATTR: m.params, FLOPS_ATTR: m.flops,
            COMPRESSION_RATIO_ATTR: round(original[PARAMS_ATTR] / max(m.params, 1), 4),
            KERAS_BYTES_ATTR: m.keras_bytes, TFLITE_BYTES_ATTR: m.tflite_bytes,
            LATENCY_MS_KERAS_ATTR: m.latency_ms_keras,
            LATENCY_MS_TFLITE_ATTR: m.latency_ms_tflite, TFLITE_RUNTIME_ATTR: m.tflite_runtime,
            EPOCHS_RUN_ATTR: outcome.epochs_run,
            FINETUNE_SECONDS_ATTR: round(outcome.seconds, 3),
            REVERTED_ATTR: outcome.reverted, FROM_LOGITS_ATTR: outcome.from_logits, **ids,
            ARTIFACT_DIR_ATTR: str(self.store_dir),
            **({DEPLOYED_ATTR: deployed} if deployed is not None else {}),
        })
        for key, value in ua.items():
            trial.set_user_attr(key, value)
        reference = None if is_reference else fair_reference(self.ft, recipe)
        save_note_quietly(trial, job_note(
            source, self.study.study_name, ua, original,
            reference=FinetuneRecord.of(reference) if reference is not None else None))
        frozen = self.ft.tell(trial, [float(m.params), float(m.test_acc)])
        what = "fair reference (original model)" if is_reference else f"trial {source}"
        logger.info("job %d: %s fine-tuned (%s): val %.4f -> %.4f, test %.4f -> %.4f, "
                    "%s params (%.2fx), .keras %s KiB, .tflite %s KiB, latency %.3f / %.3f ms, "
                    "%d epoch(s), %.1f s", trial.number, what, config.describe(),
                    ua[VAL_ACC_BEFORE_ATTR], ua[VAL_ACC_AFTER_ATTR], ua[TEST_ACC_BEFORE_ATTR],
                    ua[TEST_ACC_ATTR], f"{ua[PARAMS_ATTR]:,}", ua[COMPRESSION_RATIO_ATTR],
                    kib(ua[KERAS_BYTES_ATTR]), kib(ua[TFLITE_BYTES_ATTR]),
                    ua[LATENCY_MS_KERAS_ATTR], ua[LATENCY_MS_TFLITE_ATTR], ua[EPOCHS_RUN_ATTR],
                    ua[FINETUNE_SECONDS_ATTR])
        return frozen


def _store_dir(ft: optuna.Study, study: optuna.Study,
               artifact_dir: str | os.PathLike[str] | None) -> Path:
    """The artifact store of the jobs, recorded in the fine-tuning study the first time."""
    path = artifact_store_dir(study, artifact_dir).resolve()
    if ARTIFACT_DIR_ATTR not in ft.user_attrs:
        ft.set_user_attr(ARTIFACT_DIR_ATTR, str(path))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_finetune_jobs(study: optuna.Study, *, config: FinetuneConfig | None = None,
                      artifact_dir: str | os.PathLike[str] | None = None,
                      max_jobs: int | None = None, problem: Problem | None = None,
                      callbacks: Sequence[JobCallback] = ()) -> list[FrozenTrial]:
    """Worker loop: run WAITING jobs of ``"<study>:finetune"`` one at a time until none is
    left (or ``max_jobs`` ran). Safe to run in several processes at once (module
    docstring).

    A job: build the compressed model of the source trial's plan (factors from the
    similarity cache), measure val and test accuracy, fine-tune once
    (:func:`~lrf_optuna.finetune.recipe.finetune_model`), measure test accuracy, params,
    FLOPs, ``.keras`` / ``.tflite`` sizes and batch-1 latencies
    (:func:`lrf_optuna.study.artifacts.measure_model`), upload both files as Optuna artifacts to
    ``artifact_dir`` (default: :func:`lrf_optuna.study.lookup.artifact_store_dir`), save a
    dashboard note, tell COMPLETE with ``(params, test_accuracy)``. The original model is
    measured once per fine-tuning study (user attribute ``original``).

    An exception fails the job (user attribute ``error``) and the loop goes on;
    ``KeyboardInterrupt`` fails the job and propagates.

    Args:
        study: The search study.
        config: Fine-tuning and measurement settings.
        artifact_dir: Artifact store directory.
        max_jobs: Stop after this many jobs (``None``: until the queue is empty).
        problem: The already loaded :class:`~lrf_optuna.problem.Problem` (default: loaded
            from the study's recorded problem, once).
        callbacks: Each is called as ``callback(finetune_study, job)`` after every job
            this worker finished (COMPLETE or FAIL), like ``Study.optimize``'s callbacks.

    Returns:
        The jobs this worker ran, finished (COMPLETE or FAIL), in order.
    """
    config = config or FinetuneConfig()
    storage, rdb = heartbeat_storage(study, heartbeat_interval=config.heartbeat_interval,
                                     grace_period=config.grace_period,
                                     max_retry=config.max_retries)
    ft = open_finetune_study(study, storage=storage)
    store_dir = _store_dir(ft, study, artifact_dir)
    worker = _Worker(study, ft, config, store_dir, problem)

    def lock() -> contextlib.AbstractContextManager[None]:
        return study_lock(study, "finetune")

    if max_jobs != 0 and ft.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        # a problem that cannot be found or trusted is the user's error: raise it (one
        # UserError) before claiming a job, rather than failing every job with it
        worker.models.problem.check()
    ran: list[FrozenTrial] = []
    while max_jobs is None or len(ran) < max_jobs:
        claimed = _claim(ft, rdb, lock)
        if claimed is None:
            break
        trial, source = claimed
        before = len(ran)
        with HeartbeatThread(rdb, trial._trial_id):
            try:
                ran.append(worker.run(trial, source))
            except optuna.exceptions.UpdateFinishedTrialError:
                logger.warning("job %d (trial %d) was declared stale by another worker and "
                               "re-enqueued meanwhile; its result is dropped", trial.number,
                               source)
            except BaseException as err:
                _fail(ft, trial, **{ERROR_ATTR: f"{type(err).__name__}: {err}"[:2000]})
                ran.append(_job(ft, trial.number))
                if not isinstance(err, Exception):
                    raise
                logger.exception("job %d (trial %d of study %r) failed", trial.number,
                                 source, study.study_name)
        for job in ran[before:]:
            for callback in callbacks:
                callback(ft, job)
    running = ft.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        hint = (f"once its heartbeat is older than {config.grace_period} s a job is "
                "re-enqueued by the next worker" if rdb is not None else
                "if their worker was killed, call requeue_running_jobs (CLI: "
                "--requeue-running)")
        logger.info("%d job(s) still RUNNING in %r (other workers, or killed ones: %s)",
                    len(running), ft.study_name, hint)
    return ran


def finetune_study(study: optuna.Study, k: int = 3, *, strategy: Selection = "spread",
                   trials: Iterable[int] | None = None, max_params: float | None = None,
                   max_flops: float | None = None, min_proxy: float | None = None,
                   config: FinetuneConfig | None = None,
                   artifact_dir: str | os.PathLike[str] | None = None,
                   max_jobs: int | None = None, problem: Problem | None = None,
                   on_enqueued: Callable[[list[FrozenTrial], int], None] | None = None,
                   callbacks: Sequence[JobCallback] = ()) -> list[FrozenTrial]:
    """Choose trials, enqueue their jobs and run them: ``choose_trials`` +
    :func:`enqueue_finetune` + :func:`run_finetune_jobs` (what ``lrf-optuna finetune``
    runs, reporting through ``on_enqueued`` and ``callbacks``).

    Args:
        study: The search study (made by ``create_lrf_study`` or ``lrf-optuna search``:
            it records the problem the jobs rebuild).
        k: How many Pareto-optimal trials to choose (see ``select_trials``).
        strategy: ``"spread"`` or ``"knee"``.
        trials: Fine-tune exactly these search trial numbers instead of choosing.
        max_params: Budget of the choice.
        max_flops: Budget of the choice.
        min_proxy: Budget of the choice.
        config: Fine-tuning settings (default :class:`FinetuneConfig`).
        artifact_dir: Artifact store of the fine-tuned files.
        max_jobs: Run at most this many jobs in this call.
        problem: The loaded problem, to skip loading it from the study.
        on_enqueued: Called as ``on_enqueued(chosen_trials, jobs_added)`` before any job
            runs (nothing is enqueued when no trial was chosen); it may raise to stop.
        callbacks: Called after each job that runs (:func:`run_finetune_jobs`).

    Returns:
        The latest COMPLETE job of each chosen trial with this recipe (jobs run now or
        earlier), in the choice's order; a trial whose job failed or is still running is
        missing. (The fair reference of the recipe runs first and is not in the list: see
        :func:`lrf_optuna.study.lookup.fair_reference`.)
    """
    config = config or FinetuneConfig()
    selected = choose_trials(study, k, strategy=strategy, trials=trials,
                             max_params=max_params, max_flops=max_flops, min_proxy=min_proxy)
    added = enqueue_finetune(study, selected, config=config) if selected else 0
    if on_enqueued is not None:
        on_enqueued(selected, added)
    run_finetune_jobs(study, config=config, artifact_dir=artifact_dir, max_jobs=max_jobs,
                      problem=problem, callbacks=callbacks)
    done = latest_jobs(find_finetune_study(study), recipe=config.recipe_key())
    numbers = [t if isinstance(t, int) else t.number for t in selected]
    return [done[n] for n in numbers if n in done]
