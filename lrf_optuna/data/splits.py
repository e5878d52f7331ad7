"""Leakage-free splits: validation held out of the training data, a stratified
calibration subset drawn from the rest, the test set untouched.

Split discipline (important for honest compression results):

* the **test** set is only ever used for the final accuracy numbers;
* the **validation** set is held out of the training data and is used for early
  decisions / fine-tuning checks;
* the **calibration** set (used to measure feature-map similarity while searching
  ranks) is drawn from the *training* part only, so it is disjoint from both the
  validation and the test sets. Never pass test data to :func:`calibration_subset`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from lrf_optuna.data.arrays import Dataset

__all__ = ["AUTO_VAL_IMAGES", "Splits", "calibration_subset", "default_val_fraction",
           "prepare_splits", "resolve_val_fraction", "stratified_indices", "train_val_split"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test / calibration arrays produced by :func:`prepare_splits`.

    ``train_indices``, ``val_indices`` and ``cal_indices`` index into the *original*
    ``dataset.x_train``: train and val are disjoint and together cover the original
    training set, ``cal_indices`` is a subset of
    ``train_indices`` (hence disjoint from val), and nothing comes from the test set.

    Attributes:
        x_train: Training images (original training set minus validation).
        y_train: Training labels.
        x_val: Held-out validation images (from the original training set).
        y_val: Validation labels.
        x_test: Test images, untouched.
        y_test: Test labels, untouched.
        x_cal: Calibration images, a stratified subset of ``x_train``.
        y_cal: Calibration labels.
        train_indices: Indices of ``x_train`` rows in ``dataset.x_train``.
        val_indices: Indices of ``x_val`` rows in ``dataset.x_train``.
        cal_indices: Indices of ``x_cal`` rows in ``dataset.x_train``.
        name: Name of the source dataset.
        seed: Seed used for both the split and the calibration draw.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_cal: np.ndarray
    y_cal: np.ndarray
    train_indices: np.ndarray = field(repr=False)
    val_indices: np.ndarray = field(repr=False)
    cal_indices: np.ndarray = field(repr=False)
    name: str = "custom"
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, e.g. ``(28, 28, 1)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` over train, validation and test labels."""
        return (
            int(
                max(
                    self.y_train.max(initial=-1),
                    self.y_val.max(initial=-1),
                    self.y_test.max(initial=-1),
                )
            )
            + 1
        )

    def __repr__(self) -> str:
        return (
            f"Splits(name={self.name!r}, seed={self.seed}, train={self.x_train.shape}, "
            f"val={self.x_val.shape}, test={self.x_test.shape}, cal={self.x_cal.shape})"
        )


def _allocate(counts: np.ndarray, size: int, min_per_class: int) -> np.ndarray:
    """Largest-remainder proportional allocation of ``size`` over classes."""
    n = int(counts.sum())
    quota = counts * (size / n)
    alloc = np.minimum(np.maximum(np.floor(quota).astype(np.int64), min_per_class), counts)
    while alloc.sum() < size:  # give to the class furthest below its quota, with room
        gap = np.where(alloc < counts, quota - alloc, -np.inf)
        alloc[int(np.argmax(gap))] += 1
    while alloc.sum() > size:  # take from the class furthest above its quota
        excess = np.where(alloc > min_per_class, alloc - quota, -np.inf)
        alloc[int(np.argmax(excess))] -= 1
    return alloc


