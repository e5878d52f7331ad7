"""The plan of a compressed model and its codec: one type, written and read in one place.

A **plan** maps a layer path to ``(method, rank)``; a layer not in it is kept. A plan that
also prunes is a :class:`CompressionPlan`: the same mapping (ranks of the *pruned* layers)
plus ``ratios`` (``{layer: fraction of its filters removed}``) and the ``importance``
criterion that chose the filters; it is built by pruning, then factorizing. Code that takes
any plan reads its pruning through :meth:`CompressionPlan.of`, never by asking the object
what it has.

A search trial stores its plan twice: :data:`LRF_PLAN_ATTR` (changed layers only, for the
code: ``{layer: [method, rank]}``, and ``[method, rank, ratio]`` for a pruned layer, method
``"keep"`` and rank 0 when it is only pruned; the criterion in
:data:`PRUNE_IMPORTANCE_ATTR`) and :data:`PLAN_ATTR` (``{layer: "tucker2 r=8" |
"prune 25% + svd r=8" | "prune 25%" | "keep"}`` for every searched layer, for people and
the dashboard). :func:`plan_attrs` writes both, :func:`decode_plan` is the one reader of
the first, :func:`readable_plan` of the second. A pruned-only trial's ``lrf_plan`` is not
empty, so "``lrf_plan == {}``" still means the original model, and a reader that only
knows ``[method, rank]`` entries fails loudly on a pruned plan instead of building the
wrong model.

This module sits below everything that handles plans (:mod:`lrf_optuna.scoring.cache`,
:mod:`lrf_optuna.prune`, the search and the study records) and imports none of them.

Example:
    >>> attrs = plan_attrs({"fc1": ("svd", 8)}, layers=["conv1", "fc1"])
    >>> attrs["plan"]
    {'conv1': 'keep', 'fc1': 'svd r=8'}
    >>> decode_plan(attrs)
    {'fc1': ('svd', 8)}
    >>> parse_choice("tucker2 r=4"), parse_choice("keep")
    (('tucker2', 4), None)
    >>> pruned = plan_attrs(CompressionPlan({"fc1": ("svd", 8)}, ratios={"conv1": 0.25,
    ...                                                                  "fc1": 0.5}),
    ...                     layers=["conv1", "fc1"])
    >>> pruned["plan"]
    {'conv1': 'prune 25%', 'fc1': 'prune 50% + svd r=8'}
    >>> pruned["lrf_plan"]
    {'fc1': ['svd', 8, 0.5], 'conv1': ['keep', 0, 0.25]}
    >>> decode_plan(pruned).ratios
    {'fc1': 0.5, 'conv1': 0.25}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from optuna.trial import FrozenTrial

__all__ = [
    "KEEP",
    "LRF_PLAN_ATTR",
    "PLAN_ATTR",
    "PRUNE_IMPORTANCE_ATTR",
    "CompressionPlan",
    "Plan",
    "decode_plan",
    "describe_choice",
    "describe_ratio",
    "parse_choice",
    "parse_ratio",
    "plan_attrs",
    "readable_plan",
]

KEEP = "keep"
#: ``{layer path: (method, rank)}``; layers not in it are kept.
Plan = dict[str, tuple[str, int]]

# search-trial (and fine-tuning job) user attributes
PLAN_ATTR = "plan"
LRF_PLAN_ATTR = "lrf_plan"
PRUNE_IMPORTANCE_ATTR = "prune_importance"


class CompressionPlan(dict[str, tuple[str, int]]):
    """A plan that may prune: ``{layer: (method, rank)}`` (the factorized layers, ranks of
    the pruned layers) plus ``ratios`` and the ``importance`` criterion.

    Built by pruning ``ratios`` of the filters (:func:`lrf_optuna.prune.prune_model`),
    then factorizing the pruned layers (:meth:`lrf_optuna.scoring.cache.SimilarityCache.build_model`
    does both). Without ratios it is an LRF plan and equals the plain ``dict``; with
    ratios it is truthy even when nothing is factorized. ``dict(plan)`` keeps only the
    LRF choices.

    Args:
        lrf: ``{layer: (method, rank)}``.
        ratios: ``{layer: ratio}``, the fraction of each pruned layer's filters removed
            (zeros are dropped); layers pruned alike (a group) share one ratio.
        importance: The criterion choosing the filters (``"l1"``, ``"l2"``,
            ``"activation"``).

    Example:
        >>> plan = CompressionPlan({"fc1": ("svd", 8)}, ratios={"conv1": 0.5})
        >>> plan == {"fc1": ("svd", 8)}, bool(CompressionPlan(ratios={"conv1": 0.5}))
        (False, True)
        >>> plan.choices()
        {'fc1': (0.0, 'svd', 8), 'conv1': (0.5, 'keep', None)}
    """

    def __init__(self, lrf: Mapping[str, tuple[str, int]] | Iterable[Any] = (), *,
                 ratios: Mapping[str, float] | None = None, importance: str = "l1") -> None:
        super().__init__(lrf)
        self.ratios: dict[str, float] = {str(p): float(r) for p, r in (ratios or {}).items()
                                         if float(r) > 0}
        self.importance = str(importance)

    @classmethod
    def of(cls, plan: Mapping[str, Any] | None) -> CompressionPlan:
        """``plan`` itself when it is a :class:`CompressionPlan`, else the plain LRF plan
        as one (no ratios; ``None``, no plan at all, is the empty plan): the one way code
        reads the pruning of any plan.

        Example:
            >>> CompressionPlan.of({"fc1": ("svd", 8)}).ratios
            {}
            >>> CompressionPlan.of(None) == {}
            True
        """
        if isinstance(plan, CompressionPlan):
            return plan
        return cls(plan if plan is not None else ())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CompressionPlan):
            return (dict.__eq__(self, other) and self.ratios == other.ratios
                    and (not self.ratios or self.importance == other.importance))
        if isinstance(other, dict):
            return not self.ratios and dict.__eq__(self, other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __bool__(self) -> bool:
        return bool(len(self)) or bool(self.ratios)

    def __repr__(self) -> str:
        if not self.ratios:
            return dict.__repr__(self)
        return (f"CompressionPlan({dict.__repr__(self)}, ratios={self.ratios!r}, "
                f"importance={self.importance!r})")

    def copy(self) -> CompressionPlan:
        return CompressionPlan(self, ratios=self.ratios, importance=self.importance)

    def choices(self) -> dict[str, tuple[float, str, int | None]]:
        """``{layer: (ratio, method, rank)}`` of every changed layer, the form of
        :func:`lrf_optuna.prune.prune_and_factorize`."""
        out: dict[str, tuple[float, str, int | None]] = {
            p: (self.ratios.get(p, 0.0), m, int(r)) for p, (m, r) in self.items()}
        for p, ratio in self.ratios.items():
            out.setdefault(p, (ratio, KEEP, None))
        return out


def describe_ratio(ratio: float) -> str:
    """``0.25`` -> ``"prune 25%"`` (``""`` for 0).

    Example:
        >>> describe_ratio(0.125), describe_ratio(0)
        ('prune 12.5%', '')
    """
    return f"prune {100 * float(ratio):g}%" if float(ratio) > 0 else ""


def describe_choice(choice: Any, ratio: float = 0.0) -> str:
    """A layer's choice as ``"tucker2 r=8"`` / ``"keep"`` (``"prune 25% + tucker2 r=8"`` /
    ``"prune 25%"`` when ``ratio`` of its filters go), whatever form it was stored in
    (``(method, rank)``, ``[method, rank]``, ``[method, rank, ratio]``,
    ``{"method", "rank"}``, text or ``None``)."""
    if isinstance(choice, (list, tuple)) and len(choice) == 3:
        choice, ratio = (choice[0], choice[1]), float(choice[2])
    if choice is None:
        text = KEEP
    elif isinstance(choice, str):
        text = choice
    else:
        if isinstance(choice, Mapping) and "method" in choice:
            choice = (choice["method"], choice.get("rank", 0))
        if isinstance(choice, (list, tuple)) and len(choice) == 2:
            method, rank = choice
            text = KEEP if method == KEEP else f"{method} r={int(rank)}"
        else:
            text = str(choice)
    pruned = describe_ratio(ratio)
    if not pruned:
        return text
    return pruned if text == KEEP else f"{pruned} + {text}"


def parse_ratio(text: str) -> float:
    """The pruning ratio of a readable choice: ``"prune 25% + svd r=8"`` -> ``0.25``;
    ``0.0`` when it does not prune."""
    if not text.startswith("prune "):
        return 0.0
    try:
        return float(text[len("prune "):].split("%", 1)[0]) / 100.0
    except ValueError:
        return 0.0


def parse_choice(text: str) -> tuple[str, int] | None:
    """``"tucker2 r=8"`` (or ``"prune 25% + tucker2 r=8"``) -> ``("tucker2", 8)``;
    ``"keep"``, ``"prune 25%"`` (or unparsable) -> ``None``."""
    if text.startswith("prune "):
        _, plus, text = text.partition(" + ")
        if not plus:
            return None
    method, _, rank = text.partition(" r=")
    if method == KEEP or not rank:
        return None
    try:
        return method, int(rank)
    except ValueError:
        return None


def plan_attrs(plan: Mapping[str, tuple[str, int]], layers: Iterable[str]) -> dict[str, Any]:
    """The user attributes that store ``plan`` (a :class:`CompressionPlan` when it prunes)
    in a trial: ``plan`` (readable, every searched layer), ``lrf_plan`` (machine-readable)
    and, when it prunes, ``prune_importance``."""
    typed = CompressionPlan.of(plan)
    ratios = typed.ratios
    lrf: dict[str, list[Any]] = {}
    for p, (m, r) in plan.items():
        lrf[p] = [str(m), int(r), ratios[p]] if p in ratios else [str(m), int(r)]
    for p, ratio in ratios.items():
        lrf.setdefault(p, [KEEP, 0, ratio])
    out: dict[str, Any] = {
        PLAN_ATTR: {p: describe_choice(plan.get(p), ratios.get(p, 0.0)) for p in layers},
        LRF_PLAN_ATTR: lrf}
    if ratios:
        out[PRUNE_IMPORTANCE_ATTR] = typed.importance
    return out


def _attrs(trial_or_attrs: FrozenTrial | Mapping[str, Any]) -> Mapping[str, Any]:
    return (trial_or_attrs.user_attrs if isinstance(trial_or_attrs, FrozenTrial)
            else trial_or_attrs)


def decode_plan(trial_or_attrs: FrozenTrial | Mapping[str, Any]) -> CompressionPlan:
    """The plan a trial stored (its ``lrf_plan`` attribute): ``{layer: (method, rank)}``,
    with the pruning ratios and criterion when it prunes (:class:`CompressionPlan`).

    Raises:
        ValueError: the trial has no ``lrf_plan`` (it was not made by lrf_optuna), or an
            entry is not ``[method, rank]`` / ``[method, rank, ratio]``.
    """
    attrs = _attrs(trial_or_attrs)
    raw = attrs.get(LRF_PLAN_ATTR)
    what = (f"trial {trial_or_attrs.number}" if isinstance(trial_or_attrs, FrozenTrial)
            else "these attributes")
    if raw is None:
        raise ValueError(f"{what} has no {LRF_PLAN_ATTR!r} user attribute (not made by "
                         "lrf_optuna's search)")
    lrf: Plan = {}
    ratios: dict[str, float] = {}
    for p, entry in raw.items():
        if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
            raise ValueError(f"{what}: {LRF_PLAN_ATTR} entry of layer {p!r} must be [method, "
                             f"rank] or [method, rank, ratio], but got {entry!r}")
        if entry[0] != KEEP:
            lrf[str(p)] = (str(entry[0]), int(entry[1]))
        if len(entry) == 3:
            ratios[str(p)] = float(entry[2])
    return CompressionPlan(lrf, ratios=ratios,
                           importance=str(attrs.get(PRUNE_IMPORTANCE_ATTR, "l1")))


def readable_plan(trial_or_attrs: FrozenTrial | Mapping[str, Any]) -> dict[str, str]:
    """``{layer: "svd r=8" | "keep"}`` of a trial (its ``plan`` attribute, else derived from
    ``lrf_plan``)."""
    attrs = _attrs(trial_or_attrs)
    raw = attrs.get(PLAN_ATTR)
    if not isinstance(raw, Mapping):
        raw = attrs.get(LRF_PLAN_ATTR)
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): describe_choice(v) for k, v in raw.items()}
