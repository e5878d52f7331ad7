"""Find the decomposable layers of a model and swap them for factorized replacements.

Works on Sequential and Functional models, with branches, skip connections, shared layers,
Keras operations between layers (``y + 3.0``, ``keras.ops.*``), custom layers anywhere
and nested models (a Functional or Sequential model used as a layer). Layers inside a nested
model are addressed by their path, ``"outer_layer_name/inner_layer_name"``; top-level
layers by their plain name.

Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3, name="c1"),
    ...                           keras.layers.Flatten(), keras.layers.Dense(10, name="fc")])
    >>> sorted(find_layers(model))
    ['c1', 'fc']
    >>> small = rewrite_model(model, {"c1": ("channel_svd", 4), "fc": ("svd", 2)})
    >>> [type(l).__name__ for l in small.layers]
    ['FactorizedLayer', 'Flatten', 'FactorizedLayer']
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import keras

from lrf_optuna.decompose import (
    LayerInfo,
    UnsupportedLayerError,
    describe_layer,
    get_method,
    layer_weights,
    methods_for,
)

__all__ = ["LayerEntry", "Plan", "check_supported_model", "find_layers", "graph_nodes",
           "iter_layers", "rewrite_model"]

logger = logging.getLogger(__name__)

#: ``{layer_path: (method_name, rank)}``; layers absent from the plan (or mapped to
#: ``None``) are kept as they are.
Plan = Mapping[str, "tuple[str, int] | None"]


@dataclass(frozen=True)
class LayerEntry:
    """A layer of a model, by path, with its description or the reason it is not one."""

    path: str
    layer: keras.layers.Layer
    info: LayerInfo | None
    reason: str | None = None

    @property
    def methods(self) -> list[str]:
        """Names of the registered methods that apply (empty when none does)."""
        return [m.name for m in methods_for(self.info)] if self.info is not None else []


def _check_supported_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, but got {type(model).__name__}")
    if not isinstance(model, (keras.Sequential, keras.src.models.Functional)):
        raise TypeError(
            f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__}); "
            "lrf_optuna rewrites Sequential and Functional models, including Functional or "
            "Sequential models nested as layers. Rebuild it with the Functional API, or "
            "replace its layers yourself with get_method(name).decompose(...)")
    if not model.built or not model.inputs:
        raise ValueError(
            f"model {model.name!r} is not built with a known input shape; build it first, "
            "e.g. with keras.Input(shape) as its first layer")


def check_supported_model(model: Any) -> None:
    """Raise ``TypeError`` unless ``model`` is a Sequential or Functional Keras model."""
    _check_supported_model(model)


def iter_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """Yield ``(path, layer)`` for every leaf layer, descending into nested models."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            _check_supported_model(layer)
            yield from iter_layers(layer, prefix=f"{path}/")
        elif not isinstance(layer, keras.layers.InputLayer):
            yield path, layer


def graph_nodes(model: keras.Model) -> set[int]:
    """Ids of the nodes (layer calls) of the model's graph and of its nested models' graphs.

    A layer's own list of calls can hold more: Keras rebuilds a Sequential model's graph
    as it adds each layer (when loading one, say), leaving the older calls behind; and a
    layer may have been called in other graphs than this model's.

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(2)
        >>> _ = dense(keras.Input((4,)))                 # a call in another graph
        >>> x = keras.Input((4,))
        >>> model = keras.Model(x, dense(x))
        >>> len(dense._inbound_nodes), sum(id(n) in graph_nodes(model)
        ...                                for n in dense._inbound_nodes)
        (2, 1)
    """
    graph = model._functional if isinstance(model, keras.Sequential) else model
    ids = {id(node) for nodes in getattr(graph, "_nodes_by_depth", {}).values()
           for node in nodes}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            ids |= graph_nodes(layer)
    return ids


