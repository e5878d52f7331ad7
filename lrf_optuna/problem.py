"""The problem a study works on -- the trained model and the data splits -- and how to
rebuild it from the study alone.

A :class:`Problem` holds the loaded model and :class:`~lrf_optuna.data.Splits`; its
:class:`ProblemSpec` (JSON-able) says how to load them again: a reference model name or a
``.keras`` file, ``"fashion-mnist"`` or a ``.npz`` file, the split settings. The study
records the spec (:func:`lrf_optuna.study.records.record_problem`), so fine-tuning,
export and the report can rebuild the problem in another process. A problem made from
in-memory objects (:meth:`Problem.from_objects`) gets its spec when
:meth:`Problem.save` writes the model and data files.

Everything that can be wrong with a model or a dataset is found when they are loaded,
before anything expensive runs, and is one :class:`~lrf_optuna.errors.UserError` line:
:func:`load_model_file` (a missing, truncated, damaged or misnamed file, a model class Keras
cannot find), :meth:`ProblemSpec.load_dataset` (a file that is not a ``.npz``, missing
arrays, non-numeric images, non-integer labels) and :func:`check_problem` (images whose
shape or channels do not fit the model's input, labels outside the model's classes,
NaN/Inf weights or images). :meth:`Problem.fingerprints` identify the model and the data,
so that a study is bound to them (:mod:`lrf_optuna.study.binding`).

Example:
    >>> spec = ProblemSpec.from_json({"model": "lenet5", "seed": 1, "unknown_key": 0})
    >>> spec.name, spec.seed, spec.calibration_size
    ('lenet5', 1, 512)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.errors import UserError, is_int, one_line

if TYPE_CHECKING:
    import keras

    from lrf_optuna.data import Dataset, Splits

__all__ = ["NPZ_KEYS", "Problem", "ProblemSpec", "check_problem",
           "load_model_file", "model_fingerprint"]

#: The arrays a dataset ``.npz`` file must hold (uint8 images are scaled to [0, 1]).
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


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
        val_fraction: Validation fraction held out of the training data (``None``:
            :func:`lrf_optuna.data.default_val_fraction` of its size).
        cache_dir: The similarity cache directory.
        epochs: Training epochs of a reference model (``None``: its default).
    """

    model: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    seed: int = 0
    calibration_size: int = 512
    val_fraction: float | None = None
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

    def check_settings(self) -> None:
        """Raise :class:`~lrf_optuna.errors.UserError` for a split or training setting out
        of range (a seed that is not an integer, ``calibration_size < 1``,
        ``val_fraction`` outside ``[0, 1)``, ``epochs < 1``)."""
        if not is_int(self.seed):
            raise UserError(f"seed must be an integer, but got {self.seed!r}")
        if not is_int(self.calibration_size) or self.calibration_size < 1:
            raise UserError(f"calibration_size must be an integer >= 1, but got "
                            f"{self.calibration_size!r}")
        if self.val_fraction is not None and (isinstance(self.val_fraction, bool) or not
                isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1):
            raise UserError(f"val_fraction must be in [0, 1), but got {self.val_fraction!r}")
        if self.epochs is not None and (not is_int(self.epochs) or self.epochs < 1):
            raise UserError(f"epochs must be an integer >= 1, but got {self.epochs!r}")

    @property
    def name(self) -> str:
        from lrf_optuna.models import REFERENCE_MODELS

        return self.model if self.model in REFERENCE_MODELS else Path(self.model).stem

    def load_dataset(self) -> Dataset:
        """The dataset: Fashion-MNIST, or the ``.npz`` file's arrays.

        Raises:
            UserError: not ``"fashion-mnist"`` nor a readable ``.npz`` with the four
                arrays, or arrays that are not images and integer labels.
        """
        from lrf_optuna import data

        if self.dataset in ("fashion-mnist", "fashion_mnist"):
            try:
                return data.load_fashion_mnist(self.data_dir)
            except (OSError, ValueError) as err:
                raise UserError(f"cannot load Fashion-MNIST: {one_line(err)}") from err
        path = Path(self.dataset)
        if path.suffix != ".npz" or not path.is_file():
            raise UserError(f"dataset must be 'fashion-mnist' or an existing .npz file, "
                            f"but got {self.dataset!r}")
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is not a .npz archive (a .npz file is a zip of .npy "
                            "arrays; write it with numpy.savez(path, x_train=..., "
                            "y_train=..., x_test=..., y_test=...))")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = set(NPZ_KEYS) - set(z.files)
                if missing:
                    raise UserError(f"{path} lacks arrays {sorted(missing)} (has {z.files}); "
                                    f"it needs {list(NPZ_KEYS)}")
                arrays = [z[key] for key in NPZ_KEYS]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"cannot read {path}: {one_line(err)} (object arrays are not "
                            "accepted: save numeric arrays)") from err
        try:
            return data.from_arrays(*arrays, name=path.stem)
        except (TypeError, ValueError) as err:
            raise UserError(f"{path}: {one_line(err)}") from err

    def load(self, *, verbose: bool = True) -> Problem:
        """Load the model (a file first: it is quick), the dataset and the splits, check
        that they fit together (:func:`check_problem`), then train-or-load a reference
        model.

        Raises:
            UserError: the model or the dataset cannot be used (module docstring).
        """
        from lrf_optuna.data import prepare_splits
        from lrf_optuna.models import REFERENCE_MODELS, train_or_load

        self.check_settings()
        reference = self.model in REFERENCE_MODELS
        if not reference and not Path(self.model).exists():
            raise UserError(f"model {self.model!r} is neither a reference model "
                            f"({', '.join(sorted(REFERENCE_MODELS))}) nor an existing file")
        model = None if reference else load_model_file(self.model)
        dataset = self.load_dataset()
        try:
            splits = prepare_splits(dataset, val_fraction=self.val_fraction,
                                    calibration_size=self.calibration_size, seed=self.seed)
        except ValueError as err:
            raise UserError(f"cannot split dataset {self.dataset!r}: {one_line(err)}") from err
        if model is not None:
            check_problem(model, splits, data_name=self.dataset)
        else:
            model = train_or_load(self.model, dataset, seed=self.seed, epochs=self.epochs,
                                  val_fraction=self.val_fraction, verbose=verbose).model
        return Problem(model, splits, self.name, self, dataset)


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
    _fingerprints: dict[str, str] | None = dataclasses.field(default=None, init=False,
                                                             repr=False)

    def check(self) -> None:
        """:func:`check_problem` on this problem's model and splits."""
        check_problem(self.model, self.splits, data_name=self.name)

    def fingerprints(self) -> dict[str, str]:
        """What identifies the problem (computed once): ``model`` (architecture and
        weights, :func:`model_fingerprint`), ``data`` (every split: the dataset, the seed
        and the validation fraction) and ``calibration`` (the calibration images)."""
        if self._fingerprints is None:
            from lrf_optuna.data import fingerprint_arrays

            s = self.splits
            self._fingerprints = {
                "model": model_fingerprint(self.model),
                "data": fingerprint_arrays(s.x_train, s.y_train, s.x_val, s.y_val, s.x_test,
                                           s.y_test),
                "calibration": fingerprint_arrays(s.x_cal)}
        return dict(self._fingerprints)

    @classmethod
    def from_objects(cls, model: keras.Model, dataset: Dataset, *, seed: int = 0,
                     calibration_size: int = 512, val_fraction: float | None = None,
                     cache_dir: str | os.PathLike[str] = ".lrf_cache") -> Problem:
        """A problem from a trained model and a dataset in memory (splits made here, the
        same way :meth:`ProblemSpec.load` makes them)."""
        from lrf_optuna.data import prepare_splits

        settings = ProblemSpec(model="", seed=seed, calibration_size=calibration_size,
                               val_fraction=val_fraction, cache_dir=str(cache_dir))
        settings.check_settings()
        try:
            splits = prepare_splits(dataset, val_fraction=val_fraction,
                                    calibration_size=calibration_size, seed=seed)
        except ValueError as err:
            raise UserError(f"cannot split the dataset: {one_line(err)}") from err
        check_problem(model, splits, data_name=dataset.name)
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


