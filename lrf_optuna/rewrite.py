"""Find the decomposable layers of a model and swap them for factorized replacements.

Works on Sequential and Functional models, with branches, skip connections, shared layers
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

__all__ = ["LayerEntry", "Plan", "check_supported_model", "find_layers", "iter_layers",
           "rewrite_model"]

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


def find_layers(model: keras.Model, *, include_unsupported: bool = False
                ) -> dict[str, LayerEntry]:
    """Describe the layers LRF can act on, keyed by path.

    Args:
        model: A built Sequential or Functional model.
        include_unsupported: Also return layers that have weights but no applicable
            method, with the reason (for reports); weightless layers are never listed.

    Raises:
        TypeError: for a subclassed model, saying what is supported.
    """
    _check_supported_model(model)
    out: dict[str, LayerEntry] = {}
    for path, layer in iter_layers(model):
        try:
            info = describe_layer(layer)
        except UnsupportedLayerError as err:
            if include_unsupported and layer.weights and not isinstance(
                    layer, keras.layers.BatchNormalization):
                out[path] = LayerEntry(path, layer, None, str(err))
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

    Raises:
        KeyError: a plan entry names a layer the model does not have.
        UnsupportedLayerError, DecompositionError: a method does not apply or the rank
            is invalid (the message names the layer).
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
    for path, (method_name, rank) in todo.items():
        layer = by_path[path]
        method = get_method(method_name)
        info = describe_layer(layer)
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
        if isinstance(layer, keras.layers.Layer):  # not the keras.ops calls of the graph
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
