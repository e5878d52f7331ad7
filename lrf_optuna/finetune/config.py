"""How a compressed model is fine-tuned, measured and run as a job: one settings object.

Example:
    >>> config = FinetuneConfig(epochs=5)
    >>> config.learning_rate, config.schedule, config.batch_size
    (0.001, 'cosine', 128)
    >>> FinetuneConfig(epochs=10).describe()
    'KD 0.9 T=4, 10 epochs, lr 0.001 cosine, best epoch by val loss (patience 3), BN re-estimated'
    >>> FinetuneConfig(epochs=10, distill=0).describe()
    'CE, 10 epochs, lr 0.001 cosine, best epoch by val loss (patience 3), BN re-estimated'
    >>> [FinetuneConfig().epochs_for(n) for n in (3_000, 16_000, 54_000)]
    [25, 5, 3]
    >>> FinetuneConfig().recipe_key() == FinetuneConfig(latency_repeats=3).recipe_key()
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["RECIPE_FIELDS", "FinetuneConfig"]

#: The fields that decide what training does (the *recipe*), and ``quantize``, which
#: decides which file the job's accuracy is judged on; the others only say how a job is
#: measured or run. Two configs with equal recipe fields train identically, so a
#: fine-tuning result (and the fair reference) is reused only for an equal recipe.
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "learning_rate", "schedule",
                 "min_lr_fraction", "patience", "restore_best_weights", "revert_if_worse",
                 "seed", "distill", "temperature", "keep_epoch", "min_steps", "min_epochs",
                 "max_epochs", "monitor", "bn_images", "quantize")


@dataclass(frozen=True)
class FinetuneConfig:
    """How a compressed model is fine-tuned and measured (every field overridable).

    Fine-tuning starts from factors that approximate the trained weights, so it is short,
    but **its length is counted in optimizer steps, not epochs**: three epochs of 3,600
    images are 87 steps, of 54,000 images 1,266. By default (``epochs=None``) a job trains
    ``epochs_for(n)`` epochs: enough for ``min_steps`` steps, at least ``min_epochs`` and at
    most ``max_epochs``. An explicit ``epochs`` is used as given. The learning rate is
    cosine-decayed from 1e-3 (the reference models' peak rate) to 1e-5 over all steps;
    the epoch kept is the one with the lowest validation *loss* (``monitor``), which
    unlike accuracy is not moved by one image, stopping after ``patience`` epochs without
    improvement; a job never ends below its starting validation accuracy. Why 1e-3 and
    not a "gentle" 1e-4: the aggressively compressed trials of a front start far from the
    original function (LeNet-5 on Fashion-MNIST, 3 epochs: trials at 29x / 5.4x
    compression went from 10% / 7% val accuracy to 51% / 65% with 1e-4 but to 76% / 77%
    with 1e-3), and a near-original trial was not hurt either (val 90.5% -> 90.8% with
    1e-4, -> 91.1% with 1e-3). The defaults of ``min_steps``, ``monitor``, ``patience``
    and ``bn_images`` are measured at three data sizes in ``benchmarks/RESULTS.md``
    ("Fine-tuning budget").

    **BatchNorm re-estimation** (``bn_images > 0``): before training, the moving
    statistics of every BatchNorm layer are recomputed on that many training images
    (:func:`lrf_optuna.finetune.batchnorm.reestimate_batchnorm`), since a factorized
    layer's outputs no longer match the statistics of the BatchNorm after it; the
    original statistics are kept when that lowers the validation accuracy. The fair
    reference gets the same, so a net with stale statistics is compared with its repaired
    self.

    **Distillation** (``distill > 0``): the loss is ``(1 - distill) * CE(labels, student)
    + distill * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.
    2015) with the original model as the teacher; its logits (the log of its
    probabilities when it ends in a softmax) are computed once per dataset, not per
    epoch. ``distill = 0`` is plain cross-entropy. Distillation is the default (0.9) by
    measurement: on 4,000 images of the residual user net, three plans of its front
    (87 %, 73 %, 50 % of the params saved) fine-tuned for the same 600 steps lost +31.5 /
    +4.0 / +4.2 pp of validation accuracy with cross-entropy and +0.8 / +0.4 / -0.2 pp
    distilled, each against the fair reference of its own recipe; on the MobileNet-style
    net cross-entropy lost +8.1 pp on average (``benchmarks/RESULTS.md``, "Fine-tuning
    budget"). It costs about 2.6x the fine-tuning time of cross-entropy there.

    **Which epoch is kept** (``keep_epoch``): ``"best"`` keeps the epoch with the best
    ``monitor`` value (EarlyStopping with ``patience``); ``"last"`` trains all epochs and
    keeps the last one. Keeping the best of several epochs by a validation measure makes
    that validation accuracy a slightly optimistic estimate (a maximum over noisy
    measurements), more so by accuracy than by loss, and more so for a model whose
    accuracy plateaus (the original, fine-tuned for the fair reference) than for one still
    climbing (a heavily compressed model). With ``"last"`` the validation split decides
    nothing about training, and with the cosine schedule (learning rate near zero at the
    end) the last epoch is rarely worse.

    Attributes:
        epochs: Epochs to train; ``None`` (default): :meth:`epochs_for` the training size.
        batch_size: Training batch size (128, as for the reference models).
        optimizer: A Keras optimizer name (``keras.optimizers.get``), default Adam.
        learning_rate: Initial learning rate (1e-3).
        schedule: ``"cosine"`` (decay to ``learning_rate * min_lr_fraction`` over all
            steps) or ``"constant"``.
        min_lr_fraction: Final fraction of the learning rate for the cosine schedule.
        patience: EarlyStopping patience in epochs on ``monitor`` (only with
            ``keep_epoch="best"``).
        restore_best_weights: EarlyStopping restores the best epoch's weights (True).
        revert_if_worse: Keep the un-fine-tuned weights when fine-tuning ends below the
            starting validation accuracy (recorded as ``reverted``); selection uses the
            validation split only, never the test split.
        seed: Base seed; job of source trial ``n`` uses ``seed + n``.
        distill: Weight of the distillation (KL) term, 0 (off: plain cross-entropy) to 1
            (KL only); default 0.9.
        temperature: Distillation temperature ``T`` (4).
        keep_epoch: ``"best"`` (by ``monitor``) or ``"last"``.
        min_steps: With ``epochs=None``: train at least this many optimizer steps.
        min_epochs: With ``epochs=None``: at least this many epochs.
        max_epochs: With ``epochs=None``: at most this many epochs.
        monitor: ``"val_loss"`` or ``"val_accuracy"``: what picks the kept epoch.
        bn_images: Training images the BatchNorm statistics are re-estimated on before
            training (0: not re-estimated).
        quantize: ``"none"``, or the LiteRT file every job is also converted to and
            judged by (``"dynamic"``, ``"float16"``, ``"int8"``): its accuracy run in the
            interpreter, its bytes, arena and latency are recorded (user attribute
            ``deployed``), and the max-drop search compares that file with the fair
            reference's file quantized the same way.
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

    epochs: int | None = None
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_fraction: float = 0.01
    patience: int = 3
    restore_best_weights: bool = True
    revert_if_worse: bool = True
    seed: int = 0
    distill: float = 0.9
    temperature: float = 4.0
    keep_epoch: Literal["best", "last"] = "best"
    min_steps: int = 600
    min_epochs: int = 3
    max_epochs: int = 30
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    bn_images: int = 2048
    quantize: str = "none"
    latency_repeats: int = 50
    latency_warmup: int = 5
    tflite_threads: int | None = None
    heartbeat_interval: int | None = 10
    grace_period: int = 60
    max_retries: int = 2
    max_attempts: int = 3
    verbose: int | str | None = None

    def __post_init__(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        if self.min_steps < 0 or not 1 <= self.min_epochs <= self.max_epochs:
            raise ValueError(f"need min_steps >= 0 and 1 <= min_epochs <= max_epochs, got "
                             f"{self.min_steps}, {self.min_epochs}, {self.max_epochs}")
        if self.monitor not in ("val_loss", "val_accuracy"):
            raise ValueError(f"monitor must be 'val_loss' or 'val_accuracy', got "
                             f"{self.monitor!r}")
        from lrf_optuna.deploy.convert import QUANTIZE_MODES

        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {list(QUANTIZE_MODES)}, got "
                             f"{self.quantize!r}")
        if self.bn_images < 0:
            raise ValueError(f"bn_images must be >= 0, got {self.bn_images}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill must be in [0, 1] (the weight of the KL term), got "
                             f"{self.distill}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.keep_epoch not in ("best", "last"):
            raise ValueError(f"keep_epoch must be 'best' or 'last', got {self.keep_epoch!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.latency_repeats < 1 or self.latency_warmup < 0:
            raise ValueError("latency_repeats must be >= 1 and latency_warmup >= 0")
        if self.heartbeat_interval is not None and not (
                0 < self.heartbeat_interval < self.grace_period):
            raise ValueError(f"need 0 < heartbeat_interval < grace_period, got "
                             f"{self.heartbeat_interval}, {self.grace_period}")

    # -- the recipe -------------------------------------------------------------------------
    def recipe(self) -> dict[str, Any]:
        """The training-relevant fields (:data:`RECIPE_FIELDS`) as a JSON-able dict."""
        return {name: getattr(self, name) for name in RECIPE_FIELDS}

    def recipe_key(self) -> str:
        """A short digest of :meth:`recipe`: equal keys train identically (the key under
        which jobs and the fair reference are stored)."""
        text = json.dumps(self.recipe(), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=5).hexdigest()

    def with_recipe(self, recipe: dict[str, Any]) -> FinetuneConfig:
        """This config with the recipe fields of ``recipe`` (unknown keys ignored), e.g.
        the recipe a queued job was enqueued with.

        Raises:
            ValueError: a recipe value is out of range.
        """
        known = {k: v for k, v in recipe.items() if k in RECIPE_FIELDS}
        return dataclasses.replace(self, **known)

    def epochs_for(self, n_train: int) -> int:
        """The epochs a job on ``n_train`` training images runs: ``epochs`` when given,
        else enough for ``min_steps`` steps, clipped to ``[min_epochs, max_epochs]``."""
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = max(math.ceil(n_train / self.batch_size), 1)
        needed = math.ceil(self.min_steps / steps_per_epoch)
        return int(min(max(needed, self.min_epochs), self.max_epochs))

    def longer(self, factor: int = 4) -> FinetuneConfig:
        """The escalation recipe of :func:`~lrf_optuna.finetune.finetune_within`: this
        one trained ``factor`` times as long (``epochs``, or ``min_steps`` and
        ``max_epochs``), with the patience to use it, and distilled from the original
        (this recipe's weight, or 0.9 when this recipe is plain cross-entropy). Long recipes
        are where distillation measurably helps: on the VGG-style net's 97 % plans, 40
        distilled epochs ended 0.65 and 0.75 pp above 40 cross-entropy epochs
        (``benchmarks/RESULTS.md``, "Extreme budget").

        Example:
            >>> long = FinetuneConfig().longer()
            >>> long.min_steps, long.max_epochs, long.patience, long.distill
            (2400, 120, 6, 0.9)
            >>> FinetuneConfig(epochs=2).longer().epochs
            8
        """
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        distill = self.distill if self.distill > 0 else 0.9
        if self.epochs is not None:
            return dataclasses.replace(self, epochs=self.epochs * factor,
                                       patience=self.patience * 2, distill=distill)
        return dataclasses.replace(self, min_steps=self.min_steps * factor,
                                   max_epochs=self.max_epochs * factor,
                                   patience=self.patience * 2, distill=distill)

    def describe(self) -> str:
        """The recipe in a few words, for tables and notes."""
        loss = (f"KD {self.distill:g} T={self.temperature:g}" if self.distill > 0 else "CE")
        what = "loss" if self.monitor == "val_loss" else "accuracy"
        keep = (f"best epoch by val {what} (patience {self.patience})"
                if self.keep_epoch == "best" else "last epoch")
        epochs = (f"{self.epochs} epoch" + ("" if self.epochs == 1 else "s")
                  if self.epochs is not None else
                  f">= {self.min_steps} steps ({self.min_epochs}-{self.max_epochs} epochs)")
        bn = ", BN re-estimated" if self.bn_images > 0 else ""
        deployed = f", judged as {self.quantize} file" if self.quantize != "none" else ""
        return (f"{loss}, {epochs}, lr {self.learning_rate:g} {self.schedule}, {keep}{bn}"
                f"{deployed}")
