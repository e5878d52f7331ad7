"""Accuracy drops measured on the same images, with their uncertainty.

A compressed model and its reference are evaluated on the *same* validation images, so
only the images on which the two disagree say anything about the drop: ``b`` images the
reference classifies right and the candidate wrong, ``c`` the other way round. The drop is
``(b - c) / n``; its standard error is that of a paired difference (McNemar's setting),
``sqrt(((b + c) / n - drop^2) / n)``, with one disagreement added to ``b + c`` so that two
models that agree on every image still get a non-zero uncertainty. Two models that agree
on 990 of 1,000 images are compared far more precisely than their accuracies' own standard
errors suggest.

A candidate is **within** a budget of ``max_drop`` percentage points at ``confidence``
when the drop plus ``z(confidence)`` standard errors is at most the budget (normal
approximation; ``z`` the standard normal quantile): at the default confidence 0.5 that is
the drop's estimate itself, an even bet; 0.9 asks for the one-sided 90 % upper bound.

Per-image correctness is stored in a study as bits (:func:`pack_correct`): 1,000 images
take 168 characters.

Example:
    >>> ref = np.array([1, 1, 1, 1, 0, 1, 1, 1], dtype=bool)
    >>> cand = np.array([1, 0, 1, 1, 1, 0, 1, 1], dtype=bool)
    >>> d = paired_drop(ref, cand)
    >>> d.ref_only, d.cand_only, round(d.drop_pp, 1)
    (2, 1, 12.5)
    >>> unpack_correct(pack_correct(cand), len(cand)).tolist() == cand.tolist()
    True
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["DEFAULT_CONFIDENCE", "PairedDrop", "expected_standard_error", "pack_correct",
           "paired_drop", "unpack_correct", "z_value"]

#: The default confidence of a budget decision: the drop's estimate decides.
DEFAULT_CONFIDENCE = 0.5


def z_value(confidence: float) -> float:
    """The standard normal quantile of ``confidence`` (0 at 0.5).

    Raises:
        ValueError: ``confidence`` outside ``(0, 1)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), but got {confidence}")
    return NormalDist().inv_cdf(confidence)


def pack_correct(correct: np.ndarray) -> str:
    """Per-image correctness as a base64 string of bits (see :func:`unpack_correct`)."""
    bits = np.packbits(np.asarray(correct, dtype=bool).reshape(-1))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> np.ndarray:
    """The ``n`` booleans :func:`pack_correct` stored.

    Raises:
        ValueError: the string holds fewer than ``n`` bits or is not base64.
    """
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    bits = np.unpackbits(raw).astype(bool)
    if len(bits) < n:
        raise ValueError(f"stored correctness has {len(bits)} bits, expected {n}")
    return bits[:n]


@dataclass(frozen=True)
class PairedDrop:
    """The drop of a candidate against a reference on the same ``n`` images.

    Attributes:
        n: Images compared.
        ref_only: Images only the reference classifies right (``b``).
        cand_only: Images only the candidate classifies right (``c``).
    """

    n: int
    ref_only: int
    cand_only: int

    @property
    def drop(self) -> float:
        """``(b - c) / n``: the reference's accuracy minus the candidate's."""
        return (self.ref_only - self.cand_only) / self.n

    @property
    def drop_pp(self) -> float:
        """The drop in percentage points."""
        return 100.0 * self.drop

    @property
    def se_pp(self) -> float:
        """Standard error of the drop, in percentage points (module docstring)."""
        disagree = (self.ref_only + self.cand_only + 1) / self.n
        return 100.0 * math.sqrt(max(disagree - self.drop ** 2, 0.0) / self.n)

    def upper_pp(self, confidence: float = DEFAULT_CONFIDENCE) -> float:
        """The one-sided upper bound of the drop at ``confidence`` (pp)."""
        return self.drop_pp + z_value(confidence) * self.se_pp

    def interval_pp(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided ``level`` interval of the drop (pp)."""
        half = z_value(0.5 + level / 2) * self.se_pp
        return self.drop_pp - half, self.drop_pp + half

    def within(self, max_drop: float, confidence: float = DEFAULT_CONFIDENCE) -> bool:
        """Whether the drop is within ``max_drop`` pp at ``confidence``."""
        return self.upper_pp(confidence) <= max_drop + 1e-9

    def text(self) -> str:
        """``"+0.80 ± 0.41"``: the drop and one standard error, in pp."""
        return f"{self.drop_pp:+.2f} ± {self.se_pp:.2f}"


def paired_drop(reference: np.ndarray, candidate: np.ndarray) -> PairedDrop:
    """The :class:`PairedDrop` of ``candidate`` against ``reference``, two boolean arrays
    of per-image correctness on the same images.

    Raises:
        ValueError: the arrays differ in length or are empty.
    """
    ref = np.asarray(reference, dtype=bool).reshape(-1)
    cand = np.asarray(candidate, dtype=bool).reshape(-1)
    if len(ref) != len(cand):
        raise ValueError(f"paired comparison needs the same images: {len(ref)} reference "
                         f"and {len(cand)} candidate results")
    if len(ref) == 0:
        raise ValueError("paired comparison of zero images")
    return PairedDrop(len(ref), int(np.sum(ref & ~cand)), int(np.sum(cand & ~ref)))


def expected_standard_error(n: int, reference_accuracy: float, max_drop: float) -> float:
    """The standard error (pp) a paired drop of ``max_drop`` pp will have on ``n`` images,
    before any candidate is trained.

    Assumes the candidate's errors are independent of the reference's (an upper bound:
    a compressed model mostly errs where its original does): a candidate at the budget
    errs on a fraction ``q = p + max_drop / 100`` of the images, ``p`` the reference's
    error rate, and the two disagree on ``p (1 - q) + q (1 - p)`` of them.

    Example:
        >>> round(expected_standard_error(400, 0.98, 1.0), 2)
        1.1
    """
    p = min(max(1.0 - reference_accuracy, 0.0), 1.0)
    q = min(p + max_drop / 100.0, 1.0)
    disagree = p * (1 - q) + q * (1 - p)
    return 100.0 * math.sqrt(max(disagree - (max_drop / 100.0) ** 2, 0.0) / max(n, 1))
