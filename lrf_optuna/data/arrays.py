"""Array adapters: a :class:`Dataset` of numpy arrays from user arrays or ``tf.data``.

Images are ``float32`` with shape ``(N, H, W, C)``: ``uint8`` images are scaled to
``[0, 1]``, float images are kept as they are. Labels are ``int64`` class ids ``(N,)``
(integer ids, ``(N, 1)`` or exact one-hot rows are accepted).

Example:
    >>> import numpy as np
    >>> ds = from_arrays(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1]),
    ...                  np.zeros((2, 8, 8), np.uint8), np.array([1, 0]))
    >>> ds.input_shape, ds.num_classes, ds.x_train.dtype
    ((8, 8, 1), 2, dtype('float32'))
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["Dataset", "arrays_from_tf_dataset", "check_inputs", "fingerprint_arrays",
           "from_arrays", "from_tf_datasets"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset held as numpy arrays.

    Attributes:
        x_train: Training images, ``float32``, shape ``(N, H, W, C)``.
        y_train: Training labels, ``int64``, shape ``(N,)``.
        x_test: Test images, ``float32``, shape ``(M, H, W, C)``.
        y_test: Test labels, ``int64``, shape ``(M,)``.
        name: Short dataset name (used in logs and cache keys).
        source: Where the data came from (a directory, ``"keras"``, ``"arrays"``...).

    Example:
        >>> import numpy as np
        >>> ds = from_arrays(np.zeros((4, 8, 8, 1)), np.array([0, 1, 0, 1]),
        ...                  np.zeros((2, 8, 8, 1)), np.array([1, 0]))
        >>> ds.input_shape, ds.num_classes
        ((8, 8, 1), 2)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "custom"
    source: str = "arrays"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, e.g. ``(28, 28, 1)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` over train and test labels."""
        return int(max(self.y_train.max(initial=-1), self.y_test.max(initial=-1))) + 1

    def fingerprint(self) -> str:
        """Content hash of the training arrays (see :func:`fingerprint_arrays`)."""
        return fingerprint_arrays(self.x_train, self.y_train)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, source={self.source!r}, "
            f"train={self.x_train.shape}, test={self.x_test.shape}, "
            f"num_classes={self.num_classes})"
        )


def _as_images(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(
            f"{what}: expected a numeric image array (uint8 or float), got dtype {arr.dtype}"
        )
    if arr.ndim == 3:
        arr = arr[..., np.newaxis]
    if arr.ndim != 4:
        raise ValueError(
            f"{what}: expected images of shape (N, H, W, C) or (N, H, W), got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{what}: got an empty array of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) / np.float32(255.0)).astype(np.float32, copy=False)
    if np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{what}: integer images must be uint8 (scaled to [0, 1]); got {arr.dtype}. "
            "Convert to float yourself to choose the scaling."
        )
    out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return out


def _as_labels(y: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2 and arr.shape[1] > 1:
        # One-hot labels: accept only exact one-hot rows.
        is_one_hot = bool(np.all((arr == 0) | (arr == 1)) and np.all(arr.sum(axis=1) == 1))
        if not is_one_hot:
            raise ValueError(
                f"{what}: 2-D labels of shape {arr.shape} are not one-hot; expected integer "
                "class ids of shape (N,)"
            )
        arr = arr.argmax(axis=1)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected class ids of shape (N,), got shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"{what}: {len(arr)} labels for {n} images; expected one label per image")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TypeError(f"{what}: expected integer class ids, got non-integral {arr.dtype}")
    elif not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise TypeError(f"{what}: expected integer class ids, got dtype {arr.dtype}")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what}: class ids must be >= 0, got minimum {labels.min()}")
    return labels


def from_arrays(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    name: str = "custom",
    source: str = "arrays",
) -> Dataset:
    """Build a validated :class:`Dataset` from user arrays.

    Images may be ``(N, H, W, C)`` or ``(N, H, W)`` (a channel axis is added). ``uint8``
    images are scaled to ``[0, 1]``; float images are converted to ``float32`` as they
    are (no rescaling). Labels may be integer class ids ``(N,)``/``(N, 1)`` or exact
    one-hot rows ``(N, K)``.

    Args:
        x_train: Training images.
        y_train: Training labels.
        x_test: Test images.
        y_test: Test labels.
        name: Dataset name for logs and cache keys.
        source: Free-text description of where the arrays came from.

    Returns:
        The dataset, images ``float32`` and labels ``int64``.

    Raises:
        ValueError: On shape mismatches (rank, image count vs label count, train vs
            test image shape), empty arrays, NaN/inf or negative labels.
        TypeError: On non-numeric images, non-uint8 integer images or non-integer
            labels.

    Example:
        >>> import numpy as np
        >>> ds = from_arrays(np.zeros((10, 32, 32, 3), np.uint8), np.arange(10) % 2,
        ...                  np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 1, 0]))
        >>> ds.x_train.dtype, ds.input_shape
        (dtype('float32'), (32, 32, 3))
    """
    xtr = _as_images(x_train, "x_train")
    xte = _as_images(x_test, "x_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(
            f"train and test images must have the same shape; got x_train {xtr.shape[1:]} "
            f"and x_test {xte.shape[1:]}"
        )
    ytr = _as_labels(y_train, len(xtr), "y_train")
    yte = _as_labels(y_test, len(xte), "y_test")
    return Dataset(xtr, ytr, xte, yte, name=name, source=source)


