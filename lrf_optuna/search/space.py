"""The search space of a model, known before any calibration pass.

A search may be restricted to some layers, some methods (for every layer, or per layer)
and rank ranges per layer (:class:`Restrictions`). :func:`candidate_grids` applies them to
a model's factorizable layers and the rank grid: the ``{layer: {method: [ranks]}}`` the
similarity cache will score and the search will choose from, computed from the layer
shapes alone (no TensorFlow call, no calibration pass). So everything wrong with a search
space is found before anything expensive runs, each as one
:class:`~lrf_optuna.errors.UserError` that names the layer or argument: an unknown method,
a layer that is not factorizable, a rank range that is not ``1 <= min <= max`` or leaves
a layer it names without a candidate, a model with no factorizable layer, an empty space.
:func:`check_constraints` refuses constraints that no plan can meet.

Example:
    >>> import keras
    >>> net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="fc1"),
    ...                         keras.layers.Dense(4, name="fc2")])
    >>> grids = candidate_grids(net, Restrictions.of(methods=["svd"]))
    >>> {layer: list(methods) for layer, methods in grids.items()}
    {'fc1': ['svd'], 'fc2': ['svd']}
    >>> Restrictions.of(ranks={"fc1": (10, 2)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrf_optuna.errors.UserError: ranks['fc1'] must be (min_rank, max_rank) ... but got (10, 2)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrf_optuna.errors import UserError, is_int
from lrf_optuna.scoring.cache import GridConfig

if TYPE_CHECKING:
    import keras

__all__ = ["CandidateGrids", "Restrictions", "candidate_grids", "check_constraints",
           "grid_from_json"]

#: ``{layer path: {method: [ranks, ascending]}}``.
CandidateGrids = dict[str, dict[str, list[int]]]


def _names(value: Any, what: str) -> tuple[str, ...]:
    """A list of names, refusing a bare string (``"svd"`` is not ``["svd"]``)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise UserError(f"{what} must be a list of names, but got {value!r}")
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise UserError(f"{what} must hold names (strings), but got {bad!r}")
    return names


def _known_methods(names: Sequence[str], what: str) -> None:
    from lrf_optuna.decompose import available_methods

    unknown = [n for n in names if n not in available_methods()]
    if unknown:
        raise UserError(f"unknown LRF method(s) {unknown} in {what}; registered: "
                        f"{available_methods()}")


@dataclass(frozen=True)
class Restrictions:
    """What a search may choose (see :meth:`of`); ``None`` means "everything"."""

    layers: tuple[str, ...] | None = None
    methods: tuple[str, ...] | Mapping[str, tuple[str, ...]] | None = None
    ranks: Mapping[str, tuple[int, int]] | None = None

    @classmethod
    def of(cls, layers: Iterable[str] | None = None,
           methods: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
           ranks: Mapping[str, tuple[int, int]] | None = None) -> Restrictions:
        """Validated restrictions.

        Args:
            layers: Search only these layer paths.
            methods: Methods for every layer (a list), or ``{layer: [methods]}`` (layers
                not named keep every method).
            ranks: ``{layer: (min_rank, max_rank)}``, integers with
                ``1 <= min_rank <= max_rank``.

        Raises:
            UserError: a wrong form, an unknown method, a bad rank range.
        """
        layer_names = None if layers is None else _names(layers, "layers")
        if layer_names is not None and not layer_names:
            raise UserError("layers is empty: name at least one layer (or pass None for all)")
        method_spec: tuple[str, ...] | dict[str, tuple[str, ...]] | None = None
        if isinstance(methods, Mapping):
            method_spec = {}
            for layer, names in methods.items():
                method_spec[str(layer)] = _names(names, f"methods[{layer!r}]")
                _known_methods(method_spec[str(layer)], f"methods[{layer!r}]")
        elif methods is not None:
            method_spec = _names(methods, "methods")
            if not method_spec:
                raise UserError("methods is empty: name at least one LRF method (or pass "
                                "None for all)")
            _known_methods(method_spec, "methods")
        rank_spec: dict[str, tuple[int, int]] | None = None
        if ranks is not None:
            if not isinstance(ranks, Mapping):
                raise UserError(f"ranks must be a mapping {{layer: (min_rank, max_rank)}}, "
                                f"but got {ranks!r}")
            rank_spec = {}
            for layer, pair in ranks.items():
                ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
                      and all(is_int(v) for v in pair) and 1 <= pair[0] <= pair[1])
                if not ok:
                    raise UserError(f"ranks[{layer!r}] must be (min_rank, max_rank) with 1 <= "
                                    f"min_rank <= max_rank, but got {pair!r}")
                rank_spec[str(layer)] = (int(pair[0]), int(pair[1]))
        return cls(layer_names, method_spec, rank_spec)

    def methods_of(self, layer: str) -> tuple[str, ...] | None:
        """The methods allowed for ``layer`` (``None``: every method)."""
        if isinstance(self.methods, Mapping):
            return self.methods.get(layer)
        return self.methods

    def named_layers(self) -> set[str]:
        """Every layer the restrictions name explicitly."""
        out = set(self.layers or ())
        if isinstance(self.methods, Mapping):
            out |= set(self.methods)
        return out | set(self.ranks or {})

    def to_json(self) -> dict[str, Any]:
        """The restrictions as JSON (order-insensitive lists), what a study is bound to."""
        methods: Any = self.methods
        if isinstance(methods, Mapping):
            methods = {k: sorted(v) for k, v in sorted(methods.items())}
        elif methods is not None:
            methods = sorted(methods)
        return {"layers": None if self.layers is None else sorted(self.layers),
                "methods": methods,
                "ranks": None if self.ranks is None else
                {k: list(v) for k, v in sorted(self.ranks.items())}}