# -- loading and checking models ----------------------------------------------------------------

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _keras_archive_problem(path: Path) -> str | None:
    """Why the zip archive ``path`` is not a usable ``.keras`` file, or ``None``."""
    try:
        with zipfile.ZipFile(path) as z:
            if "config.json" not in z.namelist():
                return "it is a zip archive without config.json, not a Keras model"
            bad = z.testzip()  # reads every member: damaged bytes fail their CRC
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"it is a damaged zip archive ({one_line(err)})"
    except Exception as err:  # zlib.error and the like, from damaged members
        return f"it is a damaged zip archive ({type(err).__name__}: {one_line(err)})"
    return f"its member {bad!r} is damaged (CRC mismatch)" if bad else None


def load_model_file(path: str | os.PathLike[str]) -> keras.Model:
    """Load a trained model from a ``.keras`` file (or a legacy ``.h5`` one), with one clear
    error for every way the file can be wrong.

    lrf_optuna's own layers are registered first, so a compressed model loads too.

    Raises:
        UserError: the file is missing, is not a Keras model file (truncated, damaged,
            text, a ``.keras`` zip named ``.h5``), names a class Keras cannot find (a
            subclassed or custom model that is not registered), or is not a Sequential or
            Functional model.

    Example:
        >>> load_model_file("notes.txt")
        Traceback (most recent call last):
        ...
        lrf_optuna.errors.UserError: model file notes.txt does not exist
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file {p} {'is a directory' if p.is_dir() else 'does not exist'}")
    is_zip = zipfile.is_zipfile(p)
    suffix = p.suffix.lower()
    if suffix == ".keras" and not is_zip:
        raise UserError(f"{p} is not a .keras model file: a .keras file is a zip archive and "
                        "this one is not (truncated, or not a Keras model); save the model "
                        "with model.save('name.keras')")
    if suffix in (".h5", ".hdf5"):
        if is_zip:
            raise UserError(f"{p} is a .keras (zip) model file with the suffix {suffix}; "
                            f"rename it to {p.with_suffix('.keras').name}")
        with p.open("rb") as f:
            if f.read(len(_HDF5_MAGIC)) != _HDF5_MAGIC:
                raise UserError(f"{p} is not an HDF5 Keras model file (truncated, or not a "
                                "Keras model); save the model with model.save('name.keras')")
    elif suffix != ".keras":
        raise UserError(f"model file {p} must end in .keras (or .h5 for legacy files), but "
                        f"its suffix is {suffix or 'empty'!r}")
    if is_zip:
        problem = _keras_archive_problem(p)
        if problem is not None:
            raise UserError(f"{p} is not a usable .keras file: {problem}; save the model "
                            "again with model.save('name.keras')")
    import keras

    import lrf_optuna.decompose  # noqa: F401  (registers FactorizedLayer and its parts)

    try:
        model = keras.saving.load_model(p, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad file
        text = one_line(err)
        if "locate" in text or "registered" in text or "deserializ" in text:
            raise UserError(
                f"cannot load the model {p}: Keras cannot rebuild one of its classes "
                f"({text}); lrf_optuna needs a Sequential or Functional model whose custom "
                "layers are registered with @keras.saving.register_keras_serializable and "
                "imported (a subclassed keras.Model cannot be rewritten: rebuild it with the "
                "Functional API)") from err
        raise UserError(f"cannot load the model {p}: {text}") from err
    if not isinstance(model, keras.Model):
        raise UserError(f"{p} holds a {type(model).__name__}, not a keras.Model")
    return model


def model_fingerprint(model: keras.Model) -> str:
    """A 16-hex-digit hash of a model's architecture and weights: the same for the model
    and for its ``.keras`` file reloaded, compiled or not.

    Example:
        >>> import keras
        >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> fp = model_fingerprint(net)
        >>> net.compile("adam", "mse")
        >>> model_fingerprint(net) == fp
        True
    """
    import json

    config = json.loads(model.to_json())
    config.pop("compile_config", None)  # how it was trained, not what it is
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(config, sort_keys=True).encode())
    for w in model.weights:  # not w.path: Keras prefixes it with the model name in memory
        values = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{values.dtype.str}{values.shape};".encode())
        h.update(values.tobytes())
    return h.hexdigest()


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def check_problem(model: keras.Model, splits: Splits, *, data_name: str = "the data") -> None:
    """Check that a model and data splits can be searched together.

    Raises:
        UserError: the model is not a Sequential or Functional model with one input and
            one output, has NaN/Inf weights, or the images do not have the model's input
            shape (size, channels) or are not finite, or the labels are outside the
            model's classes (``0 .. outputs - 1``; ``{0, 1}`` for a single output).

    Example:
        >>> import keras
        >>> from lrf_optuna.data import from_arrays, prepare_splits
        >>> net = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
        ...                         keras.layers.Dense(2)], name="net")
        >>> x, y = np.zeros((20, 8, 8), np.uint8), np.arange(20) % 2
        >>> splits = prepare_splits(from_arrays(x, y, x, y), calibration_size=4)
        >>> check_problem(net, splits, data_name="toy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lrf_optuna.errors.UserError: the images of toy are 8x8x1 but model 'net' expects ...
    """
    import keras

    if not isinstance(model, keras.Model):
        raise UserError(f"expected a trained keras.Model, but got {type(model).__name__}")
    name = model.name
    if not isinstance(model, (keras.Sequential, keras.src.models.Functional)):
        raise UserError(f"model {name!r} is a subclassed keras.Model "
                        f"({type(model).__name__}); lrf_optuna rewrites Sequential and "
                        "Functional models: rebuild it with the Functional API")
    if not model.built or not model.inputs:
        raise UserError(f"model {name!r} is not built with a known input shape; build it "
                        "with keras.Input(shape) as its first layer")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f"model {name!r} has {len(model.inputs)} input(s) and "
                        f"{len(model.outputs)} output(s); lrf_optuna searches image "
                        "classifiers with one input and one output")
    for w in model.weights:
        values = np.asarray(w.numpy())
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise UserError(f"model {name!r}: weight {w.path!r} has {bad} NaN or Inf "
                            "value(s); the model is not usable (was its training diverging?)")
    expected = tuple(model.inputs[0].shape[1:])
    for label, x in (("training", splits.x_train), ("test", splits.x_test)):
        got = tuple(int(d) for d in x.shape[1:])
        fits = len(got) == len(expected) and all(
            e is None or int(e) == g for e, g in zip(expected, got))
        if not fits:
            raise UserError(
                f"the images of {data_name} are {_shape_text(got)} but model {name!r} "
                f"expects inputs of {_shape_text(expected)} (height x width x channels); "
                "resize or convert the images (or pick the model made for them)")
        if x.dtype.kind != "f":
            raise UserError(f"the {label} images of {data_name} are {x.dtype}; expected "
                            "float images (lrf_optuna.data.from_arrays scales uint8 ones)")
        if not np.isfinite(x).all():
            raise UserError(f"the {label} images of {data_name} contain NaN or Inf values")
    units = model.outputs[0].shape[-1]
    top = int(max(splits.y_train.max(initial=0), splits.y_val.max(initial=0),
                  splits.y_test.max(initial=0)))
    classes = 2 if units == 1 else units
    if units is not None and top >= int(classes):
        raise UserError(f"the labels of {data_name} go up to {top} but model {name!r} has "
                        f"{units} output(s), i.e. classes 0..{int(classes) - 1}; pass the "
                        "data the model was trained on (labels are class ids 0..K-1)")