def find_layers(model: keras.Model, *, include_unsupported: bool = False
                ) -> dict[str, LayerEntry]:
    """Describe the layers LRF can act on, keyed by path.

    Layers are described from the shapes the graph knows (their input and output
    tensors); a layer that cannot be described (a custom layer, a subclass that computes
    differently, an unknown shape) is not decomposable and never stops the listing.

    Args:
        model: A built Sequential or Functional model.
        include_unsupported: Also return layers that have weights but no applicable
            method, with the reason (for reports); weightless layers and
            BatchNormalization are never listed.

    Raises:
        TypeError: for a subclassed model, saying what is supported.
    """
    _check_supported_model(model)
    nodes = graph_nodes(model)
    out: dict[str, LayerEntry] = {}
    for path, layer in iter_layers(model):
        try:
            info = describe_layer(layer, nodes=nodes)
        except Exception as err:  # a custom layer never stops the search: it is listed
            if include_unsupported and layer.weights and not isinstance(
                    layer, keras.layers.BatchNormalization):
                reason = str(err) if isinstance(err, UnsupportedLayerError) else (
                    f"layer {layer.name!r} cannot be described ({type(err).__name__}: {err})")
                out[path] = LayerEntry(path, layer, None, reason)
            continue
        entry = LayerEntry(path, layer, info)
        if not entry.methods:
            if include_unsupported:
                out[path] = LayerEntry(path, layer, info, "no registered method applies")
            continue
        out[path] = entry
    return out


def rewrite_model(model: keras.Model, plan: Plan, *,
                  prepared: Mapping[tuple[str, str], Any] | None = None,
                  factors: Mapping[tuple[str, str, int], list[Any]] | None = None
                  ) -> keras.Model:
    """Return a new model with the planned layers replaced by factorized layers.

    Every other layer is a fresh copy holding identical weights; the original model is
    not modified and shares no variables with the result.

    Args:
        model: A built Sequential or Functional model (nested models allowed).
        plan: ``{layer_path: (method, rank)}``. Entries mapped to ``None`` or
            ``("keep", ...)`` are left unchanged.
        prepared: Optional ``{(layer_path, method): prepared}`` results of
            :meth:`LRFMethod.prepare`, to skip recomputing decompositions.
        factors: Optional ``{(layer_path, method, rank): factors}`` ready factor weights
            (e.g. from the similarity cache), used as they are.

    Every replacement is run once on a zero sample when it is built, so the returned
    model runs: a replacement that cannot run, or whose output shape differs from the
    layer's, is refused here (:func:`lrf_optuna.decompose.verify_replacement`).

    Raises:
        KeyError: a plan entry names a layer the model does not have.
        UnsupportedLayerError, DecompositionError: a method does not apply, its
            replacement would not run, or the rank is invalid (the message names the
            layer and the method).
    """
    _check_supported_model(model)
    paths = {id(layer): path for path, layer in iter_layers(model)}
    by_path = {path: layer for path, layer in iter_layers(model)}
    todo = {p: choice for p, choice in plan.items()
            if choice is not None and choice[0] != "keep"}
    unknown = sorted(set(todo) - set(by_path))
    if unknown:
        raise KeyError(f"plan names layers the model {model.name!r} does not have: {unknown}; "
                       f"decomposable layers are {sorted(find_layers(model))}")

    replacements: dict[str, keras.layers.Layer] = {}
    nodes = graph_nodes(model)
    for path, (method_name, rank) in todo.items():
        layer = by_path[path]
        method = get_method(method_name)
        info = describe_layer(layer, nodes=nodes)
        prep = (prepared or {}).get((path, method_name))
        ready = (factors or {}).get((path, method_name, int(rank)))
        replacements[path] = method.decompose(info, layer_weights(layer), int(rank),
                                              prepared=prep, factors=ready)

    copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        path = paths.get(id(layer))
        if path in replacements:
            return replacements[path]
        new = layer.__class__.from_config(layer.get_config())
        # operations called between layers (``y + 3.0``, ``keras.ops.*``) hold no weights
        if isinstance(layer, keras.layers.Layer):
            copies.append((new, layer))
        return new

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name)
              for t in model.inputs]
    new_model = keras.models.clone_model(
        model, input_tensors=inputs if len(inputs) > 1 else inputs[0],
        clone_function=clone, recursive=True)
    for new, old in copies:
        new.set_weights(old.get_weights())
    logger.debug("rewrote %d layer(s) of %s", len(replacements), model.name)
    return new_model
