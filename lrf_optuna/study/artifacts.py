"""A fine-tuning job's files: the model measured and written, stored as Optuna artifacts
of its job, fetched back.

* :func:`measure_model` measures a model the way the report compares models (test
  accuracy, params, FLOPs, both files' sizes and both batch-1 latencies, a
  :class:`~lrf_optuna.study.finetune_records.Measured`) and writes its ``.keras`` and
  float32 ``.tflite`` files (:mod:`lrf_optuna.deploy.files`): a :class:`MeasuredFiles`.
* :func:`upload_model_files` stores both files as artifacts of a fine-tuning job (user
  attributes ``keras_artifact_id``, ``tflite_artifact_id``); :func:`download_job_files`
  fetches them, from the artifact store the storage URL implies or one the user names,
  never from a directory the study records, and only by artifact ids of Optuna's form.

Example:
    >>> files = measure_model(model, splits, "out", "trial3")  # doctest: +SKIP
    >>> files.measured.tflite_bytes, files.measured.tflite_runtime  # doctest: +SKIP
    (91576, 'litert')
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lrf_optuna.deploy.files import save_keras, to_tflite
from lrf_optuna.deploy.measure import keras_latency_ms
from lrf_optuna.deploy.runtime import latency
from lrf_optuna.errors import UserError
from lrf_optuna.study.finetune_records import Measured
from lrf_optuna.study.lookup import artifact_store_dir, finetune_study_name

if TYPE_CHECKING:
    import keras
    import optuna

    from lrf_optuna.data import Splits

__all__ = ["KERAS_ARTIFACT", "TFLITE_ARTIFACT", "MeasuredFiles", "download_job_files",
           "measure_model", "upload_model_files"]


# -- measuring -----------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasuredFiles:
    """What :func:`measure_model` found, and the two files it wrote."""

    measured: Measured
    keras_path: Path
    tflite_path: Path


def measure_model(model: keras.Model, splits: Splits, out_dir: str | os.PathLike[str],
                  stem: str, *, latency_repeats: int = 50, latency_warmup: int = 5,
                  tflite_threads: int | None = None) -> MeasuredFiles:
    """Test accuracy, params, FLOPs, file sizes and latencies of ``model`` (the TFLite
    latency with the runtime that ran it, ``Measured.tflite_runtime``); writes
    ``<out_dir>/<stem>.keras`` and the float32 ``.tflite``."""
    from lrf_optuna.costs import model_costs
    from lrf_optuna.models.training import evaluate

    costs = model_costs(model)
    keras_path = save_keras(model, Path(out_dir) / f"{stem}.keras")
    tflite_path = to_tflite(model, Path(out_dir) / f"{stem}.tflite")
    lite = latency(tflite_path, latency_repeats, latency_warmup, num_threads=tflite_threads)
    measured = Measured(
        params=int(costs.params), flops=int(costs.flops),
        test_acc=evaluate(model, splits.x_test, splits.y_test),
        keras_bytes=keras_path.stat().st_size, tflite_bytes=tflite_path.stat().st_size,
        latency_ms_keras=round(keras_latency_ms(model, None, latency_repeats,
                                                latency_warmup), 4),
        latency_ms_tflite=lite.ms, tflite_runtime=lite.runtime)
    return MeasuredFiles(measured, keras_path, tflite_path)


# -- fine-tuned models as Optuna artifacts -------------------------------------------------

KERAS_ARTIFACT, TFLITE_ARTIFACT = "keras_artifact_id", "tflite_artifact_id"
#: What Optuna's ``upload_artifact`` names artifacts: a UUID4, nothing path-like.
_ARTIFACT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def upload_model_files(store_dir: Path, trial: optuna.Trial, files: MeasuredFiles
                       ) -> dict[str, str]:
    """Store the ``.keras`` and ``.tflite`` files as artifacts of ``trial``; returns the
    user attributes naming them (``keras_artifact_id``, ``tflite_artifact_id``)."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(store_dir)
    return {key: upload_artifact(artifact_store=store, file_path=str(path),
                                 study_or_trial=trial)
            for key, path in ((KERAS_ARTIFACT, files.keras_path),
                              (TFLITE_ARTIFACT, files.tflite_path))}


def download_job_files(study: optuna.Study, job: optuna.trial.FrozenTrial, keras_path: Path,
                       tflite_path: Path, *,
                       artifact_dir: str | os.PathLike[str] | None = None) -> None:
    """Copy a fine-tuning job's ``.keras`` and ``.tflite`` artifacts to the given paths
    (overwriting).

    The files are read from ``artifact_dir`` (one the user names), else from the artifact
    store the storage URL implies (:func:`~lrf_optuna.study.lookup.artifact_store_dir`),
    never from a directory the study records, and only by artifact ids of Optuna's form.

    Raises:
        FileNotFoundError: the job has no artifact ids or the store lacks the files.
        UserError: an artifact id is not Optuna's (the study was edited to point at
            another file).
    """
    from optuna.artifacts import FileSystemArtifactStore, download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    directory = artifact_store_dir(study, artifact_dir)
    store = FileSystemArtifactStore(directory)
    for key, path in ((KERAS_ARTIFACT, keras_path), (TFLITE_ARTIFACT, tflite_path)):
        artifact_id = job.user_attrs.get(key)
        if artifact_id is None:
            raise FileNotFoundError(f"job {job.number} of {finetune_study_name(study)!r} has "
                                    f"no {key!r}")
        if not isinstance(artifact_id, str) or not _ARTIFACT_ID.fullmatch(artifact_id):
            raise UserError(f"job {job.number} of {finetune_study_name(study)!r} records "
                            f"{key} {artifact_id!r}, which is not an Optuna artifact id; the "
                            "study file may have been tampered with: not reading it")
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
