"""Deployable files of compressed models: ``.keras``, float32 ``.tflite``, CPU latency.

* :func:`save_keras` writes a ``.keras`` file **without optimizer state** (a compiled,
  fine-tuned model would otherwise carry Adam's two moment tensors per weight, tripling the
  file): the size it leaves is the size of the deployable model. Load it with
  :func:`load_model` (or ``keras.saving.load_model(path)`` after
  ``import lrf_optuna.decompose``, which registers
  :class:`~lrf_optuna.decompose.FactorizedLayer`).
* :func:`to_tflite` converts with ``tf.lite.TFLiteConverter.from_keras_model``; when that
  raises, or when its output does not match Keras on a random batch, it converts through a
  SavedModel (``model.export(..., format="tf_saved_model")`` then ``from_saved_model``).
  float32, builtin ops only, no quantization, no optimization flags: the factors stay as
  they are, so TFLite computes exactly the factorized graph (a ``FactorizedLayer`` becomes
  a chain of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / BATCH_MATMUL + RESHAPE +
  TRANSPOSE ops). (``from_concrete_functions`` on a traced ``model.__call__`` is *not*
  used: in TF 2.21 it silently produced NaN outputs for factorized models.)
* :func:`keras_latency_ms` times ``model(x, training=False)`` inside a ``tf.function``
  (traced once on a fixed ``(1, *input_shape)`` input, so no retracing and no Python
  layer overhead is timed), :func:`tflite_latency_ms` times ``Interpreter.invoke()``;
  both at batch size 1, on random input, median of ``repeats`` runs after ``warmup`` runs,
  in milliseconds.
* :func:`measure_model` measures a model the way the report compares models: test
  accuracy, params, FLOPs, both files' sizes and both latencies.
* Fine-tuned models are Optuna artifacts of their fine-tuning job:
  :func:`upload_model_files` stores them, :func:`download_job_files` fetches them.
* :func:`export_trial` writes both files for a search trial, using the fine-tuned weights
  of its fine-tuning job when there is one (see :mod:`lrf_optuna.finetune`).
* :func:`load_model` loads an exported ``.keras`` file (it registers lrf_optuna's layers
  first: plain ``keras.saving.load_model`` fails on them unless ``lrf_optuna.decompose``
  was imported).

Example:
    >>> path = to_tflite(compressed, "small.tflite")  # doctest: +SKIP
    >>> np.abs(tflite_predict(path, x) - compressed.predict(x)).max() < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.errors import UserError
from lrf_optuna.study.lookup import (
    artifact_store_dir,
    finetune_study_name,
    finetuned_job,
    recorded_artifact_dir,
)
from lrf_optuna.study.records import Measured, get_search_trial
from lrf_optuna.study.storage import safe_name

if TYPE_CHECKING:
    import keras
    import optuna

    from lrf_optuna.data import Splits
    from lrf_optuna.problem import Problem

__all__ = ["ExportError", "MeasuredFiles", "download_job_files", "export_trial",
           "keras_latency_ms", "load_model", "measure_model", "save_keras",
           "search_trial", "tflite_latency_ms", "tflite_predict", "to_tflite",
           "upload_model_files"]

logger = logging.getLogger(__name__)

#: Outputs of the converted model may differ from Keras by at most this, relative to the
#: largest output magnitude, on the random check batch of :func:`to_tflite`.
TFLITE_CHECK_RTOL = 1e-3


class ExportError(RuntimeError):
    """A model cannot be converted to a working TFLite model."""


def _quiet_interpreter(path: str | os.PathLike[str], num_threads: int | None = None) -> Any:
    import tensorflow as tf

    with warnings.catch_warnings():
        # "tf.lite.Interpreter is deprecated ... use ai_edge_litert" (not installed here)
        warnings.simplefilter("ignore", UserWarning)
        return tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)


def save_keras(model: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` as a ``.keras`` file without optimizer state; returns the path.

    A compiled model is rebuilt first from its config (same architecture and weights, not
    compiled: ``keras.models.clone_model`` would re-compile it and Keras would save the
    optimizer variables again), so the file holds only what inference needs.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a Keras model file must end in .keras, but got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    target = model
    if getattr(model, "optimizer", None) is not None:
        target = type(model).from_config(model.get_config())
        target.set_weights(model.get_weights())
    target.save(path)
    return path


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a ``.keras`` file written by lrf_optuna (compressed or not).

    Registers lrf_optuna's Keras layers (``import lrf_optuna.decompose``) first: without
    that, Keras fails on a factorized model with a generic "could not locate class" error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    import keras

    import lrf_optuna.decompose  # noqa: F401  (registers FactorizedLayer and its parts)

    if not Path(path).exists():
        raise FileNotFoundError(f"no model file at {path}")
    return keras.saving.load_model(path)


def _input_shape(model: keras.Model) -> tuple[int, ...]:
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"model {model.name!r} has a dynamic input shape {shape}; pass "
                         "input_shape explicitly")
    return tuple(int(d) for d in shape)


def _check_conversion(model: keras.Model, path: Path) -> float:
    """Largest |TFLite - Keras| on a random batch of 2, relative to max |Keras|."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *_input_shape(model))).astype("float32")
    want = np.asarray(model(x, training=False))
    got = tflite_predict(path, x)
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1.0))


