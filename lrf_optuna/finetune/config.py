"""How a compressed model is fine-tuned, measured and run as a job: one settings object.

Example:
    >>> config = FinetuneConfig(epochs=5)
    >>> config.learning_rate, config.schedule, config.batch_size
    (0.001, 'cosine', 128)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FinetuneConfig"]


@dataclass(frozen=True)
class FinetuneConfig:
    """How a compressed model is fine-tuned and measured (every field overridable).

    Fine-tuning starts from factors that approximate the trained weights, so it is short:
    a few epochs, the learning rate cosine-decayed from 1e-3 (the reference models' peak
    rate) to 1e-5, keeping the best epoch by validation accuracy and never ending below the
    starting validation accuracy. Why 1e-3 and not a "gentle" 1e-4: the aggressively
    compressed trials of a front start far from the original function (LeNet-5 on
    Fashion-MNIST, 3 epochs: trials at 29x / 5.4x compression went from 10% / 7% val
    accuracy to 51% / 65% with 1e-4 but to 76% / 77% with 1e-3), and a near-original
    trial was not hurt either (val 90.5% -> 90.8% with 1e-4, -> 91.1% with 1e-3).

    Attributes:
        epochs: Maximum epochs (3: most of the recovery happens in the first epoch).
        batch_size: Training batch size (128, as for the reference models).
        optimizer: A Keras optimizer name (``keras.optimizers.get``), default Adam.
        learning_rate: Initial learning rate (1e-3).
        schedule: ``"cosine"`` (decay to ``learning_rate * min_lr_fraction`` over all
            steps) or ``"constant"``.
        min_lr_fraction: Final fraction of the learning rate for the cosine schedule.
        patience: EarlyStopping patience in epochs on ``val_accuracy`` (1).
        restore_best_weights: EarlyStopping restores the best epoch's weights (True).
        revert_if_worse: Keep the un-fine-tuned weights when fine-tuning ends below the
            starting validation accuracy (recorded as ``reverted``); selection uses the
            validation split only, never the test split.
        seed: Base seed; job of source trial ``n`` uses ``seed + n``.
        latency_repeats: Timed single-sample calls per latency measurement (median).
        latency_warmup: Untimed calls before timing.
        tflite_threads: TFLite interpreter threads (None: interpreter default).
        heartbeat_interval: Seconds between a worker's heartbeats (RDB storages);
            ``None`` disables heartbeat-based recovery.
        grace_period: A RUNNING job whose last heartbeat is older than this is stale.
        max_retries: Automatic re-enqueues of a stale job (by the heartbeat callback).
        max_attempts: Failed jobs of one source trial after which
            :func:`enqueue_finetune` stops re-enqueueing it.
        verbose: Keras ``fit`` verbosity; ``None``: progress bar on a terminal, one line
            per epoch otherwise.
    """

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_fraction: float = 0.01
    patience: int = 1
    restore_best_weights: bool = True
    revert_if_worse: bool = True
    seed: int = 0
    latency_repeats: int = 50
    latency_warmup: int = 5
    tflite_threads: int | None = None
    heartbeat_interval: int | None = 10
    grace_period: int = 60
    max_retries: int = 2
    max_attempts: int = 3
    verbose: int | str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.latency_repeats < 1 or self.latency_warmup < 0:
            raise ValueError("latency_repeats must be >= 1 and latency_warmup >= 0")
        if self.heartbeat_interval is not None and not (
                0 < self.heartbeat_interval < self.grace_period):
            raise ValueError(f"need 0 < heartbeat_interval < grace_period, got "
                             f"{self.heartbeat_interval}, {self.grace_period}")
