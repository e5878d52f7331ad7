"""lrf_optuna: per-layer low-rank factorization of Keras CNNs, searched with Optuna.

The pipeline, one module each (leaves: :mod:`~lrf_optuna.plan`, the per-layer plan and its
codec; :mod:`~lrf_optuna.paired`, paired accuracy drops; :mod:`~lrf_optuna.formatting`,
numbers and tables as text): :mod:`~lrf_optuna.data` ->
:mod:`~lrf_optuna.models` ->
:mod:`~lrf_optuna.decompose` (the LRF methods) -> :mod:`~lrf_optuna.rewrite` /
:mod:`~lrf_optuna.costs` -> :mod:`~lrf_optuna.scoring` (calibration activations,
feature-map similarity, the similarity cache) -> :mod:`~lrf_optuna.prune` (structured
pruning and its candidates) -> :mod:`~lrf_optuna.problem` (model and data of a study) ->
:mod:`~lrf_optuna.study` (storages, what studies and fine-tuning jobs record, a study's
models rebuilt, a job's files measured and stored, the dashboard notes) ->
:mod:`~lrf_optuna.search` (space, settings, rank-selection strategies, the Optuna
objective, sampler, worker loop, the one search entry point) ->
:mod:`~lrf_optuna.finetune` -> :mod:`~lrf_optuna.export` / :mod:`~lrf_optuna.report` /
:mod:`~lrf_optuna.dashboard`; :mod:`~lrf_optuna.cli` and :mod:`~lrf_optuna.demo` on top.
:mod:`~lrf_optuna.deploy` (``.keras`` / ``.tflite`` files, quantized, checked and timed)
stands low, beside :mod:`~lrf_optuna.costs`: the search, the study layer and everything
above it convert and measure through it.

Attributes are imported lazily, so ``import lrf_optuna.scoring`` does not load TensorFlow.

Example (``model`` trained, ``data`` a :class:`~lrf_optuna.data.Dataset`)::

    import lrf_optuna
    study, objective = lrf_optuna.create_lrf_study(model, data, study_name="vgg")
    trial = lrf_optuna.select_trials(study, k=1)[0]       # a compressed Pareto trial
    compressed = objective.build_model(trial)
    jobs = lrf_optuna.finetune_study(study, k=3)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LRFObjective": "lrf_optuna.search",
    "SeededNSGAIISampler": "lrf_optuna.search",
    "create_lrf_study": "lrf_optuna.search",
    "prepare_lrf_study": "lrf_optuna.search",
    "UserError": "lrf_optuna.errors",
    "compress": "lrf_optuna.compression",
    "Problem": "lrf_optuna.problem",
    "ProblemSpec": "lrf_optuna.problem",
    "load_study": "lrf_optuna.study",
    "open_storage": "lrf_optuna.study",
    "SimilarityCache": "lrf_optuna.scoring",
    "GridConfig": "lrf_optuna.scoring",
    "rewrite_model": "lrf_optuna.rewrite",
    "find_layers": "lrf_optuna.rewrite",
    "model_costs": "lrf_optuna.costs",
    "prune_model": "lrf_optuna.prune",
    "get_method": "lrf_optuna.decompose",
    "available_methods": "lrf_optuna.decompose",
    "FactorizedLayer": "lrf_optuna.decompose",
    "finetune_study": "lrf_optuna.finetune",
    "finetune_within": "lrf_optuna.finetune",
    "FinetuneConfig": "lrf_optuna.finetune",
    "select_trials": "lrf_optuna.finetune",
    "export_trial": "lrf_optuna.export",
    "load_model": "lrf_optuna.deploy",
    "to_tflite": "lrf_optuna.deploy",
    "write_report": "lrf_optuna.report",
}
_SUBMODULES = {"data", "models", "decompose", "prune", "rewrite", "costs", "scoring", "search",
               "vbmf", "cli", "finetune", "export",
               "report", "dashboard", "problem", "study", "errors",
               "compression", "plan", "paired", "deploy", "formatting"}

__all__ = ["__version__", *sorted(_EXPORTS), *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"lrf_optuna.{name}")
    raise AttributeError(f"module 'lrf_optuna' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
