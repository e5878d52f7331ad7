"""The nets as a user writes them, the modes, the decision, data and training."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lrf_optuna.models.training import correct
from lrf_optuna.paired import DEFAULT_CONFIDENCE, pack_correct, paired_drop, unpack_correct
from lrf_optuna.search.strategies import SimilarityThreshold

logger = logging.getLogger("benchmarks.user_nets")

MAX_DROP = 1.0  # the budget, in percentage points of validation accuracy
BASELINES = ("narrow", "narrow_kd", "uniform", "tau")


def _channels(n: int, width: float) -> int:
    return max(1, round(n * width))


def plain_cnn(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> Any:
    """3 convs and a large ``Dense(256)`` head (914,698 params on 28x28x1 at width 1)."""
    import keras
    from keras import layers

    c = lambda n: _channels(n, width)  # noqa: E731
    return keras.Sequential([
        keras.Input(tuple(input_shape), name="image"),
        layers.Conv2D(c(32), 3, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(c(64), 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Conv2D(c(128), 3, activation="relu", name="conv3"),
        layers.Flatten(name="flatten"),
        layers.Dense(c(256), activation="relu", name="fc1"),
        layers.Dense(num_classes, activation="softmax", name="predictions"),
    ], name="plain")


def residual_net(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> Any:
    """A stem and three residual blocks (32, 64, 128 filters; BatchNorm, ``Add``
    shortcuts, 1x1 projections where the shape changes), global average pooling
    (309,418 params at width 1)."""
    import keras
    from keras import layers

    inputs = keras.Input(tuple(input_shape), name="image")
    x = layers.Conv2D(_channels(32, width), 3, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, (filters, stride) in enumerate(((32, 1), (64, 2), (128, 2)), 1):
        f = _channels(filters, width)
        y = layers.Conv2D(f, 3, strides=stride, padding="same", use_bias=False,
                          name=f"block{i}_conv1")(x)
        y = layers.ReLU(name=f"block{i}_relu1")(layers.BatchNormalization(
            name=f"block{i}_bn1")(y))
        y = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{i}_conv2")(y)
        y = layers.BatchNormalization(name=f"block{i}_bn2")(y)
        shortcut = x
        if stride != 1 or x.shape[-1] != f:
            shortcut = layers.Conv2D(f, 1, strides=stride, use_bias=False,
                                     name=f"block{i}_proj")(x)
            shortcut = layers.BatchNormalization(name=f"block{i}_proj_bn")(shortcut)
        x = layers.ReLU(name=f"block{i}_out")(layers.Add(name=f"block{i}_add")([y, shortcut]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="residual")


def mobile_net(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> Any:
    """A stride-2 stem and 5 depthwise-separable blocks (DepthwiseConv2D + BatchNorm +
    ReLU6, 1x1 Conv + BatchNorm + ReLU6; 64, 128, 128, 256, 256 filters), global average
    pooling (139,146 params at width 1)."""
    import keras
    from keras import layers

    inputs = keras.Input(tuple(input_shape), name="image")
    x = layers.Conv2D(_channels(32, width), 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.ReLU(6.0, name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, (filters, stride) in enumerate(((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)),
                                          1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                   name=f"block{i}_dw")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(layers.BatchNormalization(
            name=f"block{i}_dw_bn")(x))
        x = layers.Conv2D(_channels(filters, width), 1, use_bias=False,
                          name=f"block{i}_pw")(x)
        x = layers.ReLU(6.0, name=f"block{i}_pw_relu")(layers.BatchNormalization(
            name=f"block{i}_pw_bn")(x))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mobile")


@dataclass(frozen=True)
class NetSpec:
    """A benchmark net: its builder, what it is, and the epochs that train it from scratch
    to convergence (cosine schedule)."""

    build: Callable[..., Any]
    description: str
    epochs: int


NETS: dict[str, NetSpec] = {
    "plain": NetSpec(plain_cnn, "plain CNN, 3 conv + Dense(256)", 12),
    "residual": NetSpec(residual_net, "residual net, BatchNorm, Add, GAP", 15),
    "mobile": NetSpec(mobile_net, "MobileNet-style, 5 depthwise-separable blocks, GAP", 15),
}


def build_net(net: str, input_shape: Sequence[int], num_classes: int, width: float = 1.0,
              *, seed: int = 0) -> Any:
    """Net ``net`` at ``width``, its weights initialised from ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    return NETS[net].build(input_shape, num_classes, width)