def to_tflite(model: keras.Model, path: str | os.PathLike[str], *, check: bool = True
              ) -> Path:
    """Convert a Keras model (with or without FactorizedLayers) to a float32 ``.tflite``.

    Tries ``TFLiteConverter.from_keras_model`` first, then a SavedModel round trip (see
    the module docstring). No quantization. With ``check`` (default), the converted model
    must reproduce Keras' outputs on a random batch (relative error <= 1e-3), else the next
    route is tried and :class:`ExportError` is raised when none works.

    Returns:
        ``path`` (parent directories are created).
    """
    import tensorflow as tf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def from_keras() -> bytes:
        return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    def from_saved_model() -> bytes:
        with tempfile.TemporaryDirectory(prefix="lrf_tflite_") as tmp:
            model.export(os.path.join(tmp, "saved_model"), format="tf_saved_model",
                         verbose=False)
            conv = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "saved_model"))
            return bytes(conv.convert())

    errors = []
    for name, route in (("from_keras_model", from_keras), ("saved_model", from_saved_model)):
        tf_logger = logging.getLogger("tensorflow")
        level = tf_logger.level
        try:
            # the converter prints the traced signature on stdout and "Assets written to"
            # on TensorFlow's logger; keep the terminal clean
            tf_logger.setLevel(max(level, logging.WARNING))
            with contextlib.redirect_stdout(io.StringIO()):
                data = route()
        except Exception as err:  # converter errors come in many types
            errors.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
            logger.debug("TFLite conversion via %s failed", name, exc_info=True)
            continue
        finally:
            tf_logger.setLevel(level)
        path.write_bytes(data)
        if not check:
            return path
        err_rel = _check_conversion(model, path)
        if err_rel <= TFLITE_CHECK_RTOL:
            logger.debug("converted %s to %s via %s (rel. error %.2g)", model.name, path,
                         name, err_rel)
            return path
        errors.append(f"{name}: outputs differ from Keras (relative error {err_rel:.3g})")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    raise ExportError(f"cannot convert model {model.name!r} to TFLite: " + "; ".join(errors))


def tflite_predict(path: str | os.PathLike[str], x: np.ndarray, *, batch_size: int = 256,
                   num_threads: int | None = None) -> np.ndarray:
    """Run a ``.tflite`` model (one input, one output) on ``x``, in batches.

    The input tensor is resized to each batch, so any batch size works for a model
    converted with a dynamic batch dimension.
    """
    interp = _quiet_interpreter(path, num_threads)
    inp = interp.get_input_details()[0]
    out_index = interp.get_output_details()[0]["index"]
    x = np.asarray(x, dtype=inp["dtype"])
    outs = []
    current: tuple[int, ...] | None = None
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        if current != chunk.shape:
            interp.resize_tensor_input(inp["index"], chunk.shape, strict=False)
            interp.allocate_tensors()
            current = chunk.shape
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        outs.append(np.array(interp.get_tensor(out_index)))
    if not outs:
        raise ValueError("cannot predict on an empty batch")
    return np.concatenate(outs)


def _median_ms(run: Any, repeats: int, warmup: int) -> float:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def keras_latency_ms(model: keras.Model, input_shape: Sequence[int] | None = None,
                     repeats: int = 50, warmup: int = 5) -> float:
    """Median CPU latency (ms) of one sample through ``model`` (batch size 1).

    Times ``model(x, training=False)`` in a ``tf.function`` traced once for the fixed
    input shape (the trace happens during warm-up, which is at least one call), plus
    fetching the output as NumPy.

    Args:
        model: Any Keras model with one input.
        input_shape: One sample's shape (no batch axis); default: the model's.
        repeats: Timed calls; the median is returned.
        warmup: Untimed calls first (at least 1 is made, for the trace).
    """
    import tensorflow as tf

    shape = tuple(input_shape) if input_shape is not None else _input_shape(model)
    x = tf.constant(np.random.default_rng(0).standard_normal((1, *shape)).astype("float32"))
    fn = tf.function(lambda t: model(t, training=False))
    return _median_ms(lambda: np.asarray(fn(x)), repeats, max(warmup, 1))


