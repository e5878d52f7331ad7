"""Deployable files of compressed models: ``.keras``, ``.tflite`` (float32 or quantized),
CPU latency.

* :func:`save_keras` writes a ``.keras`` file **without optimizer state** (a compiled,
  fine-tuned model would otherwise carry Adam's two moment tensors per weight, tripling the
  file): the size it leaves is the size of the deployable model. Load it with
  :func:`load_model` (or ``keras.saving.load_model(path)`` after
  ``import lrf_optuna.decompose``, which registers
  :class:`~lrf_optuna.decompose.FactorizedLayer`).
* :func:`to_tflite` converts a frozen batch-1 concrete function
  (:mod:`lrf_optuna.deploy.convert`): a static graph, builtin ops only, float32 by default
  (no optimization flags: the factors stay as they are, so TFLite computes exactly the
  factorized graph, a ``FactorizedLayer`` becoming a chain of CONV_2D / DEPTHWISE_CONV_2D
  / FULLY_CONNECTED + RESHAPE / TRANSPOSE ops), or quantized (``quantize="dynamic"``,
  ``"float16"``, ``"int8"``). A float32 model that does not convert that way falls back
  to ``TFLiteConverter.from_keras_model`` and a SavedModel round trip (dynamic batch
  size). (Converting a concrete function *with its model* through the converter's
  default SavedModel lowering keeps resource variables the file never initialises: that
  produced the NaN outputs older versions saw; the freezing path has no such problem.)
  :func:`quantized_file` writes a quantized file, calibrated on training images.
* :func:`keras_latency_ms` times ``model(x, training=False)`` inside a ``tf.function``
  (traced once on a fixed ``(1, *input_shape)`` input, so no retracing and no Python
  layer overhead is timed), :func:`tflite_latency_ms` times LiteRT's ``invoke()``
  (:mod:`lrf_optuna.deploy.runtime`);
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
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.errors import UserError
from lrf_optuna.study.finetune_records import Measured
from lrf_optuna.study.lookup import (
    artifact_store_dir,
    finetune_study_name,
    finetuned_job,
    recorded_artifact_dir,
)
from lrf_optuna.study.records import get_search_trial
from lrf_optuna.study.storage import safe_name

if TYPE_CHECKING:
    import keras
    import optuna

    from lrf_optuna.data import Splits
    from lrf_optuna.problem import Problem

__all__ = ["ExportError", "MeasuredFiles", "download_job_files", "export_trial",
           "keras_latency_ms", "load_model", "measure_model", "quantized_file", "save_keras",
           "tflite_latency_ms", "tflite_predict", "to_tflite",
           "upload_model_files"]

logger = logging.getLogger(__name__)

#: Outputs of the converted model may differ from Keras by at most this, relative to the
#: largest output magnitude, on the random check batch of :func:`to_tflite`.
TFLITE_CHECK_RTOL = 1e-3


class ExportError(RuntimeError):
    """A model cannot be converted to a working TFLite model."""


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
    from lrf_optuna.deploy.convert import model_input_shape

    return model_input_shape(model, hint="pass input_shape explicitly")


def _check_conversion(model: keras.Model, path: Path) -> float:
    """Largest |TFLite - Keras| on a random batch of 2, relative to max |Keras|."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *_input_shape(model))).astype("float32")
    want = np.asarray(model(x, training=False))
    got = tflite_predict(path, x)
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1.0))


def _convert_dynamic(model: keras.Model, errors: list[str]) -> bytes | None:
    """The float32 routes of older lrf_optuna (dynamic batch size): ``from_keras_model``,
    then a SavedModel round trip; ``None`` when both fail (reasons in ``errors``)."""
    import tensorflow as tf

    def from_keras() -> bytes:
        return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    def from_saved_model() -> bytes:
        with tempfile.TemporaryDirectory(prefix="lrf_tflite_") as tmp:
            model.export(os.path.join(tmp, "saved_model"), format="tf_saved_model",
                         verbose=False)
            conv = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "saved_model"))
            return bytes(conv.convert())

    for name, route in (("from_keras_model", from_keras), ("saved_model", from_saved_model)):
        try:
            with _quiet_converter():
                return route()
        except Exception as err:  # converter errors come in many types
            errors.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
            logger.debug("TFLite conversion via %s failed", name, exc_info=True)
    return None


@contextlib.contextmanager
def _quiet_converter() -> Any:
    # the converter prints the traced signature on stdout and "Assets written to" on
    # TensorFlow's logger; keep the terminal clean
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    try:
        tf_logger.setLevel(max(level, logging.WARNING))
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tf_logger.setLevel(level)


