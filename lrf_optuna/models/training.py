"""Train reference models once, then load them from an on-disk cache.

A trained model is stored as ``<cache>/models/<key>.keras`` with a JSON sidecar
``<key>.json`` (test accuracy, parameter count, epochs, training time...). The key
combines the model name, input shape, number of classes, epochs, batch size, seed
and a digest of the training data, the validation data, the model architecture and
the training recipe, so a cached file is only reused for exactly the same training
run. Writes are atomic (temporary file, then ``os.replace``).

The cache root is ``model_cache_dir`` if given, else ``$LRF_OPTUNA_CACHE``, else
``$XDG_CACHE_HOME/lrf_optuna`` (``~/.cache/lrf_optuna``).

Example:
    >>> from lrf_optuna.data import load_fashion_mnist
    >>> from lrf_optuna.models.training import train_or_load
    >>> result = train_or_load("lenet5", load_fashion_mnist())  # doctest: +SKIP
    >>> result.cached, round(result.record.test_accuracy, 3)  # doctest: +SKIP
    (True, 0.9)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lrf_optuna.data import (
    Dataset,
    Splits,
    fingerprint_arrays,
    resolve_val_fraction,
    train_val_split,
)
from lrf_optuna.models.zoo import build_reference_model

__all__ = [
    "DEFAULT_EPOCHS",
    "ENV_CACHE_DIR",
    "TrainingRecord",
    "TrainingResult",
    "cache_key",
    "correct",
    "default_model_cache_dir",
    "evaluate",
    "train_or_load",
    "train_reference_model",
]

logger = logging.getLogger(__name__)

#: Environment variable overriding the cache root.
ENV_CACHE_DIR = "LRF_OPTUNA_CACHE"

#: Epochs used when ``epochs=None``: enough to reach the reference accuracy on
#: Fashion-MNIST within a few minutes on a 2-core CPU (see benchmarks/RESULTS.md).
DEFAULT_EPOCHS: dict[str, int] = {
    "lenet5": 12,
    "vgg_small": 6,
    "resnet20": 6,
    "mobilenetv2_small": 6,
}
_FALLBACK_EPOCHS = 10

# Bump when the training procedure changes in a way that invalidates cached models.
_RECIPE_VERSION = 1
_LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class TrainingRecord:
    """What is known about a trained reference model (the JSON sidecar).

    Attributes:
        model_name: Registry name, e.g. ``"lenet5"``.
        key: Cache key (file stem).
        input_shape: ``(height, width, channels)``.
        num_classes: Number of classes.
        epochs: Training epochs.
        batch_size: Training batch size.
        seed: Random seed.
        val_fraction: Fraction of the training set held out (0 if ``Splits`` given
            with an empty validation set).
        params: ``model.count_params()``.
        test_accuracy: Top-1 accuracy on the test set.
        val_accuracy: Top-1 accuracy on the validation set (``None`` if empty).
        train_seconds: Wall-clock training time (``None`` if unknown).
        data_fingerprint: Digest of the train+val arrays.
        test_fingerprint: Digest of the test arrays ``test_accuracy`` refers to.
        architecture_fingerprint: Digest of the untrained model's config.
        history: Per-epoch metrics from ``model.fit``.
        keras_version: Keras version used for training.
        backend: Keras backend used for training.
        created: ISO-8601 UTC timestamp.
    """

    model_name: str
    key: str
    input_shape: tuple[int, ...]
    num_classes: int
    epochs: int
    batch_size: int
    seed: int
    val_fraction: float
    params: int
    test_accuracy: float
    val_accuracy: float | None
    train_seconds: float | None
    data_fingerprint: str
    test_fingerprint: str
    architecture_fingerprint: str
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)
    keras_version: str = keras.__version__
    backend: str = field(default_factory=keras.backend.backend)
    created: str = ""

    def to_json(self) -> str:
        """Serialise to an indented JSON string."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingRecord:
        """Parse a record written by :meth:`to_json`.

        Raises:
            ValueError: If the text is not a valid record.
        """
        try:
            raw = json.loads(text)
            raw["input_shape"] = tuple(raw["input_shape"])
            return cls(**raw)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a valid training record: {exc}") from exc


