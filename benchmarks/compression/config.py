"""The benchmark's configuration and set-up: selections, models, modes, recipes,
the data and the trained originals."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SELECTIONS = ("search", "tau", "uniform", "energy", "vbmf", "random", "tpe", "narrow")
#: Opt-in selections (issue 13): ``fbp`` (filter pruning alone: uniform ratios and the
#: pruning similarity threshold) and ``search+prune`` (NSGA-II over LRF and pruning).
PRUNE_SELECTIONS = ("fbp", "search+prune")
SAMPLERS = ("nsga2", "tpe", "random")

PlanDict = dict[str, tuple[str, int]]


# -- models and modes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: a zoo builder, its arguments, the width arguments ``narrow``
    scales, and the epochs that train it to convergence (cosine schedule)."""

    zoo: str
    kwargs: Mapping[str, Any]
    widths: Mapping[str, tuple[int, ...]]
    epochs: int


MODELS: dict[str, ModelSpec] = {
    # VGG-style: ~93 % of the parameters in two dense layers
    "vgg_small": ModelSpec("vgg_small", {}, {"filters": (32, 64, 128),
                                             "dense_units": (512, 256)}, 30),
    # conv-dominated: all but 650 parameters in convolutions, global average pooling head
    "resnet20": ModelSpec("resnet20", {}, {"filters": (16, 32, 64)}, 30),
    # CI smoke models (12x12 synthetic images)
    "tiny_vgg": ModelSpec("vgg_small", {"filters": (4, 8, 8), "dense_units": (32, 16)},
                          {"filters": (4, 8, 8), "dense_units": (32, 16)}, 15),
    "tiny_resnet": ModelSpec("resnet20", {"filters": (4, 4, 8), "blocks_per_stage": 1},
                             {"filters": (4, 4, 8)}, 15),
}


@dataclass(frozen=True)
class Mode:
    """Defaults of a mode (each overridable on the command line)."""

    models: tuple[str, ...]
    train_images: int | None  # None: the whole training set
    test_images: int | None
    train_epochs: Mapping[str, int] | None  # None: the models' own
    trials: int
    recipes: tuple[str, ...]
    uniform: tuple[str, ...]
    spearman_finetuned: int
    spearman_plans: int
    curve_points: int
    claims_models: tuple[str, ...]
    claims_conv: tuple[str, ...]
    claims_fc: tuple[str, ...]
    fixed_reductions: tuple[float, ...]
    latency_repeats: int
    hv_checkpoints: tuple[int, ...]
    max_probes: int | None = None
    val_images: int | None = None  # None: 10 % of the training images


MODES: dict[str, Mode] = {
    "full": Mode(("vgg_small", "resnet20"), None, None, None, 3000,
                 ("ce10", "ce3", "kd10", "ce10-last"), ("channel_svd+svd", "tucker2+svd"), 20,
                 60, 3, ("vgg_small",), ("tucker2", "cp", "channel_svd", "spatial_svd"),
                 ("svd", "qr", "tt"), (0.90, 0.95, 0.97), 50,
                 (50, 100, 200, 300, 500, 1000, 2000, 3000)),
    # 3,600 training images and 2,000 validation images: a 400-image split (1 image =
    # 0.25 pp) made val and test disagree by 2-3 pp on the picks
    "quick": Mode(("vgg_small", "resnet20"), 5600, 2000, {"vgg_small": 10, "resnet20": 10},
                  500, ("ce2", "kd2"), ("channel_svd+svd",), 10, 50, 0, ("vgg_small",),
                  ("tucker2", "channel_svd"), ("svd", "tt"), (0.90, 0.97), 20,
                  (50, 100, 200, 300, 500), val_images=2000),
    "tiny": Mode(("tiny_vgg",), None, None, None, 30, ("ce1", "kd1-last"),
                 ("channel_svd+svd",), 3, 8, 0, ("tiny_vgg",), ("channel_svd",), ("svd",),
                 (0.5,), 2, (10, 20, 30), max_probes=1),
}

# The selections' rank-selection sweeps (dense enough for a curve, few enough to build).
TAUS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
ENERGIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
RATIOS = (0.5, 0.3, 0.2, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01)
#: Uniform pruning ratios of the ``fbp`` selection (the pruning cache's default levels).
FBP_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
NARROW_FRACTIONS = (0.5, 0.25, 0.12, 0.06, 0.03, 0.02, 0.01)


