"""Tests for the reference model zoo."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from lrf_optuna.models import (
    REFERENCE_MODELS,
    UnknownModelError,
    build_lenet5,
    build_reference_model,
)
from lrf_optuna.models.zoo import BN_MOMENTUM

SHAPES = [(28, 28, 1), (32, 32, 3)]


def lenet5_params(channels: int, num_classes: int) -> int:
    """Closed form: conv1 6@5x5xC, conv2 16@5x5x6, fc 400-120-84-K (all with biases)."""
    conv1 = 5 * 5 * channels * 6 + 6
    conv2 = 5 * 5 * 6 * 16 + 16
    fc1 = 5 * 5 * 16 * 120 + 120
    fc2 = 120 * 84 + 84
    fc3 = 84 * num_classes + num_classes
    return conv1 + conv2 + fc1 + fc2 + fc3


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_builds_and_runs(name: str, shape: tuple[int, int, int]) -> None:
    model = build_reference_model(name, shape, 7)
    assert isinstance(model, keras.Model)
    assert model.name == name
    assert tuple(model.input_shape) == (None, *shape)
    assert tuple(model.output_shape) == (None, 7)
    out = np.asarray(model(np.zeros((2, *shape), np.float32), training=False))
    assert out.shape == (2, 7)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # softmax head
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names)), "layer names must be unique"


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_names_are_stable(name: str) -> None:
    """Building twice in a session gives the same names (no keras auto-numbering)."""
    first = [layer.name for layer in build_reference_model(name).layers]
    second = [layer.name for layer in build_reference_model(name).layers]
    assert first == second
    auto = re.compile(
        r"^(input_layer|conv2d|depthwise_conv2d|dense|batch_normalization|activation|re_lu"
        r"|add|dropout|max_pooling2d|average_pooling2d|global_average_pooling2d)(_\d+)?$"
    )
    assert not [n for n in first if auto.match(n)], "every layer needs an explicit name"


@pytest.mark.parametrize(
    ("shape", "classes"), [((28, 28, 1), 10), ((32, 32, 3), 10), ((32, 32, 3), 100)]
)
def test_lenet5_param_count_closed_form(shape: tuple[int, int, int], classes: int) -> None:
    model = build_lenet5(shape, classes)
    assert model.count_params() == lenet5_params(shape[2], classes)
    assert model.get_layer("flatten").output.shape[-1] == 400
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        model.get_layer(layer)


def test_lenet5_fashion_mnist_count() -> None:
    assert build_lenet5().count_params() == 61706


@pytest.mark.parametrize("shape", SHAPES)
def test_vgg_small_is_large_and_fc_heavy(shape: tuple[int, int, int]) -> None:
    model = build_reference_model("vgg_small", shape, 10)
    total = model.count_params()
    dense = sum(
        layer.count_params() for layer in model.layers if isinstance(layer, keras.layers.Dense)
    )
    assert total >= 1_000_000
    assert dense / total > 0.8
    assert model.get_layer("fc1").units >= 512


def test_resnet20_structure() -> None:
    model = build_reference_model("resnet20", (32, 32, 3), 10)
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    projections = [la.name for la in convs if la.name.endswith("_proj_conv")]
    assert projections == ["stage2_block1_proj_conv", "stage3_block1_proj_conv"]
    assert len(convs) - len(projections) == 19  # 1 stem + 3 stages x 3 blocks x 2, + fc = 20
    assert sum(isinstance(la, keras.layers.Add) for la in model.layers) == 9
    assert 250_000 < model.count_params() < 300_000


def test_mobilenetv2_structure() -> None:
    model = build_reference_model("mobilenetv2_small", (28, 28, 1), 10)
    depthwise = [la for la in model.layers if isinstance(la, keras.layers.DepthwiseConv2D)]
    assert len(depthwise) == 9
    assert model.get_layer("block1_project").kernel_size == (1, 1)
    assert model.get_layer("block2_expand").filters == 16 * 6
    adds = [la.name for la in model.layers if isinstance(la, keras.layers.Add)]
    assert adds == ["block1_add", "block3_add", "block5_add", "block6_add", "block8_add"]
    narrow = build_reference_model("mobilenetv2_small", (28, 28, 1), 10, alpha=0.5)
    assert narrow.count_params() < model.count_params()


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(UnknownModelError) as info:
        build_reference_model("alexnet")
    message = str(info.value)
    assert "'alexnet'" in message
    for name in REFERENCE_MODELS:
        assert name in message
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (28, 28)}, r"\(height, width, channels\)"),
        ({"input_shape": (4, 4, 1)}, "too small"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_reference_model("lenet5", **kwargs)


@pytest.mark.parametrize("name", ["vgg_small", "resnet20", "mobilenetv2_small"])
def test_batchnorm_momentum(name: str) -> None:
    """BN momentum 0.9 so briefly trained/fine-tuned models evaluate like they train."""
    model = build_reference_model(name)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(la.momentum == BN_MOMENTUM for la in bns)
