"""The compressed models of a stored study's trials, rebuilt from the study alone
(:class:`StudyModels`: the problem, the similarity cache and the pruning cache the study is
bound to), for export and fine-tuning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from lrf_optuna.errors import UserError
from lrf_optuna.plan import decode_plan
from lrf_optuna.problem import Problem
from lrf_optuna.scoring.cache import SimilarityCache
from lrf_optuna.scoring.similarity import DEFAULT_METRIC
from lrf_optuna.study.binding import bound, load_study_problem
from lrf_optuna.study.records import PRUNE_ATTR

if TYPE_CHECKING:
    import keras

    from lrf_optuna.prune.cache import PruneCache

__all__ = ["StudyModels"]

logger = logging.getLogger(__name__)


class StudyModels:
    """The compressed models of a stored study's trials, rebuilt from the study alone.

    Loads, once and when first needed, the problem (from the files the study names,
    unless ``problem`` is given; either way it must be the model and data the study was
    made with: :func:`~lrf_optuna.study.binding.load_study_problem`) and the similarity
    cache. A study is not trusted with paths: the cache directory it recorded is only read,
    and only when it holds the complete cache whose fingerprint the study is bound to;
    otherwise the cache is built (or reopened) in ``cache_dir`` (default: the given
    problem's, else ``.lrf_cache``), never in a directory the study names.

    Example:
        >>> models = StudyModels(study)  # doctest: +SKIP
        >>> compressed = models.build(study.trials[42])  # doctest: +SKIP
    """

    def __init__(self, study: optuna.Study, *, problem: Problem | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.study = study
        self._given = problem
        self._problem: Problem | None = None
        self._cache: SimilarityCache | None = None
        self._pruning: PruneCache | None = None
        settings = (problem.spec or problem.settings) if problem is not None else None
        self.cache_dir = Path(cache_dir or (settings.cache_dir if settings else ".lrf_cache"))

    @property
    def problem(self) -> Problem:
        if self._problem is None:
            if self._given is None:
                logger.info("loading the problem of study %r", self.study.study_name)
            self._problem = load_study_problem(self.study, self._given)
        return self._problem

    def _recorded_cache(self) -> SimilarityCache | None:
        """The complete cache the search recorded, if it is the one the study is bound to
        (read only: a cache is JSON and ``.npz`` files)."""
        from lrf_optuna.study.records import original_info

        original = original_info(self.study)
        if original is None or not original.cache:
            return None
        try:
            cache = SimilarityCache.load(original.cache)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.info("the cache recorded by study %r is not usable (%s)",
                        self.study.study_name, err)
            return None
        binding = bound(self.study)
        if (binding is not None and binding.cache and cache.fingerprint != binding.cache) \
                or not cache.complete:
            logger.warning("%s is not the complete similarity cache of study %r; building "
                           "one in %s", original.cache, self.study.study_name, self.cache_dir)
            return None
        return cache

    @property
    def cache(self) -> SimilarityCache:
        if self._cache is None:
            from lrf_optuna.study.records import original_info

            self._cache = self._recorded_cache()
            if self._cache is None:
                original = original_info(self.study)
                self._cache = SimilarityCache.build(
                    self.problem.model, self.problem.splits.x_cal, cache_dir=self.cache_dir,
                    metric=original.metric if original else DEFAULT_METRIC, progress=False)
        return self._cache

    @property
    def pruning(self) -> PruneCache | None:
        """The pruning cache of a study that searched pruning (built or reopened beside
        the similarity cache), else ``None``."""
        raw = self.study.user_attrs.get(PRUNE_ATTR)
        if not isinstance(raw, Mapping):
            return None
        if self._pruning is None:
            from lrf_optuna.prune.cache import PruneCache, PruneConfig

            config = PruneConfig.from_json(raw["config"])
            try:  # read only, and only the complete cache of this similarity cache
                recorded = PruneCache.load(str(raw.get("cache")))
                if (recorded.complete and recorded.config == config
                        and recorded.manifest.get("base") == self.cache.fingerprint):
                    self._pruning = recorded
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.info("the pruning cache recorded by study %r is not usable (%s)",
                            self.study.study_name, err)
            if self._pruning is None:
                try:
                    self._pruning = PruneCache.build(
                        self.problem.model, self.problem.splits.x_cal, self.cache,
                        config=config, layers=raw.get("layers") or None, progress=False)
                except ValueError as err:
                    raise UserError(f"cannot rebuild the pruning cache of study "
                                    f"{self.study.study_name!r}: {err}") from err
        return self._pruning

    def build(self, trial: optuna.trial.FrozenTrial) -> keras.Model:
        """The compressed (not fine-tuned) model of a search trial's stored plan (pruned,
        then factorized, when it prunes)."""
        from lrf_optuna.prune.cache import build_plan_model

        plan = decode_plan(trial)
        return build_plan_model(self.problem.model, plan, self.cache,
                                pruning=self.pruning if plan.ratios else None)
