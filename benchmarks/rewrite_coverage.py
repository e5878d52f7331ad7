"""Rewrite everything: every ``keras.applications`` family and the zoo, every decomposable
layer replaced at full rank, round-robin over the methods that apply.

    python -m benchmarks.rewrite_coverage [--architectures NAME ...] [--no-write]

For each architecture (random weights, the smallest input its family accepts):

1. every layer :func:`~lrf_optuna.rewrite.find_layers` lists is replaced at its method's
   maximum rank, the method taken round-robin among the layers to which the same methods
   apply (conv layers: ``channel_svd``, ``tucker2``, ``spatial_svd``, ``cp``; matrix
   layers: ``svd``, ``tt``, ``qr``), so that every method meets real layers;
2. the rewritten model's outputs are compared with the original's (relative error, norm
   of the difference over the norm of the original's output, on two uniform images);
3. it is saved as ``.keras`` and loaded with ``safe_mode=True``, and compared again;
4. the same plan at a quarter of each maximum rank (at least 1) is built and run: its
   outputs must be finite (``cp`` runs 3 ALS sweeps there: only finiteness is asked);
5. :func:`~lrf_optuna.costs.model_costs` must agree with ``count_params()`` on the
   original, the full-rank, the loaded and the partial model.

Layers with weights that no method applies to are listed with the reason
(``find_layers(model, include_unsupported=True)``). It prints a table and writes it to
``benchmarks/RESULTS.md`` under ``## Rewrite coverage (issue 9)``.
``tests/test_keras_applications.py`` runs the same checks (:func:`check`) on every
architecture and asserts them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from threadpoolctl import threadpool_limits

from lrf_optuna.costs import model_costs
from lrf_optuna.decompose import get_method, layer_weights, validate_weights
from lrf_optuna.decompose.conv_cp import ConvCP
from lrf_optuna.rewrite import LayerEntry, find_layers, rewrite_model

SECTION = "Rewrite coverage (issue 9)"
CONV_CYCLE = ("channel_svd", "tucker2", "spatial_svd", "cp")
#: ``tt`` before ``qr``: VGG's 4096 x 4096 ``fc2`` is then a TT-SVD (5 s on one busy core)
#: rather than a pivoted QR (43 s) or an SVD (60 s); ``qr`` gets its 4096 x 10 head.
MATRIX_CYCLE = ("svd", "tt", "qr")
#: The partial-rank check only asks for finite outputs: a few ALS sweeps are enough.
PARTIAL_FACTORIZERS = {"cp": ConvCP(n_iter_max=3, time_budget=None)}

A = keras.applications


def _app(builder: Callable[..., keras.Model], size: int,
         **kwargs: Any) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        return builder(weights=None, input_shape=(size, size, 3), classes=10,
                       classifier_activation=None, **kwargs)
    return build


def _zoo(name: str, shape: tuple[int, int, int]) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        from lrf_optuna.models import build_reference_model

        return build_reference_model(name, shape, 10)
    return build


#: One architecture per ``keras.applications`` family (the smallest member, at the smallest
#: input the family accepts), then the zoo.
ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "ConvNeXtTiny": _app(A.ConvNeXtTiny, 32),
    "DenseNet121": _app(A.DenseNet121, 32),
    "EfficientNetB0": _app(A.EfficientNetB0, 32),
    "EfficientNetV2B0": _app(A.EfficientNetV2B0, 32),
    "InceptionResNetV2": _app(A.InceptionResNetV2, 75),
    "InceptionV3": _app(A.InceptionV3, 75),
    "MobileNet": _app(A.MobileNet, 32, alpha=0.25),
    "MobileNetV2": _app(A.MobileNetV2, 32, alpha=0.35),
    "MobileNetV3Small": _app(A.MobileNetV3Small, 32, alpha=0.75),
    "NASNetMobile": _app(A.NASNetMobile, 32),
    "ResNet50": _app(A.ResNet50, 32),
    "ResNet50V2": _app(A.ResNet50V2, 32),
    "VGG16": _app(A.VGG16, 32),
    "VGG19": _app(A.VGG19, 32),
    "Xception": _app(A.Xception, 71),
    "zoo/lenet5": _zoo("lenet5", (28, 28, 1)),
    "zoo/vgg_small": _zoo("vgg_small", (32, 32, 3)),
    "zoo/resnet20": _zoo("resnet20", (32, 32, 3)),
    "zoo/mobilenetv2_small": _zoo("mobilenetv2_small", (32, 32, 3)),
}


def build(name: str) -> keras.Model:
    """The architecture ``name`` with seeded random weights (:func:`perturb_vectors`)."""
    keras.utils.set_random_seed(0)
    model = ARCHITECTURES[name]()
    perturb_vectors(model, np.random.default_rng(0))
    return model


def perturb_vectors(model: keras.Model, rng: np.random.Generator, scale: float = 0.1) -> None:
    """Give the vectors (biases, normalization parameters and statistics) trained-like
    values instead of the zeros and ones of initialization, so every bias is exercised
    and no output is degenerate; kernels keep their (random, scale-preserving) init.
    Variances and scales stay near 1, so deep networks keep their activations' scale.

    The statistics of ``Normalization`` layers are left alone: Keras recomputes what that
    layer uses from them only in ``adapt()``, so assigned values do not survive a
    ``.keras`` round trip (with or without any rewrite)."""
    from lrf_optuna.rewrite import iter_layers

    skip = {id(w) for _, layer in iter_layers(model)
            if isinstance(layer, keras.layers.Normalization) for w in layer.weights}
    for w in model.weights:
        if len(w.shape) != 1 or id(w) in skip:
            continue
        noise = rng.standard_normal(tuple(w.shape)) * scale
        name = w.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance", "variance"):
            noise = 1.0 + np.abs(noise)
        w.assign(noise.astype(w.dtype))


def round_robin_plan(found: Mapping[str, LayerEntry]) -> dict[str, tuple[str, int]]:
    """Each layer at full rank, its method taken round-robin among the layers to which the
    same methods apply (so a depthwise conv between two Conv2D does not skip a method)."""
    cycles: dict[tuple[str, ...], Iterator[str]] = {}
    plan = {}
    for path, entry in found.items():
        assert entry.info is not None
        order = MATRIX_CYCLE if entry.info.is_matrix else CONV_CYCLE
        key = tuple(m for m in order if m in entry.methods) or (entry.methods[0],)
        name = next(cycles.setdefault(key, itertools.cycle(key)))
        plan[path] = (name, get_method(name).max_rank(entry.info))
    return plan


def rel_err(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


def _fit(model: keras.Model, x: np.ndarray) -> Any:
    """``x`` in the structure of the model's input (a one-element list for some
    applications), so Keras does not warn about it."""
    return [x] if isinstance(model.input, (list, tuple)) else x


def outputs(model: keras.Model, paths: Sequence[str], x: np.ndarray
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The model's output and those of its top-level layers ``paths`` on ``x``, in one
    forward pass."""
    taps = keras.Model(model.input, [model.output, *(model.get_layer(p).output for p in paths)])
    y, *layers = (keras.ops.convert_to_numpy(o) for o in taps(_fit(taps, x), training=False))
    return y, layers


