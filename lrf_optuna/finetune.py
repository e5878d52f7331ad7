"""Fine-tune selected Pareto-optimal trials as resumable, multi-worker Optuna jobs.

A search study's trials are FINISHED and their user attributes can no longer change, so
fine-tuning results live in a **second study in the same storage**, named
``"<study_name>:finetune"`` (:func:`finetune_study_of`). Each of its trials is one *job*:

* parameter ``source_trial`` (``IntDistribution(0, 10**9)``): the search trial fine-tuned;
* values ``(params, test_accuracy)`` (minimize, maximize; metric names set), so the
  dashboard plots the fine-tuned front;
* user attributes: ``source_trial``, ``plan`` (readable), ``lrf_plan``, ``val_acc_before``,
  ``val_acc_after``, ``test_acc_before``, ``test_acc``, ``params``, ``flops``,
  ``compression_ratio``, ``keras_bytes``, ``tflite_bytes``, ``latency_ms_keras``,
  ``latency_ms_tflite``, ``epochs_run``, ``finetune_seconds``, ``reverted``,
  ``from_logits``, ``keras_artifact_id``, ``tflite_artifact_id``, ``artifact_dir``,
  ``worker``;
* Optuna artifacts: the fine-tuned ``.keras`` (no optimizer state) and float32 ``.tflite``;
* an optuna-dashboard Markdown note (plan, accuracies, sizes, latencies).

The fine-tuning study also holds user attribute ``original`` (the original model measured
the same way, once) with a study note, ``artifact_dir`` and ``source_study``.

Workflow: :func:`select_trials` -> :func:`enqueue_finetune` -> :func:`run_finetune_jobs`
(or all three: :func:`finetune_study`; CLI: ``lrf-optuna finetune``).

Workers and resumption
----------------------
Any number of workers (processes, machines for a server database) may run
:func:`run_finetune_jobs` on the same storage; each takes one WAITING job at a time.

* **No job runs twice.** Optuna pops an enqueued trial by setting it RUNNING; on
  PostgreSQL/MySQL that update is row-locked (``SELECT ... FOR UPDATE``), but SQLite ignores
  ``FOR UPDATE`` and two processes *can* pop the same trial (observed with Optuna 5.0). So
  every pop, enqueue and stale-job check holds :func:`lrf_optuna._locks.study_lock`: an
  exclusive ``fcntl`` lock on ``<db>.finetune.lock`` beside a SQLite database, a
  PostgreSQL advisory lock on a server database (two ``finetune`` commands started together
  would otherwise enqueue the same jobs twice). In addition a worker drops a popped job when
  another job of the same source trial is already COMPLETE or started earlier and still
  RUNNING; the dropped job is marked FAIL with user attribute ``skipped``.
* **A COMPLETE job is never redone**, and :func:`enqueue_finetune` adds nothing for a
  source trial with a COMPLETE, WAITING or RUNNING job (so enqueueing twice adds nothing).
* **Killed workers** (SIGKILL, power loss): for RDB storages the worker opens its own
  ``RDBStorage`` with a heartbeat (``FinetuneConfig.heartbeat_interval``, default 10 s)
  and ``grace_period`` (default 60 s) and
  ``optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)``. Before popping, each
  worker fails RUNNING jobs whose heartbeat is older than the grace period; the callback
  re-enqueues them as WAITING copies, which are then run normally. So rerunning the same
  command after the grace period resumes a killed job. (A job that is RUNNING but not yet
  stale belongs to a live worker, or becomes stale later: the log says so.)
* **Errors and Ctrl-C** mark the job FAIL (user attribute ``error``); the next
  :func:`enqueue_finetune` (e.g. rerunning ``lrf-optuna finetune``) enqueues a new job for
  that source trial, up to ``max_attempts`` (3) failed attempts.
* Storages without heartbeat (in-memory, journal): :func:`requeue_running_jobs` re-enqueues
  RUNNING jobs explicitly (only when no worker is alive).

Example:
    >>> study = optuna.load_study(study_name="lenet5",  # doctest: +SKIP
    ...                           storage="sqlite:///studies/lenet5.db")
    >>> jobs = finetune_study(study, k=3, config=FinetuneConfig(epochs=2))  # doctest: +SKIP
    >>> print(results_table(study))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lrf_optuna._locks import rdb_of, study_lock
from lrf_optuna.search import artifact_dir_for, sqlite_path

if TYPE_CHECKING:
    import keras

__all__ = [
    "FINETUNE_SUFFIX",
    "FinetuneConfig",
    "FinetuneOutcome",
    "JobContext",
    "add_finetune_parser",
    "enqueue_finetune",
    "existing_finetune_study",
    "finetune_model",
    "finetune_study",
    "finetune_study_name",
    "finetune_study_of",
    "finetuned_job",
    "jobs_by_source",
    "measure_model",
    "requeue_running_jobs",
    "results_table",
    "run_finetune_jobs",
    "select_trials",
]

logger = logging.getLogger(__name__)

FINETUNE_SUFFIX = ":finetune"
JOB_PARAM = "source_trial"
#: Any trial number fits (enqueued jobs never sample it).
JOB_DISTRIBUTION = optuna.distributions.IntDistribution(0, 10**9)
METRIC_NAMES = ["params", "test_accuracy"]
DIRECTIONS: list[Literal["minimize", "maximize"]] = ["minimize", "maximize"]
Strategy = Literal["spread", "knee"]


# -- configuration ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneConfig:
    """How a compressed model is fine-tuned and measured (every field overridable).

    Fine-tuning starts from factors that approximate the trained weights, so it is short:
    a few epochs, the learning rate cosine-decayed from 1e-3 (the reference models' peak
    rate) to 1e-5, keeping the best epoch by validation accuracy and never ending below the
    starting validation accuracy. Why 1e-3 and not a "gentle" 1e-4: the aggressively
    compressed trials of a front start far from the original function (LeNet-5 on
    Fashion-MNIST, 3 epochs: trials at 29x / 5.4x compression went from 10% / 7% val
    accuracy to 51% / 65% with 1e-4 but to 76% / 77% with 1e-3), and a near-original
    trial was not hurt either (val 90.5% -> 90.8% with 1e-4, -> 91.1% with 1e-3).

    Attributes:
        epochs: Maximum epochs (3: most of the recovery happens in the first epoch).
        batch_size: Training batch size (128, as for the reference models).
        optimizer: A Keras optimizer name (``keras.optimizers.get``), default Adam.
        learning_rate: Initial learning rate (1e-3).
        schedule: ``"cosine"`` (decay to ``learning_rate * min_lr_fraction`` over all
            steps) or ``"constant"``.
        min_lr_fraction: Final fraction of the learning rate for the cosine schedule.
        patience: EarlyStopping patience in epochs on ``val_accuracy`` (1).
        restore_best_weights: EarlyStopping restores the best epoch's weights (True).
        revert_if_worse: Keep the un-fine-tuned weights when fine-tuning ends below the
            starting validation accuracy (recorded as ``reverted``); selection uses the
            validation split only, never the test split.
        seed: Base seed; job of source trial ``n`` uses ``seed + n``.
        latency_repeats: Timed single-sample calls per latency measurement (median).
        latency_warmup: Untimed calls before timing.
        tflite_threads: TFLite interpreter threads (None: interpreter default).
        heartbeat_interval: Seconds between a worker's heartbeats (RDB storages);
            ``None`` disables heartbeat-based recovery.
        grace_period: A RUNNING job whose last heartbeat is older than this is stale.
        max_retries: Automatic re-enqueues of a stale job (by the heartbeat callback).
        max_attempts: Failed jobs of one source trial after which
            :func:`enqueue_finetune` stops re-enqueueing it.
        verbose: Keras ``fit`` verbosity; ``None``: progress bar on a terminal, one line
            per epoch otherwise.
    """

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_fraction: float = 0.01
    patience: int = 1
    restore_best_weights: bool = True
    revert_if_worse: bool = True
    seed: int = 0
    latency_repeats: int = 50
    latency_warmup: int = 5
    tflite_threads: int | None = None
    heartbeat_interval: int | None = 10
    grace_period: int = 60
    max_retries: int = 2
    max_attempts: int = 3
    verbose: int | str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.latency_repeats < 1 or self.latency_warmup < 0:
            raise ValueError("latency_repeats must be >= 1 and latency_warmup >= 0")
        if self.heartbeat_interval is not None and not (
                0 < self.heartbeat_interval < self.grace_period):
            raise ValueError(f"need 0 < heartbeat_interval < grace_period, got "
                             f"{self.heartbeat_interval}, {self.grace_period}")


# -- studies and storages ----------------------------------------------------------------------

def finetune_study_name(study: optuna.Study | str) -> str:
    """``"<study_name>:finetune"``."""
    name = study if isinstance(study, str) else study.study_name
    return f"{name}{FINETUNE_SUFFIX}"


def _storage_of(study: optuna.Study) -> Any:
    return study._storage  # no public accessor; optuna_dashboard reads it the same way


_rdb_of = rdb_of


def _storage_url(study: optuna.Study) -> str:
    rdb = _rdb_of(_storage_of(study))
    return rdb.url if rdb is not None else ""


def _sqlite_path(study: optuna.Study) -> Path | None:
    return sqlite_path(_storage_url(study))


def _worker_storage(study: optuna.Study, config: FinetuneConfig
                    ) -> tuple[Any, optuna.storages.RDBStorage | None]:
    """The storage a worker uses: an RDBStorage with heartbeat when possible."""
    base = _storage_of(study)
    rdb = _rdb_of(base)
    if rdb is None or config.heartbeat_interval is None:
        return base, None
    kwargs = dict(rdb.engine_kwargs)
    if rdb.url.startswith("sqlite"):
        connect = dict(kwargs.get("connect_args", {}))
        connect.setdefault("timeout", 60)
        kwargs["connect_args"] = connect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            rdb.url, engine_kwargs=kwargs, skip_compatibility_check=True,
            heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=config.max_retries))
    return storage, storage


def finetune_study_of(study: optuna.Study, *, storage: Any = None) -> optuna.Study:
    """Create or load ``"<study>:finetune"`` in the same storage (or ``storage``)."""
    ft = optuna.create_study(
        study_name=finetune_study_name(study), storage=storage or _storage_of(study),
        load_if_exists=True, directions=DIRECTIONS,
        sampler=optuna.samplers.RandomSampler(seed=0))
    if ft.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ft.set_metric_names(METRIC_NAMES)
    if "source_study" not in ft.user_attrs:
        ft.set_user_attr("source_study", study.study_name)
    return ft


def existing_finetune_study(study: optuna.Study) -> optuna.Study | None:
    """The fine-tuning study beside ``study`` in the same storage, or ``None``."""
    name = finetune_study_name(study)
    names = [s.study_name for s in optuna.get_all_study_summaries(_storage_of(study),
                                                                   include_best_trial=False)]
    if name not in names:
        return None
    return optuna.load_study(study_name=name, storage=_storage_of(study))


def _source_of(job: FrozenTrial) -> int | None:
    value = job.params.get(JOB_PARAM)
    if value is None:
        value = job.system_attrs.get("fixed_params", {}).get(JOB_PARAM)
    return int(value) if value is not None else None


def _job(ft: optuna.Study, number: int) -> FrozenTrial:
    return next(j for j in ft.get_trials(deepcopy=False) if j.number == number)


def jobs_by_source(ft: optuna.Study) -> dict[int, list[FrozenTrial]]:
    """The fine-tuning study's jobs grouped by source trial number (job order kept)."""
    out: dict[int, list[FrozenTrial]] = {}
    for job in ft.get_trials(deepcopy=False):
        source = _source_of(job)
        if source is not None:
            out.setdefault(source, []).append(job)
    return out


