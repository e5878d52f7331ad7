"""Datasets for lrf_optuna: Fashion-MNIST loading, user arrays, and leakage-free splits.

Everything here returns plain numpy arrays: images are ``float32`` with shape
``(N, H, W, C)`` and labels are ``int64`` with shape ``(N,)``. TensorFlow and Keras
are imported lazily, only by the functions that need them, so importing this module
is cheap.

Split discipline (important for honest compression results):

* the **test** set is only ever used for the final accuracy numbers;
* the **validation** set is held out of the training data and is used for early
  decisions / fine-tuning checks;
* the **calibration** set (used to measure feature-map similarity while searching
  ranks) is drawn from the *training* part only, so it is disjoint from both the
  validation and the test sets. Never pass test data to :func:`calibration_subset`.

Example:
    >>> from lrf_optuna.data import load_fashion_mnist, prepare_splits
    >>> ds = load_fashion_mnist()  # doctest: +SKIP
    >>> splits = prepare_splits(ds, val_fraction=0.1, calibration_size=512)  # doctest: +SKIP
    >>> splits.x_cal.shape  # doctest: +SKIP
    (512, 28, 28, 1)
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "ENV_DATA_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "DataNotFoundError",
    "Dataset",
    "IdxFormatError",
    "Splits",
    "arrays_from_tf_dataset",
    "calibration_subset",
    "fingerprint_arrays",
    "from_arrays",
    "from_tf_datasets",
    "load_fashion_mnist",
    "load_fashion_mnist_dir",
    "prepare_splits",
    "read_idx",
    "stratified_indices",
    "train_val_split",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a directory that holds the four Fashion-MNIST idx files.
ENV_DATA_DIR = "LRF_OPTUNA_DATA"
#: Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The idx file stems (without ``.gz``) of Fashion-MNIST, by role.
FASHION_MNIST_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
#: Human-readable class names, index = label.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_INSTALL_HINT = (
    "Install the offline copy with `sudo apt-get install -y dataset-fashion-mnist`, "
    f"or pass `path=` (or set ${ENV_DATA_DIR}) to a directory holding "
    + ", ".join(f"{stem}[.gz]" for stem in FASHION_MNIST_FILES.values())
    + "."
)

# idx type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------- errors


class DataNotFoundError(FileNotFoundError):
    """No source for a dataset worked.

    Attributes:
        attempts: ``(location, reason)`` pairs, in the order they were tried.
    """

    def __init__(self, message: str, attempts: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.attempts: list[tuple[str, str]] = list(attempts)


class IdxFormatError(ValueError):
    """An idx file is truncated, corrupt, or not an idx file at all."""


# --------------------------------------------------------------------------- containers


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


# --------------------------------------------------------------------------- idx parsing


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one idx file (gzip-compressed or raw) into a numpy array.

    The format is the one of (Fashion-)MNIST: two zero bytes, a type code, the number
    of dimensions, the dimensions as big-endian ``uint32``, then the data. Compression
    is detected from the content (gzip magic ``1f 8b``), not from the file name.

    Args:
        path: File to read.

    Returns:
        The array in native byte order (``uint8`` for (Fashion-)MNIST).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IdxFormatError: If the file is not a valid idx file (bad magic number,
            unknown type code, truncated or trailing data, broken gzip stream).

    Example:
        >>> images = read_idx("/usr/share/datasets/fashion-mnist/"
        ...                   "t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxFormatError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes, too short for an idx header")
    if raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(
            f"{path}: bad idx magic number 0x{raw[:4].hex()} "
            "(expected 0x0000 followed by a type code and the number of dimensions)"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise IdxFormatError(
            f"{path}: unknown idx type code 0x{type_code:02x} "
            f"(expected one of {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    if ndim == 0:
        raise IdxFormatError(f"{path}: idx header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxFormatError(f"{path}: truncated idx header ({len(raw)} < {header_len} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header_len
    if got != expected:
        raise IdxFormatError(
            f"{path}: idx header declares shape {shape} of {dtype.name} "
            f"({expected} data bytes) but the file holds {got} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find_idx_file(directory: Path, stem: str) -> Path:
    candidates = [directory / f"{stem}.gz", directory / stem]
    # The original MNIST site also used "train-images.idx3-ubyte".
    candidates.append(directory / stem.replace("-idx", ".idx"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"missing {stem}.gz (or un-gzipped {stem}) in {directory}")


def load_fashion_mnist_dir(directory: str | os.PathLike[str]) -> Dataset:
    """Load Fashion-MNIST (or MNIST) from a directory of idx files.

    Args:
        directory: Directory holding ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
            ``t10k-labels-idx1-ubyte``, each optionally gzip-compressed (``.gz``).

    Returns:
        A :class:`Dataset` with images scaled to ``[0, 1]``, shape ``(N, 28, 28, 1)``.

    Raises:
        FileNotFoundError: If the directory or one of the files is missing.
        IdxFormatError: If a file is corrupt or images and labels disagree.

    Example:
        >>> ds = load_fashion_mnist_dir("/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
        >>> ds.x_train.shape  # doctest: +SKIP
        (60000, 28, 28, 1)
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    arrays: dict[str, np.ndarray] = {}
    for role, stem in FASHION_MNIST_FILES.items():
        arrays[role] = read_idx(_find_idx_file(directory, stem))
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1:
            raise IdxFormatError(
                f"{directory}: expected {split} images of rank 3 and labels of rank 1, "
                f"got shapes {x.shape} and {y.shape}"
            )
        if len(x) != len(y):
            raise IdxFormatError(
                f"{directory}: {len(x)} {split} images but {len(y)} {split} labels"
            )
    ds = from_arrays(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        name="fashion_mnist",
        source=str(directory),
    )
    return ds


def _load_from_keras() -> Dataset:
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    return from_arrays(x_train, y_train, x_test, y_test, name="fashion_mnist", source="keras")


def load_fashion_mnist(path: str | os.PathLike[str] | None = None) -> Dataset:
    """Load Fashion-MNIST from the first location that works.

    Locations are tried in this order, and every failure is remembered:

    1. ``path`` (a directory of the four idx files, gzip-compressed or not);
    2. the directory in the environment variable ``LRF_OPTUNA_DATA``;
    3. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
    4. ``keras.datasets.fashion_mnist.load_data()`` (keras' cache, or a download).

    Args:
        path: Optional directory to try first. If it fails, a warning is logged and
            the other locations are tried.

    Returns:
        A :class:`Dataset`: 60000 training and 10000 test images, ``float32`` in
        ``[0, 1]`` with shape ``(N, 28, 28, 1)``; labels ``int64`` in ``0..9``.

    Raises:
        DataNotFoundError: If every location failed; the message lists each location
            with the reason it failed, and how to install the data.

    Example:
        >>> ds = load_fashion_mnist()  # doctest: +SKIP
        >>> ds.x_train.shape, ds.x_train.dtype, ds.y_train.dtype  # doctest: +SKIP
        ((60000, 28, 28, 1), dtype('float32'), dtype('int64'))
    """
    attempts: list[tuple[str, str]] = []
    directories: list[tuple[str, Path]] = []
    if path is not None:
        directories.append(("path argument", Path(path)))
    env_dir = os.environ.get(ENV_DATA_DIR)
    if env_dir:
        directories.append((f"${ENV_DATA_DIR}", Path(env_dir)))
    directories.append(("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST_DIR))

    for label, directory in directories:
        where = f"{label}: {directory}"
        try:
            ds = load_fashion_mnist_dir(directory)
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            attempts.append((where, reason))
            # The user asked for the first two explicitly: say loudly that they failed.
            level = logging.DEBUG if directory == DEBIAN_FASHION_MNIST_DIR else logging.WARNING
            logger.log(level, "Fashion-MNIST not loaded from %s (%s)", where, reason)
            continue
        logger.info("Loaded Fashion-MNIST from %s", directory)
        return ds

    where = "keras.datasets.fashion_mnist.load_data() (keras cache / download)"
    try:
        ds = _load_from_keras()
    except Exception as exc:  # keras raises a bare Exception on URL failures
        attempts.append((where, f"{type(exc).__name__}: {exc}"))
    else:
        logger.info("Loaded Fashion-MNIST through keras.datasets")
        return ds

    lines = "\n".join(f"  {i}. {loc}\n     -> {why}" for i, (loc, why) in enumerate(attempts, 1))
    raise DataNotFoundError(
        f"Could not load Fashion-MNIST; tried {len(attempts)} locations:\n{lines}\n"
        + _INSTALL_HINT,
        attempts,
    )


# --------------------------------------------------------------------------- user data


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


# --------------------------------------------------------------------------- fingerprints


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


# --------------------------------------------------------------------------- sampling


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
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified hold-out split of training data into train and validation parts.

    Args:
        x: Images, shape ``(N, ...)``.
        y: Integer labels, shape ``(N,)``.
        val_fraction: Fraction of examples held out, in ``[0, 1)``; the validation
            size is ``round(N * val_fraction)``.
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


def _split_indices(
    y: np.ndarray, n_x: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if n_x != len(y):
        raise ValueError(f"x has {n_x} examples but y has {len(y)} labels")
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
    val_fraction: float = 0.1,
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
        val_fraction: Fraction of the training set held out for validation.
        calibration_size: Size of the calibration subset (clipped to the training
            part's size).
        seed: Random seed for both draws.

    Returns:
        A frozen :class:`Splits`.

    Example:
        >>> import numpy as np
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
