"""Where scoring and fine-tuning run: the first GPU TensorFlow sees, else the CPU.

TensorFlow places an op on a visible GPU by itself; these helpers make the choice explicit
(it is entered in every thread that scores or trains, since ``tf.device`` is thread-local)
and recordable: a scoring unit and a fine-tuning job record the device they ran on.
``LRF_OPTUNA_DEVICE`` (for example ``CPU:0`` or ``GPU:1``) overrides the choice.

Example:
    >>> compute_device()  # doctest: +SKIP
    'GPU:0'
    >>> with on_compute_device() as device:  # doctest: +SKIP
    ...     model.fit(x, y)
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

__all__ = ["DEVICE_ENV", "compute_device", "on_compute_device"]

#: Environment variable naming the device to use instead of the automatic choice.
DEVICE_ENV = "LRF_OPTUNA_DEVICE"


@functools.cache
def _visible_gpus() -> tuple[str, ...]:
    import tensorflow as tf

    return tuple(d.name for d in tf.config.list_physical_devices("GPU"))


def compute_device() -> str:
    """``"GPU:0"`` when TensorFlow sees a GPU, else ``"CPU:0"`` (or ``LRF_OPTUNA_DEVICE``).

    Raises:
        ValueError: ``LRF_OPTUNA_DEVICE`` is not of the form ``CPU:<n>`` / ``GPU:<n>``.
    """
    wanted = os.environ.get(DEVICE_ENV, "").strip().upper()
    if wanted:
        kind, _, index = wanted.partition(":")
        if kind not in ("CPU", "GPU") or not index.isdigit():
            raise ValueError(f"{DEVICE_ENV}={wanted!r}: expected CPU:<n> or GPU:<n>")
        return wanted
    return "GPU:0" if _visible_gpus() else "CPU:0"


@contextlib.contextmanager
def on_compute_device() -> Iterator[str]:
    """Run the block on :func:`compute_device` (``tf.device``); yields the device name."""
    import tensorflow as tf

    device = compute_device()
    with tf.device(f"/{device}"):
        yield device
