"""Exporting a search trial: its deployable ``.keras`` and ``.tflite`` files.

:func:`export_trial` writes both files for a search trial, using the fine-tuned weights of
its fine-tuning job when there is one (see :mod:`lrf_optuna.finetune`; the files are
that job's Optuna artifacts, :func:`lrf_optuna.study.artifacts.download_job_files`), else
the compressed model rebuilt from the trial's plan, without fine-tuning; optionally also a
quantized ``.tflite``. Writing, converting and loading the files:
:mod:`lrf_optuna.deploy.files` (:func:`~lrf_optuna.deploy.files.load_model` loads the
``.keras`` file); measuring them: :mod:`lrf_optuna.deploy.measure`.

Example:
    >>> keras_path, tflite_path = export_trial(study, 42, "exported")  # doctest: +SKIP
    >>> load_model(keras_path).count_params()  # doctest: +SKIP
    48210
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from lrf_optuna.deploy.convert import check_quantize, is_integer
from lrf_optuna.deploy.files import load_model, quantized_file, save_keras, to_tflite
from lrf_optuna.errors import UserError
from lrf_optuna.study.artifacts import download_job_files
from lrf_optuna.study.lookup import finetune_study_name, finetuned_job, recorded_artifact_dir
from lrf_optuna.study.records import get_search_trial
from lrf_optuna.study.storage import safe_name

if TYPE_CHECKING:
    import optuna

    from lrf_optuna.problem import Problem

__all__ = ["export_trial"]

logger = logging.getLogger(__name__)


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
    (:func:`~lrf_optuna.study.artifacts.download_job_files`). Otherwise the compressed
    model is rebuilt from the trial's plan (the problem is loaded from the study, factors
    from the similarity cache) and exported **without fine-tuning**, with a warning. Load
    the ``.keras`` file with :func:`~lrf_optuna.deploy.files.load_model`.

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
    from lrf_optuna.study.models import StudyModels

    mode = check_quantize(quantize)
    if int8_io and not is_integer(mode):
        raise UserError("int8 inputs and outputs (--int8-io) need --quantize int8 or "
                        "int8_fc_per_tensor")
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