def to_tflite(model: keras.Model, path: str | os.PathLike[str], *, check: bool = True,
              quantize: str = "none", representative: np.ndarray | None = None,
              int8_io: bool = False) -> Path:
    """Convert a Keras model (with or without FactorizedLayers) to a static batch-1
    ``.tflite`` file, float32 or quantized.

    The file comes from a frozen batch-1 concrete function
    (:func:`lrf_optuna.deploy.convert.convert`): no shape-handling ops, builtin ops
    only. With ``quantize="none"`` and ``check`` (default), it must reproduce Keras'
    outputs on a random batch (relative error <= :data:`TFLITE_CHECK_RTOL`); when that
    route fails, the older dynamic-batch routes (``from_keras_model``, then a
    SavedModel round trip) are tried, with a warning. A quantized file is checked to
    run and give finite outputs of the right shape (its accuracy is the caller's to
    judge on real data), and an ``int8`` file to compute in integers only
    (:meth:`lrf_optuna.deploy.TFLiteFile.float_ops`).

    Args:
        model: The model.
        path: Where the file goes (parent directories are created).
        check: Check the file as described.
        quantize: ``"none"``, ``"dynamic"``, ``"float16"`` or ``"int8"``
            (:data:`lrf_optuna.deploy.QUANTIZE_MODES`).
        representative: Training images for ``"int8"``
            (:func:`lrf_optuna.deploy.representative_images`).
        int8_io: With ``"int8"``, int8 input and output tensors.

    Returns:
        ``path``.

    Raises:
        ExportError: no route gives a working file.
        UserError: bad ``quantize`` / ``representative`` / ``int8_io``.
    """
    from lrf_optuna.deploy.convert import check_quantize, convert

    mode = check_quantize(quantize)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    try:
        with _quiet_converter():
            data: bytes | None = convert(model, quantize=mode, representative=representative,
                                         int8_io=int8_io)
    except UserError:
        raise
    except Exception as err:  # converter errors come in many types
        errors.append(f"batch-1 concrete function: {type(err).__name__}: {str(err)[:300]}")
        logger.debug("batch-1 TFLite conversion failed", exc_info=True)
        data = None
    if data is not None:
        path.write_bytes(data)
        problem = _check_file(model, path, mode) if check else None
        if problem is None:
            return path
        errors.append(f"batch-1 concrete function: {problem}")
    if mode == "none":
        data = _convert_dynamic(model, errors)
        if data is not None:
            path.write_bytes(data)
            problem = _check_file(model, path, mode) if check else None
            if problem is None:
                warnings.warn(f"model {model.name!r}: the static batch-1 conversion failed "
                              f"({errors[0]}); wrote a dynamic-batch file instead",
                              stacklevel=2)
                return path
            errors.append(f"dynamic batch: {problem}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    raise ExportError(f"cannot convert model {model.name!r} to TFLite ({mode}): "
                      + "; ".join(errors))


def _check_file(model: keras.Model, path: Path, mode: str) -> str | None:
    """What is wrong with a converted file, or None."""
    from lrf_optuna.deploy.tflite_file import read_tflite

    if mode == "none":
        err_rel = _check_conversion(model, path)
        return (None if err_rel <= TFLITE_CHECK_RTOL
                else f"outputs differ from Keras (relative error {err_rel:.3g})")
    if mode == "int8":
        floats = read_tflite(path).float_ops()
        if floats:
            return f"ops computing in float in an int8 file: {', '.join(floats[:10])}"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *_input_shape(model))).astype("float32")
    got = tflite_predict(path, x)
    want_shape = tuple(np.asarray(model(x[:1], training=False)).shape[1:])
    if got.shape[1:] != want_shape or not np.all(np.isfinite(got)):
        return f"outputs of shape {got.shape[1:]} (want {want_shape}) or not finite"
    return None


def tflite_predict(path: str | os.PathLike[str], x: np.ndarray, *, batch_size: int = 256,
                   num_threads: int | None = None) -> np.ndarray:
    """Run a ``.tflite`` model (one input, one output) on ``x`` with LiteRT, as float32.

    A file with a dynamic batch dimension is resized to batches of ``batch_size``; a
    static batch-1 file is invoked once per image; integer inputs and outputs are
    quantized and dequantized (:func:`lrf_optuna.deploy.predict`).
    """
    from lrf_optuna.deploy.runtime import predict

    return predict(path, x, batch_size=batch_size, num_threads=num_threads)


def _median_ms(run: Any, repeats: int, warmup: int) -> float:
    from lrf_optuna.deploy.runtime import median_ms

    return median_ms(run, repeats, warmup)


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
    """Median CPU latency (ms) of one ``invoke()`` at batch size 1, in LiteRT (the
    fallback ``tf.lite.Interpreter`` only where ``ai_edge_litert`` cannot be imported;
    :func:`lrf_optuna.deploy.latency` also says which ran).

    ``num_threads=None`` keeps the interpreter's default (XNNPACK decides).
    """
    from lrf_optuna.deploy.runtime import latency

    return latency(path, repeats, warmup, num_threads=num_threads).ms


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
    """Test accuracy, params, FLOPs, file sizes and latencies of ``model`` (the TFLite
    latency with the runtime that ran it, ``Measured.tflite_runtime``); writes
    ``<out_dir>/<stem>.keras`` and the float32 ``.tflite``."""
    from lrf_optuna.costs import model_costs
    from lrf_optuna.deploy.runtime import latency
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


