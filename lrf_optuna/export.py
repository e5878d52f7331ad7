"""Deployable files of compressed models: ``.keras``, float32 ``.tflite``, CPU latency.

* :func:`save_keras` writes a ``.keras`` file **without optimizer state** (a compiled,
  fine-tuned model would otherwise carry Adam's two moment tensors per weight, tripling the
  file): the size it leaves is the size of the deployable model. Load it with
  ``keras.saving.load_model(path)`` after ``import lrf_optuna.decompose`` (which registers
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
* :func:`export_trial` writes both files for a search trial, using the fine-tuned weights
  of its fine-tuning job when there is one (see :mod:`lrf_optuna.finetune`).

Example:
    >>> path = to_tflite(compressed, "small.tflite")  # doctest: +SKIP
    >>> np.abs(tflite_predict(path, x) - compressed.predict(x)).max() < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import optuna

__all__ = ["ExportError", "add_export_parser", "export_trial", "keras_latency_ms", "save_keras",
           "search_trial", "tflite_latency_ms", "tflite_predict", "to_tflite"]

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


# -- search trials -----------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def search_trial(study: optuna.Study, trial_number: int) -> optuna.trial.FrozenTrial:
    """The finished search trial ``trial_number``, with a clear error otherwise."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == trial_number]
    if not found:
        span = f"0..{len(trials) - 1}" if trials else "none"
        raise KeyError(f"study {study.study_name!r} has no trial {trial_number} "
                       f"(trials: {span})")
    trial = found[0]
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise ValueError(f"trial {trial_number} of study {study.study_name!r} is "
                         f"{trial.state.name}, not COMPLETE")
    if "lrf_plan" not in trial.user_attrs:
        raise ValueError(f"trial {trial_number} of study {study.study_name!r} has no "
                         "'lrf_plan' user attribute (not made by lrf_optuna's search)")
    return trial


def export_trial(study: optuna.Study, trial_number: int, out_dir: str | os.PathLike[str], *,
                 artifact_dir: str | os.PathLike[str] | None = None,
                 problem: Any = None) -> tuple[Path, Path]:
    """Write ``<study>_trial<N>.keras`` and ``.tflite`` for search trial ``N`` into
    ``out_dir``.

    If the study's fine-tuning study (``"<study>:finetune"``, see
    :mod:`lrf_optuna.finetune`) has a COMPLETE job for this trial, its fine-tuned files are
    downloaded from the Optuna artifact store (the job's ``keras_artifact_id`` /
    ``tflite_artifact_id`` user attributes; the store directory is ``artifact_dir`` or the
    one recorded in the fine-tuning study's ``artifact_dir`` user attribute). Otherwise the
    compressed model is rebuilt from the trial's ``lrf_plan`` (the problem is loaded from
    the study, factors from the similarity cache) and exported **without fine-tuning**,
    with a warning.

    Returns:
        ``(keras_path, tflite_path)``.
    """
    from lrf_optuna import finetune

    trial = search_trial(study, trial_number)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe(study.study_name)}_trial{trial_number}"
    keras_path, tflite_path = out / f"{stem}.keras", out / f"{stem}.tflite"
    job = finetune.finetuned_job(study, trial_number)
    if job is not None:
        try:
            finetune.download_job_artifacts(study, job, keras_path, tflite_path,
                                            artifact_dir=artifact_dir)
            logger.info("exported fine-tuned trial %d (job %d of %r) to %s", trial_number,
                        job.number, finetune.finetune_study_name(study), out)
            return keras_path, tflite_path
        except FileNotFoundError as err:
            warnings.warn(f"the fine-tuned files of trial {trial_number} are not in the "
                          f"artifact store ({err}); exporting the compressed model "
                          "WITHOUT fine-tuning", stacklevel=2)
    else:
        warnings.warn(f"trial {trial_number} of study {study.study_name!r} has not been "
                      "fine-tuned (run `lrf-optuna finetune`); exporting the compressed "
                      "model WITHOUT fine-tuning", stacklevel=2)
    worker = finetune.JobContext(study, problem=problem)
    model = worker.build_compressed(trial)
    save_keras(model, keras_path)
    to_tflite(model, tflite_path)
    return keras_path, tflite_path


# -- CLI -----------------------------------------------------------------------------------

def _cmd_export(args: argparse.Namespace) -> int:
    from lrf_optuna.cli import CLIError
    from lrf_optuna.finetune import open_study

    study = open_study(args.study_name, args.storage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            keras_path, tflite_path = export_trial(study, args.trial, args.out,
                                                   artifact_dir=args.artifact_dir)
        except ExportError as err:
            raise CLIError(f"trial {args.trial} of study {args.study_name!r}: {err}") from err
    for w in caught:
        if issubclass(w.category, UserWarning) and "fine-tun" in str(w.message):
            print(f"warning: {w.message}")
    for p in (keras_path, tflite_path):
        print(f"{p}  ({p.stat().st_size:,} bytes)")
    return 0


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "export", help="write a trial's compressed model as .keras and .tflite",
        description="Write the .keras and float32 .tflite files of one search trial: the "
                    "fine-tuned weights when `lrf-optuna finetune` has fine-tuned it, "
                    "else the compressed model without fine-tuning (with a warning).")
    p.add_argument("--study-name", required=True, help="the search study")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///studies/<study-name>.db)")
    p.add_argument("--trial", type=int, required=True, metavar="N",
                   help="search trial number")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--artifact-dir", default=None,
                   help="artifact store of the fine-tuning jobs (default: the one recorded "
                        "by `lrf-optuna finetune`)")
    p.set_defaults(func=_cmd_export)
    return p