@dataclass(frozen=True, eq=False)
class TrainingResult:
    """A trained (or cache-loaded) model with its record.

    Attributes:
        model: The compiled Keras model.
        record: Metadata, also stored as ``path.with_suffix(".json")``.
        cached: ``True`` if the model was loaded from the cache, ``False`` if trained.
        path: Location of the ``.keras`` file.
    """

    model: keras.Model
    record: TrainingRecord
    cached: bool
    path: Path


def default_model_cache_dir() -> Path:
    """The model cache root: ``$LRF_OPTUNA_CACHE``, else ``$XDG_CACHE_HOME/lrf_optuna``.

    Example:
        >>> default_model_cache_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/lrf_optuna')
    """
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "lrf_optuna"


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier.

    Args:
        model: A model mapping images to class scores of shape ``(N, num_classes)``.
        x: Images, shape ``(N, H, W, C)``.
        y: Integer labels, shape ``(N,)``.
        batch_size: Inference batch size.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: If ``x`` and ``y`` disagree in length or are empty.

    Example:
        >>> evaluate(model, ds.x_test, ds.y_test)  # doctest: +SKIP
        0.9012
    """
    return float(np.mean(correct(model, x, y, batch_size=batch_size)))


def correct(model: keras.Model, x: np.ndarray, y: np.ndarray, *,
            batch_size: int = 512) -> np.ndarray:
    """Per-image top-1 correctness of a classifier: a boolean array ``(N,)`` (its mean is
    :func:`evaluate`), for paired comparisons of two models on the same images.

    Raises:
        ValueError: If ``x`` and ``y`` disagree in length or are empty.
    """
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)} labels")
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set")
    scores = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    return np.asarray(scores.reshape(len(y), -1).argmax(axis=1) == y)


def _architecture_fingerprint(model: keras.Model) -> str:
    config = json.dumps(model.get_config(), sort_keys=True, default=str)
    return hashlib.blake2b(config.encode(), digest_size=8).hexdigest()


def cache_key(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    data_fingerprint: str,
    architecture_fingerprint: str,
    val_fraction: float,
) -> str:
    """File stem identifying one training run.

    Example:
        >>> key = cache_key("lenet5", (28, 28, 1), 10, epochs=12, batch_size=128, seed=0,
        ...                 data_fingerprint="d", architecture_fingerprint="a",
        ...                 val_fraction=0.1)
        >>> key.startswith("lenet5_28x28x1_k10_e12_b128_s0_"), len(key.rsplit("_", 1)[1])
        (True, 12)
    """
    shape = "x".join(str(d) for d in input_shape)
    digest = hashlib.blake2b(
        json.dumps(
            [
                data_fingerprint,
                architecture_fingerprint,
                val_fraction,
                _LEARNING_RATE,
                _RECIPE_VERSION,
            ],
        ).encode(),
        digest_size=6,
    ).hexdigest()
    return f"{name}_{shape}_k{num_classes}_e{epochs}_b{batch_size}_s{seed}_{digest}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _atomic_save_model(model: keras.Model, path: Path) -> None:
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _compile(
    model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _resolve_data(
    dataset: Dataset | Splits, val_fraction: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    if isinstance(dataset, Splits):
        n_total = len(dataset.x_train) + len(dataset.x_val)
        frac = len(dataset.x_val) / n_total
        return (
            dataset.x_train,
            dataset.y_train,
            dataset.x_val,
            dataset.y_val,
            dataset.x_test,
            dataset.y_test,
            round(frac, 6),
        )
    if isinstance(dataset, Dataset):
        frac = resolve_val_fraction(val_fraction, len(dataset.x_train))
        x_tr, y_tr, x_val, y_val = train_val_split(
            dataset.x_train, dataset.y_train, val_fraction=frac, seed=seed
        )
        return x_tr, y_tr, x_val, y_val, dataset.x_test, dataset.y_test, frac
    raise TypeError(
        f"dataset must be a lrf_optuna.data.Dataset or Splits, got {type(dataset).__name__}"
    )


def _try_load(path: Path) -> keras.Model | None:
    if not path.is_file():
        return None
    try:
        return keras.saving.load_model(path)
    except Exception as exc:  # corrupt / incompatible file: retrain
        logger.warning(
            "Ignoring unreadable cached model %s (%s: %s)", path, type(exc).__name__, exc
        )
        return None


def _read_record(path: Path) -> TrainingRecord | None:
    try:
        return TrainingRecord.from_json(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable training record %s (%s)", path, exc)
        return None


def train_or_load(
    name: str,
    dataset: Dataset | Splits,
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    model_cache_dir: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    verbose: bool = True,
    use_cache: bool = True,
    **build_kwargs: Any,
) -> TrainingResult:
    """Train a reference model, or load it if the same run is already cached.

    Training: ``keras.utils.set_random_seed(seed)``, build the model, Adam with a
    cosine-decayed learning rate (1e-3 -> 1e-5), sparse categorical cross-entropy,
    ``epochs`` passes over the training part with the validation part as
    ``validation_data``. Given a :class:`~lrf_optuna.data.Dataset`, the validation
    part is ``train_val_split(..., val_fraction=val_fraction, seed=seed)`` - the same
    split :func:`~lrf_optuna.data.prepare_splits` makes with the same arguments, so a
    reference model never sees the validation set used later. Given
    :class:`~lrf_optuna.data.Splits`, its train/val parts are used as they are.

    Args:
        name: Registry name (see :data:`~lrf_optuna.models.zoo.REFERENCE_MODELS`).
        dataset: Data to train on; test accuracy is measured on its test set.
        epochs: Training epochs; ``None`` uses :data:`DEFAULT_EPOCHS`.
        batch_size: Batch size.
        seed: Random seed for weights, shuffling and the validation split.
        model_cache_dir: Model cache root (files go to ``<model_cache_dir>/models/``);
            ``None`` uses :func:`default_model_cache_dir`. (The similarity cache is another
            cache.)
        val_fraction: Validation fraction when ``dataset`` is a ``Dataset`` (``None``:
            :func:`lrf_optuna.data.default_val_fraction` of its size, as
            :func:`~lrf_optuna.data.prepare_splits` resolves it).
        verbose: Show keras' progress bar and log at INFO level.
        use_cache: ``False`` always trains (and still writes the cache).
        **build_kwargs: Passed to the model builder (part of the cache key through
            the architecture fingerprint).

    Returns:
        A :class:`TrainingResult` (model, record, ``cached`` flag, path).

    Raises:
        UnknownModelError: If ``name`` is not a registered model.
        ValueError: If ``epochs`` or ``batch_size`` is not positive.

    Example:
        >>> res = train_or_load("lenet5", ds, epochs=1, model_cache_dir="/tmp/c")  # doctest: +SKIP
        >>> res.record.params  # doctest: +SKIP
        61706
    """
    if epochs is None:
        epochs = DEFAULT_EPOCHS.get(name, _FALLBACK_EPOCHS)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    log_level = logging.INFO if verbose else logging.DEBUG
    x_tr, y_tr, x_val, y_val, x_te, y_te, frac = _resolve_data(dataset, val_fraction, seed)
    input_shape = tuple(int(d) for d in x_tr.shape[1:])
    num_classes = int(max(y_tr.max(), y_val.max(initial=-1), y_te.max())) + 1

    keras.utils.set_random_seed(seed)
    model = build_reference_model(name, input_shape, num_classes, **build_kwargs)
    arch_fp = _architecture_fingerprint(model)
    data_fp = fingerprint_arrays(x_tr, y_tr, x_val, y_val)
    test_fp = fingerprint_arrays(x_te, y_te)
    key = cache_key(
        name,
        input_shape,
        num_classes,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        data_fingerprint=data_fp,
        architecture_fingerprint=arch_fp,
        val_fraction=frac,
    )
    root = (Path(model_cache_dir).expanduser() if model_cache_dir is not None
            else default_model_cache_dir())
    model_dir = root / "models"
    path = model_dir / f"{key}.keras"
    record_path = path.with_suffix(".json")

    def make_record(
        trained: keras.Model,
        *,
        train_seconds: float | None,
        history: dict[str, list[float]],
    ) -> TrainingRecord:
        """This run's record for ``trained``: the settings above, accuracies measured now."""
        return TrainingRecord(
            model_name=name,
            key=key,
            input_shape=input_shape,
            num_classes=num_classes,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            val_fraction=frac,
            params=int(trained.count_params()),
            test_accuracy=evaluate(trained, x_te, y_te),
            val_accuracy=evaluate(trained, x_val, y_val) if len(x_val) else None,
            train_seconds=train_seconds,
            data_fingerprint=data_fp,
            test_fingerprint=test_fp,
            architecture_fingerprint=arch_fp,
            history=history,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    if use_cache:
        cached = _try_load(path)
        if cached is not None:
            record = _read_record(record_path) if record_path.is_file() else None
            if record is None or record.test_fingerprint != test_fp:
                logger.log(log_level, "Re-evaluating cached %s on the given test set", name)
                record = make_record(
                    cached,
                    train_seconds=record.train_seconds if record else None,
                    history=record.history if record else {},
                )
                _atomic_write_text(record_path, record.to_json())
            logger.log(
                log_level,
                "Loaded cached %s from %s (test accuracy %.4f)",
                name,
                path,
                record.test_accuracy,
            )
            return TrainingResult(cached, record, cached=True, path=path)

    steps = epochs * math.ceil(len(x_tr) / batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(_LEARNING_RATE, steps, alpha=0.01)
    _compile(model, schedule)
    logger.log(
        log_level,
        "Training %s (%d params) for %d epochs on %d examples (cache miss: %s)",
        name,
        model.count_params(),
        epochs,
        len(x_tr),
        path.name,
    )
    fit_verbose: int | str = 0
    if verbose:
        fit_verbose = 1 if sys.stdout.isatty() else 2
    start = time.perf_counter()
    hist = model.fit(
        x_tr,
        y_tr,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val) if len(x_val) else None,
        shuffle=True,
        verbose=fit_verbose,
    )
    train_seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    record = make_record(
        model,
        train_seconds=train_seconds,
        history=history,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save_model(model, path)
    _atomic_write_text(record_path, record.to_json())
    logger.log(
        log_level,
        "Trained %s in %.1fs: test accuracy %.4f; saved %s",
        name,
        train_seconds,
        record.test_accuracy,
        path,
    )
    return TrainingResult(model, record, cached=False, path=path)


def train_reference_model(
    name: str,
    dataset: Dataset | Splits,
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    model_cache_dir: str | os.PathLike[str] | None = None,
    verbose: bool = True,
    **kwargs: Any,
) -> keras.Model:
    """Train (or load from cache) a reference model and return just the model.

    Same as ``train_or_load(...).model``; see :func:`train_or_load` for the details
    and for the record (accuracy, parameters, training time) of the run.

    Args:
        name: Registry name, e.g. ``"vgg_small"``.
        dataset: Data to train on.
        epochs: Training epochs; ``None`` uses :data:`DEFAULT_EPOCHS`.
        batch_size: Batch size.
        seed: Random seed.
        model_cache_dir: Model cache root; ``None`` uses :func:`default_model_cache_dir`.
        verbose: Show progress and log at INFO level.
        **kwargs: Other :func:`train_or_load` arguments (``val_fraction``,
            ``use_cache``, builder keyword arguments).

    Returns:
        The trained, compiled model.

    Example:
        >>> model = train_reference_model("lenet5", load_fashion_mnist())  # doctest: +SKIP
    """
    return train_or_load(
        name,
        dataset,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        model_cache_dir=model_cache_dir,
        verbose=verbose,
        **kwargs,
    ).model