# -- search trials -----------------------------------------------------------------------

def export_trial(study: optuna.Study, trial_number: int, out_dir: str | os.PathLike[str], *,
                 artifact_dir: str | os.PathLike[str] | None = None,
                 problem: Problem | None = None,
                 recipe: str | None = None, quantize: str = "none",
                 int8_io: bool = False,
                 representative: int | None = None) -> tuple[Path, Path]:
    """Write ``<study>_trial<N>.keras`` and ``.tflite`` for search trial ``N`` into
    ``out_dir`` (and, with ``quantize``, the quantized ``<study>_trial<N>_<mode>.tflite``
    beside them).

    If the study's fine-tuning study (``"<study>:finetune"``, see
    :mod:`lrf_optuna.finetune`) has a COMPLETE job for this trial (of ``recipe``, a
    :meth:`~lrf_optuna.finetune.FinetuneConfig.recipe_key`, when given; else the latest of
    any recipe), its fine-tuned files are downloaded from the Optuna artifact store
    (:func:`download_job_files`). Otherwise the compressed model is rebuilt from the
    trial's plan (the problem is loaded from the study, factors from the similarity cache)
    and exported **without fine-tuning**, with a warning. Load the ``.keras`` file with
    :func:`load_model`.

    Args:
        study: The search study.
        trial_number: The search trial.
        out_dir: Output directory.
        artifact_dir: The fine-tuning jobs' artifact store (default: the one the storage
            implies).
        problem: The study's problem, if already loaded.
        recipe: Take the job of this recipe.
        quantize: Also write a quantized file (:data:`lrf_optuna.deploy.QUANTIZE_MODES`;
            ``"int8"`` calibrates on training images of the study's problem).
        int8_io: With ``"int8"``: int8 input and output tensors.
        representative: How many training images calibrate ``"int8"`` (default
            :data:`lrf_optuna.deploy.DEFAULT_REPRESENTATIVE`).

    Returns:
        ``(keras_path, tflite_path)``; ``tflite_path`` is the quantized file when
        ``quantize`` is not ``"none"``.

    Raises:
        UserError: no such COMPLETE search trial, or bad quantization arguments.
    """
    from lrf_optuna.deploy.convert import check_quantize
    from lrf_optuna.study.models import StudyModels

    mode = check_quantize(quantize)
    if int8_io and mode != "int8":
        raise UserError("int8 inputs and outputs (--int8-io) need --quantize int8")
    trial = get_search_trial(study, trial_number)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{safe_name(study.study_name)}_trial{trial_number}"
    keras_path, tflite_path = out / f"{stem}.keras", out / f"{stem}.tflite"
    models = StudyModels(study, problem=problem)
    job = finetuned_job(study, trial_number, recipe=recipe)
    model = None
    if job is not None:
        try:
            download_job_files(study, job, keras_path, tflite_path, artifact_dir=artifact_dir)
            logger.info("exported fine-tuned trial %d (job %d of %r) to %s", trial_number,
                        job.number, finetune_study_name(study), out)
        except FileNotFoundError as err:
            recorded = recorded_artifact_dir(study)
            hint = (f" (the fine-tuning study says it used {recorded}: pass it as "
                    "--artifact-dir / artifact_dir= if you trust it)"
                    if recorded and artifact_dir is None else "")
            warnings.warn(f"the fine-tuned files of trial {trial_number} are not in the "
                          f"artifact store ({err}){hint}; exporting the compressed model "
                          "WITHOUT fine-tuning", stacklevel=2)
            job = None
        else:
            if mode == "none":
                return keras_path, tflite_path
            model = load_model(keras_path)
    else:
        warnings.warn(f"trial {trial_number} of study {study.study_name!r} has not been "
                      "fine-tuned (run `lrf-optuna finetune`); exporting the compressed "
                      "model WITHOUT fine-tuning", stacklevel=2)
    if model is None:
        model = models.build(trial)
        save_keras(model, keras_path)
        to_tflite(model, tflite_path)
    if mode == "none":
        return keras_path, tflite_path
    return keras_path, quantized_file(model, out / f"{stem}_{mode}.tflite", mode,
                                      models.problem.splits, int8_io=int8_io,
                                      representative=representative)


def quantized_file(model: keras.Model, path: str | os.PathLike[str], quantize: str,
                   splits: Splits, *, int8_io: bool = False,
                   representative: int | None = None) -> Path:
    """Write ``model`` quantized as ``quantize`` to ``path``; ``"int8"`` calibrates on
    ``representative`` training images of ``splits`` (default
    :data:`lrf_optuna.deploy.DEFAULT_REPRESENTATIVE`)."""
    from lrf_optuna.deploy.convert import DEFAULT_REPRESENTATIVE, representative_images

    images = (representative_images(splits, representative or DEFAULT_REPRESENTATIVE)
              if quantize == "int8" else None)
    return to_tflite(model, path, quantize=quantize, representative=images, int8_io=int8_io)

