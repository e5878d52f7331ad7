"""What is prunable in the reference models, and pruning all of it at once."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randomize_weights
from tf_flops import tf_macs

from lrf_optuna.costs import model_costs
from lrf_optuna.models.zoo import build_reference_model
from lrf_optuna.prune import PruneGraph
from lrf_optuna.scoring.calibration import capture_activations

#: name -> (prunable layers, groups of several members, the layer that is not prunable)
EXPECTED = {
    "lenet5": (4, 0, "fc3"),
    "vgg_small": (5, 0, "fc3"),
    "resnet20": (21, 3, "predictions"),
    "mobilenetv2_small": (19, 4, "predictions"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_prunable_sets_and_costs(name, rng) -> None:
    model = build_reference_model(name)
    randomize_weights(model, rng)
    graph = PruneGraph(model)
    n_prunable, n_groups, head = EXPECTED[name]
    assert len(graph.prunable) == n_prunable
    assert [p for p, e in graph.entries.items() if not e.prunable] == [head]
    assert "softmax" in graph.entries[head].reason
    assert sum(len(e.group) > 1 for e in graph.prunable.values()) == sum(
        len(g) for g in {e.group for e in graph.prunable.values() if len(e.group) > 1})
    assert len({e.group for e in graph.prunable.values() if len(e.group) > 1}) == n_groups
    ratios = {e.group[0]: 0.5 for e in graph.prunable.values()}
    small = graph.prune(ratios)
    closed = graph.model_costs(ratios)
    assert closed.params == small.count_params() < model.count_params() / 2
    assert closed.by_path() == model_costs(small).by_path()
    assert closed.macs == sum(tf_macs(small).values())
    x = rng.uniform(0, 1, (4, 28, 28, 1)).astype("float32")
    assert np.isfinite(np.asarray(small(x))).all()


def test_resnet20_activation_importance(rng) -> None:
    model = build_reference_model("resnet20")
    randomize_weights(model, rng, scale=0.2)
    graph = PruneGraph(model)
    x = rng.uniform(0, 1, (16, 28, 28, 1)).astype("float32")
    acts = capture_activations(model, x, graph.activation_layers())
    kept = graph.kept_channels("conv1", 0.5, importance="activation", activations=acts)
    assert len(kept) == 8
    for member in graph.entries["conv1"].group:
        assert graph.kept_channels(member, 0.5, importance="activation",
                                   activations=acts).tolist() == kept.tolist()
    small = graph.prune({"conv1": 0.5, "stage3_block1_conv1": 0.75},
                        importance="activation", activations=acts)
    assert np.isfinite(np.asarray(small(x))).all()