def tflite_latency_ms(path: str | os.PathLike[str], repeats: int = 50, warmup: int = 5, *,
                      num_threads: int | None = None) -> float:
    """Median CPU latency (ms) of one ``Interpreter.invoke()`` at batch size 1.

    ``num_threads=None`` keeps the interpreter's default (XNNPACK decides).
    """
    interp = _quiet_interpreter(path, num_threads)
    inp = interp.get_input_details()[0]
    shape = (1, *(int(d) for d in inp["shape"][1:]))
    interp.resize_tensor_input(inp["index"], shape, strict=False)
    interp.allocate_tensors()
    x = np.random.default_rng(0).standard_normal(shape).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    return _median_ms(interp.invoke, repeats, warmup)


# -- measuring ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasuredFiles:
    """What :func:`measure_model` found, and the two files it wrote."""

    measured: Measured
    keras_path: Path
    tflite_path: Path


def measure_model(model: keras.Model, splits: Splits, out_dir: str | os.PathLike[str],
                  stem: str, *, latency_repeats: int = 50, latency_warmup: int = 5,
                  tflite_threads: int | None = None) -> MeasuredFiles:
    """Test accuracy, params, FLOPs, file sizes and latencies of ``model``; writes
    ``<out_dir>/<stem>.keras`` and ``.tflite``."""
    from lrf_optuna.costs import model_costs
    from lrf_optuna.models.training import evaluate

    costs = model_costs(model)
    keras_path = save_keras(model, Path(out_dir) / f"{stem}.keras")
    tflite_path = to_tflite(model, Path(out_dir) / f"{stem}.tflite")
    measured = Measured(
        params=int(costs.params), flops=int(costs.flops),
        test_acc=evaluate(model, splits.x_test, splits.y_test),
        keras_bytes=keras_path.stat().st_size, tflite_bytes=tflite_path.stat().st_size,
        latency_ms_keras=round(keras_latency_ms(model, None, latency_repeats,
                                                latency_warmup), 4),
        latency_ms_tflite=round(tflite_latency_ms(tflite_path, latency_repeats, latency_warmup,
                                                  num_threads=tflite_threads), 4))
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


# -- search trials -----------------------------------------------------------------------

def export_trial(study: optuna.Study, trial_number: int, out_dir: str | os.PathLike[str], *,
                 artifact_dir: str | os.PathLike[str] | None = None,
                 problem: Problem | None = None,
                 recipe: str | None = None) -> tuple[Path, Path]:
    """Write ``<study>_trial<N>.keras`` and ``.tflite`` for search trial ``N`` into
    ``out_dir``.

    If the study's fine-tuning study (``"<study>:finetune"``, see
    :mod:`lrf_optuna.finetune`) has a COMPLETE job for this trial (of ``recipe``, a
    :meth:`~lrf_optuna.finetune.FinetuneConfig.recipe_key`, when given; else the latest of
    any recipe), its fine-tuned files are downloaded from the Optuna artifact store
    (:func:`download_job_files`). Otherwise the compressed model is rebuilt from the
    trial's plan (the problem is loaded from the study, factors from the similarity cache)
    and exported **without fine-tuning**, with a warning. Load the ``.keras`` file with
    :func:`load_model`.

    Returns:
        ``(keras_path, tflite_path)``.

    Raises:
        UserError: no such COMPLETE search trial.
    """
    from lrf_optuna.search import StudyModels

    trial = get_search_trial(study, trial_number)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{safe_name(study.study_name)}_trial{trial_number}"
    keras_path, tflite_path = out / f"{stem}.keras", out / f"{stem}.tflite"
    job = finetuned_job(study, trial_number, recipe=recipe)
    if job is not None:
        try:
            download_job_files(study, job, keras_path, tflite_path, artifact_dir=artifact_dir)
            logger.info("exported fine-tuned trial %d (job %d of %r) to %s", trial_number,
                        job.number, finetune_study_name(study), out)
            return keras_path, tflite_path
        except FileNotFoundError as err:
            recorded = recorded_artifact_dir(study)
            hint = (f" (the fine-tuning study says it used {recorded}: pass it as "
                    "--artifact-dir / artifact_dir= if you trust it)"
                    if recorded and artifact_dir is None else "")
            warnings.warn(f"the fine-tuned files of trial {trial_number} are not in the "
                          f"artifact store ({err}){hint}; exporting the compressed model "
                          "WITHOUT fine-tuning", stacklevel=2)
    else:
        warnings.warn(f"trial {trial_number} of study {study.study_name!r} has not been "
                      "fine-tuned (run `lrf-optuna finetune`); exporting the compressed "
                      "model WITHOUT fine-tuning", stacklevel=2)
    model = StudyModels(study, problem=problem).build(trial)
    save_keras(model, keras_path)
    to_tflite(model, tflite_path)
    return keras_path, tflite_path


#: Deprecated name of :func:`lrf_optuna.study.records.get_search_trial`.
search_trial = get_search_trial
