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

from lrf_optuna.data.arrays import (
    Dataset,
    arrays_from_tf_dataset,
    check_inputs,
    fingerprint_arrays,
    from_arrays,
    from_tf_datasets,
)
from lrf_optuna.data.sources import (
    DEBIAN_FASHION_MNIST_DIR,
    ENV_DATA_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    DataNotFoundError,
    IdxFormatError,
    load_fashion_mnist,
    load_fashion_mnist_dir,
    read_idx,
)
from lrf_optuna.data.splits import (
    Splits,
    calibration_subset,
    default_val_fraction,
    prepare_splits,
    resolve_val_fraction,
    stratified_indices,
    train_val_split,
)

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
    "check_inputs",
    "default_val_fraction",
    "fingerprint_arrays",
    "from_arrays",
    "from_tf_datasets",
    "load_fashion_mnist",
    "load_fashion_mnist_dir",
    "prepare_splits",
    "read_idx",
    "resolve_val_fraction",
    "stratified_indices",
    "train_val_split",
]