def worst_layer(original: Sequence[np.ndarray], new: Sequence[np.ndarray],
                paths: Sequence[str]) -> tuple[float, str]:
    """The largest relative error over the layers' outputs, and the layer it is at."""
    errors = [(rel_err(b, a), p) for a, b, p in zip(original, new, paths, strict=True)]
    return max(errors) if errors else (0.0, "")


@dataclass
class Coverage:
    """What :func:`check` found on one architecture."""

    name: str
    layers_with_weights: int
    rewritten: int
    methods: Counter[str]
    plan: dict[str, tuple[str, int]]
    applicable: dict[str, tuple[str, ...]]
    """Per rewritten layer, the methods of the round-robin cycles that apply to it."""
    refused: dict[str, str]
    full_rank_error: float
    round_trip_error: float
    worst_layer_error: float
    """Largest relative error of a rewritten layer's output (full rank and after the round
    trip), each against the original layer's output in the original model."""
    worst_layer: str
    partial_finite: bool
    partial_error: float
    params: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per model (original, full, loaded, partial): ``(model_costs params, count_params)``."""
    macs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def params_agree(self) -> bool:
        return all(a == b for a, b in self.params.values())


def _reason(reason: str | None) -> str:
    """The reason without the layer's own name, so equal reasons group."""
    text = reason or "no registered method applies"
    if text.startswith("layer '"):
        text = text.split("' ", 1)[-1]
    return text