# -- modes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    """Defaults of a mode (each overridable on the command line).

    Attributes:
        sizes: Labelled training images (train + validation), one run per size.
        test_images: Test images (``None``: the whole test set).
        width: The original's width multiplier (1; smaller in tiny mode).
        widths: The narrow baseline's widths, relative to the original's.
        ratios: The uniform baseline's relative ranks.
        epochs: Training epochs of the originals (``None``: the nets' own).
        n_trials: Passed to ``compress`` (``None``: its default; tiny mode only).
    """

    sizes: tuple[int, ...]
    test_images: int | None
    width: float
    widths: tuple[float, ...]
    ratios: tuple[float, ...]
    epochs: int | None = None
    n_trials: int | None = None
    #: The tau baseline's sweep: the library's own (the plans ``compress`` also searches),
    #: so the baseline is not weaker for a coarser sweep.
    taus: tuple[float, ...] = tuple(SimilarityThreshold.taus)


MODES: dict[str, Mode] = {
    "full": Mode((4000, 18000), None, 1.0, (0.75, 0.5, 0.35, 0.25, 0.18, 0.125),
                 (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)),
    "quick": Mode((4000,), None, 1.0, (0.5, 0.35, 0.25, 0.18), (1 / 4, 1 / 8, 1 / 16)),
    # one candidate per baseline and a short search: the harness, not the numbers
    "tiny": Mode((400,), None, 0.25, (0.5,), (1 / 4,), epochs=1, n_trials=12, taus=(0.9,)),
}


def compress_defaults() -> dict[str, Any]:
    """The defaults of :func:`lrf_optuna.compression.compress_detailed` (read from its
    signature, so a changed default is what this benchmark judges).

    Example:
        >>> {"val_fraction", "seed", "calibration_size", "n_trials"} <= set(compress_defaults())
        True
    """
    from lrf_optuna.compression import compress_detailed

    return {name: p.default for name, p in inspect.signature(compress_detailed).parameters.items()
            if p.default is not inspect.Parameter.empty}


# -- the decision ----------------------------------------------------------------------------

def passes(candidate_val_correct: np.ndarray, reference_val_correct: np.ndarray,
           max_drop: float, confidence: float = DEFAULT_CONFIDENCE) -> bool:
    """Whether a candidate is within ``max_drop`` percentage points of its reference, on
    the same validation images (one boolean per image: classified right): the library's own
    decision (:meth:`lrf_optuna.paired.PairedDrop.within`, paired at ``confidence``, the
    default of ``compress``), so every baseline is judged exactly like the answer.

    Raises:
        ValueError: the arrays are empty or not of the same images (lengths differ).

    Example:
        >>> ref = np.array([True] * 99 + [False])              # 99 %
        >>> passes(np.array([True] * 98 + [False] * 2), ref, 1.0)   # 98 %: 1 pp below
        True
        >>> passes(np.array([True] * 97 + [False] * 3), ref, 1.0)   # 97 %: 2 pp below
        False
    """
    cand = np.asarray(candidate_val_correct, dtype=bool).reshape(-1)
    ref = np.asarray(reference_val_correct, dtype=bool).reshape(-1)
    if len(cand) != len(ref) or not len(ref):
        raise ValueError(f"need per-image correctness of the same validation images, got "
                         f"{len(cand)} and {len(ref)}")
    return paired_drop(ref, cand).within(max_drop, confidence)


# -- data and training -----------------------------------------------------------------------

def load_dataset(mode_name: str, size: int, test_images: int | None, seed: int) -> Any:
    """``size`` labelled training images (a stratified subset of the training set) and the
    test set (its first ``test_images``); tiny mode: the synthetic 12x12 quadrant images of
    the compression benchmark."""
    from lrf_optuna.data import from_arrays, load_fashion_mnist
    from lrf_optuna.data.splits import stratified_indices

    if mode_name == "tiny":
        from benchmarks.compression.config import _tiny_dataset

        data, name = _tiny_dataset(), f"quadrants_{size}"
    else:
        data, name = load_fashion_mnist(), f"fashion_mnist_{size}"
    if not 0 < size <= len(data.x_train):
        raise ValueError(f"size must be between 1 and {len(data.x_train)}, got {size}")
    idx = stratified_indices(data.y_train, size, seed=seed)
    t = len(data.x_test) if test_images is None else min(test_images, len(data.x_test))
    return from_arrays(data.x_train[idx], data.y_train[idx], data.x_test[:t], data.y_test[:t],
                       name=name)


@dataclass
class Trained:
    """A trained net and what it scored (``val_correct``: per validation image)."""

    model: Any
    key: str
    params: int
    flops: int
    epochs: int
    val_acc: float
    test_acc: float
    val_correct: np.ndarray = field(repr=False)
    seconds: float
    cached: bool
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                           digest_size=6).hexdigest()


def train_net(net: str, width: float, splits: Any, *, epochs: int, seed: int,
              cache_dir: Path, batch_size: int = 128, teacher: Any = None) -> Trained:
    """Train ``net`` at ``width`` from scratch on ``splits.x_train`` (validated on
    ``splits.x_val``), or load the same run from ``cache_dir/models``.

    What a user writes: Adam, learning rate 1e-3 cosine-decayed to 1e-5 over all steps,
    sparse categorical cross-entropy, ``epochs`` fixed, batch 128, seeded; then the
    BatchNorm statistics re-estimated on the training images (the validation accuracy
    as trained is recorded, ``val_acc_as_trained``). With ``teacher`` (the original's
    :class:`lrf_optuna.finetune.recipe.TeacherOutputs`), the loss is the library's
    distillation loss at the default recipe's weight and temperature
    (:func:`lrf_optuna.finetune.recipe.distillation_loss`): the narrow net learns from
    the original's outputs, as a user who knows distillation would train it. The cache
    key holds the net, width, training images, epochs, seed, the teacher and a digest of
    the training and validation arrays and the architecture.
    """
    import keras

    from lrf_optuna.costs import model_costs
    from lrf_optuna.data import fingerprint_arrays
    from lrf_optuna.finetune import FinetuneConfig
    from lrf_optuna.finetune.batchnorm import reestimate_batchnorm
    from lrf_optuna.finetune.recipe import distillation_loss
    from lrf_optuna.models.training import evaluate

    model = build_net(net, splits.input_shape, splits.num_classes, width, seed=seed)
    data_fp = fingerprint_arrays(splits.x_train, splits.y_train, splits.x_val, splits.y_val)
    test_fp = fingerprint_arrays(splits.x_test, splits.y_test)
    recipe = FinetuneConfig()
    kd = (None if teacher is None else
          {"teacher": teacher.key, "weight": recipe.distill, "temperature": recipe.temperature})
    key = (f"{net}_w{width:g}_n{len(splits.x_train) + len(splits.x_val)}_e{epochs}_s{seed}_"
           + ("kd_" if kd else "")
           + _digest(data_fp, model.get_config(), batch_size, 1e-3, "bn-reestimated",
                     *([kd] if kd else [])))
    path = cache_dir / "models" / f"{key}.keras"
    record_path = path.with_suffix(".json")
    record: dict[str, Any] = {}
    cached = path.exists() and record_path.exists()
    if cached:
        model = keras.saving.load_model(path)
        record = json.loads(record_path.read_text())
    else:
        steps = epochs * math.ceil(len(splits.x_train) / batch_size)
        y_train, y_val = splits.y_train, splits.y_val
        loss: Any = "sparse_categorical_crossentropy"
        metrics: list[Any] = ["accuracy"]
        if kd is not None:  # targets [label, teacher logits...]; the nets end in softmax
            y_train = np.concatenate([np.asarray(y_train, np.float32)[:, None],
                                      teacher.train], axis=1)
            y_val = np.concatenate([np.asarray(y_val, np.float32)[:, None], teacher.val],
                                   axis=1)
            loss = distillation_loss(weight=recipe.distill, temperature=recipe.temperature,
                                     from_logits=False)
            metrics = []
        model.compile(optimizer=keras.optimizers.Adam(
                          keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.01)),
                      loss=loss, metrics=metrics)
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        hist = model.fit(splits.x_train, y_train, batch_size=batch_size, epochs=epochs,
                         validation_data=(splits.x_val, y_val), shuffle=True, verbose=0)
        # Keras' moving BatchNorm statistics can lag far behind a net trained for a few
        # hundred steps (the MobileNet-style net: val 10 % in inference mode every epoch,
        # 81 % with batch statistics); a user who sees that recomputes them, and a
        # baseline judged against a broken original would mean nothing
        val_fit = evaluate(model, splits.x_val, splits.y_val)
        reestimate_batchnorm(model, splits.x_train, images=None, batch_size=batch_size)
        record = {"seconds": round(time.perf_counter() - start, 2),
                  "val_acc_as_trained": round(val_fit, 6),
                  "history": {k: [round(float(v), 5) for v in vs]
                              for k, vs in hist.history.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        model.compile(loss="sparse_categorical_crossentropy")  # the file needs no KD loss
        model.save(path)
        # the saved model, as every later run loads it: a Sequential's weight paths change
        # when it is reloaded, and with them the digests keying the library's caches
        model = keras.saving.load_model(path)
        logger.info("trained %s at width %g (%s params) for %d epochs in %.0f s", net, width,
                    f"{model.count_params():,}", epochs, record["seconds"])
    if record.get("test_fingerprint") != test_fp:  # first time, or another test set
        val = correct(model, splits.x_val, splits.y_val)
        record.update(val_correct=pack_correct(val), val_acc=float(val.mean()),
                      test_acc=float(correct(model, splits.x_test, splits.y_test).mean()),
                      test_fingerprint=test_fp)
        tmp = record_path.with_name(f".{record_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, record_path)
    costs = model_costs(model)
    return Trained(model, key, int(costs.params), int(costs.flops), epochs, record["val_acc"],
                   record["test_acc"], unpack_correct(record["val_correct"], len(splits.x_val)),
                   record["seconds"], cached, record.get("history", {}))