def stratified_indices(
    y: np.ndarray,
    size: int,
    *,
    seed: int | np.random.Generator = 0,
    min_per_class: int = 1,
) -> np.ndarray:
    """Draw ``size`` indices of ``y`` without replacement, stratified by class.

    Each class gets a share proportional to its frequency (largest-remainder
    rounding), but at least ``min_per_class`` examples. The draw is deterministic for
    a given integer seed.

    Args:
        y: Integer labels, shape ``(N,)``.
        size: Number of indices to draw, ``0 <= size <= N``.
        seed: Integer seed or a ``numpy.random.Generator``.
        min_per_class: Minimum examples per class present in ``y``.

    Returns:
        Sorted ``int64`` indices into ``y``.

    Raises:
        ValueError: If ``size`` is out of range or too small to give every class
            ``min_per_class`` examples.

    Example:
        >>> import numpy as np
        >>> y = np.array([0] * 90 + [1] * 10)
        >>> idx = stratified_indices(y, 10, seed=0)
        >>> np.bincount(y[idx]).tolist()
        [9, 1]
    """
    labels = np.asarray(y).reshape(-1)
    n = len(labels)
    if not 0 <= size <= n:
        raise ValueError(f"size must be between 0 and {n} (the number of examples), got {size}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if size and min_per_class * len(classes) > size:
        raise ValueError(
            f"size={size} is too small to hold {min_per_class} example(s) of each of the "
            f"{len(classes)} classes; use size >= {min_per_class * len(classes)}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if size == 0:
        return np.empty(0, dtype=np.int64)
    alloc = _allocate(counts, size, min_per_class)
    chosen = []
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        chosen.append(rng.choice(members, size=int(alloc[k]), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def calibration_subset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    size: int = 512,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A small class-stratified calibration set, drawn from the arrays given.

    The calibration set feeds the feature-map similarity measure during the rank
    search. **Pass training data only, never test data**: anything used to steer the
    search must not be used to report final accuracy. :func:`prepare_splits` does
    this for you (the calibration set comes from the training part, disjoint from
    validation and test).

    Every class present in ``y`` gets at least one example; the rest is allocated in
    proportion to class frequencies. The same seed gives the same subset.

    Args:
        x: Images, shape ``(N, ...)`` (training data).
        y: Integer labels, shape ``(N,)``.
        size: Number of examples; clipped to ``N`` if larger (with a warning).
        seed: Random seed.

    Returns:
        ``(x_cal, y_cal)`` in the original order of ``x``.

    Raises:
        ValueError: If ``x`` and ``y`` disagree in length, or ``size`` is smaller than
            the number of classes.

    Example:
        >>> import numpy as np
        >>> x, y = np.random.rand(100, 8, 8, 1), np.arange(100) % 10
        >>> xc, yc = calibration_subset(x, y, size=20, seed=0)
        >>> xc.shape, np.bincount(yc).tolist()
        ((20, 8, 8, 1), [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)} labels")
    if size > len(y):
        logger.warning("calibration size %d > %d examples; using all of them", size, len(y))
        size = len(y)
    if size <= 0:
        raise ValueError(f"calibration size must be positive, got {size}")
    idx = stratified_indices(np.asarray(y), size, seed=seed)
    return x[idx], y[idx]


def train_val_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_fraction: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified hold-out split of training data into train and validation parts.

    Args:
        x: Images, shape ``(N, ...)``.
        y: Integer labels, shape ``(N,)``.
        val_fraction: Fraction of examples held out, in ``[0, 1)``; the validation
            size is ``round(N * val_fraction)`` (``None``: :func:`default_val_fraction`).
        seed: Random seed; the same seed gives the same split.

    Returns:
        ``(x_train, y_train, x_val, y_val)``.

    Raises:
        ValueError: If ``val_fraction`` is outside ``[0, 1)`` or lengths disagree.

    Example:
        >>> import numpy as np
        >>> x, y = np.zeros((100, 4)), np.arange(100) % 4
        >>> xt, yt, xv, yv = train_val_split(x, y, val_fraction=0.2)
        >>> len(xt), len(xv), np.bincount(yv).tolist()
        (80, 20, [5, 5, 5, 5])
    """
    train_idx, val_idx = _split_indices(np.asarray(y), len(x), val_fraction, seed)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


#: The automatic validation split: this many images, but at least 10 % and at most 25 %
#: of the training data (:func:`default_val_fraction`).
AUTO_VAL_IMAGES = 2000


def default_val_fraction(n: int) -> float:
    """The validation fraction used when none is given (``val_fraction=None``): enough
    images to resolve an accuracy drop of a point or so, :data:`AUTO_VAL_IMAGES`, but at
    least 10 % and at most 25 % of the ``n`` training images. A drop measured paired on
    400 images (10 % of 4,000) has a standard error near 1 pp, on 2,000 near 0.45 pp
    (:func:`lrf_optuna.paired.expected_standard_error`).

    Example:
        >>> [default_val_fraction(n) for n in (4_000, 18_000, 60_000)]
        [0.25, 0.1111, 0.1]
    """
    if n <= 0:
        return 0.1
    return round(min(max(AUTO_VAL_IMAGES / n, 0.1), 0.25), 4)


def resolve_val_fraction(val_fraction: float | None, n: int) -> float:
    """``val_fraction``, or :func:`default_val_fraction` of ``n`` when it is ``None``."""
    return default_val_fraction(n) if val_fraction is None else val_fraction


def _split_indices(
    y: np.ndarray, n_x: int, val_fraction: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if n_x != len(y):
        raise ValueError(f"x has {n_x} examples but y has {len(y)} labels")
    val_fraction = resolve_val_fraction(val_fraction, len(y))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(y)
    n_val = round(n * val_fraction)
    n_classes = len(np.unique(y))
    val_idx = stratified_indices(y, n_val, seed=seed, min_per_class=1 if n_val >= n_classes else 0)
    mask = np.ones(n, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx


def prepare_splits(
    dataset: Dataset,
    *,
    val_fraction: float | None = None,
    calibration_size: int = 512,
    seed: int = 0,
) -> Splits:
    """Split a dataset into train / validation / test / calibration without leakage.

    The validation set is a stratified hold-out of ``dataset.x_train``; the
    calibration set is a stratified subset of the remaining training part (so it is
    disjoint from validation); the test set is passed through untouched.

    The split is the same as :func:`train_val_split` with the same ``seed``, and
    ``calibration_subset(splits.x_train, splits.y_train, size=..., seed=seed)``
    reproduces the calibration set. :func:`lrf_optuna.models.training.train_reference_model`
    uses the same split, so a reference model never trained on ``x_val``.

    Args:
        dataset: The source dataset.
        val_fraction: Fraction of the training set held out for validation (``None``:
            :func:`default_val_fraction` of its size).
        calibration_size: Size of the calibration subset (clipped to the training
            part's size).
        seed: Random seed for both draws.

    Returns:
        A frozen :class:`Splits`.

    Example:
        >>> import numpy as np
        >>> from lrf_optuna.data import from_arrays
        >>> ds = from_arrays(np.random.rand(200, 8, 8, 1), np.arange(200) % 10,
        ...                  np.random.rand(50, 8, 8, 1), np.arange(50) % 10)
        >>> s = prepare_splits(ds, val_fraction=0.1, calibration_size=30, seed=1)
        >>> len(s.x_train), len(s.x_val), len(s.x_cal), len(s.x_test)
        (180, 20, 30, 50)
        >>> bool(np.isin(s.cal_indices, s.val_indices).any())
        False
    """
    train_idx, val_idx = _split_indices(dataset.y_train, len(dataset.x_train), val_fraction, seed)
    y_tr = dataset.y_train[train_idx]
    cal_size = min(calibration_size, len(train_idx))
    if cal_size < calibration_size:
        logger.warning(
            "calibration_size %d > %d training examples; using all of them",
            calibration_size,
            len(train_idx),
        )
    cal_local = stratified_indices(y_tr, cal_size, seed=seed)
    cal_idx = train_idx[cal_local]
    x = dataset.x_train
    y = dataset.y_train
    return Splits(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_val=x[val_idx],
        y_val=y[val_idx],
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        x_cal=x[cal_idx],
        y_cal=y[cal_idx],
        train_indices=train_idx,
        val_indices=val_idx,
        cal_indices=cal_idx,
        name=dataset.name,
        seed=seed,
    )
