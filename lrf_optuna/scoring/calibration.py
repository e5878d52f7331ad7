"""Calibration pass: capture each target layer's input and output on real data, once.

One forward pass of a multi-output model built on the original graph (nested models
included: their inner tensors are reached by calling an inner extractor on the nested
model's input), batched, so the original model runs once over the calibration set.

Memory budget: each layer keeps at most ``max_bytes_per_layer`` of activations (input plus
output, float32). When a layer's maps are too large for all calibration samples, it keeps
an evenly spaced, deterministic subset of the samples (always at least ``min_samples``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from lrf_optuna.rewrite import check_supported_model

__all__ = ["DEFAULT_MAX_FORWARD_BYTES", "LayerActivations", "capture_activations",
           "forward_batch", "forward_bytes_per_sample", "kept_samples", "sample_index"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES_PER_LAYER = 96 * 2**20
#: Memory of one forward batch of the calibration pass: a Keras functional call keeps every
#: intermediate map of the batch until it returns (ResNet50 at 224x224: ~100 MB per image),
#: so the batch is cut to fit (small nets keep the full batch).
DEFAULT_MAX_FORWARD_BYTES = 2**30


def forward_bytes_per_sample(model: keras.Model) -> int:
    """Float32 bytes of every layer output of ``model`` for one sample (nested models
    counted through their layers)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_bytes_per_sample(layer)
            continue
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        total += sum(4 * math.prod(int(d or 1) for d in t.shape[1:]) for t in outputs)
    return total


@dataclass(frozen=True)
class LayerActivations:
    """What the original layer saw and produced on the kept calibration samples."""

    inputs: np.ndarray
    outputs: np.ndarray
    sample_index: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.inputs.nbytes + self.outputs.nbytes)


def sample_index(n: int, keep: int) -> np.ndarray:
    """``keep`` evenly spaced indices of ``range(n)`` (all of them when ``keep >= n``)."""
    if keep >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))


def forward_batch(model: keras.Model, batch_size: int,
                  max_forward_bytes: int = DEFAULT_MAX_FORWARD_BYTES) -> int:
    """``batch_size``, lowered until one forward batch of ``model`` fits
    ``max_forward_bytes`` (:func:`forward_bytes_per_sample`)."""
    return max(1, min(batch_size, max_forward_bytes // max(forward_bytes_per_sample(model), 1)))


def kept_samples(n: int, bytes_per_sample: int, max_bytes_per_layer: int,
                 min_samples: int = 32) -> np.ndarray:
    """The samples a layer of ``bytes_per_sample`` (input plus output) keeps out of ``n``
    under ``max_bytes_per_layer`` (at least ``min_samples``)."""
    return sample_index(n, max(min_samples, max_bytes_per_layer // max(bytes_per_sample, 1)))


def _single(inputs: list[Any]) -> Any:
    if len(inputs) != 1:
        raise ValueError(f"the calibration pass supports single-input models; this one has "
                         f"{len(inputs)} inputs")
    return inputs[0]


def _call_input(model: keras.Model, layer: keras.Model) -> Any:
    """The tensor of ``model``'s graph that feeds the nested model ``layer``.

    (``layer.input`` is that tensor for a nested Sequential, but a nested Functional's own
    input placeholder, which ``model``'s graph does not reach.)
    """
    fn = model._functional if isinstance(model, keras.Sequential) else model
    for nodes in fn._nodes_by_depth.values():
        for node in nodes:
            if node.operation is layer:
                return _single(node.input_tensors)
    raise ValueError(f"nested model {layer.name!r} is not called in {model.name!r}'s graph")


def _extractor(model: keras.Model, targets: set[str], prefix: str = ""
               ) -> tuple[list[str], list[Any]]:
    """Symbolic ``(keys, tensors)`` in ``model``'s graph for the targets' inputs/outputs."""
    keys: list[str] = []
    tensors: list[Any] = []
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            inner = {t for t in targets if t.startswith(f"{path}/")}
            if not inner:
                continue
            check_supported_model(layer)
            inner_keys, inner_tensors = _extractor(layer, inner, prefix=f"{path}/")
            sub = keras.Model(_single(layer.inputs), inner_tensors, name=f"{layer.name}_taps")
            outs = sub(_call_input(model, layer))
            keys += inner_keys
            tensors += list(outs) if isinstance(outs, (list, tuple)) else [outs]
        elif path in targets:
            keys += [f"{path}\0in", f"{path}\0out"]
            tensors += [layer.input, layer.output]
    return keys, tensors


def capture_activations(
    model: keras.Model,
    x: np.ndarray,
    layers: Iterable[str],
    *,
    batch_size: int = 64,
    max_bytes_per_layer: int = DEFAULT_MAX_BYTES_PER_LAYER,
    min_samples: int = 32,
    max_forward_bytes: int = DEFAULT_MAX_FORWARD_BYTES,
) -> dict[str, LayerActivations]:
    """Run ``model`` once over ``x`` and keep each listed layer's input and output.

    Args:
        model: The original (built) Sequential or Functional model.
        x: Calibration inputs, ``(n, *input_shape)``; never test data.
        layers: Layer paths (as :func:`lrf_optuna.rewrite.find_layers` names them).
        batch_size: Forward-pass batch size.
        max_bytes_per_layer: Activation budget per layer (see the module docstring).
        min_samples: Lower bound on the samples a layer keeps, whatever the budget.
        max_forward_bytes: Memory of one forward batch (:data:`DEFAULT_MAX_FORWARD_BYTES`):
            ``batch_size`` is lowered until every map of a batch fits.

    Returns:
        ``{path: LayerActivations}``; outputs are after the layer's activation.
    """
    targets = list(dict.fromkeys(layers))
    check_supported_model(model)
    x = np.asarray(x, dtype="float32")
    n = len(x)
    if n == 0:
        raise ValueError("the calibration set is empty")
    keys, tensors = _extractor(model, set(targets))
    missing = sorted(set(targets) - {k.split("\0")[0] for k in keys})
    if missing:
        raise KeyError(f"model {model.name!r} has no layers {missing}")
    taps = keras.Model(_single(model.inputs), tensors, name=f"{model.name}_calibration")
    batch_size = forward_batch(model, batch_size, max_forward_bytes)
    bytes_per_sample: dict[str, int] = {}
    for k, t in zip(keys, tensors):
        path = k.split("\0")[0]
        size = 4 * math.prod(int(d) for d in t.shape[1:])
        bytes_per_sample[path] = bytes_per_sample.get(path, 0) + size
    index = {p: kept_samples(n, b, max_bytes_per_layer, min_samples)
             for p, b in bytes_per_sample.items()}
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        wanted = {p: idx[(idx >= start) & (idx < stop)] - start for p, idx in index.items()}
        if not any(len(w) for w in wanted.values()):
            continue
        outs = taps(x[start:stop], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for k, out in zip(keys, outs):
            sel = wanted[k.split("\0")[0]]
            if len(sel):
                chunks[k].append(keras.ops.convert_to_numpy(out)[sel])
    result = {}
    for path in targets:
        result[path] = LayerActivations(
            inputs=np.concatenate(chunks[f"{path}\0in"]),
            outputs=np.concatenate(chunks[f"{path}\0out"]),
            sample_index=index[path])
    logger.info("captured activations of %d layer(s) on %d sample(s)", len(result), n)
    return result

