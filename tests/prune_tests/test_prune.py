"""Pruned models are real, smaller models that compute what the original computes.

The strong check: silence some filters of the original (weights, bias, and the BatchNorm
or depthwise outputs they feed), prune exactly those, and the outputs must not change --
a wrong slice anywhere (BatchNorm, Flatten rows, Concatenate offsets, depthwise channels,
an Add group) would show.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import randomize_weights, rel_err

from lrf_optuna.prune import PruneGraph, kept_channels, prune_and_factorize, prune_model
from lrf_optuna.rewrite import iter_layers, rewrite_model
from lrf_optuna.scoring.calibration import capture_activations

from .graphs import CASES, Case, zero_channels


def _case(name: str, rng: np.random.Generator) -> Case:
    case = CASES[name]()
    randomize_weights(case.model, rng)
    return case


def _x(model: keras.Model, rng: np.random.Generator, n: int = 6) -> np.ndarray:
    return rng.standard_normal((n, *model.inputs[0].shape[1:])).astype("float32")


def _out_channels(layer: keras.layers.Layer) -> int:
    cfg = layer.get_config()
    return int(cfg.get("filters", cfg.get("units", 0)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_ratio_zero_reproduces_the_model_exactly(name, rng) -> None:
    case = _case(name, rng)
    x = _x(case.model, rng)
    graph = PruneGraph(case.model)
    same = graph.prune({path: 0.0 for path in graph.entries})
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(case.model(x)))
    assert same.count_params() == case.model.count_params()
    assert [p for p, _ in iter_layers(same)] == [p for p, _ in iter_layers(case.model)]


@pytest.mark.parametrize("importance", ["l1", "l2", "activation"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_pruning_silenced_filters_leaves_outputs_unchanged(name, importance, rng) -> None:
    case = _case(name, rng)
    x = _x(case.model, rng)
    before = np.asarray(case.model(x))
    zero_channels(case)
    want = np.asarray(case.model(x))
    assert rel_err(want, before) > 1e-3            # the silenced filters mattered
    graph = PruneGraph(case.model)
    acts = (capture_activations(case.model, x, graph.activation_layers())
            if importance == "activation" else None)
    for path, idx in case.zeroed.items():           # exactly the silenced ones go
        kept = graph.kept_channels(path, case.ratios[path], importance=importance,
                                   activations=acts)
        removed = sorted(set(range(graph.entries[path].channels)) - set(kept.tolist()))
        if importance == "activation":
            # a channel ReLU silences on these samples scores 0 too and may go instead
            scores = graph.importance(path, importance="activation", activations=acts)
            assert np.all(scores[idx] == 0) and np.all(scores[removed] == 0), path
        else:
            assert removed == sorted(idx), path
    small = graph.prune(case.ratios, importance=importance, activations=acts)
    assert rel_err(np.asarray(small(x)), want) < 1e-5
    assert small.count_params() < case.model.count_params()
    layers = dict(iter_layers(small))
    for path, idx in case.zeroed.items():
        assert _out_channels(layers[path]) == graph.entries[path].channels - len(idx)


@pytest.mark.parametrize("name", sorted(CASES))
def test_groups_share_kept_channels(name, rng) -> None:
    case = _case(name, rng)
    graph = PruneGraph(case.model)
    found = {e.group for e in graph.prunable.values() if len(e.group) > 1}
    assert {frozenset(g) for g in found} == {frozenset(g) for g in case.groups}
    for group in found:
        kept = [graph.kept_channels(p, 0.5).tolist() for p in group]
        assert all(k == kept[0] for k in kept)


def test_residual_group_is_pruned_alike_and_ratio_applies_to_all_members(rng) -> None:
    case = _case("residual", rng)
    small = prune_model(case.model, {"stem": 0.5, "b2_proj": 0.25})
    layers = dict(iter_layers(small))
    assert _out_channels(layers["stem"]) == _out_channels(layers["b1_conv2"]) == 4
    assert _out_channels(layers["b2_proj"]) == _out_channels(layers["b2_conv2"]) == 9
    assert layers["b1_bn"].gamma.shape == (4,) and layers["stem_bn"].gamma.shape == (4,)
    assert tuple(layers["b2_conv1"].kernel.shape) == (3, 3, 4, 10)
    assert tuple(layers["fc"].kernel.shape) == (9, 3)
    assert np.isfinite(np.asarray(small(_x(small, rng)))).all()


def test_concatenate_offsets_slice_the_right_rows(rng) -> None:
    case = _case("concatenating", rng)
    graph = PruneGraph(case.model)
    ratios = {"a": 0.5, "b": 0.5, "c": 0.4}
    small = graph.prune(ratios)
    ka, kb, kc = (graph.kept_channels(p, r) for p, r in ratios.items())
    rows = np.concatenate([ka, 8 + np.arange(3), 11 + kb])        # a | input | b
    old_c = keras.ops.convert_to_numpy(case.model.get_layer("c").kernel)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(small.get_layer("c").kernel),
                                  old_c[:, :, rows][..., kc])
    rows_d = np.concatenate([rows, 17 + kc])                      # cat | c
    old_d = keras.ops.convert_to_numpy(case.model.get_layer("d").kernel)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(small.get_layer("d").kernel),
                                  old_d[:, :, rows_d])


def test_flatten_rows_follow_the_layout(rng) -> None:
    """Channels-last flatten puts channel c of position p at p*C + c; a channels_first
    tensor flattened as is puts it at c*P + p, and Flatten(channels_first) at p*C + c."""
    case = _case("channels_first", rng)
    graph = PruneGraph(case.model)
    small = graph.prune({"c1": 0.5})
    kept = graph.kept_channels("c1", 0.5)
    positions, channels = 27, 8
    rows_a = (kept[:, None] * positions + np.arange(positions)).ravel()
    rows_b = np.sort((np.arange(positions)[:, None] * channels + kept).ravel())
    for name, rows in (("fa", np.sort(rows_a)), ("fb", rows_b)):
        old = keras.ops.convert_to_numpy(case.model.get_layer(name).kernel)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(small.get_layer(name).kernel), old[rows], name)


def test_pruned_kept_channels_are_the_original_outputs(rng) -> None:
    """With nothing upstream pruned, a pruned layer's outputs are the original's kept
    channels (what the similarity cache will compare)."""
    case = _case("batchnorm", rng)
    x = _x(case.model, rng)
    small = prune_model(case.model, {"c2": 0.5})
    kept = kept_channels(case.model, "c2", 0.5)
    acts = capture_activations(case.model, x, ["c2"])
    new = capture_activations(small, x, ["c2"])
    np.testing.assert_allclose(new["c2"].outputs, acts["c2"].outputs[..., kept], rtol=1e-5,
                               atol=1e-5)


def test_original_model_is_untouched_and_shares_no_variables(rng) -> None:
    case = _case("residual", rng)
    before = [keras.ops.convert_to_numpy(w).copy() for w in case.model.weights]
    small = prune_model(case.model, case.ratios)
    for w, old in zip(case.model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), old)
    assert not {id(w) for w in small.weights} & {id(w) for w in case.model.weights}


@pytest.mark.parametrize("name", ["residual", "depthwise_separable", "nested", "concatenating"])
def test_prune_then_factorize(name, rng) -> None:
    """LRF on the pruned model: at full rank of the pruned kernel, nothing changes."""
    case = _case(name, rng)
    x = _x(case.model, rng)
    zero_channels(case)
    want = np.asarray(case.model(x))
    pruned = prune_model(case.model, case.ratios)
    layers = dict(iter_layers(pruned))
    target = next(p for p in case.zeroed if not p.startswith(("sep", "block")))
    info_out = _out_channels(layers[target])
    cin = int(layers[target].input.shape[-1])
    if isinstance(layers[target], keras.layers.Dense):
        choice = ("svd", min(cin, info_out))
    else:
        choice = ("channel_svd", min(cin * int(np.prod(layers[target].kernel_size)), info_out))
    both = prune_and_factorize(case.model, {p: (r, *choice) if p == target else (r, None, None)
                                            for p, r in case.ratios.items()})
    assert type(dict(iter_layers(both))[target]).__name__ == "FactorizedLayer"
    assert rel_err(np.asarray(both(x)), want) < 1e-4
    again = rewrite_model(pruned, {target: choice})
    assert rel_err(np.asarray(again(x)), want) < 1e-4
    assert again.count_params() == both.count_params()


def _np(v) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)


def test_importance_criteria_by_brute_force(rng) -> None:
    case = _case("batchnorm", rng)
    graph = PruneGraph(case.model)
    conv, bn = case.model.get_layer("c1"), case.model.get_layer("bn1")
    fold = np.abs(_np(bn.gamma)) / np.sqrt(_np(bn.moving_variance) + bn.epsilon)
    kernel = _np(conv.kernel)
    l1 = np.array([np.abs(kernel[..., f]).sum() for f in range(8)]) * fold
    l2 = np.array([np.sqrt((kernel[..., f] ** 2).sum()) for f in range(8)]) * fold
    np.testing.assert_allclose(graph.importance("c1"), l1, rtol=1e-6)
    np.testing.assert_allclose(graph.importance("c1", importance="l2"), l2, rtol=1e-6)
    # activation: mean |input| of the consumer c2, per channel
    x = _x(case.model, rng, n=8)
    acts = capture_activations(case.model, x, graph.activation_layers(["c1"]))
    seen = np.abs(acts["c2"].inputs).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(graph.importance("c1", importance="activation",
                                                activations=acts), seen, rtol=1e-5)

    model = _case("depthwise_separable", rng).model
    sep = model.get_layer("sep")
    dw, pw = _np(sep.depthwise_kernel), _np(sep.pointwise_kernel)[0, 0]     # (3,3,16,2)
    full = np.zeros((3, 3, 16, 10))                 # the separable conv as one kernel
    for c in range(16):
        for j in range(2):
            full[:, :, c, :] += dw[:, :, c, j, None] * pw[2 * c + j]
    np.testing.assert_allclose(PruneGraph(model).importance("sep"),
                               np.abs(full).sum(axis=(0, 1, 2)), rtol=1e-6)


def test_group_importance_is_the_sum_of_mean_normalized_member_norms(rng) -> None:
    case = _case("residual", rng)
    graph = PruneGraph(case.model)
    total = 0
    for name, bn in (("stem", "stem_bn"), ("b1_conv2", "b1_bn")):
        layer, norm = case.model.get_layer(name), case.model.get_layer(bn)
        s = np.abs(_np(layer.kernel)).sum(axis=(0, 1, 2)) * np.abs(_np(norm.gamma)) / np.sqrt(
            _np(norm.moving_variance) + norm.epsilon)
        total = total + s / s.mean()
    np.testing.assert_allclose(graph.importance("stem"), total, rtol=1e-6)
    np.testing.assert_allclose(graph.importance("b1_conv2"), total, rtol=1e-6)


@pytest.mark.parametrize("name,group,exact,inexact", [
    ("residual", "stem", ["b1_conv1"], ["b2_conv1", "b2_proj"]),
    ("residual", "b2_proj", ["fc"], []),
    ("concatenating", "b", ["c"], ["d", "fc"]),
    ("channels_first", "c1", ["fa", "fb"], []),
    ("depthwise_separable", "c1", ["sep"], []),
    ("sequential_flatten", "c2", ["fc1"], []),
])
def test_consumer_on_masked_input_is_its_output_in_the_pruned_model(
        name, group, exact, inexact, rng) -> None:
    """The basis for scoring pruning from cached activations: zero the removed input
    channels of a consumer's captured input, run the original consumer, and you get its
    output in the pruned model -- exactly when no other consumer of the group is upstream
    of it (``exact``), only approximately otherwise (``inexact``: it also sees what the
    upstream consumers lost, e.g. the next residual block)."""
    case = _case(name, rng)
    graph = PruneGraph(case.model)
    ratios = {group: 0.5}
    consumers = list(graph.entries[group].consumers)
    assert sorted(consumers) == sorted(exact + inexact)
    x = _x(case.model, rng)
    before = capture_activations(case.model, x, consumers)
    after = capture_activations(graph.prune(ratios), x, consumers)
    layers = dict(iter_layers(case.model))
    for path in consumers:
        mask = graph.input_mask(path, ratios)
        assert mask is not None and 0 < mask.sum() < len(mask)
        axis = 1 if layers[path].get_config().get("data_format") == "channels_first" else -1
        shape = [1] * before[path].inputs.ndim
        shape[axis] = len(mask)
        got = np.asarray(layers[path](before[path].inputs * mask.reshape(shape)))
        err = rel_err(got, after[path].outputs)
        assert (err < 1e-5) if path in exact else (err > 1e-3), (path, err)
    assert graph.input_mask(consumers[0], {}) is None
    with pytest.raises(KeyError, match="'nope'"):
        graph.input_mask("nope", ratios)