def parse_recipe(text: str) -> Any:
    """A :class:`~lrf_optuna.finetune.FinetuneConfig` from a recipe name (module docstring).

    Example:
        >>> c = parse_recipe("kd10-last-t2")
        >>> (c.epochs, c.distill, c.temperature, c.keep_epoch)
        (10, 0.9, 2.0, 'last')
    """
    from lrf_optuna.finetune import FinetuneConfig

    m = re.fullmatch(r"(ce|kd)(\d+)(.*)", text)
    token = r"-(last|p\d+|lr\d*\.?\d+(?:e-?\d+)?|a[0-9.]+|t[0-9.]+)"
    if m is None or re.fullmatch(f"(?:{token})*", m.group(3)) is None:
        raise ValueError(f"recipe must look like ce10, kd10 or ce10-last-p2-lr3e-4, got "
                         f"{text!r}")
    fields: dict[str, Any] = {"epochs": int(m.group(2)), "verbose": 0, "distill": 0.0}
    if m.group(1) == "kd":
        fields.update(distill=0.9, temperature=4.0)
    for part in re.findall(token, m.group(3)):
        if part == "last":
            fields["keep_epoch"] = "last"
        elif part.startswith("p"):
            fields["patience"] = int(part[1:])
        elif part.startswith("lr"):
            fields["learning_rate"] = float(part[2:])
        elif part.startswith("a"):
            fields["distill"] = float(part[1:])
        else:
            fields["temperature"] = float(part[1:])
    return FinetuneConfig(**fields)


# -- data and originals --------------------------------------------------------------------------

def _tiny_dataset() -> Any:
    """Learnable 12x12 images, 4 classes (the bright quadrant is the class)."""
    from lrf_optuna.data import from_arrays

    rng = np.random.default_rng(0)
    n = 600
    y = np.arange(n) % 4
    x = rng.uniform(0, 60, (n, 12, 12)).astype(np.uint8)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, r * 6:(r + 1) * 6, q * 6:(q + 1) * 6] += 150
    return from_arrays(x[:500], y[:500], x[500:], y[500:], name="quadrants")


def load_dataset(mode_name: str, train_images: int | None, test_images: int | None) -> Any:
    from lrf_optuna.data import from_arrays, load_fashion_mnist

    if mode_name == "tiny":
        return _tiny_dataset()
    data = load_fashion_mnist()
    if train_images is None and test_images is None:
        return data
    n, t = train_images or len(data.x_train), test_images or len(data.x_test)
    return from_arrays(data.x_train[:n], data.y_train[:n], data.x_test[:t], data.y_test[:t],
                       name=f"fashion_mnist_{n}")


def _scaled(spec: ModelSpec, factor: float) -> dict[str, Any]:
    return {**spec.kwargs, **{k: tuple(max(1, round(v * factor)) for v in vals)
                              for k, vals in spec.widths.items()}}


def val_fraction(dataset: Any, val_images: int | None) -> float:
    """The validation fraction of the training images: ``val_images`` of them, else 10 %.

    Example:
        >>> from types import SimpleNamespace
        >>> val_fraction(SimpleNamespace(x_train=range(5600)), 2000), val_fraction(None, None)
        (0.35714285714285715, 0.1)
    """
    if val_images is None:
        return 0.1
    n = len(dataset.x_train)
    if not 0 < val_images < n:
        raise ValueError(f"--val-images must be between 1 and the {n - 1} training images, "
                         f"got {val_images}")
    return val_images / n


def train_original(spec: ModelSpec, dataset: Any, epochs: int, cache: Path,
                   val_images: int | None = None, **overrides: Any) -> Any:
    """Train (or load from the model cache) a model of ``spec`` for ``epochs`` (on the
    training part of the harness's split: ``val_images`` held out)."""
    from lrf_optuna.models.training import train_or_load

    return train_or_load(spec.zoo, dataset, epochs=epochs, model_cache_dir=cache / "models",
                         val_fraction=val_fraction(dataset, val_images), verbose=False,
                         **{**spec.kwargs, **overrides})


def _best_key(max_drop: float) -> str:
    return f"best_within_{max_drop:g}pp"


def _methods() -> list[str]:
    from lrf_optuna.decompose import available_methods

    return available_methods()


def _is_aware(method: str) -> bool:
    from lrf_optuna.decompose import get_method

    return bool(getattr(get_method(method), "needs_inputs", False))


# -- set-up shared by the benchmarks on these models ----------------------------------------------

def prepare_problem(name: str, spec: ModelSpec, dataset: Any, epochs: int, cache: Path,
                    args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The first steps of a run on one model (shared with ``benchmarks.extreme_budget``):
    the original trained for ``epochs`` (or loaded from the model cache under ``cache``),
    the harness's splits (``args.val_images`` held out, ``args.calibration_size``
    calibration images, seed 0) and the problem on the similarity cache under ``cache``.
    Returns ``(trained, splits, problem)``."""
    from lrf_optuna.data import prepare_splits
    from lrf_optuna.problem import Problem, ProblemSpec

    trained = train_original(spec, dataset, epochs, cache, args.val_images)
    splits = prepare_splits(dataset, val_fraction=val_fraction(dataset, args.val_images),
                            calibration_size=args.calibration_size, seed=0)
    problem = Problem(trained.model, splits, name, settings=ProblemSpec(
        model="", cache_dir=str(cache / "similarity")))
    return trained, splits, problem


def study_storage(cache: Path, name: str, key: str) -> str:
    """The SQLite URL of ``name``'s studies under ``cache`` for the evaluator ``key``
    (its folder made)."""
    (cache / "studies").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{cache / 'studies' / f'{name}-{key}.db'}"
