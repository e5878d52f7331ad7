"""What a study works on -- model, dataset, splits, cache -- recorded so later commands
(fine-tune, report, export, dashboard) can rebuild it from the study alone.

The CLI's ``search`` stores a :class:`ProblemSpec` in the study's user attributes under
``"lrf_optuna:problem"``; :func:`spec_of_study` reads it back.

Example:
    >>> spec = ProblemSpec.from_json({"model": "lenet5", "seed": 1, "unknown_key": 0})
    >>> spec.name, spec.seed, spec.calibration_size
    ('lenet5', 1, 512)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PROBLEM_ATTR", "Problem", "ProblemSpec", "record_problem", "spec_of_study"]

PROBLEM_ATTR = "lrf_optuna:problem"


class ProblemError(ValueError):
    """The problem cannot be set up (bad model path, bad dataset file ...)."""


@dataclass
class Problem:
    """A loaded problem: the trained original model and the data splits."""

    model: Any
    splits: Any
    name: str
    spec: ProblemSpec


@dataclass(frozen=True)
class ProblemSpec:
    """How to rebuild the model and the splits (JSON-able).

    Args:
        model: A reference model name (trained on the dataset or loaded from the model
            cache) or a path to a trained ``.keras`` file.
        dataset: ``"fashion-mnist"`` or a ``.npz`` with x_train, y_train, x_test, y_test.
        data_dir: Directory of the Fashion-MNIST idx files (optional).
        seed: Seed of the splits and of reference-model training.
        calibration_size: Calibration images (stratified, from the training split).
        val_fraction: Validation fraction held out of the training data.
        cache_dir: The similarity cache directory.
        epochs: Training epochs of a reference model (``None``: its default).
    """

    model: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    seed: int = 0
    calibration_size: int = 512
    val_fraction: float = 0.1
    cache_dir: str = ".lrf_cache"
    epochs: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("model", "dataset", "data_dir", "cache_dir"):
            value = d[key]
            if value is not None and Path(value).exists():
                d[key] = str(Path(value).resolve())
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProblemSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    @property
    def name(self) -> str:
        from lrf_optuna.models import REFERENCE_MODELS

        return self.model if self.model in REFERENCE_MODELS else Path(self.model).stem

    def load_dataset(self) -> Any:
        from lrf_optuna import data

        if self.dataset in ("fashion-mnist", "fashion_mnist"):
            return data.load_fashion_mnist(self.data_dir)
        path = Path(self.dataset)
        if path.suffix != ".npz" or not path.exists():
            raise ProblemError(f"dataset must be 'fashion-mnist' or an existing .npz file, "
                               f"but got {self.dataset!r}")
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise ProblemError(f"{path} lacks arrays {sorted(missing)} (has {z.files})")
            return data.from_arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                                    name=path.stem)

    def load(self, *, verbose: bool = True) -> Problem:
        """Load the dataset, make the splits, train-or-load / load the model."""
        from lrf_optuna.data import prepare_splits
        from lrf_optuna.models import REFERENCE_MODELS, train_or_load

        if self.model not in REFERENCE_MODELS and not Path(self.model).exists():
            raise ProblemError(f"model {self.model!r} is neither a reference model "
                               f"({', '.join(sorted(REFERENCE_MODELS))}) nor an existing file")
        dataset = self.load_dataset()
        splits = prepare_splits(dataset, val_fraction=self.val_fraction,
                                calibration_size=self.calibration_size, seed=self.seed)
        if self.model in REFERENCE_MODELS:
            result = train_or_load(self.model, dataset, seed=self.seed, epochs=self.epochs,
                                   val_fraction=self.val_fraction, verbose=verbose)
            return Problem(result.model, splits, self.name, self)
        import keras

        model = keras.saving.load_model(self.model, safe_mode=True)
        return Problem(model, splits, self.name, self)


def spec_of_study(study: Any) -> ProblemSpec:
    """The :class:`ProblemSpec` recorded in a study by ``lrf-optuna search``."""
    raw = study.user_attrs.get(PROBLEM_ATTR)
    if raw is None:
        raise ProblemError(f"study {study.study_name!r} has no {PROBLEM_ATTR!r} attribute; "
                           "it was not created by `lrf-optuna search` (pass the model and "
                           "dataset explicitly)")
    return ProblemSpec.from_json(raw)


def record_problem(study: Any, spec: ProblemSpec) -> None:
    """Store ``spec`` in the study (once), so later commands can rebuild the problem."""
    if PROBLEM_ATTR not in study.user_attrs:
        study.set_user_attr(PROBLEM_ATTR, spec.to_json())