class _Phases:
    """Wall-clock seconds per phase of :func:`check`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._t
        self._t = now


def check(name: str, model: keras.Model, tmp_dir: str | os.PathLike[str]) -> Coverage:
    """Run the module's checks on ``model`` (see the module docstring)."""
    phases = _Phases()
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape)).astype("float32")
    listed = find_layers(model, include_unsupported=True)
    found = {p: e for p, e in listed.items() if e.info is not None and e.methods}
    refused = {p: _reason(e.reason) for p, e in listed.items() if p not in found}
    plan = round_robin_plan(found)
    top = [p for p in plan if "/" not in p]  # nested layers are covered by the outputs
    y, reference = outputs(model, top, x)
    phases.done("find")
    prepared = {}
    for path, (method, _) in plan.items():
        info = found[path].info
        assert info is not None
        prepared[(path, method)] = get_method(method).prepare(
            info, validate_weights(info, layer_weights(found[path].layer)))
    phases.done("prepare")
    full = rewrite_model(model, plan, prepared=prepared)
    y_full, layers_full = outputs(full, top, x)
    phases.done("rewrite")
    path = Path(tmp_dir) / f"{name.replace('/', '_')}.keras"
    full.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    y_loaded, layers_loaded = outputs(loaded, top, x)
    path.unlink()
    worst = max(worst_layer(reference, layers_full, top),
                worst_layer(reference, layers_loaded, top))
    phases.done("round trip")
    partial_plan = {p: (m, max(1, r // 4)) for p, (m, r) in plan.items()}
    factors = {}
    for p, (m, r) in partial_plan.items():
        if m in PARTIAL_FACTORIZERS:
            info = found[p].info
            assert info is not None
            factors[(p, m, r)] = PARTIAL_FACTORIZERS[m].factorize(info, prepared[(p, m)], r)
    partial = rewrite_model(model, partial_plan, prepared=prepared, factors=factors)
    y_partial = keras.ops.convert_to_numpy(partial(_fit(partial, x), training=False))
    phases.done("partial")
    models = {"original": model, "full": full, "loaded": loaded, "partial": partial}
    costs = {k: model_costs(m) for k, m in models.items()}
    phases.done("costs")
    return Coverage(
        name=name,
        layers_with_weights=len(listed),
        rewritten=len(plan),
        methods=Counter(m for m, _ in plan.values()),
        plan=plan,
        applicable={p: tuple(m for m in (*CONV_CYCLE, *MATRIX_CYCLE) if m in e.methods)
                    for p, e in found.items()},
        refused=refused,
        full_rank_error=rel_err(y_full, y),
        round_trip_error=rel_err(y_loaded, y),
        worst_layer_error=worst[0],
        worst_layer=worst[1],
        partial_finite=bool(np.all(np.isfinite(y_partial))),
        partial_error=rel_err(y_partial, y),
        params={k: (c.params, m.count_params()) for (k, c), m in zip(
            costs.items(), models.values(), strict=True)},
        macs={k: c.macs for k, c in costs.items()},
        seconds=sum(phases.seconds.values()),
        phases=phases.seconds,
    )


def render(results: Sequence[Coverage], command: str) -> str:
    """The RESULTS.md section: one row per architecture, then the refused layers."""
    from benchmarks._problem import machine
    from benchmarks._results import markdown_table

    rows = []
    for r in results:
        methods = ", ".join(f"{m} {n}" for m, n in sorted(r.methods.items()))
        rows.append([r.name, r.rewritten, len(r.refused), methods, f"{r.full_rank_error:.1e}",
                     f"{r.round_trip_error:.1e}", f"{r.worst_layer_error:.1e}",
                     "yes" if r.partial_finite else "NO",
                     f"{r.macs['partial'] / max(r.macs['original'], 1):.2f}",
                     "yes" if r.params_agree else "NO", f"{r.seconds:.0f}"])
    refusals = []
    for r in results:
        for reason, n in Counter(r.refused.values()).most_common():
            layers = sorted(p for p, why in r.refused.items() if why == reason)
            shown = ", ".join(f"`{p}`" for p in layers[:3]) + (" ..." if len(layers) > 3 else "")
            refusals.append([r.name, n, reason, shown])
    return "\n\n".join([
        f"Command: `{command}`, run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{machine()}, TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}.",
        "Random weights (`weights=None`; biases and normalization vectors perturbed so "
        "none is zero), 10 classes, no classifier activation, the smallest input each "
        "family accepts (32x32; Inception 75x75, Xception 71x71). Every layer `find_layers` "
        "lists is rewritten at full rank, methods round-robin among the layers the same "
        "methods apply to (conv: channel_svd, tucker2, spatial_svd, cp; matrix: svd, tt, "
        "qr). Errors are `||y_new - y|| / ||y||` on two uniform images: the model's output "
        "(full rank, and after the round trip = `.keras` save + "
        "`load_model(safe_mode=True)`), and the worst over every rewritten layer's output "
        "(full rank and loaded). Partial = the same plan at a quarter of each maximum rank "
        "(outputs finite; MACs relative to the original). Params agree = `model_costs` "
        "equals `count_params()` on the original, full-rank, loaded and partial models.",
        markdown_table(["architecture", "rewritten", "not decomposable", "methods (layers)",
                        "full-rank error", "round-trip error", "worst layer error",
                        "partial finite",
                        "partial MACs", "params agree", "time (s)"], rows),
        "Layers with weights that are not rewritten, and why:",
        markdown_table(["architecture", "layers", "reason", "e.g."], refusals)
        if refusals else "(none)",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rewrite_coverage")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES),
                        choices=list(ARCHITECTURES), metavar="NAME")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    from benchmarks._problem import setup_logging
    from benchmarks._results import write_section

    setup_logging()
    results = []
    # one BLAS thread: on a busy 2-core machine a multi-threaded SVD runs ~10x slower
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1, user_api="blas"):
        for name in args.architectures:
            result = check(name, build(name), tmp)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in result.phases.items())
            print(f"{name}: {result.rewritten} rewritten, full-rank error "
                  f"{result.full_rank_error:.1e}, {result.seconds:.0f} s ({phases})", flush=True)
            results.append(result)
            keras.backend.clear_session()
    command = "python -m benchmarks.rewrite_coverage"
    if args.architectures != list(ARCHITECTURES):
        command += " --architectures " + " ".join(args.architectures)
    body = render(results, command)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
