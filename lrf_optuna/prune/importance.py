"""Filter importance: which output channels of a layer (or of a group) pruning keeps.

Criteria (``importance=`` everywhere in :mod:`lrf_optuna.prune`):

``"l1"`` (default), ``"l2"``
    The L1 / L2 norm of each filter's weights (bias excluded), as the filter acts on the
    network: for a SeparableConv the effective ``k x C_in`` kernel of each output filter
    (depthwise times pointwise); when a BatchNormalization follows the layer (directly or
    through activations, dropout, pooling or padding) its per-channel scale
    ``|gamma| / sqrt(moving_var + eps)`` is folded in, because BatchNorm undoes the scale
    of the raw filters (a conv followed by BatchNorm has arbitrary filter norms).

``"activation"``
    The mean absolute value of the channel where it is *consumed*: over the calibration
    samples and all positions, at the input of every layer whose input channels the pruning
    slices (the next convolutions or Dense layers, after any BatchNorm, activation, pooling
    or Flatten in between), averaged over all the places the channel appears. That is the
    signal the consumers lose when the channel is removed. Those inputs come from
    :func:`lrf_optuna.scoring.calibration.capture_activations` on
    :meth:`lrf_optuna.prune.PruneGraph.activation_layers`.

Groups (producers whose outputs meet at an ``Add``-like merge) keep the same channels:
with ``"activation"`` the score is measured on the merged tensor the consumers see, so
it is a group score by construction; with ``"l1"``/``"l2"`` each member's norms are divided
by their mean over the channels (every member has an equal say whatever its weight scale)
and summed.

Scores computed before (``importance={layer path: scores}``, e.g. ``"activation"`` scores
stored by :class:`lrf_optuna.prune.PruneCache`) may stand for a criterion.

Selection: the ``n_keep`` highest scores are kept; ties go to the lower channel index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from lrf_optuna.prune._graph import GraphAnalysis, Producer

__all__ = ["CRITERIA", "Importance", "filter_norms", "select_channels"]

#: The importance criteria, by name.
CRITERIA = ("l1", "l2", "activation")
#: A criterion name, or channel scores computed before (``{layer path: scores}``, one
#: member per group), e.g. stored by the pruning cache.
Importance = str | Mapping[str, Any]


def _np(v: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)


def _filters(producer: Producer) -> np.ndarray:
    """The producer's filters as the columns of a ``(fan_in, C_out)`` matrix."""
    layer = producer.layer
    if producer.family == "separable":
        dw = _np(layer.depthwise_kernel)                       # (*k, C, m)
        pw = _np(layer.pointwise_kernel)                       # (*1, C*m, F)
        c, m = dw.shape[-2], dw.shape[-1]
        pw = pw.reshape(c, m, pw.shape[-1])
        return np.einsum("...cj,cjf->...cf", dw, pw).reshape(-1, pw.shape[-1])
    kernel = _np(layer.kernel)
    if producer.family == "conv_transpose":                     # (*k, C_out, C_in)
        kernel = np.moveaxis(kernel, -2, -1)
    return kernel.reshape(-1, kernel.shape[-1])


def filter_norms(producer: Producer, p: int = 1) -> np.ndarray:
    """Lp norm of each output filter, with a following BatchNorm's scale folded in."""
    norms = np.linalg.norm(_filters(producer), ord=p, axis=0)
    bn = producer.batch_norm
    if bn is not None:
        scale = 1.0 / np.sqrt(_np(bn.moving_variance) + float(bn.epsilon))
        if bn.scale:
            scale = scale * np.abs(_np(bn.gamma))
        norms = norms * scale
    return norms


def weight_scores(analysis: GraphAnalysis, root: int, p: int) -> np.ndarray:
    """Group score from the members' filter norms (each normalized by its mean)."""
    members = analysis.members(root)
    if len(members) == 1:
        return filter_norms(analysis.producers[members[0]], p)
    total = np.zeros(analysis.producers[members[0]].channels)
    for path in members:
        s = filter_norms(analysis.producers[path], p)
        mean = float(s.mean())
        total += s / mean if mean > 0 else s
    return total


def activation_scores(analysis: GraphAnalysis, root: int,
                      activations: Mapping[str, Any]) -> np.ndarray:
    """Mean |x| of each channel of group ``root`` at the inputs of its consumers."""
    channels = analysis.producers[analysis.producer_paths[root]].channels
    acc, cnt = np.zeros(channels), np.zeros(channels)
    needed = consumers_of(analysis, root)
    missing = [p for p in needed if p not in activations]
    if missing:
        raise KeyError(
            f"activation importance of {analysis.members(root)} needs the captured inputs "
            f"of {missing}; capture them with capture_activations(model, x_cal, "
            "PruneGraph(model).activation_layers())")
    for path in needed:
        m = analysis.inputs[path]
        act = activations[path]
        x = np.asarray(getattr(act, "inputs", act))
        if x.ndim < 2 or x.shape[m.axis] != len(m.gid):
            raise ValueError(
                f"captured input of {path!r} has shape {x.shape}; expected {len(m.gid)} "
                f"channels on axis {m.axis}")
        axes = tuple(i for i in range(x.ndim) if i != m.axis)
        mean_abs = np.abs(x.astype(np.float64)).mean(axis=axes)
        sel = analysis.root_of(m.gid) == root
        np.add.at(acc, m.ch[sel], mean_abs[sel])
        np.add.at(cnt, m.ch[sel], 1)
    return acc / np.maximum(cnt, 1)


def consumers_of(analysis: GraphAnalysis, root: int) -> list[str]:
    """Consumers (layers slicing their input channels) of group ``root``, sorted."""
    return sorted(p for p in analysis.consumers
                  if (analysis.root_of(analysis.inputs[p].gid) == root).any())


def group_scores(analysis: GraphAnalysis, root: int, importance: Importance,
                 activations: Mapping[str, Any] | None) -> np.ndarray:
    """The importance of every channel of group ``root`` under criterion ``importance``
    (a name of :data:`CRITERIA`, or scores computed before: ``{layer path: scores}`` with
    an entry for one member of the group)."""
    if isinstance(importance, Mapping):
        members = analysis.members(root)
        given = [p for p in members if p in importance]
        if not given:
            raise KeyError(f"the importance scores given have no entry for {members} (one "
                           f"member of the group is enough); they have {sorted(importance)}")
        scores = np.asarray(importance[given[0]], dtype=np.float64)
        channels = analysis.producers[members[0]].channels
        if scores.shape != (channels,):
            raise ValueError(f"importance scores of layer {given[0]!r} have shape "
                             f"{scores.shape}; expected ({channels},), one per channel")
        return scores
    if importance in ("l1", "l2"):
        return weight_scores(analysis, root, 1 if importance == "l1" else 2)
    if importance == "activation":
        if activations is None:
            raise ValueError(
                "importance='activation' needs activations=capture_activations(model, "
                "x_cal, PruneGraph(model).activation_layers())")
        return activation_scores(analysis, root, activations)
    raise ValueError(f"importance must be one of {list(CRITERIA)}, but got {importance!r}")


def select_channels(scores: np.ndarray, n_keep: int) -> np.ndarray:
    """Sorted indices of the ``n_keep`` highest scores (ties: lower index first).

    Example:
        >>> select_channels(np.array([0.5, 0.0, 2.0, 0.5]), 2)
        array([0, 2])
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:n_keep])
