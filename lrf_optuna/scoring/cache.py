"""The similarity cache: every (layer, method, rank) candidate scored once, on disk.

Building it runs the calibration pass (:mod:`lrf_optuna.scoring.calibration`), then for each
target layer and each applicable method: one :meth:`~LRFMethod.prepare` (an SVD, a QR ...),
and for each rank of the grid a factorization, the replacement layer run alone on the
cached inputs, and its outputs compared with the original's (:mod:`lrf_optuna.scoring.similarity`).
Everything later (strategies, the Optuna objective, reports) only reads the cache.

On disk (safe formats only, each file written atomically)::

    <cache_dir>/<fingerprint[:16]>/
        manifest.json                  fingerprint inputs, metric, grid, versions, layers
        layers/<NNN>-<path>.json       one file per finished layer: its candidates
        factors/<path>--<method>.npz   factors of methods flagged ``cache_factors`` (CP:
                                       iterative, so not recomputed bit-exactly; the
                                       activation-aware methods: fitted to the calibration
                                       inputs, which are not kept)

The fingerprint hashes the model architecture and weights, the calibration inputs, the
metrics, the grid (with the methods it resolves to) and the library versions: change any of
them and a new cache is built. Data-aware methods (``needs_inputs``) are prepared with each
layer's captured inputs.
A build killed halfway keeps the layers it finished and continues from there.

Example:
    >>> cache = SimilarityCache.build(model, x_cal, cache_dir=".lrf_cache")  # doctest: +SKIP
    >>> cache.layer("fc1").best("svd", min_similarity=0.95)  # doctest: +SKIP
    Candidate(method='svd', rank=37, params=..., macs=..., scores={'cosine': 0.951}, ...)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrf_optuna.plan import CompressionPlan
from lrf_optuna.scoring._store import (
    factor_file,
    read_factors,
    read_manifest,
    read_results,
    safe_file_name,
    write_factors,
    write_json,
)
from lrf_optuna.scoring.build import ProgressBar, ResumableBuild, Unit, run_build
from lrf_optuna.scoring.similarity import DEFAULT_METRIC, METRICS, BatchNormView

if TYPE_CHECKING:  # keep `load` free of TensorFlow imports
    import keras

    from lrf_optuna.decompose import LayerInfo, LRFMethod
    from lrf_optuna.rewrite import LayerEntry

__all__ = ["CACHE_FORMAT", "DEFAULT_MAX_PASS_BYTES", "Candidate", "GridConfig", "LayerTable",
           "SimilarityBuild", "SimilarityCache", "batchnorm_view", "fingerprint"]

logger = logging.getLogger(__name__)

#: 2: the fingerprint covers the registered methods (a cache built before the
#: activation-aware methods existed would otherwise be reused without them).
#: 3: a layer feeding a BatchNorm is scored through it, as re-estimated
#: (:class:`~lrf_optuna.scoring.similarity.BatchNormView`).
CACHE_FORMAT = 3
#: Activation memory of one calibration pass (:meth:`SimilarityCache.build`'s
#: ``max_pass_bytes``): a net whose layers' activations exceed it together is captured and
#: scored in several passes (ResNet50 at 224x224 on 128 images: about 12 GiB in one).
DEFAULT_MAX_PASS_BYTES = 2 * 2**30
#: CKA costs ``n^2 x features``; it is computed on at most this many samples.
CKA_MAX_SAMPLES = 256


@dataclass(frozen=True)
class Candidate:
    """One scored (method, rank) choice for a layer."""

    method: str
    rank: int
    params: int
    macs: int
    scores: Mapping[str, float]
    seconds: float = 0.0

    def score(self, metric: str) -> float:
        return float(self.scores[metric])


@dataclass(frozen=True)
class GridConfig:
    """Which ranks are scored per (layer, method).

    For each method, the ranks that save parameters or FLOPs over the original layer
    (:meth:`LRFMethod.saving_ranks`), thinned to at most ``points`` log-spaced values
    (denser at small ranks, where similarity changes fastest); ``1`` and the largest
    saving rank are always included. ``methods`` restricts the methods scored.

    Example:
        >>> GridConfig(points=6).thin(list(range(1, 101)))
        [1, 3, 6, 16, 40, 100]
    """

    points: int = 16
    methods: tuple[str, ...] | None = None

    def thin(self, ranks: Sequence[int]) -> list[int]:
        ranks = sorted(set(int(r) for r in ranks))
        if len(ranks) <= self.points:
            return ranks
        targets = np.geomspace(ranks[0], ranks[-1], self.points)
        arr = np.asarray(ranks)
        picked = {int(arr[np.argmin(np.abs(np.log(arr) - np.log(t)))]) for t in targets}
        return sorted(picked | {ranks[0], ranks[-1]})

    def ranks(self, method: LRFMethod, info: LayerInfo) -> list[int]:
        return self.thin(method.saving_ranks(info))

    def to_json(self) -> dict[str, Any]:
        return {"points": self.points,
                "methods": None if self.methods is None else list(self.methods)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> GridConfig:
        """The grid of :meth:`to_json` (a cache's manifest)."""
        methods = raw.get("methods")
        return cls(points=int(raw.get("points", cls.points)),
                   methods=None if methods is None else tuple(methods))


@dataclass(frozen=True)
class LayerTable:
    """All scored candidates of one layer, plus what the original layer costs."""

    path: str
    class_name: str
    original_params: int
    original_macs: int
    candidates: tuple[Candidate, ...]
    samples: int
    prepare_seconds: Mapping[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(c.method for c in self.candidates))

    def for_method(self, method: str) -> list[Candidate]:
        return [c for c in self.candidates if c.method == method]

    def lookup(self, method: str, rank: int) -> Candidate:
        """The candidate for ``(method, rank)``; a rank off the grid maps to the nearest
        scored rank at or below it (or the smallest one)."""
        options = self.for_method(method)
        if not options:
            raise KeyError(f"layer {self.path!r} has no candidates for method {method!r}; "
                           f"it has {self.methods}")
        below = [c for c in options if c.rank <= rank]
        return max(below, key=lambda c: c.rank) if below else options[0]

    def best(self, method: str | None = None, *, metric: str, min_similarity: float,
             cost: str = "params") -> Candidate | None:
        """The cheapest candidate (by ``cost``) whose similarity reaches the threshold."""
        pool = self.candidates if method is None else tuple(self.for_method(method))
        ok = [c for c in pool if c.score(metric) >= min_similarity]
        if not ok:
            return None
        return min(ok, key=lambda c: (getattr(c, cost), -c.score(metric)))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["candidates"] = [dataclasses.asdict(c) for c in self.candidates]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LayerTable:
        cands = tuple(Candidate(**c) for c in d["candidates"])
        return cls(**{**d, "candidates": cands})


def library_versions() -> dict[str, str]:
    """Versions of the libraries a cache depends on, and of its on-disk format."""
    from importlib import metadata

    out = {}
    for pkg in ("lrf-optuna", "tensorflow-cpu", "tensorflow", "keras", "tensorly", "t3f",
                "numpy", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    out["cache_format"] = str(CACHE_FORMAT)
    return out


def fingerprint(model: keras.Model, x: np.ndarray, *, metrics: Sequence[str],
                grid: GridConfig, layers: Sequence[str], batchnorm: bool = True) -> str:
    """SHA-256 over architecture, weights, calibration data, metrics, grid and versions."""
    h = hashlib.sha256()
    h.update(model.to_json().encode())
    for w in model.weights:  # not w.path: a reloaded Sequential model's paths differ
        values = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{values.dtype.str}{values.shape};".encode())
        h.update(values.tobytes())
    xa = np.ascontiguousarray(np.asarray(x, dtype="float32"))
    h.update(str(xa.shape).encode())
    h.update(xa.tobytes())
    from lrf_optuna.decompose import available_methods

    h.update(json.dumps({"metrics": list(metrics), "grid": grid.to_json(),
                         "methods": list(grid.methods or available_methods()),
                         "layers": list(layers), "versions": library_versions(),
                         **({} if batchnorm else {"batchnorm": False})},
                        sort_keys=True).encode())
    return h.hexdigest()


def batchnorm_view(model: keras.Model, path: str) -> BatchNormView | None:
    """The :class:`~lrf_optuna.scoring.similarity.BatchNormView` of the BatchNormalization layer
    that is the only consumer of the top-level layer ``path`` and normalizes its last
    axis, else ``None`` (nested layers, several consumers, another axis)."""
    import keras

    if "/" in path:
        return None
    try:
        layer = model.get_layer(path)
    except ValueError:
        return None
    consumers = [node.operation for node in getattr(layer, "_outbound_nodes", [])]
    if len(consumers) != 1 or not isinstance(consumers[0], keras.layers.BatchNormalization):
        return None
    bn = consumers[0]
    rank = len(layer.output.shape)
    if bn.axis not in (-1, rank - 1):
        return None
    channels = int(layer.output.shape[-1])
    gamma = bn.gamma.numpy() if bn.scale else np.ones(channels)
    beta = bn.beta.numpy() if bn.center else np.zeros(channels)
    return BatchNormView(np.asarray(gamma, np.float64), np.asarray(beta, np.float64),
                         float(bn.epsilon))


class SimilarityCache:
    """Scored candidates for every target layer of one model (see module docstring).

    Build with :meth:`build` (resumes a partial build), reopen with :meth:`load` (no
    TensorFlow import, JSON only), read with :meth:`layer` / :attr:`tables`, and turn a plan
    into a Keras model with :meth:`build_model`.
    """

    def __init__(self, directory: Path, manifest: Mapping[str, Any],
                 tables: Mapping[str, LayerTable]) -> None:
        self.directory = Path(directory)
        self.manifest = dict(manifest)
        self.tables = dict(tables)

    # -- reading -------------------------------------------------------------------------
    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    @property
    def metrics(self) -> list[str]:
        return list(self.manifest["metrics"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def layers(self) -> list[str]:
        return list(self.manifest["layers"])

    @property
    def complete(self) -> bool:
        return all(p in self.tables for p in self.layers)

    def layer(self, path: str) -> LayerTable:
        try:
            return self.tables[path]
        except KeyError:
            raise KeyError(f"the cache has no layer {path!r}; it has {sorted(self.tables)}"
                           ) from None

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SimilarityCache:
        """Open a built (or partially built) cache directory."""
        directory = Path(directory)
        manifest = read_manifest(directory, CACHE_FORMAT, "similarity cache")
        tables = [LayerTable.from_json(d) for d in read_results(directory / "layers")]
        return cls(directory, manifest, {t.path: t for t in tables})

    def factors(self, path: str, method: str, rank: int) -> list[np.ndarray] | None:
        """Cached factors of ``(path, method, rank)``, when the method caches them."""
        return read_factors(factor_file(self.directory, path, method), rank)

    def build_model(self, model: keras.Model, plan: Mapping[str, Any]) -> keras.Model:
        """The compressed model for ``plan``, reusing cached factors where stored.

        ``model`` must be the model the cache was built from (checked by fingerprint of
        its architecture and weights is costly, so only the layer names are checked). A
        plan that prunes (a :class:`~lrf_optuna.plan.CompressionPlan` with
        ``ratios``) is built by :func:`lrf_optuna.prune.build_plan_model`, which knows the
        pruning cache.

        Raises:
            ValueError: ``plan`` prunes; a data-aware method's factors are not cached.
        """
        from lrf_optuna.decompose import get_method
        from lrf_optuna.rewrite import rewrite_model

        if CompressionPlan.of(plan).ratios:
            raise ValueError("this plan prunes: build it with "
                             "lrf_optuna.prune.build_plan_model(model, plan, cache, "
                             "pruning=...)")

        factors = {}
        for path, choice in plan.items():
            if choice is None or choice[0] == "keep":
                continue
            cached = self.factors(path, choice[0], int(choice[1]))
            if cached is not None:
                factors[(path, choice[0], int(choice[1]))] = cached
            elif get_method(choice[0]).needs_inputs:
                scored = sorted(c.rank for c in self.layer(path).for_method(choice[0]))
                raise ValueError(
                    f"layer {path!r}: method {choice[0]!r} is fitted to calibration inputs "
                    f"and the cache has its factors only at the scored ranks {scored}, "
                    f"but the plan asks for rank {int(choice[1])}")
        return rewrite_model(model, plan, factors=factors)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: keras.Model,
        calibration_x: np.ndarray,
        *,
        cache_dir: str | os.PathLike[str] = ".lrf_cache",
        metric: str = DEFAULT_METRIC,
        extra_metrics: Iterable[str] = (),
        grid: GridConfig | None = None,
        layers: Iterable[str] | None = None,
        batch_size: int = 64,
        max_bytes_per_layer: int | None = None,
        max_pass_bytes: int | None = None,
        workers: int | None = None,
        progress: bool = True,
        batchnorm: bool = True,
    ) -> SimilarityCache:
        """Build (or resume, or just open) the cache for ``model`` on ``calibration_x``.

        Args:
            model: The trained original model (Sequential or Functional).
            calibration_x: Calibration inputs drawn from training data, never test data.
            cache_dir: Parent directory; the cache lives in a fingerprint subdirectory.
            metric: The similarity metric the search uses (``cosine``, ``cka``, ``nmse``).
            extra_metrics: More metrics to store beside it (for comparisons).
            grid: Rank grid; :class:`GridConfig` defaults when omitted.
            layers: Restrict to these layer paths (default: every decomposable layer).
            batch_size: Batch size of the calibration pass and candidate evaluation.
            max_bytes_per_layer: Activation memory budget per layer.
            max_pass_bytes: Activation memory of one calibration pass (default
                :data:`DEFAULT_MAX_PASS_BYTES`): layers whose activations do not fit
                together are captured and scored in several passes.
            workers: Threads scoring layers in parallel (default: CPU count, at most 4).
            progress: Show a progress bar.
            batchnorm: Score a layer whose only consumer is a BatchNorm through that
                BatchNorm with re-estimated statistics (:func:`batchnorm_view`), as the
                fine-tuning jobs re-estimate them before training; ``False`` compares
                the layer's own outputs.
        """
        build = cls.builder(model, calibration_x, cache_dir=cache_dir, metric=metric,
                            extra_metrics=extra_metrics, grid=grid, layers=layers,
                            batch_size=batch_size, max_bytes_per_layer=max_bytes_per_layer,
                            max_pass_bytes=max_pass_bytes, batchnorm=batchnorm)
        if not run_build(build, workers=workers, progress=progress):
            logger.info("similarity cache %s is complete (%d layers)", build.cache.directory,
                        len(build.cache.layers))
        return build.cache

    @classmethod
    def builder(
        cls,
        model: keras.Model,
        calibration_x: np.ndarray,
        *,
        cache_dir: str | os.PathLike[str] = ".lrf_cache",
        metric: str = DEFAULT_METRIC,
        extra_metrics: Iterable[str] = (),
        grid: GridConfig | None = None,
        layers: Iterable[str] | None = None,
        batch_size: int = 64,
        max_bytes_per_layer: int | None = None,
        max_pass_bytes: int | None = None,
        batchnorm: bool = True,
    ) -> SimilarityBuild:
        """The build of the cache :meth:`build` makes, not run: its manifest is written
        and its units are ready to be run here (:func:`~lrf_optuna.scoring.build.run_build`)
        or by workers sharing a study's storage
        (:func:`lrf_optuna.search.scoring_queue.score_on_storage`). Same arguments as
        :meth:`build`.
        """
        from lrf_optuna.decompose import get_method
        from lrf_optuna.rewrite import find_layers

        grid = grid or GridConfig()
        metrics = list(dict.fromkeys([metric, *extra_metrics]))
        for m in metrics:
            if m not in METRICS:
                raise ValueError(f"unknown similarity metric {m!r}; choose from "
                                 f"{sorted(METRICS)}")
        if grid.methods is not None:
            for name in grid.methods:
                get_method(name)  # raises with the registered names
        found = find_layers(model)
        if layers is None:
            targets = list(found)
        else:
            targets = list(dict.fromkeys(layers))
            unknown = [p for p in targets if p not in found]
            if unknown:
                raise KeyError(f"not decomposable layers of {model.name!r}: {unknown}; "
                               f"decomposable: {sorted(found)}")
        x = np.asarray(calibration_x, dtype="float32")
        fp = fingerprint(model, x, metrics=metrics, grid=grid, layers=targets,
                         batchnorm=batchnorm)
        directory = Path(cache_dir) / fp[:16]
        manifest = {"format": CACHE_FORMAT, "fingerprint": fp, "model": model.name,
                    "metric": metric, "metrics": metrics, "grid": grid.to_json(),
                    "layers": targets, "calibration_samples": len(x),
                    "batchnorm": batchnorm,
                    "versions": library_versions()}
        if not (directory / "manifest.json").exists():
            write_json(directory / "manifest.json", manifest, indent=1)
        return SimilarityBuild(cls.load(directory), model, x, found, grid,
                               batch_size=batch_size, max_bytes_per_layer=max_bytes_per_layer,
                               max_pass_bytes=max_pass_bytes, batchnorm=batchnorm)

    @classmethod
    def builder_of(cls, model: keras.Model, calibration_x: np.ndarray,
                   settings: Mapping[str, Any]) -> SimilarityBuild:
        """The build another worker made, from its :meth:`SimilarityBuild.settings` and
        the same model and calibration data.

        Raises:
            ValueError: ``model`` or ``calibration_x`` are not the ones of that build
                (its fingerprint differs), when ``settings`` records a ``key``.
        """
        build = cls.builder(
            model, calibration_x, cache_dir=settings["cache_dir"], metric=settings["metric"],
            extra_metrics=settings.get("extra_metrics", ()),
            grid=GridConfig.from_json(settings.get("grid", {})), layers=settings["layers"],
            batch_size=int(settings.get("batch_size", 64)),
            max_bytes_per_layer=settings.get("max_bytes_per_layer"),
            max_pass_bytes=settings.get("max_pass_bytes"),
            batchnorm=bool(settings.get("batchnorm", True)))
        key = settings.get("key")
        if key is not None and build.key != key:
            raise ValueError(f"this worker's model or calibration data differ from the "
                             f"shared build's (fingerprint {build.key[:16]}, not {key[:16]})")
        return build

    @staticmethod
    def _layer_grid(info: LayerInfo, grid: GridConfig) -> dict[str, list[int]]:
        from lrf_optuna.decompose import methods_for

        out = {}
        for method in methods_for(info):
            if grid.methods is not None and method.name not in grid.methods:
                continue
            ranks = grid.ranks(method, info)
            if ranks:
                out[method.name] = ranks
        return out


#: A layer's scored candidates and, per method flagged ``cache_factors``, its factors
#: (``{method: {"r<rank>_<i>": array}}``).
Scored = tuple[LayerTable, dict[str, dict[str, np.ndarray]]]


class SimilarityBuild(ResumableBuild[Scored]):
    """The units of a similarity cache: one per target layer, every (method, rank) of
    its grid (made by :meth:`SimilarityCache.builder`; :attr:`cache` is the cache it
    fills).

    Layers whose activations do not fit in one calibration pass together
    (``max_pass_bytes``) are captured and scored pass by pass (:meth:`passes`)."""

    def __init__(self, cache: SimilarityCache, model: keras.Model, x: np.ndarray,
                 found: Mapping[str, LayerEntry], grid: GridConfig, *, batch_size: int,
                 max_bytes_per_layer: int | None, max_pass_bytes: int | None = None,
                 batchnorm: bool) -> None:
        from lrf_optuna.scoring.calibration import forward_batch

        self.cache, self.model, self.x, self.found = cache, model, x, found
        self.grid = grid
        self.batch_size, self.max_bytes_per_layer = batch_size, max_bytes_per_layer
        self.max_pass_bytes = max_pass_bytes
        self.batchnorm = batchnorm
        self.ranks = {p: SimilarityCache._layer_grid(self._info(p), grid)
                      for p in cache.layers}
        self.acts: Mapping[str, Any] = {}
        #: The calibration pass's forward batch (``calibration.forward_batch``).
        self._forward_batch = min(forward_batch(model, batch_size), len(x))

    @property
    def key(self) -> str:
        return self.cache.fingerprint

    def settings(self) -> dict[str, Any]:
        return {"key": self.key, "cache_dir": str(self.cache.directory.parent.resolve()),
                "metric": self.cache.metric, "extra_metrics": self.cache.metrics[1:],
                "grid": self.grid.to_json(), "layers": self.cache.layers,
                "batch_size": self.batch_size, "max_bytes_per_layer": self.max_bytes_per_layer,
                "max_pass_bytes": self.max_pass_bytes, "batchnorm": self.batchnorm}

    def _info(self, path: str) -> LayerInfo:
        info = self.found[path].info
        assert info is not None
        return info

    def units(self) -> list[Unit]:
        layers = self.cache.directory / "layers"
        return [Unit("layer", p, layers / f"{i:03d}-{safe_file_name(p)}.json",
                     sum(len(r) for r in self.ranks[p].values()))
                for i, p in enumerate(self.cache.layers)]

    def pass_bytes(self, paths: Sequence[str]) -> int:
        """Estimated activation memory of one calibration pass over ``paths``: the
        activations kept (:func:`~lrf_optuna.scoring.calibration.capture_activations`'
        per-layer budget) plus two copies of one forward batch of their full maps (the
        forward's other maps are bounded apart, by its ``max_forward_bytes``)."""
        from lrf_optuna.scoring.calibration import DEFAULT_MAX_BYTES_PER_LAYER, kept_samples

        budget = self.max_bytes_per_layer or DEFAULT_MAX_BYTES_PER_LAYER
        total = 0
        for path in paths:
            layer = self.found[path].layer
            per_sample = 4 * sum(math.prod(int(d) for d in t.shape[1:])
                                 for t in (layer.input, layer.output))
            keep = len(kept_samples(len(self.x), per_sample, budget))
            total += keep * per_sample + 2 * self._forward_batch * per_sample
        return total

    def passes(self, todo: Sequence[Unit]) -> list[list[Unit]]:
        limit = self.max_pass_bytes or DEFAULT_MAX_PASS_BYTES
        out: list[list[Unit]] = []
        for unit in todo:
            if out and self.pass_bytes([u.name for u in [*out[-1], unit]]) <= limit:
                out[-1].append(unit)
            else:
                out.append([unit])
        if len(out) > 1:
            logger.info("%d layers' activations exceed %.1f GiB together: captured and "
                        "scored in %d passes", len(todo), limit / 2**30, len(out))
        return out

    def prepare(self, todo: Sequence[Unit]) -> None:
        from lrf_optuna.scoring.calibration import (
            DEFAULT_MAX_BYTES_PER_LAYER,
            capture_activations,
        )

        paths = [u.name for u in todo]
        logger.info("scoring %d layer(s) (%d already cached) into %s", len(paths),
                    len(self.cache.layers) - len(paths), self.cache.directory)
        self.acts = {}  # the previous pass's activations go first
        self.acts = capture_activations(
            self.model, self.x, paths, batch_size=self.batch_size,
            max_bytes_per_layer=self.max_bytes_per_layer or DEFAULT_MAX_BYTES_PER_LAYER)

    def prepared(self, unit: Unit) -> bool:
        return unit.name in self.acts

    def release(self) -> None:
        self.acts = {}

    def run(self, unit: Unit, bar: ProgressBar) -> Scored:
        from lrf_optuna.decompose import layer_weights

        path = unit.name
        view = batchnorm_view(self.model, path) if self.batchnorm else None
        acts = self.acts[path]
        return score_candidates(path, self._info(path), layer_weights(self.found[path].layer),
                                acts.inputs, acts.outputs, self.ranks[path],
                                self.cache.metrics, self.batch_size, bar, view=view)

    def write(self, unit: Unit, result: Scored) -> None:
        table, factor_store = result
        for method, arrays in factor_store.items():
            write_factors(factor_file(self.cache.directory, unit.name, method), arrays)
        write_json(unit.file, table.to_json())
        self.cache.tables[unit.name] = table


def score_outputs(metrics: Sequence[str], y_ref: np.ndarray, y_hat: np.ndarray
                  ) -> dict[str, float]:
    """``{metric: similarity}`` of ``y_hat`` to ``y_ref`` (CKA on at most
    :data:`CKA_MAX_SAMPLES` evenly spaced samples)."""
    from lrf_optuna.scoring.similarity import METRICS

    scores = {}
    for m in metrics:
        if m == "cka" and len(y_ref) > CKA_MAX_SAMPLES:
            idx = np.linspace(0, len(y_ref) - 1, CKA_MAX_SAMPLES).round().astype(int)
            scores[m] = float(METRICS[m](y_ref[idx], y_hat[idx]))
        else:
            scores[m] = float(METRICS[m](y_ref, y_hat))
    return scores


def run_batched(layer: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``layer`` applied to ``x`` batch by batch, as one numpy array."""
    import keras

    return np.concatenate([keras.ops.convert_to_numpy(layer(x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def score_candidates(path: str, info: LayerInfo, weights: Mapping[str, np.ndarray],
                     x_in: np.ndarray, y_ref: np.ndarray, ranks: Mapping[str, list[int]],
                     metrics: Sequence[str], batch_size: int, bar: ProgressBar, *,
                     view: BatchNormView | None = None) -> Scored:
    """Factorize the layer ``info`` (``weights``) at every ``(method, rank)`` of ``ranks``,
    run each replacement alone on ``x_in`` and score its outputs against ``y_ref`` (both
    seen through ``view``, the re-estimated BatchNorm after the layer, when given).

    Returns the :class:`LayerTable` and, for methods flagged ``cache_factors``, their
    factors as ``{method: {"r<rank>_<i>": array}}``.
    """
    from lrf_optuna.decompose import get_method, validate_weights

    t_layer = time.perf_counter()
    weights = validate_weights(info, weights)
    if view is not None:
        y_ref = view.apply(y_ref)
    cands: list[Candidate] = []
    prep_secs: dict[str, float] = {}
    stored: dict[str, dict[str, np.ndarray]] = {}
    for name, method_ranks in ranks.items():
        method = get_method(name)
        t0 = time.perf_counter()
        prepared = (method.prepare_with_inputs(info, weights, x_in) if method.needs_inputs
                    else method.prepare(info, weights))
        prep_secs[name] = time.perf_counter() - t0
        for rank in method_ranks:
            t1 = time.perf_counter()
            factors = method.factorize(info, prepared, rank)
            small = method.decompose(info, weights, rank, factors=factors)
            secs = time.perf_counter() - t1
            y_hat = run_batched(small, x_in, batch_size)
            scores = score_outputs(metrics, y_ref,
                                   view.apply(y_hat) if view is not None else y_hat)
            cands.append(Candidate(name, int(rank), method.params(info, rank),
                                   method.macs(info, rank), scores, round(secs, 6)))
            if getattr(method, "cache_factors", False):
                store = stored.setdefault(name, {})
                for i, f in enumerate(factors):
                    store[f"r{rank}_{i}"] = np.asarray(f, dtype="float32")
            bar.update(1)
        bar.set_postfix_str(f"{path}:{name}")
    table = LayerTable(path=path, class_name=info.class_name,
                       original_params=info.original_params, original_macs=info.original_macs,
                       candidates=tuple(cands), samples=len(x_in), prepare_seconds=prep_secs,
                       seconds=round(time.perf_counter() - t_layer, 3))
    return table, stored
