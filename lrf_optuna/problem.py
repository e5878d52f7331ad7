"""The problem a study works on -- the trained model and the data splits -- and how to
rebuild it from the study alone.

A :class:`Problem` holds the loaded model and :class:`~lrf_optuna.data.Splits`; its
:class:`ProblemSpec` (JSON-able) says how to load them again: a reference model name or a
``.keras`` file, ``"fashion-mnist"`` or a ``.npz`` file, the split settings. The study
records the spec (:func:`lrf_optuna.study.records.record_problem`), so fine-tuning,
export and the report can rebuild the problem in another process. A problem made from
in-memory objects (:meth:`Problem.from_objects`) gets its spec when
:meth:`Problem.save` writes the model and data files.

Example:
    >>> spec = ProblemSpec.from_json({"model": "lenet5", "seed": 1, "unknown_key": 0})
    >>> spec.name, spec.seed, spec.calibration_size
    ('lenet5', 1, 512)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.errors import UserError

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Dataset, Splits

__all__ = ["NPZ_KEYS", "Problem", "ProblemError", "ProblemSpec"]

#: The arrays a dataset ``.npz`` file must hold (uint8 images are scaled to [0, 1]).
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: Deprecated alias: problems raise :class:`~lrf_optuna.errors.UserError`.
ProblemError = UserError


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

    def load_dataset(self) -> Dataset:
        """The dataset: Fashion-MNIST, or the ``.npz`` file's arrays."""
        from lrf_optuna import data

        if self.dataset in ("fashion-mnist", "fashion_mnist"):
            return data.load_fashion_mnist(self.data_dir)
        path = Path(self.dataset)
        if path.suffix != ".npz" or not path.exists():
            raise UserError(f"dataset must be 'fashion-mnist' or an existing .npz file, "
                            f"but got {self.dataset!r}")
        with np.load(path, allow_pickle=False) as z:
            missing = set(NPZ_KEYS) - set(z.files)
            if missing:
                raise UserError(f"{path} lacks arrays {sorted(missing)} (has {z.files})")
            return data.from_arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                                    name=path.stem)

    def load(self, *, verbose: bool = True) -> Problem:
        """Load the dataset, make the splits, train-or-load / load the model."""
        from lrf_optuna.data import prepare_splits
        from lrf_optuna.models import REFERENCE_MODELS, train_or_load

        if self.model not in REFERENCE_MODELS and not Path(self.model).exists():
            raise UserError(f"model {self.model!r} is neither a reference model "
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


@dataclass
class Problem:
    """A loaded problem: the trained original model and the data splits.

    Attributes:
        model: The trained original model.
        splits: Train / validation / test / calibration arrays.
        name: Short name (the reference model's, or the model file's stem).
        spec: How to rebuild it; ``None`` for in-memory objects not saved yet.
        dataset: The dataset the splits came from, when known (for :meth:`save`).
        settings: The split and cache settings of an unsaved problem (for :meth:`save`).
    """

    model: keras.Model
    splits: Splits
    name: str
    spec: ProblemSpec | None = None
    dataset: Dataset | None = dataclasses.field(default=None, repr=False)
    settings: ProblemSpec | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_objects(cls, model: keras.Model, dataset: Dataset, *, seed: int = 0,
                     calibration_size: int = 512, val_fraction: float = 0.1,
                     cache_dir: str | os.PathLike[str] = ".lrf_cache") -> Problem:
        """A problem from a trained model and a dataset in memory (splits made here, the
        same way :meth:`ProblemSpec.load` makes them)."""
        from lrf_optuna.data import prepare_splits

        splits = prepare_splits(dataset, val_fraction=val_fraction,
                                calibration_size=calibration_size, seed=seed)
        settings = ProblemSpec(model="", seed=seed, calibration_size=calibration_size,
                               val_fraction=val_fraction, cache_dir=str(cache_dir))
        return cls(model, splits, model.name, None, dataset, settings)

    def save(self, directory: str | os.PathLike[str]) -> ProblemSpec:
        """Write what the spec cannot name (the model, user arrays) into ``directory`` and
        return the spec that reloads this problem.

        The model goes to ``model.keras``; a dataset other than Fashion-MNIST to
        ``data.npz`` (as uint8 when that is lossless, so it reloads bit for bit).
        """
        if self.spec is not None:
            return self.spec
        if self.dataset is None:
            raise ValueError("a problem without its dataset cannot be saved")
        settings = self.settings or ProblemSpec(model="")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / "model.keras"
        self.model.save(model_path)
        ds = self.dataset
        data_dir: str | None = None
        if ds.name == "fashion_mnist" and ds.source != "arrays":
            dataset = "fashion-mnist"
            data_dir = ds.source if Path(ds.source).is_dir() else None
        else:
            dataset = str(out / "data.npz")
            np.savez(dataset, x_train=_compact(ds.x_train), y_train=ds.y_train,
                     x_test=_compact(ds.x_test), y_test=ds.y_test)
        self.spec = dataclasses.replace(settings, model=str(model_path), dataset=dataset,
                                        data_dir=data_dir)
        return self.spec


def _compact(array: np.ndarray) -> np.ndarray:
    """uint8 when the float images are exactly ``k / 255`` (what ``from_arrays`` makes of
    uint8 images), else the array unchanged."""
    if array.dtype != np.float32:
        return array
    as_uint8 = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    back = as_uint8.astype(np.float32) / np.float32(255.0)
    return as_uint8 if np.array_equal(back, array) else array