def grid_from_json(raw: Mapping[str, Any]) -> GridConfig:
    """The :class:`~lrf_optuna.scoring.cache.GridConfig` of ``GridConfig.to_json()`` (a cache's
    manifest)."""
    return GridConfig.from_json(raw)


def _factorizable(model: keras.Model) -> dict[str, Any]:
    from lrf_optuna.rewrite import find_layers

    try:
        found = find_layers(model)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from err
    if not found:
        raise UserError(f"model {model.name!r} has no layer lrf_optuna can factorize (Dense, "
                        "Conv1D/2D/3D, DepthwiseConv2D, SeparableConv pointwise, "
                        "ConvTranspose): there is nothing to search")
    return found


def candidate_grids(model: keras.Model, restrictions: Restrictions | None = None,
                    grid: GridConfig | None = None) -> CandidateGrids:
    """The candidates a search of ``model`` chooses from: ``{layer: {method: [ranks]}}``,
    for every searched layer that keeps at least one candidate.

    The same ranks the similarity cache scores (its grid, restricted), from the layer
    shapes alone.

    Raises:
        UserError: the model has no factorizable layer; a named layer is not one of its
            factorizable layers, or keeps no candidate; nothing at all is left.
    """
    from lrf_optuna.scoring.cache import SimilarityCache

    r = restrictions or Restrictions()
    grid = grid or GridConfig()
    found = _factorizable(model)
    unknown = sorted(p for p in r.named_layers() if p not in found)
    if unknown:
        raise UserError(f"layer(s) {unknown} are not factorizable layers of model "
                        f"{model.name!r}; its factorizable layers: {sorted(found)}")
    searched = list(r.layers) if r.layers is not None else list(found)
    out: CandidateGrids = {}
    why: dict[str, str] = {}
    for path in searched:
        info = found[path].info
        full = SimilarityCache._layer_grid(info, grid)
        allowed = r.methods_of(path)
        low, high = (r.ranks or {}).get(path, (1, math.inf))
        kept = {}
        for method, ranks in full.items():
            if allowed is not None and method not in allowed:
                continue
            chosen = [rank for rank in ranks if low <= rank <= high]
            if chosen:
                kept[method] = chosen
        if kept:
            out[path] = kept
            continue
        rank_range = (r.ranks or {}).get(path)
        why[path] = (f"applicable methods {sorted(full) or 'none'}"
                     + (f", scored ranks {full}" if rank_range else ""))
        if path in r.named_layers():
            restriction = []
            if allowed is not None:
                restriction.append(f"methods {list(allowed)}")
            if rank_range is not None:
                restriction.append(f"ranks {rank_range}")
            raise UserError(f"layer {path!r} keeps no candidate with "
                            f"{' and '.join(restriction) or 'these restrictions'} "
                            f"({why[path]}); widen the restriction or drop the layer")
    if not out:
        detail = "; ".join(f"{p}: {w}" for p, w in why.items())
        raise UserError(f"the search space is empty: no layer of model {model.name!r} keeps a "
                        f"candidate with these restrictions ({detail}); drop or change the "
                        "--methods / --layers / ranks restrictions")
    return out


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise UserError(f"{name} must be a number, but got {value!r}")
    return float(value)


def check_constraints(model: keras.Model, grids: CandidateGrids, *,
                      max_params: float | None = None, max_flops: float | None = None,
                      min_proxy: float | None = None) -> None:
    """Refuse constraints no plan can meet: the smallest model the search space allows
    has more parameters (FLOPs) than allowed, or the proxy would need to exceed 1 (the
    original model's proxy, the largest possible).

    Raises:
        UserError: an infeasible or non-numeric constraint, with the bound that is
            reachable.
    """
    from lrf_optuna.costs import model_costs
    from lrf_optuna.decompose import get_method

    if min_proxy is not None and _number(min_proxy, "min_proxy") > 1.0:
        raise UserError(f"--min-proxy {min_proxy:g} cannot be met: the proxy is at most 1.0 "
                        "(the original model); no trial could be feasible")
    if max_params is None and max_flops is None:
        return
    found = _factorizable(model)
    costs = model_costs(model)
    min_params, min_macs = costs.params, costs.macs
    for path, methods in grids.items():
        info = found[path].info
        cands = [(get_method(m), rank) for m, ranks in methods.items() for rank in ranks]
        min_params -= max(0, max(info.original_params - m.params(info, r) for m, r in cands))
        min_macs -= max(0, max(info.original_macs - m.macs(info, r) for m, r in cands))
    for flag, value, smallest, unit in (("--max-params", max_params, min_params, "parameters"),
                                        ("--max-flops", max_flops, 2 * min_macs, "FLOPs")):
        if value is not None and _number(value, flag.lstrip("-").replace("-", "_")) < smallest:
            raise UserError(f"{flag} {value:g} cannot be met: the smallest model this search "
                            f"space allows has {smallest:,} {unit}; no trial could be "
                            "feasible")
