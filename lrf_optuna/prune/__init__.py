"""Structured pruning: remove whole filters (conv) or units (Dense), alone or before LRF.

Pruned models are real, smaller Keras models (fewer filters, sliced weights), built by
cloning the graph: no masks. The pipeline, one module each:

=============================== =========================================================
``_graph``                      follow every prunable channel through the graph; groups,
                                consumers, and the reason a layer cannot be pruned
``importance``                  which channels to keep: L1 (default) / L2 filter norms,
                                or the mean |activation| the consumers see
``costs``                       closed-form params and MACs of a pruned (+ factorized)
                                layer, without building it
``_rebuild``                    clone the model with fewer filters and sliced weights
``pruner``                      :class:`PruneGraph` and the functions below
``cache``                       the pruning candidates of the similarity cache
                                (:class:`PruneCache`): each (group, ratio) scored on its
                                consumers, each (layer, ratio, method, rank) on the
                                pruned kernel; building a searched plan
``space``                       the search's side (:class:`PruneSpace`): one ratio-level
                                parameter per group, pruned rank grids, exact costs
=============================== =========================================================

What is adjusted when a layer's filters go: the next Conv / ConvTranspose /
SeparableConv / Dense (its input channels, or the matching rows after a ``Flatten``, in
the flatten order of the tensor's layout), BatchNormalization (gamma, beta, moving
statistics), DepthwiseConv (its channels go too and the pruning continues to its
consumers), channel-preserving layers (activations, pooling, global pooling, dropout,
padding, cropping, upsampling, elementwise ``keras.ops`` with scalar constants),
``Concatenate`` on the channel axis (consumers sliced at each input's offset) and
``Add``/``Subtract``/``Multiply``/``Average``/``Maximum``/``Minimum``, whose inputs'
producers form a *group* pruned alike (one ratio, the same kept channels). A layer is
reported not prunable, with the reason, when its channels reach a model output, a
``Reshape``, a custom or unknown layer, a grouped convolution, a shared layer, a
nested-model boundary, or meet an unprunable tensor at a merge.

Example:
    >>> import keras
    >>> from lrf_optuna.prune import find_prunable, prune_model
    >>> model = keras.Sequential([keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
    ...     keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
    ...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, name="fc")])
    >>> sorted(find_prunable(model))
    ['c1', 'c2']
    >>> small = prune_model(model, {"c1": 0.5, "c2": 0.25})
    >>> [tuple(small.get_layer(n).kernel.shape) for n in ("c1", "c2", "fc")]
    [(3, 3, 3, 4), (3, 3, 4, 6), (6, 4)]
"""

from __future__ import annotations

from lrf_optuna.prune.cache import PruneCache, PruneConfig, build_plan_model, build_pruned_model
from lrf_optuna.prune.costs import kept_count, pruned_layer_cost, pruned_layer_info
from lrf_optuna.prune.importance import CRITERIA, select_channels
from lrf_optuna.prune.pruner import (
    Choice,
    PruneEntry,
    PruneGraph,
    find_prunable,
    kept_channels,
    prune_and_factorize,
    prune_model,
    split_choices,
)
from lrf_optuna.prune.space import PruneSpace

__all__ = [
    "CRITERIA",
    "Choice",
    "PruneCache",
    "PruneConfig",
    "PruneEntry",
    "PruneGraph",
    "PruneSpace",
    "build_plan_model",
    "build_pruned_model",
    "find_prunable",
    "kept_channels",
    "kept_count",
    "prune_and_factorize",
    "prune_model",
    "pruned_layer_cost",
    "pruned_layer_info",
    "select_channels",
    "split_choices",
]
