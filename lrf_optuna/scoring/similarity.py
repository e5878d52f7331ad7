"""Feature-map similarity metrics: how close a decomposed layer's outputs stay.

Every metric compares a reference batch ``y`` (the original layer's outputs, after its
activation) with a candidate batch ``y_hat`` of the same shape, sample by sample along the
first axis, and returns a score where **1 means identical** and lower is worse:

* ``cosine``: cosine similarity of each sample's flattened feature map, averaged.
* ``cka``: linear CKA (Kornblith et al., 2019) between the two ``samples x features``
  matrices; invariant to orthogonal transforms and isotropic scaling of the features.
* ``nmse``: ``1 - ||y_hat - y||^2 / ||y||^2`` over the whole batch (can go below 0).

The default, ``cosine``, is chosen by measurement (``benchmarks/similarity_metrics.py``,
see ``benchmarks/RESULTS.md``): over 60 random plans on each of LeNet-5 and the VGG-style
net, its aggregated score ranked the assembled models most like their real validation
accuracy (mean Spearman 0.929 with the product aggregation; 1 - NMSE 0.923, CKA 0.83).

Example:
    >>> import numpy as np
    >>> y = np.arange(12, dtype="float32").reshape(3, 4)
    >>> round(similarity("cosine", y, y), 6), round(similarity("nmse", y, 0 * y), 6)
    (1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_METRIC", "METRICS", "BatchNormView", "cka", "cosine", "nmse",
           "similarity"]

_EPS = 1e-12


def _flat(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.float64).reshape(len(y), -1)


def cosine(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of flattened feature maps."""
    a, b = _flat(y), _flat(y_hat)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den < _EPS
    per = np.where(both_zero, np.where(np.linalg.norm(a - b, axis=1) < _EPS, 1.0, 0.0),
                   num / np.maximum(den, _EPS))
    return float(np.mean(per))


def cka(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Linear centered kernel alignment between the two batches of feature maps.

    Uses the feature-space form ``||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F)`` with
    column-centred ``A``, ``B`` when features exceed samples, computed through the
    ``n x n`` Gram matrices (cheaper for wide feature maps).
    """
    a, b = _flat(y), _flat(y_hat)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    ka, kb = a @ a.T, b @ b.T
    num = float(np.sum(ka * kb))
    den = float(np.linalg.norm(ka) * np.linalg.norm(kb))
    if den < _EPS:
        return 1.0 if np.allclose(a, b) else 0.0
    return num / den


def nmse(y: np.ndarray, y_hat: np.ndarray) -> float:
    """One minus the normalised mean squared error of the whole batch."""
    a, b = _flat(y), _flat(y_hat)
    ref = float(np.sum(a * a))
    err = float(np.sum((a - b) ** 2))
    if ref < _EPS:
        return 1.0 if err < _EPS else 0.0
    return 1.0 - err / ref


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "cosine": cosine,
    "cka": cka,
    "nmse": nmse,
}

#: Chosen by the rank-correlation benchmark (see module docstring).
DEFAULT_METRIC = "cosine"


def similarity(metric: str, y: np.ndarray, y_hat: np.ndarray) -> float:
    """Score ``y_hat`` against the reference ``y`` with the named metric."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown similarity metric {metric!r}; choose one of "
                         f"{sorted(METRICS)}") from None
    if np.shape(y) != np.shape(y_hat):
        raise ValueError(f"shapes differ: reference {np.shape(y)} vs {np.shape(y_hat)}")
    return fn(y, y_hat)


@dataclass(frozen=True)
class BatchNormView:
    """The outputs of a layer as the BatchNorm after it sees them once its statistics are
    re-estimated (:func:`lrf_optuna.finetune.batchnorm.reestimate_batchnorm`).

    :meth:`apply` normalizes each channel (the last axis) of a batch of outputs by the
    batch's own mean and variance, then scales and shifts by the BatchNorm's ``gamma`` and
    ``beta``. Applied to the original outputs and to a candidate's alike, it scores the
    candidate as it will act after re-estimation: a channel whose energy the truncation
    shrank is scaled back up, its lost structure still counts. Identical outputs stay
    identical (score 1).

    Example:
        >>> view = BatchNormView(np.ones(2), np.zeros(2), 1e-3)
        >>> y = np.random.default_rng(0).normal(size=(64, 3, 2))
        >>> round(similarity("cosine", view.apply(y), view.apply(0.5 * y + 3.0)), 6)
        1.0
    """

    gamma: np.ndarray
    beta: np.ndarray
    epsilon: float

    def kept(self, mask: np.ndarray) -> BatchNormView:
        """The view of the channels ``mask`` keeps (a pruned layer's)."""
        return BatchNormView(self.gamma[mask], self.beta[mask], self.epsilon)

    def apply(self, y: np.ndarray) -> np.ndarray:
        """``gamma * (y - mean) / sqrt(var + epsilon) + beta`` per channel of ``y``."""
        y = np.asarray(y, dtype=np.float64)
        axes = tuple(range(y.ndim - 1))
        mean = y.mean(axis=axes)
        var = y.var(axis=axes)
        return self.gamma * (y - mean) / np.sqrt(var + self.epsilon) + self.beta
