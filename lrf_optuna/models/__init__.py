"""Reference CNNs (:mod:`.zoo`) and their cached training (:mod:`.training`).

Example:
    >>> from lrf_optuna.models import build_reference_model, train_reference_model
    >>> model = build_reference_model("lenet5")  # doctest: +SKIP
"""

from __future__ import annotations

from lrf_optuna.models.training import (
    DEFAULT_EPOCHS,
    TrainingRecord,
    TrainingResult,
    correct,
    default_model_cache_dir,
    evaluate,
    train_or_load,
    train_reference_model,
)
from lrf_optuna.models.zoo import (
    BN_MOMENTUM,
    REFERENCE_MODELS,
    UnknownModelError,
    build_lenet5,
    build_mobilenetv2_small,
    build_reference_model,
    build_resnet20,
    build_vgg_small,
)

__all__ = [
    "BN_MOMENTUM",
    "DEFAULT_EPOCHS",
    "REFERENCE_MODELS",
    "TrainingRecord",
    "TrainingResult",
    "UnknownModelError",
    "build_lenet5",
    "build_mobilenetv2_small",
    "build_reference_model",
    "build_resnet20",
    "build_vgg_small",
    "correct",
    "default_model_cache_dir",
    "evaluate",
    "train_or_load",
    "train_reference_model",
]
