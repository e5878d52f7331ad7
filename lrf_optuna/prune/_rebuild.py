"""Build the pruned model: clone the graph with fewer filters and sliced weights."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from lrf_optuna.prune._graph import PRODUCERS, GraphAnalysis
from lrf_optuna.rewrite import iter_layers

L = keras.layers

#: For each weight family, ``{variable name: ((mask, axis), ...)}``: which mask slices
#: which axis. ``in``: input channels; ``out``: the layer's own filters; ``in_rep``: input
#: channels repeated ``depth_multiplier`` times (depthwise outputs).
_SLICES: dict[str, dict[str, tuple[tuple[str, int], ...]]] = {
    "dense": {"kernel": (("in", 0), ("out", 1)), "bias": (("out", 0),)},
    "conv": {"kernel": (("in", -2), ("out", -1)), "bias": (("out", 0),)},
    "conv_transpose": {"kernel": (("in", -1), ("out", -2)), "bias": (("out", 0),)},
    "separable": {"depthwise_kernel": (("in", -2),),
                  "pointwise_kernel": (("in_rep", -2), ("out", -1)), "bias": (("out", 0),)},
    "depthwise": {"kernel": (("in", -2),), "bias": (("in_rep", 0),)},
    "batch_norm": {name: (("in", 0),)
                   for name in ("gamma", "beta", "moving_mean", "moving_variance")},
}


def _family(layer: keras.layers.Layer) -> str | None:
    if type(layer) in PRODUCERS:
        return PRODUCERS[type(layer)]
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return "depthwise"
    if isinstance(layer, L.BatchNormalization):
        return "batch_norm"
    return None


def input_mask(analysis: GraphAnalysis, path: str, masks: Mapping[int, np.ndarray]
               ) -> np.ndarray | None:
    """Which input channels of ``path`` survive (``None``: all of them)."""
    m = analysis.inputs.get(path)
    if m is None:
        return None
    keep = np.ones(len(m.gid), dtype=bool)
    roots = analysis.root_of(m.gid)
    for root, mask in masks.items():
        sel = roots == root
        keep[sel] = mask[m.ch[sel]]
    return None if keep.all() else keep


def sliced_weights(layer: keras.layers.Layer, in_mask: np.ndarray | None,
                   out_mask: np.ndarray | None) -> list[np.ndarray]:
    """The layer's weights with the removed input / output channels cut out."""
    family = _family(layer)
    rules = _SLICES.get(family, {}) if family else {}
    rep = int(getattr(layer, "depth_multiplier", 1))
    chosen = {"in": in_mask, "out": out_mask,
              "in_rep": None if in_mask is None else np.repeat(in_mask, rep)}
    out = []
    for var in layer.weights:
        arr = keras.ops.convert_to_numpy(var)
        for which, axis in rules.get(var.name, ()):
            mask = chosen[which]
            if mask is not None:
                arr = np.compress(mask, arr, axis=axis)
        out.append(arr)
    return out


def rebuild(model: keras.Model, analysis: GraphAnalysis, masks: Mapping[int, np.ndarray]
            ) -> keras.Model:
    """Clone ``model`` with group ``g``'s filters cut to ``masks[g]`` everywhere."""
    paths = {id(layer): path for path, layer in iter_layers(model)}
    out_masks: dict[str, np.ndarray] = {}
    for path, prod in analysis.producers.items():
        if prod.gid is not None and analysis.root(prod.gid) in masks:
            out_masks[path] = masks[analysis.root(prod.gid)]
    copies: list[tuple[keras.layers.Layer, keras.layers.Layer, str]] = []

    def clone(op: keras.layers.Layer) -> keras.layers.Layer:
        path = paths.get(id(op))
        cfg = op.get_config()
        if path in out_masks:
            cfg["units" if isinstance(op, L.Dense) else "filters"] = int(out_masks[path].sum())
        new = op.__class__.from_config(cfg)
        if path is not None:
            copies.append((new, op, path))
        return new

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype,
                          name=t._keras_history.operation.name) for t in model.inputs]
    new_model = keras.models.clone_model(
        model, input_tensors=inputs if len(inputs) > 1 else inputs[0],
        clone_function=clone, recursive=True)
    for new, old, path in copies:
        new.set_weights(sliced_weights(old, input_mask(analysis, path, masks),
                                       out_masks.get(path)))
    return new_model
