"""lrf_optuna: per-layer low-rank factorization of Keras CNNs, searched with Optuna.

The pipeline, one module each: :mod:`~lrf_optuna.data` -> :mod:`~lrf_optuna.models` ->
:mod:`~lrf_optuna.decompose` (the LRF methods) -> :mod:`~lrf_optuna.rewrite` /
:mod:`~lrf_optuna.costs` -> :mod:`~lrf_optuna.calibration` / :mod:`~lrf_optuna.cache`
(feature-map similarity) -> :mod:`~lrf_optuna.strategies` -> :mod:`~lrf_optuna.search`
(the Optuna objective) -> :mod:`~lrf_optuna.finetune` / :mod:`~lrf_optuna.export` ->
:mod:`~lrf_optuna.report` / :mod:`~lrf_optuna.dashboard`.

Attributes are imported lazily, so ``import lrf_optuna.cache`` does not load TensorFlow.

Example (``model`` trained, ``x_cal`` calibration images)::

    import optuna, lrf_optuna
    objective = lrf_optuna.LRFObjective(model, x_cal, cache_dir=".lrf_cache")
    study = optuna.create_study(directions=objective.directions,
                                sampler=optuna.samplers.NSGAIISampler(seed=0))
    objective.seed_study(study)
    study.optimize(objective, n_trials=500, show_progress_bar=True)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LRFObjective": "lrf_optuna.search",
    "create_lrf_study": "lrf_optuna.search",
    "SimilarityCache": "lrf_optuna.cache",
    "GridConfig": "lrf_optuna.cache",
    "rewrite_model": "lrf_optuna.rewrite",
    "find_layers": "lrf_optuna.rewrite",
    "model_costs": "lrf_optuna.costs",
    "prune_model": "lrf_optuna.prune",
    "get_method": "lrf_optuna.decompose",
    "available_methods": "lrf_optuna.decompose",
    "FactorizedLayer": "lrf_optuna.decompose",
    "finetune_study": "lrf_optuna.finetune",
    "FinetuneConfig": "lrf_optuna.finetune",
    "export_trial": "lrf_optuna.export",
    "to_tflite": "lrf_optuna.export",
}
_SUBMODULES = {"data", "models", "decompose", "prune", "rewrite", "costs", "calibration", "cache",
               "similarity", "strategies", "search", "vbmf", "cli", "finetune", "export",
               "report", "dashboard", "workspace"}

__all__ = ["__version__", *sorted(_EXPORTS), *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"lrf_optuna.{name}")
    raise AttributeError(f"module 'lrf_optuna' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
