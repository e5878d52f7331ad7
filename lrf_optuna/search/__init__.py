"""The search: per-layer LRF method and rank (and, opt-in, filter pruning), chosen by Optuna.

One module each, in the order a search uses them:

=============================== =========================================================
``space``                       what may be searched, known before any calibration pass:
                                :class:`Restrictions`, the candidate rank grids, the
                                constraints' feasibility
``settings``                    objectives and directions, the memory count, the proxy's
                                aggregation, pruning: each checked once; the settings a
                                study is bound to
``scoring_queue``               the similarity cache scored by any number of workers on
                                the study's storage (:func:`score_on_storage`)
``strategies``                  rank-selection strategies, each turning a model (and its
                                cache) into plans that seed the study
``objective``                   the Optuna objective (:class:`LRFObjective`): a trial is a
                                look-up in the similarity cache; seeding, describing
``sampler``                     NSGA-II with the seeded trials in its populations
                                (:class:`SeededNSGAIISampler`)
``run``                         the worker loop (:func:`run_remaining`), recovering the
                                trials of killed workers
``wiring``                      the one entry point (:func:`prepare_lrf_study`,
                                :func:`create_lrf_study`): a problem's study opened,
                                checked, bound, described and seeded
=============================== =========================================================

The compressed models of a stored study are rebuilt by
:class:`lrf_optuna.study.models.StudyModels`.

Example (``model`` trained, ``x_cal`` calibration images)::

    import optuna
    from lrf_optuna.search import LRFObjective, SeededNSGAIISampler
    objective = LRFObjective(model, x_cal, cache_dir=".lrf_cache")
    study = optuna.create_study(directions=objective.directions,
                                sampler=SeededNSGAIISampler(seed=0))
    objective.seed_study(study)
    study.optimize(objective, n_trials=300)
"""

from __future__ import annotations

from lrf_optuna.plan import describe_choice
from lrf_optuna.search.objective import CalibrationData, LRFObjective, PlanScore
from lrf_optuna.search.run import finished_trials, run_remaining
from lrf_optuna.search.sampler import SeededNSGAIISampler
from lrf_optuna.search.settings import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    directions_of,
    memory_objectives,
    prune_config_of,
)
from lrf_optuna.search.wiring import LRFSearch, create_lrf_study, load_problem, prepare_lrf_study

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "CalibrationData",
    "LRFObjective",
    "LRFSearch",
    "PlanScore",
    "SeededNSGAIISampler",
    "create_lrf_study",
    "describe_choice",
    "directions_of",
    "finished_trials",
    "load_problem",
    "memory_objectives",
    "prepare_lrf_study",
    "prune_config_of",
    "run_remaining",
]

