"""Sources: Fashion-MNIST from its idx files (an explicit directory, ``$LRF_OPTUNA_DATA``,
the Debian package ``dataset-fashion-mnist``, keras' downloader), with clear errors.

Example:
    >>> ds = load_fashion_mnist()  # doctest: +SKIP
    >>> ds.x_train.shape, ds.x_train.dtype  # doctest: +SKIP
    ((60000, 28, 28, 1), dtype('float32'))
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lrf_optuna.data.arrays import Dataset, from_arrays

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "ENV_DATA_DIR", "FASHION_MNIST_CLASSES",
           "FASHION_MNIST_FILES", "DataNotFoundError", "IdxFormatError", "load_fashion_mnist",
           "load_fashion_mnist_dir", "read_idx"]

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
