"""One call: the smallest compressed model within an accuracy budget, as deployable files.

:func:`compress` runs the whole pipeline on a trained model and a dataset -- the NSGA-II
search (:func:`lrf_optuna.search.prepare_lrf_study`), the max-drop search along its front
(:func:`lrf_optuna.finetune.finetune_within`: fine-tuned probes decided on validation
accuracy against the fair reference) -- and writes the chosen model's ``.keras`` and
``.tflite`` files. Everything lives in a study (``sqlite:///<out_dir>/<study>.db`` by
default), so calling it again resumes: finished search trials, fine-tuned probes and the
fair reference are reused. CLI: ``lrf-optuna compress``.

Example:
    >>> small = lrf_optuna.compress(model, data, max_drop=1.0)  # doctest: +SKIP
    >>> small.count_params() < model.count_params()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from lrf_optuna.errors import UserError
from lrf_optuna.search.settings import DEFAULT_N_TRIALS

if TYPE_CHECKING:
    import keras
    import optuna

    from lrf_optuna.data import Dataset
    from lrf_optuna.finetune import FinetuneConfig, WithinBudget
    from lrf_optuna.finetune.budget import ProbeStrategy

__all__ = ["Compressed", "compress", "compress_detailed"]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")


@dataclass(frozen=True)
class Compressed:
    """What :func:`compress_detailed` produced.

    Attributes:
        model: The fine-tuned compressed model (loaded from ``keras_path``).
        keras_path: Its ``.keras`` file (load it with :func:`lrf_optuna.load_model`).
        tflite_path: Its float32 ``.tflite`` file.
        answer: The max-drop search: chosen trial, probes, fair reference, drops.
        study: The search study (resumable).
        quantized_path: Its quantized ``.tflite`` file (``quantize`` not ``"none"``),
            ``<study>_trial<N>_<mode>.tflite`` beside the float32 one.
    """

    model: keras.Model
    keras_path: Path
    tflite_path: Path
    answer: WithinBudget
    study: optuna.Study
    quantized_path: Path | None = None


def compress_detailed(
    model: keras.Model | str | os.PathLike[str],
    data: Dataset | str | os.PathLike[str] = "fashion-mnist",
    max_drop: float = 1.0,
    *,
    out_dir: str | os.PathLike[str] = "compressed",
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int = DEFAULT_N_TRIALS,
    config: FinetuneConfig | None = None,
    max_probes: int | None = None,
    strategy: ProbeStrategy = "bisect",
    confidence: float = 0.5,
    escalate: bool | FinetuneConfig = True,
    escalate_probes: int | None = 3,
    seed: int = 0,
    calibration_size: int = 512,
    val_fraction: float | None = None,
    cache_dir: str | os.PathLike[str] = ".lrf_cache",
    show_progress_bar: bool = True,
    quantize: str = "none",
    int8_io: bool = False,
    memory: str = "params",
    **objective_kwargs: Any,
) -> Compressed:
    """The smallest compressed model within ``max_drop`` pp of the fair reference, with its
    files, the max-drop answer and the study (:func:`compress` returns the model alone).

    Search (``n_trials`` NSGA-II trials, resumable), then the max-drop search along the
    front (:func:`lrf_optuna.finetune.finetune_within`: each probe fine-tuned with
    ``config``, decided on validation accuracy against the original fine-tuned the same
    way), then the chosen model's ``.keras`` and ``.tflite`` files are written to
    ``out_dir`` (``<study>_trial<N>.keras`` / ``.tflite``).

    Args:
        model: A trained Keras model, a reference model name or a ``.keras`` file.
        data: A :class:`~lrf_optuna.data.Dataset`, ``"fashion-mnist"`` or a ``.npz`` file
            (x_train, y_train, x_test, y_test).
        max_drop: Accepted drop of validation accuracy, in percentage points.
        out_dir: Where the files (and, by default, the study database) go.
        study_name: Default ``compress_<model name>``.
        storage: Default ``sqlite:///<out_dir>/<study_name>.db``.
        n_trials: Search trials (total: a rerun continues).
        config: The fine-tuning recipe (default :class:`~lrf_optuna.finetune.FinetuneConfig`).
        max_probes: At most this many probes with the first recipe (``None``: until
            decided).
        strategy: How probes are chosen (``"bisect"`` or ``"interpolate"``).
        confidence: A probe passes when its drop, paired on the same validation images
            as the fair reference, is within ``max_drop`` with this confidence
            (:mod:`lrf_optuna.paired`; 0.5: the drop's estimate).
        escalate: Re-probe the candidates smaller than the answer with a 4x longer
            recipe (``True``), with a given recipe, or not (``False``).
        escalate_probes: At most this many probes with the longer recipe.
        seed: Seed of the splits and of the sampler.
        calibration_size: Calibration images (from the training split).
        val_fraction: Validation fraction of the training data, which decides everything
            (``None``: 2,000 images, at least 10 % and at most 25 %:
            :func:`lrf_optuna.data.default_val_fraction`). The model must not have been
            trained on these images: train it on ``prepare_splits(data).x_train``.
        cache_dir: Similarity cache directory.
        show_progress_bar: Progress bars.
        quantize: Also write the chosen model quantized (``"dynamic"``, ``"float16"``,
            ``"int8"``: full integer, calibrated on training images) as
            ``<study>_trial<N>_<mode>.tflite`` beside the float32 file; with
            ``memory="bytes"`` it is also the precision the search counts bytes at.
        int8_io: With ``"int8"``: int8 input and output tensors.
        memory: The search's memory objective: ``"params"`` or ``"bytes"`` (the weights'
            bytes in the file at ``quantize``'s precision).
        **objective_kwargs: More :class:`~lrf_optuna.search.LRFObjective` arguments
            (``methods``, ``layers`` ...).

    Returns:
        A :class:`Compressed`: the fine-tuned compressed model, its files, the max-drop
        answer and the study.

    Raises:
        UserError: bad arguments, or no compressed trial within ``max_drop``.
    """
    from lrf_optuna.deploy.convert import INTEGER_MODES, check_quantize, is_integer
    from lrf_optuna.deploy.files import load_model
    from lrf_optuna.export import export_trial
    from lrf_optuna.finetune import FinetuneConfig, finetune_within
    from lrf_optuna.search import load_problem, prepare_lrf_study

    check_quantize(quantize)
    if int8_io and not is_integer(quantize):
        raise UserError(f"int8_io needs a full-integer quantize mode "
                        f"({' or '.join(INTEGER_MODES)}), got {quantize!r}")
    if not max_drop >= 0:
        raise UserError(f"max_drop must be >= 0 percentage points, but got {max_drop}")
    if n_trials < 1:
        raise UserError(f"n_trials must be >= 1, but got {n_trials}")
    config = config or FinetuneConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problem = load_problem(model, data, seed=seed, calibration_size=calibration_size,
                           val_fraction=val_fraction, cache_dir=cache_dir)
    name = study_name or f"compress_{problem.name}"
    url = storage or f"sqlite:///{out.resolve() / name}.db"
    search = prepare_lrf_study(problem, study_name=name, storage=url, seed=seed,
                               progress=show_progress_bar, memory=memory, quantize=quantize,
                               **objective_kwargs)
    search.optimize(n_trials, show_progress_bar=show_progress_bar)
    if quantize != "none":  # decide on the deployed file, against the reference's
        config = dataclasses.replace(config, quantize=quantize)
    answer = finetune_within(search.study, max_drop, config=config, strategy=strategy,
                             max_probes=max_probes, confidence=confidence, escalate=escalate,
                             escalate_probes=escalate_probes, problem=search.problem)
    if answer.chosen is None:
        smallest_drop = min((job.drops_pp(answer.reference_of(job))["val_vs_reference"]
                             or 0.0 for _, job, _ in answer.probes), default=None)
        seen = ("" if smallest_drop is None
                else f"; the best probe lost {smallest_drop:.2f} pp")
        raise UserError(f"no compressed trial of study {name!r} ({url}) stays within "
                        f"{max_drop:g} pp of the fair reference's validation accuracy"
                        f"{seen}: allow a larger max_drop, run more search trials or "
                        "fine-tune longer (config=FinetuneConfig(epochs=...))")
    keras_path, tflite_path = export_trial(search.study, answer.chosen.number, out,
                                           problem=search.problem,
                                           recipe=answer.job.recipe if answer.job else None)
    quantized = None
    if quantize != "none":
        from lrf_optuna.deploy.files import quantized_file

        model_ = load_model(keras_path)
        quantized = quantized_file(model_, tflite_path.with_name(
            f"{tflite_path.stem}_{quantize}.tflite"), quantize, search.problem.splits,
            int8_io=int8_io)
    logger.info("compressed model: %s and %s", keras_path, tflite_path)
    return Compressed(load_model(keras_path), keras_path, tflite_path, answer, search.study,
                      quantized)


def _model_only(detailed: Callable[_P, Compressed]) -> Callable[_P, keras.Model]:
    """``detailed`` returning its model alone: the one signature serves both entry points."""

    @functools.wraps(detailed)
    def compress(*args: _P.args, **kwargs: _P.kwargs) -> keras.Model:
        return detailed(*args, **kwargs).model

    compress.__name__ = compress.__qualname__ = "compress"
    compress.__doc__ = """The smallest compressed model within ``max_drop`` pp of the fair
    reference: :func:`compress_detailed`'s model, fine-tuned, with its ``.keras`` and
    ``.tflite`` files written to ``out_dir``; the arguments and errors are
    :func:`compress_detailed`'s.

    Example:
        >>> small = compress(model, data, max_drop=1.0, n_trials=300)  # doctest: +SKIP
    """
    setattr(compress, "__signature__",  # noqa: B010 (help() shows the model it returns)
            inspect.signature(detailed).replace(return_annotation="keras.Model"))
    return compress


compress = _model_only(compress_detailed)