def finetuned_job(study: optuna.Study, trial_number: int) -> FrozenTrial | None:
    """The latest COMPLETE fine-tuning job of search trial ``trial_number``, if any."""
    ft = existing_finetune_study(study)
    if ft is None:
        return None
    done = [j for j in jobs_by_source(ft).get(trial_number, [])
            if j.state == TrialState.COMPLETE]
    return done[-1] if done else None


# -- selection ---------------------------------------------------------------------------------

def _within(t: FrozenTrial, max_params: float | None, max_flops: float | None,
            min_proxy: float | None) -> bool:
    ua = t.user_attrs
    return ((max_params is None or ua.get("params", math.inf) <= max_params)
            and (max_flops is None or ua.get("flops", math.inf) <= max_flops)
            and (min_proxy is None or ua.get("proxy", -math.inf) >= min_proxy))


def _nearest(logp: np.ndarray, target: float, used: set[int]) -> int:
    order = sorted((abs(float(v) - target), i) for i, v in enumerate(logp) if i not in used)
    return order[0][1]


def _spread(front: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    logp = np.log([max(float(t.user_attrs["params"]), 1.0) for t in front])
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


def select_trials(study: optuna.Study, k: int = 3, *, strategy: Strategy = "spread",
                  max_params: float | None = None, max_flops: float | None = None,
                  min_proxy: float | None = None) -> list[FrozenTrial]:
    """Pick up to ``k`` Pareto-optimal search trials to fine-tune (deterministic).

    Candidates: ``study.best_trials`` (feasible ones, for a constrained study) made by
    :class:`~lrf_optuna.search.LRFObjective` (user attribute ``lrf_plan``), without the
    all-"keep" original (empty plan), without duplicate plans (the lowest trial number
    kept), within the budget (user attributes ``params <= max_params``,
    ``flops <= max_flops``, ``proxy >= min_proxy``). With ``k`` or fewer candidates all
    are returned.

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
    seen: set[str] = set()
    front = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        plan = t.user_attrs.get("lrf_plan")
        if not plan or "params" not in t.user_attrs:
            continue
        key = json.dumps(plan, sort_keys=True)
        if key in seen or not _within(t, max_params, max_flops, min_proxy):
            continue
        seen.add(key)
        front.append(t)
    front.sort(key=lambda t: (t.user_attrs["params"], t.number))
    if len(front) <= k:
        return front
    if strategy == "spread":
        chosen = _spread(front, k)
    else:
        knee = _knee_index(front, study.directions)
        logp = np.log([max(float(t.user_attrs["params"]), 1.0) for t in front])
        order = sorted(range(len(front)),
                       key=lambda i: (abs(float(logp[i] - logp[knee])), i))
        chosen = [front[i] for i in order[:k]]
    return sorted(chosen, key=lambda t: (t.user_attrs["params"], t.number))


# -- the queue -----------------------------------------------------------------------------

def _attempts(jobs: Iterable[FrozenTrial]) -> int:
    return sum(1 for j in jobs if j.state == TrialState.FAIL and "skipped" not in j.user_attrs)


def enqueue_finetune(study: optuna.Study, trials: Iterable[FrozenTrial | int], *,
                     max_attempts: int = FinetuneConfig.max_attempts) -> int:
    """Enqueue one fine-tuning job per source trial; returns how many were added.

    A source trial with a COMPLETE, WAITING or RUNNING job gets nothing (so calling this
    twice adds nothing); one whose jobs all FAILed gets a new job until it has
    ``max_attempts`` failed attempts. Jobs carry user attributes ``source_trial`` and
    ``plan`` from the start, so the dashboard shows what is queued.
    """
    numbers = [t if isinstance(t, int) else t.number for t in trials]
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    missing = [n for n in numbers if n not in by_number]
    if missing:
        raise KeyError(f"study {study.study_name!r} has no trial(s) {missing}")
    unfinished = [n for n in numbers if by_number[n].state != TrialState.COMPLETE]
    if unfinished:
        raise ValueError(f"trial(s) {unfinished} of study {study.study_name!r} are not "
                         "COMPLETE; only finished search trials can be fine-tuned")
    ft = finetune_study_of(study)
    added = 0
    with study_lock(study, "finetune"):
        existing = jobs_by_source(ft)
        for n in dict.fromkeys(numbers):
            jobs = existing.get(n, [])
            if any(j.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
                   for j in jobs):
                continue
            if _attempts(jobs) >= max_attempts:
                logger.warning("trial %d of study %r failed fine-tuning %d time(s); not "
                               "enqueued again (see the 'error' attribute of jobs %s of %r)",
                               n, study.study_name, _attempts(jobs),
                               [j.number for j in jobs], ft.study_name)
                continue
            ft.enqueue_trial({JOB_PARAM: n},
                             user_attrs={JOB_PARAM: n,
                                         "plan": by_number[n].user_attrs.get("plan", {})},
                             skip_if_exists=not jobs)
            added += 1
    logger.info("enqueued %d fine-tuning job(s) in %r", added, ft.study_name)
    return added


def requeue_running_jobs(study: optuna.Study) -> int:
    """Mark every RUNNING job FAIL and enqueue a new job for its source trial.

    For storages without heartbeat, after a worker was killed. Only call it when no
    worker is running: a live worker's job would run twice.
    """
    ft = existing_finetune_study(study)
    if ft is None:
        return 0
    sources = []
    with study_lock(study, "finetune"):
        for job in ft.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                ft.tell(job.number, state=TrialState.FAIL)
                source = _source_of(job)
                if source is not None:
                    sources.append(source)
    return enqueue_finetune(study, sources, max_attempts=10**9) if sources else 0


# -- one model ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneOutcome:
    """What :func:`finetune_model` did."""

    val_acc_before: float
    val_acc_after: float
    epochs_run: int
    seconds: float
    reverted: bool
    from_logits: bool
    history: dict[str, list[float]]


def outputs_probabilities(model: keras.Model, x: np.ndarray) -> bool:
    """Whether ``model`` ends in a softmax: its outputs on ``x[:64]`` are non-negative and
    sum to 1 per row. (The zoo models output probabilities; user models may output
    logits.)"""
    y = np.asarray(model(np.asarray(x[:64], dtype="float32"), training=False))
    y = y.reshape(len(y), -1)
    return bool(np.all(y >= -1e-6) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def finetune_model(model: keras.Model, splits: Any, config: FinetuneConfig | None = None, *,
                   from_logits: bool | None = None, seed: int | None = None
                   ) -> FinetuneOutcome:
    """Fine-tune ``model`` in place on ``splits.x_train`` (validated on ``splits.x_val``).

    Compiles it with ``config.optimizer`` on the (cosine-decayed) learning rate, sparse
    categorical cross-entropy (``from_logits`` detected with
    :func:`outputs_probabilities` unless given) and accuracy; EarlyStopping on
    ``val_accuracy``; see :class:`FinetuneConfig`.
    """
    import keras

    from lrf_optuna.models.training import evaluate

    config = config or FinetuneConfig()
    if len(splits.x_val) == 0:
        raise ValueError("fine-tuning needs a validation split (val_fraction > 0)")
    if from_logits is None:
        from_logits = not outputs_probabilities(model, splits.x_val)
    val_before = evaluate(model, splits.x_val, splits.y_val)
    initial = model.get_weights()
    steps = config.epochs * math.ceil(len(splits.x_train) / config.batch_size)
    lr: Any = config.learning_rate
    if config.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(steps, 1),
                                                     alpha=config.min_lr_fraction)
    optimizer = keras.optimizers.get({"class_name": config.optimizer,
                                      "config": {"learning_rate": lr}})
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"])
    keras.utils.set_random_seed(config.seed if seed is None else seed)
    verbose = config.verbose
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                         patience=config.patience,
                                         restore_best_weights=config.restore_best_weights)
    start = time.perf_counter()
    hist = model.fit(splits.x_train, splits.y_train, batch_size=config.batch_size,
                     epochs=config.epochs, validation_data=(splits.x_val, splits.y_val),
                     shuffle=True, callbacks=[stop], verbose=verbose)
    seconds = time.perf_counter() - start
    val_after = evaluate(model, splits.x_val, splits.y_val)
    reverted = False
    if config.revert_if_worse and val_after < val_before:
        model.set_weights(initial)
        val_after, reverted = val_before, True
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    return FinetuneOutcome(val_before, val_after, len(history.get("loss", [])), seconds,
                           reverted, bool(from_logits), history)


def measure_model(model: keras.Model, splits: Any, config: FinetuneConfig, out_dir: Path,
                  stem: str) -> dict[str, Any]:
    """Test accuracy, params, FLOPs, file sizes and latencies of ``model``.

    Writes ``<out_dir>/<stem>.keras`` and ``.tflite`` (returned as ``keras_path`` /
    ``tflite_path``, not JSON-able; the other entries are).
    """
    from lrf_optuna.costs import model_costs
    from lrf_optuna.export import (
        keras_latency_ms,
        save_keras,
        tflite_latency_ms,
        to_tflite,
    )
    from lrf_optuna.models.training import evaluate

    costs = model_costs(model)
    keras_path = save_keras(model, out_dir / f"{stem}.keras")
    tflite_path = to_tflite(model, out_dir / f"{stem}.tflite")
    return {
        "test_acc": evaluate(model, splits.x_test, splits.y_test),
        "params": int(costs.params),
        "flops": int(costs.flops),
        "keras_bytes": keras_path.stat().st_size,
        "tflite_bytes": tflite_path.stat().st_size,
        "latency_ms_keras": round(keras_latency_ms(model, None, config.latency_repeats,
                                                   config.latency_warmup), 4),
        "latency_ms_tflite": round(tflite_latency_ms(tflite_path, config.latency_repeats,
                                                     config.latency_warmup,
                                                     num_threads=config.tflite_threads), 4),
        "keras_path": keras_path,
        "tflite_path": tflite_path,
    }


# -- the worker --------------------------------------------------------------------------------

class JobContext:
    """What a worker loads once: the problem (model and splits, from the study's
    :class:`~lrf_optuna.workspace.ProblemSpec` unless given) and the similarity cache
    (the directory recorded by the search, else ``SimilarityCache.build`` with the spec's
    ``cache_dir``, which reopens a complete cache without recomputing)."""

    def __init__(self, study: optuna.Study, *, problem: Any = None) -> None:
        self.study = study
        self._problem = problem
        self._cache: Any = None
        self._from_logits: bool | None = None

    @property
    def problem(self) -> Any:
        if self._problem is None:
            from lrf_optuna.workspace import spec_of_study

            spec = spec_of_study(self.study)
            logger.info("loading problem of study %r: model %s, dataset %s",
                        self.study.study_name, spec.model, spec.dataset)
            self._problem = spec.load(verbose=False)
        return self._problem

    @property
    def from_logits(self) -> bool:
        if self._from_logits is None:
            self._from_logits = not outputs_probabilities(self.problem.model,
                                                          self.problem.splits.x_val)
        return self._from_logits

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from lrf_optuna.cache import SimilarityCache
            from lrf_optuna.similarity import DEFAULT_METRIC

            original = self.study.user_attrs.get("lrf_optuna:original", {})
            recorded = original.get("cache")
            if recorded and (Path(recorded) / "manifest.json").exists():
                self._cache = SimilarityCache.load(recorded)
            else:
                self._cache = SimilarityCache.build(
                    self.problem.model, self.problem.splits.x_cal,
                    cache_dir=self.problem.spec.cache_dir,
                    metric=original.get("metric", DEFAULT_METRIC), progress=False)
        return self._cache

    def build_compressed(self, trial: FrozenTrial) -> keras.Model:
        """The compressed (not fine-tuned) model of a search trial's ``lrf_plan``."""
        raw = trial.user_attrs.get("lrf_plan")
        if raw is None:
            raise ValueError(f"trial {trial.number} of study {self.study.study_name!r} has "
                             "no 'lrf_plan' user attribute")
        plan = {path: (str(m), int(r)) for path, (m, r) in raw.items()}
        return self.cache.build_model(self.problem.model, plan)


class _Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds in a daemon thread."""

    def __init__(self, storage: optuna.storages.RDBStorage | None, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self.storage is not None:
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name=f"lrf-heartbeat-{self.trial_id}")
            self._thread.start()
        return self

    def _beat(self) -> None:
        assert self.storage is not None
        interval = self.storage.heartbeat_interval or 10
        while not self._stop.wait(interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a missed beat is not fatal; the next one retries
                logger.debug("heartbeat of trial id %d failed", self.trial_id, exc_info=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _fail(ft: optuna.Study, trial: optuna.Trial, **attrs: Any) -> None:
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        ft.tell(trial, state=TrialState.FAIL)


def _started(job: FrozenTrial) -> tuple[datetime.datetime, int]:
    return (job.datetime_start or datetime.datetime.min, job.number)


def _claim(ft: optuna.Study, rdb: optuna.storages.RDBStorage | None,
           lock: Callable[[], contextlib.AbstractContextManager[None]]
           ) -> tuple[optuna.Trial, int] | None:
    """Pop the next WAITING job (under :func:`~lrf_optuna._locks.study_lock`); ``None``
    when the queue is empty.

    Also fails stale RUNNING jobs first (their callback re-enqueues them) and drops
    duplicate jobs of a source trial that is done or being done by another worker.
    """
    while True:
        with lock(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            if rdb is not None:
                optuna.storages.fail_stale_trials(ft)
            if not ft.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return None
            trial = ft.ask()
            if rdb is not None:  # beat now: a job without heartbeat never becomes stale
                rdb.record_heartbeat(trial._trial_id)
            jobs = ft.get_trials(deepcopy=False)
        mine = next(j for j in jobs if j.number == trial.number)
        source = _source_of(mine)
        if source is None:
            _fail(ft, trial, error="the fine-tuning queue emptied while this worker asked "
                  "for a job (another worker took the last one): nothing to do")
            return None
        trial.suggest_int(JOB_PARAM, JOB_DISTRIBUTION.low, JOB_DISTRIBUTION.high)
        other = [j for j in jobs if j.number != mine.number and _source_of(j) == source and (
            j.state == TrialState.COMPLETE or (
                j.state == TrialState.RUNNING and _started(j) < _started(mine)))]
        if other:
            logger.info("job %d: trial %d is already handled by job %d; skipped",
                        trial.number, source, other[0].number)
            _fail(ft, trial, skipped=f"duplicate of job {other[0].number}")
            continue
        return trial, source


def _plan_rows(plan: dict[str, str]) -> list[list[str]]:
    return [[layer, choice] for layer, choice in plan.items()]


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f}"


def _job_note(source: int, study_name: str, ua: dict[str, Any],
              original: dict[str, Any] | None) -> str:
    from lrf_optuna.report_table import markdown_table

    rows = [["parameters", f"{ua['params']:,}",
             f"{original['params']:,}" if original else ""],
            ["FLOPs", f"{ua['flops']:,}", f"{original['flops']:,}" if original else ""],
            ["val accuracy", f"{ua['val_acc_before']:.4f} -> {ua['val_acc_after']:.4f}",
             f"{original['val_acc']:.4f}" if original else ""],
            ["test accuracy", f"{ua['test_acc_before']:.4f} -> {ua['test_acc']:.4f}",
             f"{original['test_acc']:.4f}" if original else ""],
            [".keras size (KiB)", _kb(ua["keras_bytes"]),
             _kb(original["keras_bytes"]) if original else ""],
            [".tflite size (KiB)", _kb(ua["tflite_bytes"]),
             _kb(original["tflite_bytes"]) if original else ""],
            ["latency Keras, batch 1 (ms)", f"{ua['latency_ms_keras']:.3f}",
             f"{original['latency_ms_keras']:.3f}" if original else ""],
            ["latency TFLite, batch 1 (ms)", f"{ua['latency_ms_tflite']:.3f}",
             f"{original['latency_ms_tflite']:.3f}" if original else ""]]
    note = [f"## Fine-tuned trial {source} of `{study_name}`", "",
            markdown_table(["", "fine-tuned", "original"], rows), "",
            f"{ua['epochs_run']} epoch(s) in {ua['finetune_seconds']:.1f} s"
            + (" (reverted: fine-tuning did not improve validation accuracy)"
               if ua["reverted"] else ""), "",
            "### Plan", "", markdown_table(["layer", "choice"], _plan_rows(ua["plan"]))]
    return "\n".join(note)


def _original_note(study_name: str, o: dict[str, Any]) -> str:
    from lrf_optuna.report_table import markdown_table

    rows = [["parameters", f"{o['params']:,}"], ["FLOPs", f"{o['flops']:,}"],
            ["val accuracy", f"{o['val_acc']:.4f}"], ["test accuracy", f"{o['test_acc']:.4f}"],
            [".keras size (KiB)", _kb(o["keras_bytes"])],
            [".tflite size (KiB)", _kb(o["tflite_bytes"])],
            ["latency Keras, batch 1 (ms)", f"{o['latency_ms_keras']:.3f}"],
            ["latency TFLite, batch 1 (ms)", f"{o['latency_ms_tflite']:.3f}"]]
    return "\n".join([f"## Fine-tuning jobs of `{study_name}`", "",
                      "One trial per fine-tuned Pareto-optimal search trial. The original "
                      "model, measured the same way:", "",
                      markdown_table(["original model", ""], rows)])


def _save_note(target: Any, body: str) -> None:
    try:
        from optuna_dashboard import save_note
    except ImportError:  # pragma: no cover - optuna-dashboard is a dependency
        return
    save_note(target, body)


def default_artifact_dir(study: optuna.Study) -> Path:
    """``<db dir>/<db stem>_artifacts`` for a SQLite file, else ``studies/artifacts``
    (:func:`lrf_optuna.search.artifact_dir_for` of the study's storage)."""
    return artifact_dir_for(_storage_url(study))


def _artifact_dir(ft: optuna.Study, study: optuna.Study,
                  artifact_dir: str | os.PathLike[str] | None) -> Path:
    if artifact_dir is not None:
        path = Path(artifact_dir)
    elif "artifact_dir" in ft.user_attrs:
        path = Path(ft.user_attrs["artifact_dir"])
    else:
        path = default_artifact_dir(study)
    path = path.resolve()
    if "artifact_dir" not in ft.user_attrs:
        ft.set_user_attr("artifact_dir", str(path))
    return path


def download_job_artifacts(study: optuna.Study, job: FrozenTrial, keras_path: Path,
                           tflite_path: Path, *,
                           artifact_dir: str | os.PathLike[str] | None = None) -> None:
    """Copy a job's ``.keras`` and ``.tflite`` artifacts to the given paths (overwriting).

    Raises:
        FileNotFoundError: the job has no artifact ids or the store lacks the files.
    """
    from optuna.artifacts import FileSystemArtifactStore, download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    ft = finetune_study_of(study)
    directory = Path(artifact_dir or job.user_attrs.get("artifact_dir")
                     or ft.user_attrs.get("artifact_dir") or default_artifact_dir(study))
    store = FileSystemArtifactStore(directory)
    for key, path in (("keras_artifact_id", keras_path), ("tflite_artifact_id", tflite_path)):
        artifact_id = job.user_attrs.get(key)
        if artifact_id is None:
            raise FileNotFoundError(f"job {job.number} of {ft.study_name!r} has no {key!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.download")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            download_artifact(artifact_store=store, file_path=str(tmp),
                              artifact_id=artifact_id)
        except (ArtifactNotFound, FileNotFoundError) as err:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise FileNotFoundError(f"artifact {artifact_id} of job {job.number} not in "
                                    f"{directory}") from err
        os.replace(tmp, path)


class _Worker:
    def __init__(self, study: optuna.Study, ft: optuna.Study, config: FinetuneConfig,
                 store_dir: Path, problem: Any) -> None:
        from optuna.artifacts import FileSystemArtifactStore

        self.study, self.ft, self.config = study, ft, config
        store_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir = store_dir
        self.store = FileSystemArtifactStore(store_dir)
        self.ctx = JobContext(study, problem=problem)

    def ensure_original(self) -> dict[str, Any]:
        from lrf_optuna.models.training import evaluate

        original = self.ft.user_attrs.get("original")
        if original is not None:
            return dict(original)
        problem = self.ctx.problem
        with tempfile.TemporaryDirectory(prefix="lrf_original_") as tmp:
            m = measure_model(problem.model, problem.splits, self.config, Path(tmp),
                              "original")
        original = {k: v for k, v in m.items() if not k.endswith("_path")}
        original["val_acc"] = evaluate(problem.model, problem.splits.x_val,
                                       problem.splits.y_val)
        original["name"] = problem.name
        self.ft.set_user_attr("original", original)
        _save_note(self.ft, _original_note(self.study.study_name, original))
        logger.info("original model: test acc %.4f, %s params, .keras %s KiB, .tflite %s "
                    "KiB, latency %.3f / %.3f ms", original["test_acc"],
                    f"{original['params']:,}", _kb(original["keras_bytes"]),
                    _kb(original["tflite_bytes"]), original["latency_ms_keras"],
                    original["latency_ms_tflite"])
        return original

    def run(self, trial: optuna.Trial, source: int) -> FrozenTrial:
        from lrf_optuna.export import search_trial
        from lrf_optuna.models.training import evaluate

        src = search_trial(self.study, source)
        ua: dict[str, Any] = {JOB_PARAM: source, "plan": src.user_attrs.get("plan", {}),
                              "lrf_plan": src.user_attrs["lrf_plan"], "worker": _worker_id()}
        for key, value in ua.items():
            trial.set_user_attr(key, value)
        original = self.ensure_original()
        problem = self.ctx.problem
        model = self.ctx.build_compressed(src)
        test_before = evaluate(model, problem.splits.x_test, problem.splits.y_test)
        outcome = finetune_model(model, problem.splits, self.config,
                                 from_logits=self.ctx.from_logits,
                                 seed=self.config.seed + source)
        with tempfile.TemporaryDirectory(prefix="lrf_finetune_") as tmp:
            m = measure_model(model, problem.splits, self.config, Path(tmp),
                              f"{self.study.study_name}_trial{source}".replace("/", "_"))
            ids = {
                "keras_artifact_id": optuna.artifacts.upload_artifact(
                    artifact_store=self.store, file_path=str(m["keras_path"]),
                    study_or_trial=trial),
                "tflite_artifact_id": optuna.artifacts.upload_artifact(
                    artifact_store=self.store, file_path=str(m["tflite_path"]),
                    study_or_trial=trial),
            }
        ua.update({
            "val_acc_before": round(outcome.val_acc_before, 6),
            "val_acc_after": round(outcome.val_acc_after, 6),
            "test_acc_before": round(test_before, 6),
            "test_acc": round(m["test_acc"], 6),
            "params": m["params"], "flops": m["flops"],
            "compression_ratio": round(original["params"] / max(m["params"], 1), 4),
            "keras_bytes": m["keras_bytes"], "tflite_bytes": m["tflite_bytes"],
            "latency_ms_keras": m["latency_ms_keras"],
            "latency_ms_tflite": m["latency_ms_tflite"],
            "epochs_run": outcome.epochs_run,
            "finetune_seconds": round(outcome.seconds, 3),
            "reverted": outcome.reverted, "from_logits": outcome.from_logits, **ids,
            "artifact_dir": str(self.store_dir),
        })
        for key, value in ua.items():
            trial.set_user_attr(key, value)
        _save_note(trial, _job_note(source, self.study.study_name, ua, original))
        frozen = self.ft.tell(trial, [float(m["params"]), float(m["test_acc"])])
        logger.info("job %d: trial %d fine-tuned: val %.4f -> %.4f, test %.4f -> %.4f, "
                    "%s params (%.2fx), .keras %s KiB, .tflite %s KiB, latency %.3f / %.3f ms, "
                    "%d epoch(s), %.1f s", trial.number, source, ua["val_acc_before"],
                    ua["val_acc_after"], ua["test_acc_before"], ua["test_acc"],
                    f"{ua['params']:,}", ua["compression_ratio"], _kb(ua["keras_bytes"]),
                    _kb(ua["tflite_bytes"]), ua["latency_ms_keras"], ua["latency_ms_tflite"],
                    ua["epochs_run"], ua["finetune_seconds"])
        return frozen


def run_finetune_jobs(study: optuna.Study, *, config: FinetuneConfig | None = None,
                      artifact_dir: str | os.PathLike[str] | None = None,
                      max_jobs: int | None = None, problem: Any = None) -> list[FrozenTrial]:
    """Worker loop: run WAITING jobs of ``"<study>:finetune"`` one at a time until none is
    left (or ``max_jobs`` ran). Safe to run in several processes at once (module
    docstring).

    A job: build the compressed model of the source trial's ``lrf_plan`` (factors from the
    similarity cache), measure val and test accuracy, fine-tune once
    (:func:`finetune_model`), measure test accuracy, params, FLOPs, ``.keras`` /
    ``.tflite`` sizes and batch-1 latencies (:func:`measure_model`), upload both files as
    Optuna artifacts to a ``FileSystemArtifactStore`` at ``artifact_dir`` (default: the
    directory recorded in the fine-tuning study, else :func:`default_artifact_dir`), save a
    dashboard note, tell COMPLETE with ``(params, test_accuracy)``. The original model is
    measured once per fine-tuning study (user attribute ``original``).

    An exception fails the job (user attribute ``error``) and the loop goes on;
    ``KeyboardInterrupt`` fails the job and propagates.

    Args:
        study: The search study.
        config: Fine-tuning and measurement settings.
        artifact_dir: Artifact store directory.
        max_jobs: Stop after this many jobs (``None``: until the queue is empty).
        problem: An already loaded :class:`~lrf_optuna.workspace.Problem` (default: loaded
            from the study's recorded problem, once).

    Returns:
        The jobs this worker ran, finished (COMPLETE or FAIL), in order.
    """
    config = config or FinetuneConfig()
    storage, rdb = _worker_storage(study, config)
    ft = finetune_study_of(study, storage=storage)
    worker = _Worker(study, ft, config, _artifact_dir(ft, study, artifact_dir), problem)

    def lock() -> contextlib.AbstractContextManager[None]:
        return study_lock(study, "finetune")

    ran: list[FrozenTrial] = []
    while max_jobs is None or len(ran) < max_jobs:
        claimed = _claim(ft, rdb, lock)
        if claimed is None:
            break
        trial, source = claimed
        with _Heartbeat(rdb, trial._trial_id):
            try:
                ran.append(worker.run(trial, source))
            except optuna.exceptions.UpdateFinishedTrialError:
                logger.warning("job %d (trial %d) was declared stale by another worker and "
                               "re-enqueued meanwhile; its result is dropped", trial.number,
                               source)
            except BaseException as err:
                _fail(ft, trial, error=f"{type(err).__name__}: {err}"[:2000])
                ran.append(_job(ft, trial.number))
                if not isinstance(err, Exception):
                    raise
                logger.exception("job %d (trial %d of study %r) failed", trial.number,
                                 source, study.study_name)
    running = ft.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        hint = (f"once its heartbeat is older than {config.grace_period} s a job is "
                "re-enqueued by the next worker" if rdb is not None else
                "if their worker was killed, call requeue_running_jobs (CLI: "
                "--requeue-running)")
        logger.info("%d job(s) still RUNNING in %r (other workers, or killed ones: %s)",
                    len(running), ft.study_name, hint)
    return ran


def finetune_study(study: optuna.Study, k: int = 3, *, strategy: Strategy = "spread",
                   max_params: float | None = None, max_flops: float | None = None,
                   min_proxy: float | None = None, config: FinetuneConfig | None = None,
                   artifact_dir: str | os.PathLike[str] | None = None,
                   max_jobs: int | None = None, problem: Any = None) -> list[FrozenTrial]:
    """:func:`select_trials` + :func:`enqueue_finetune` + :func:`run_finetune_jobs`.

    Returns:
        The latest COMPLETE job of each selected trial (jobs run now or earlier), in the
        selection's order; a trial whose job failed or is still running is missing.
    """
    config = config or FinetuneConfig()
    selected = select_trials(study, k, strategy=strategy, max_params=max_params,
                             max_flops=max_flops, min_proxy=min_proxy)
    enqueue_finetune(study, selected, max_attempts=config.max_attempts)
    run_finetune_jobs(study, config=config, artifact_dir=artifact_dir, max_jobs=max_jobs,
                      problem=problem)
    jobs = jobs_by_source(finetune_study_of(study))
    out = []
    for t in selected:
        done = [j for j in jobs.get(t.number, []) if j.state == TrialState.COMPLETE]
        if done:
            out.append(done[-1])
    return out


# -- reporting -----------------------------------------------------------------------------

def results_table(study: optuna.Study, trials: Iterable[int] | None = None) -> str:
    """The fine-tuned models (latest COMPLETE job per source trial, all or ``trials``) as a
    terminal table, smallest first, after the original model's row."""
    from lrf_optuna.report_table import format_table

    ft = existing_finetune_study(study)
    header = ["trial", "params", "compress", "FLOPs", "val before", "val after", "test acc",
              ".keras KiB", ".tflite KiB", "keras ms", "tflite ms", "epochs"]
    rows: list[list[Any]] = []
    jobs: list[FrozenTrial] = []
    if ft is not None:
        original = ft.user_attrs.get("original")
        if original:
            rows.append(["orig", f"{original['params']:,}", "1.00x",
                         f"{original['flops']:,}", f"{original['val_acc']:.4f}",
                         f"{original['val_acc']:.4f}", f"{original['test_acc']:.4f}",
                         _kb(original["keras_bytes"]), _kb(original["tflite_bytes"]),
                         f"{original['latency_ms_keras']:.3f}",
                         f"{original['latency_ms_tflite']:.3f}", ""])
        wanted = set(trials) if trials is not None else None
        for source, js in jobs_by_source(ft).items():
            done = [j for j in js if j.state == TrialState.COMPLETE]
            if done and (wanted is None or source in wanted):
                jobs.append(done[-1])
    for j in sorted(jobs, key=lambda j: (j.user_attrs["params"], j.user_attrs[JOB_PARAM])):
        ua = j.user_attrs
        rows.append([str(ua[JOB_PARAM]), f"{ua['params']:,}",
                     f"{ua['compression_ratio']:.2f}x", f"{ua['flops']:,}",
                     f"{ua['val_acc_before']:.4f}", f"{ua['val_acc_after']:.4f}",
                     f"{ua['test_acc']:.4f}", _kb(ua["keras_bytes"]), _kb(ua["tflite_bytes"]),
                     f"{ua['latency_ms_keras']:.3f}", f"{ua['latency_ms_tflite']:.3f}",
                     str(ua["epochs_run"])])
    title = (f"Fine-tuned trials of study {study.study_name!r} ({len(jobs)} job(s) in "
             f"{finetune_study_name(study)!r}; latencies: batch 1, median)")
    return title + "\n" + format_table(header, rows)


# -- CLI -----------------------------------------------------------------------------------

def open_study(study_name: str, storage: str | None) -> optuna.Study:
    """Load a search study for the CLI, with clear errors (``CLIError``)."""
    from lrf_optuna.cli import CLIError
    from lrf_optuna.search import default_storage

    storage = storage or default_storage(study_name)
    if storage.startswith("sqlite:///"):
        db = Path(storage[len("sqlite:///"):].split("?", 1)[0])
        if not db.exists():
            raise CLIError(f"no study database at {db}; run `lrf-optuna search` first or "
                           "pass --storage")
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise CLIError(f"no study {study_name!r} in {storage}; it has {names}") from err


def _config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    overrides = {name: getattr(args, name) for name in
                 ("epochs", "learning_rate", "batch_size", "latency_repeats")
                 if getattr(args, name, None) is not None}
    return dataclasses.replace(FinetuneConfig(), **overrides)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from lrf_optuna.cli import CLIError

    study = open_study(args.study_name, args.storage)
    try:
        config = _config_from_args(args)
    except ValueError as err:
        raise CLIError(str(err)) from err
    if args.k < 1:
        raise CLIError(f"-k must be >= 1, got {args.k}")
    if args.requeue_running:
        print(f"re-enqueued {requeue_running_jobs(study)} RUNNING job(s)")
    selected = select_trials(study, args.k, strategy=args.strategy,
                             max_params=args.max_params, max_flops=args.max_flops,
                             min_proxy=args.min_proxy)
    if not selected:
        front = [t for t in study.best_trials if t.user_attrs.get("lrf_plan")]
        raise CLIError(f"no Pareto-optimal compressed trial of study {study.study_name!r} "
                       f"is within the budget (front: {len(front)} compressed trial(s)); "
                       "relax --max-params/--max-flops/--min-proxy")
    added = enqueue_finetune(study, selected, max_attempts=config.max_attempts)
    numbers = ", ".join(str(t.number) for t in selected)
    print(f"study {study.study_name!r}: selected trial(s) {numbers} ({args.strategy}); "
          f"{added} job(s) enqueued in {finetune_study_name(study)!r}")
    try:
        ran = run_finetune_jobs(study, config=config, artifact_dir=args.artifact_dir,
                                max_jobs=args.max_jobs)
    except KeyboardInterrupt:
        print("\ninterrupted: the running job is marked FAIL and re-enqueued by the next "
              "`lrf-optuna finetune`; finished jobs are stored.", file=sys.stderr)
        return 130
    print()
    print(results_table(study))
    failed = [j for j in ran if j.state == TrialState.FAIL and "skipped" not in j.user_attrs]
    for j in failed:
        print(f"job {j.number} (trial {j.user_attrs.get(JOB_PARAM)}) failed: "
              f"{j.user_attrs.get('error', '?')}")
    return 1 if failed else 0


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to an ``argparse`` subparsers object."""
    d = FinetuneConfig()
    p = subparsers.add_parser(
        "finetune", help="fine-tune selected Pareto-optimal trials (resumable jobs)",
        description="Select Pareto-optimal trials of a search study, enqueue one "
                    "fine-tuning job each in the study '<study>:finetune' of the same "
                    "storage, and run the queued jobs (several workers may run this at "
                    "once; rerunning resumes). Prints the fine-tuned models' accuracy, "
                    "size and latency.")
    p.add_argument("--study-name", required=True, help="the search study")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///studies/<study-name>.db)")
    p.add_argument("-k", type=int, default=3, help="trials to fine-tune (default: 3)")
    p.add_argument("--strategy", choices=["spread", "knee"], default="spread",
                   help="spread: extremes + evenly spaced in log(params); knee: the knee "
                        "point and its neighbours (default: spread)")
    p.add_argument("--max-params", type=float, default=None, help="budget: at most this "
                   "many parameters")
    p.add_argument("--max-flops", type=float, default=None, help="budget: at most this many "
                   "FLOPs")
    p.add_argument("--min-proxy", type=float, default=None, help="budget: proxy at least")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"fine-tuning epochs (default: {d.epochs})")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"initial learning rate, cosine-decayed (default: {d.learning_rate})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"batch size (default: {d.batch_size})")
    p.add_argument("--latency-repeats", type=int, default=None,
                   help=f"timed runs per latency (default: {d.latency_repeats})")
    p.add_argument("--artifact-dir", default=None,
                   help="Optuna artifact store directory (default: <db stem>_artifacts "
                        "beside a SQLite file, else studies/artifacts)")
    p.add_argument("--max-jobs", type=int, default=None,
                   help="run at most this many jobs in this worker")
    p.add_argument("--requeue-running", action="store_true",
                   help="first re-enqueue RUNNING jobs (only when no other worker runs)")
    p.set_defaults(func=_cmd_finetune)
    return p