def arrays_from_tf_dataset(
    dataset: tf.data.Dataset,
    *,
    batched: bool | None = None,
    max_elements: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Materialise a ``tf.data.Dataset`` of ``(x, y)`` pairs into numpy arrays.

    Use this to get numpy calibration data out of an input pipeline.

    Args:
        dataset: Yields ``(image, label)`` elements or ``(images, labels)`` batches.
        batched: Whether the dataset yields batches. ``None`` detects it from the
            label spec: scalar labels mean elements, labels of rank >= 1 mean batches
            (pass ``batched=False`` explicitly for unbatched one-hot labels).
        max_elements: Stop after this many examples (``None``: read everything).

    Returns:
        ``(x, y)`` numpy arrays with a leading example axis, not yet validated or
        rescaled; pass them through :func:`from_arrays` (or :func:`from_tf_datasets`)
        for that.

    Raises:
        TypeError: If the elements are not ``(x, y)`` pairs.
        ValueError: If the dataset is empty or ``max_elements`` is not positive.

    Example:
        >>> import tensorflow as tf, numpy as np  # doctest: +SKIP
        >>> ds = tf.data.Dataset.from_tensor_slices(
        ...     (np.zeros((10, 8, 8, 1)), np.arange(10))).batch(4)  # doctest: +SKIP
        >>> x, y = arrays_from_tf_dataset(ds)  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        ((10, 8, 8, 1), (10,))
    """
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise TypeError(f"expected a tf.data.Dataset of (x, y) pairs, got element_spec {spec!r}")
    if max_elements is not None and max_elements <= 0:
        raise ValueError(f"max_elements must be a positive int or None, got {max_elements}")
    if batched is None:
        label_rank = spec[1].shape.rank
        batched = label_rank is not None and label_rank >= 1
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    count = 0
    for x, y in dataset.as_numpy_iterator():
        xb, yb = (np.asarray(x), np.asarray(y))
        if not batched:
            xb, yb = xb[np.newaxis], yb[np.newaxis]
        xs.append(xb)
        ys.append(yb)
        count += len(xb)
        if max_elements is not None and count >= max_elements:
            break
    if not xs:
        raise ValueError("the tf.data.Dataset yielded no elements")
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    if max_elements is not None:
        x_all, y_all = x_all[:max_elements], y_all[:max_elements]
    return x_all, y_all


def from_tf_datasets(
    train: tf.data.Dataset,
    test: tf.data.Dataset,
    *,
    batched: bool | None = None,
    name: str = "custom",
) -> Dataset:
    """Build a :class:`Dataset` from a training and a test ``tf.data.Dataset``.

    Args:
        train: Training ``(x, y)`` elements or batches.
        test: Test ``(x, y)`` elements or batches.
        batched: See :func:`arrays_from_tf_dataset`.
        name: Dataset name.

    Returns:
        The validated dataset (see :func:`from_arrays`).

    Example:
        >>> ds = from_tf_datasets(train_ds, test_ds, name="my_data")  # doctest: +SKIP
    """
    x_train, y_train = arrays_from_tf_dataset(train, batched=batched)
    x_test, y_test = arrays_from_tf_dataset(test, batched=batched)
    return from_arrays(x_train, y_train, x_test, y_test, name=name, source="tf.data")


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """Content hash of numpy arrays (shape, dtype and every byte).

    Used as part of training-cache keys so that a model trained on different data is
    never mistaken for a cached one.

    Args:
        *arrays: Arrays to hash, order matters.

    Returns:
        A 16-hex-digit BLAKE2b digest.

    Example:
        >>> import numpy as np
        >>> fingerprint_arrays(np.zeros(3)) == fingerprint_arrays(np.zeros(3))
        True
        >>> fingerprint_arrays(np.zeros(3)) == fingerprint_arrays(np.ones(3))
        False
    """
    h = hashlib.blake2b(digest_size=8)
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        if a.size:
            h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def check_inputs(x: Any, input_shape: Sequence[int | None], *, what: str = "inputs",
                 model: str = "the model") -> np.ndarray:
    """``x`` as ``float32`` inputs of a model whose input (without the batch axis) has
    ``input_shape``; ``None`` dimensions match anything.

    Raises:
        UserError: not a non-empty numeric array of that shape, or NaN/Inf values.

    Example:
        >>> check_inputs(np.zeros((2, 4, 4, 1)), (4, 4, 1)).dtype
        dtype('float32')
        >>> check_inputs(np.full((2, 3), np.nan), (3,), what="calibration_data")
        Traceback (most recent call last):
        ...
        lrf_optuna.errors.UserError: calibration_data: 6 of 6 values are NaN or Inf
    """
    from lrf_optuna.errors import UserError

    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype == np.bool_ or arr.dtype.kind not in "fiu":
        raise UserError(f"{what}: expected a numeric array, but got dtype {arr.dtype}")
    expected = tuple(input_shape)
    fits = arr.ndim == len(expected) + 1 and all(
        e is None or int(e) == g for e, g in zip(expected, arr.shape[1:]))
    if not fits:
        dims = ", ".join("?" if d is None else str(d) for d in expected)
        raise UserError(f"{what}: expected an array of shape (n, {dims}) (inputs of "
                        f"{model}), but got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise UserError(f"{what}: the array is empty (shape {arr.shape})")
    out = arr.astype(np.float32, copy=False)
    finite = np.isfinite(out)
    if not finite.all():
        raise UserError(f"{what}: {out.size - int(np.count_nonzero(finite))} of {out.size} "
                        "values are NaN or Inf")
    return out
