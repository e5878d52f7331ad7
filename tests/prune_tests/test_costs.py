"""Closed-form costs of pruned (+ factorized) models against the built models:
``count_params()``, :func:`lrf_optuna.model_costs` per layer, and TensorFlow's own op
statistics for the MACs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from tf_flops import tf_macs

from lrf_optuna.costs import PRECISIONS, deployed_bytes, layer_deployed_bytes, model_costs
from lrf_optuna.decompose import describe_layer, get_method
from lrf_optuna.prune import (
    PruneGraph,
    kept_count,
    prune_and_factorize,
    pruned_layer_cost,
    pruned_layer_info,
)
from lrf_optuna.rewrite import find_layers, iter_layers

from .graphs import CASES

#: First applicable method, in this order, for the factorized variants.
PREFERRED = ("channel_svd", "svd", "spatial_svd", "tucker2")


def _ratio_sets(graph: PruneGraph, rng: np.random.Generator) -> list[dict[str, float]]:
    prunable = list(graph.prunable)
    half = {}
    random = {}
    for path in prunable:
        root = graph.entries[path].group[0]
        half[root] = 0.5
        random.setdefault(root, float(rng.choice([0.0, 0.2, 0.34, 0.75, 0.9])))
    return [half, random, {prunable[0]: 0.6}]


def _plan(model: keras.Model) -> dict[str, tuple[str, int]]:
    plan = {}
    for path, entry in find_layers(model).items():
        method = next((m for m in PREFERRED if m in entry.methods), None)
        if method is not None:
            plan[path] = (method, min(2, get_method(method).max_rank(entry.info)))
    return plan


def _check(graph: PruneGraph, ratios, plan, built: keras.Model, *, flops: bool) -> None:
    closed = graph.model_costs(ratios, plan)
    measured = model_costs(built)
    assert closed.params == built.count_params() == measured.params
    assert closed.by_path() == measured.by_path()
    if flops:
        assert closed.macs == sum(tf_macs(built).values())
    for path, cost in measured.by_path().items():
        choice = plan.get(path)
        got = graph.layer_cost(path, ratios, method=choice and choice[0],
                               rank=choice and choice[1])
        assert got == cost, path
    for precision in PRECISIONS:  # deployed bytes, layer by layer, as the built model's
        deployed = graph.model_costs(ratios, plan, precision=precision)
        by_layer = layer_deployed_bytes(built, precision)
        assert {p: c.bytes for p, c in deployed.by_path().items() if c.bytes} == {
            p: b for p, b in by_layer.items() if b}, precision
        assert deployed.bytes == deployed_bytes(built, precision)


@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_form_costs_match_built_models(name, rng) -> None:
    model = CASES[name]().model
    graph = PruneGraph(model)
    # TF counts transposed convs differently, and runs a channels_first Conv3D inside a
    # function call its op statistics do not see: those two are checked against
    # model_costs only (whose formulas test_costs.py checks against TF on channels_last).
    flops = name not in ("sequence_transpose", "channels_first")
    for ratios in _ratio_sets(graph, rng):
        built = graph.prune(ratios)
        _check(graph, ratios, {}, built, flops=flops)
        plan = _plan(built)
        both = prune_and_factorize(model, {p: (ratios.get(p, 0.0), *plan[p]) if p in plan
                                           else (ratios[p], None, None) for p in
                                           {*plan, *ratios}})
        _check(graph, ratios, plan, both, flops=flops)


def test_pruned_layer_cost_from_info_and_ratios() -> None:
    """The closed form from a layer's own ratio and its producer's ratio."""
    model = CASES["sequential_flatten"]().model
    small = PruneGraph(model).prune({"c1": 0.5, "c2": 0.25})
    info = describe_layer(model.get_layer("c2"))
    cin, cout = kept_count(8, 0.5), kept_count(12, 0.25)
    layer = small.get_layer("c2")
    assert pruned_layer_cost(info, in_channels=cin, out_channels=cout) == (
        layer.count_params(), describe_layer(layer).original_macs)
    assert pruned_layer_info(info, in_channels=cin, out_channels=cout) == describe_layer(layer)
    fc1 = describe_layer(model.get_layer("fc1"))                 # Flatten: 3*3 positions
    assert pruned_layer_cost(fc1, in_channels=9 * cout)[0] == small.get_layer(
        "fc1").count_params()


def test_pruned_layer_info_rejects_impossible_channels() -> None:
    model = CASES["depthwise_separable"]().model
    dw = describe_layer(model.get_layer("dw"))
    assert pruned_layer_info(dw, in_channels=5).out_channels == 10
    with pytest.raises(ValueError, match="'dw' is a depthwise"):
        pruned_layer_info(dw, in_channels=5, out_channels=10)
    with pytest.raises(ValueError, match="'c1': cannot have 0 input"):
        pruned_layer_info(describe_layer(model.get_layer("c1")), in_channels=0)
    with pytest.raises(ValueError, match="rank for method 'svd' on layer 'fc'"):
        pruned_layer_cost(describe_layer(model.get_layer("fc")), in_channels=3,
                          method="svd", rank=4)


@pytest.mark.parametrize("name", ["residual", "concatenating", "nested"])
def test_layer_channels_follow_groups_concatenation_and_nesting(name) -> None:
    model = CASES[name]().model
    graph = PruneGraph(model)
    ratios = {p: 0.5 for p in graph.prunable if graph.entries[p].group[0] == p}
    built = dict(iter_layers(graph.prune(ratios)))
    for path, layer in built.items():
        cin, cout = graph.channels(path, ratios)
        try:
            info = describe_layer(layer)
        except Exception:
            continue
        assert (cin, cout) == (info.in_channels, info.out_channels), path
