"""What a search is set to, checked once for the objective and the study wiring alike.

The objectives and their directions (:func:`directions_of`), what the memory objective
counts (:func:`memory_objectives`, :func:`memory_setting`), how layer similarities become
the proxy (:data:`AGGREGATIONS`, :func:`check_scoring`), pruning
(:func:`prune_config_of`), the constraints (:func:`check_search_constraints`), and the
settings a study is bound to (:func:`search_settings`). Each check raises one
:class:`~lrf_optuna.errors.UserError` before anything expensive runs.

Example:
    >>> directions_of(memory_objectives(["params", "proxy"], "bytes"))
    ['minimize', 'maximize']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lrf_optuna.errors import UserError
from lrf_optuna.scoring.cache import GridConfig
from lrf_optuna.scoring.similarity import DEFAULT_METRIC, METRICS
from lrf_optuna.search.space import CandidateGrids, Restrictions, check_constraints

if TYPE_CHECKING:
    import keras

    from lrf_optuna.prune.cache import PruneConfig

__all__ = ["AGGREGATIONS", "DEFAULT_AGGREGATION", "DEFAULT_N_TRIALS", "MEMORY_COUNTS", "Direction",
           "check_scoring", "check_search_constraints", "directions_of", "memory_objectives",
           "memory_setting", "prune_config_of", "search_settings"]


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 1.0


def _product(xs: Sequence[float]) -> float:
    return float(np.prod(np.clip(xs, 0.0, None))) if len(xs) else 1.0


def _min(xs: Sequence[float]) -> float:
    return float(np.min(xs)) if len(xs) else 1.0


#: How per-layer similarities (one per searched layer, 1.0 when kept) become the proxy.
AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": _mean,
    "product": _product,
    "min": _min,
}
#: Chosen by ``benchmarks/similarity_metrics.py`` (see ``benchmarks/RESULTS.md``).
DEFAULT_AGGREGATION = "product"

#: The search trials of ``compress`` / ``search`` unless told. A trial is a cache look-up
#: and a storage write (about 0.1 s on SQLite); ``benchmarks.trial_count`` measured on the
#: user nets (3 seeds each): going from 300 to 1,000 trials cuts the params the smallest
#: trial at proxy >= 0.8 keeps from 83-86 % to 58-66 % of the original, while 3,000 trials
#: gain a few pp more at three times the wait.
DEFAULT_N_TRIALS = 1000

Direction = Literal["minimize", "maximize"]
_OBJECTIVES: dict[str, Direction] = {"params": "minimize", "bytes": "minimize", "flops": "minimize",
               "macs": "minimize", "proxy": "maximize"}


def prune_config_of(prune: Any) -> PruneConfig | None:
    """The :class:`~lrf_optuna.prune.PruneConfig` of an objective's ``prune`` argument
    (``None``/``False``: no pruning; ``True``: the default config).

    Example:
        >>> prune_config_of(None) is None, prune_config_of(True).ratios[:3]
        (True, (0.0, 0.125, 0.25))
    """
    if prune is None or prune is False:
        return None
    from lrf_optuna.prune.cache import PruneConfig

    if prune is True:
        return PruneConfig()
    if isinstance(prune, PruneConfig):
        return prune
    raise UserError(f"prune must be True, False, None or a lrf_optuna.prune.PruneConfig, "
                    f"but got {prune!r}")


def directions_of(objectives: Sequence[str]) -> list[Direction]:
    """Optimisation directions of objective names (see :class:`LRFObjective`).

    Example:
        >>> directions_of(["params", "proxy"])
        ['minimize', 'maximize']
    """
    if isinstance(objectives, str):
        raise UserError(f"objectives must be a list of names, but got {objectives!r}")
    bad = [o for o in objectives if o not in _OBJECTIVES]
    if bad or not objectives:
        raise UserError(f"unknown objectives {bad or list(objectives)!r}; choose from "
                        f"{sorted(_OBJECTIVES)}")
    if len(set(objectives)) != len(objectives):
        raise UserError(f"objectives {list(objectives)} name one twice")
    return [_OBJECTIVES[o] for o in objectives]


#: The ``memory=`` values: what the memory objective counts.
MEMORY_COUNTS = ("params", "bytes")


def memory_objectives(objectives: Sequence[str], memory: str = "params") -> list[str]:
    """The objectives with the memory one as ``memory`` says: ``"bytes"`` puts
    ``"bytes"`` (deployed bytes) where ``"params"`` was.

    Example:
        >>> memory_objectives(["params", "flops", "proxy"], "bytes")
        ['bytes', 'flops', 'proxy']
    """
    if memory not in MEMORY_COUNTS:
        raise UserError(f"unknown memory count {memory!r}; choose from {list(MEMORY_COUNTS)}")
    if isinstance(objectives, str):
        raise UserError(f"objectives must be a list of names, but got {objectives!r}")
    if memory == "params":
        return list(objectives)
    return list(dict.fromkeys("bytes" if o == "params" else o for o in objectives))


def memory_setting(objectives: Sequence[str], kwargs: Mapping[str, Any]) -> dict[str, str] | None:
    """What a study's binding records of its memory objective: ``{"count": "bytes",
    "quantize": mode}`` when it counts deployed bytes, else ``None`` (nothing recorded,
    so the bindings of older studies hold).

    Raises:
        UserError: an unknown ``memory`` or ``quantize``.
    """
    from lrf_optuna.deploy.convert import check_quantize

    memory = kwargs.get("memory", "params")
    quantize = check_quantize(kwargs.get("quantize", "none"))
    if "bytes" not in memory_objectives(objectives, memory):
        return None
    return {"count": "bytes", "quantize": quantize}


def search_settings(objectives: Sequence[str], kwargs: Mapping[str, Any],
                    restrictions: Restrictions) -> dict[str, Any]:
    """What a search study is bound to besides its problem (see
    :mod:`lrf_optuna.study.binding`), from the :class:`~lrf_optuna.search.LRFObjective`
    arguments ``kwargs``.

    Raises:
        UserError: an unknown metric, aggregation, memory count or precision.
    """
    metric = kwargs.get("metric", DEFAULT_METRIC)
    aggregation = kwargs.get("aggregation", DEFAULT_AGGREGATION)
    check_scoring(metric, aggregation)
    grid = kwargs.get("grid") or GridConfig()
    settings = {"objectives": list(objectives), "metric": metric, "aggregation": aggregation,
                **restrictions.to_json(), "grid": grid.to_json()}
    prune = prune_config_of(kwargs.get("prune"))
    if prune is not None:  # absent without pruning: the bindings of older studies hold
        settings["prune"] = prune.to_json()
    memory = memory_setting(objectives, kwargs)
    if memory is not None:  # likewise absent when counting params
        settings["memory"] = memory
    return settings


def check_scoring(metric: str, aggregation: str) -> None:
    """Refuse an unknown similarity metric or aggregation of the proxy.

    Example:
        >>> check_scoring("cosine", "mean")
    """
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {aggregation!r}; choose from "
                        f"{sorted(AGGREGATIONS)}")
    if metric not in METRICS:
        raise UserError(f"unknown similarity metric {metric!r}; choose from "
                        f"{sorted(METRICS)}")


def check_search_constraints(model: keras.Model, grids: CandidateGrids, *, prune: Any,
                             max_params: float | None, max_flops: float | None,
                             min_proxy: float | None) -> None:
    """Refuse constraints no plan of ``grids`` meets (:func:`~lrf_optuna.search.space.
    check_constraints`); pruning reaches below LRF's smallest model, so with ``prune``
    only the proxy bound is checked."""
    prunes = prune_config_of(prune) is not None
    check_constraints(model, grids, max_params=None if prunes else max_params,
                      max_flops=None if prunes else max_flops, min_proxy=min_proxy)
