"""Reference CNNs to compress: LeNet-5, a small VGG, ResNet-20 and a small MobileNetV2.

Every builder has the signature
``build_xxx(input_shape=(28, 28, 1), num_classes=10, *, ...) -> keras.Model``, works
for 28x28 grayscale (Fashion-MNIST) and 32x32 RGB (CIFAR-like) inputs, and gives
every layer an explicit, stable name: compression plans refer to layers by name
(e.g. ``"fc1"`` or ``"stage2_block1_conv1"``), so names must not depend on how many
models were built before in the same session.

Classifier heads end in a ``Dense`` layer with a fused softmax (``"fc3"`` for
LeNet-5 and VGG, ``"predictions"`` for the others), so models output class
probabilities; train them with ``sparse_categorical_crossentropy``.

Example:
    >>> from lrf_optuna.models.zoo import build_reference_model
    >>> model = build_reference_model("lenet5", (28, 28, 1), 10)  # doctest: +SKIP
    >>> model.count_params()  # doctest: +SKIP
    61706
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import layers

__all__ = [
    "BN_MOMENTUM",
    "MOBILENETV2_SMALL_BLOCKS",
    "REFERENCE_MODELS",
    "UnknownModelError",
    "build_lenet5",
    "build_mobilenetv2_small",
    "build_reference_model",
    "build_resnet20",
    "build_vgg_small",
]


class UnknownModelError(KeyError):
    """Raised by :func:`build_reference_model` for a name not in ``REFERENCE_MODELS``."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


#: BatchNorm momentum used by the reference models. Keras' default (0.99) makes the
#: moving statistics lag for the first few hundred steps, so a briefly trained (or
#: fine-tuned) model evaluates far worse than it trains; 0.9 (PyTorch's default) settles
#: within a few dozen steps.
BN_MOMENTUM = 0.9


def _check_args(input_shape: Sequence[int], num_classes: int, min_side: int) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or any(d <= 0 for d in shape):
        raise ValueError(
            f"input_shape must be (height, width, channels) with positive sizes, "
            f"got {tuple(input_shape)}"
        )
    if min(shape[:2]) < min_side:
        raise ValueError(
            f"input_shape {shape} is too small for this model: height and width must be "
            f">= {min_side}"
        )
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return shape


# --------------------------------------------------------------------------- LeNet-5


def build_lenet5(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    activation: str = "relu",
    pooling: str = "max",
    conv1_padding: str | None = None,
    name: str = "lenet5",
) -> keras.Model:
    """Classic LeNet-5: two 5x5 conv layers and three dense layers.

    Layers: ``conv1`` (6 filters, 5x5) -> ``pool1`` -> ``conv2`` (16 filters, 5x5,
    valid) -> ``pool2`` -> ``flatten`` -> ``fc1`` (120) -> ``fc2`` (84) -> ``fc3``
    (``num_classes``, softmax). With the default padding (``"same"`` for inputs smaller
    than 32x32, ``"valid"`` otherwise) both 28x28 and 32x32 inputs give a 5x5x16
    feature map before ``flatten``, as in the original network.

    Parameter count for ``C`` input channels and ``K`` classes (5x5x16 = 400 features
    into ``fc1``): ``(150*C + 6) + 2416 + 48120 + 10164 + (84*K + K)``, i.e. 61706 for
    ``(28, 28, 1)`` and 10 classes.

    Args:
        input_shape: ``(height, width, channels)``, at least 12x12.
        num_classes: Number of classes.
        activation: Hidden activation (``"relu"`` or the original ``"tanh"``).
        pooling: ``"max"`` or ``"avg"`` 2x2 pooling.
        conv1_padding: ``"same"`` or ``"valid"``; ``None`` picks ``"same"`` below 32
            pixels and ``"valid"`` otherwise.
        name: Model name.

    Returns:
        An uncompiled functional ``keras.Model``.

    Example:
        >>> m = build_lenet5((32, 32, 3), 10)  # doctest: +SKIP
        >>> m.get_layer("flatten").output.shape  # doctest: +SKIP
        (None, 400)
    """
    shape = _check_args(input_shape, num_classes, min_side=12)
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    if conv1_padding is None:
        conv1_padding = "same" if min(shape[:2]) < 32 else "valid"
    if conv1_padding not in ("same", "valid"):
        raise ValueError(f"conv1_padding must be 'same', 'valid' or None, got {conv1_padding!r}")
    pool = layers.MaxPooling2D if pooling == "max" else layers.AveragePooling2D

    inputs = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(6, 5, padding=conv1_padding, activation=activation, name="conv1")(inputs)
    x = pool(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, padding="valid", activation=activation, name="conv2")(x)
    x = pool(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation=activation, name="fc1")(x)
    x = layers.Dense(84, activation=activation, name="fc2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="fc3")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- VGG-small


def build_vgg_small(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    filters: Sequence[int] = (32, 64, 128),
    convs_per_block: Sequence[int] = (1, 1, 1),
    dense_units: Sequence[int] = (512, 256),
    dropout: float = 0.3,
    batch_norm: bool = True,
    bn_momentum: float = BN_MOMENTUM,
    name: str = "vgg_small",
) -> keras.Model:
    """Small VGG-style network whose parameters sit mostly in two large dense layers.

    Default layout (28x28 input): ``block1_conv1`` (32, 3x3) -> ``block1_pool`` ->
    ``block2_conv1`` (64) -> ``block2_pool`` -> ``block3_conv1`` (128) ->
    ``block3_pool`` (4x4x128 = 2048 features) -> ``flatten`` -> ``fc1`` (512) ->
    ``fc2`` (256) -> ``fc3`` (softmax). About 1.28M parameters, ~93% of them in
    ``fc1``/``fc2`` - a good target for dense-layer factorization. Each conv is
    followed by ``<conv>_bn`` (BatchNorm) and ``<conv>_relu``; each hidden dense layer
    by ``fc<i>_dropout``.

    One conv per block keeps an epoch on 2 CPU cores under a minute (~8.6M MACs per
    28x28 image); ``convs_per_block=(2, 2, 1)`` gives the classic 32-32-64-64-128
    stack at ~2.7x the compute.

    Args:
        input_shape: ``(height, width, channels)``, at least 8x8.
        num_classes: Number of classes.
        filters: Conv filters of each block.
        convs_per_block: Number of 3x3 convs in each block (same length as ``filters``).
        dense_units: Widths of the hidden dense layers (``fc1``, ``fc2``, ...).
        dropout: Dropout rate after each hidden dense layer (0 disables).
        batch_norm: Add BatchNorm after each conv (convs then have no bias).
        bn_momentum: Momentum of the BatchNorm moving statistics (see
            :data:`BN_MOMENTUM`).
        name: Model name.

    Returns:
        An uncompiled functional ``keras.Model``.

    Example:
        >>> m = build_vgg_small()  # doctest: +SKIP
        >>> m.count_params() > 1_000_000  # doctest: +SKIP
        True
    """
    if len(filters) != len(convs_per_block):
        raise ValueError(
            f"filters and convs_per_block must have the same length, got {len(filters)} "
            f"and {len(convs_per_block)}"
        )
    shape = _check_args(input_shape, num_classes, min_side=2 ** len(filters))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

    inputs = keras.Input(shape=shape, name="input")
    x = inputs
    for b, (n_filters, n_convs) in enumerate(zip(filters, convs_per_block, strict=True), 1):
        for c in range(1, n_convs + 1):
            conv = f"block{b}_conv{c}"
            x = layers.Conv2D(
                n_filters,
                3,
                padding="same",
                use_bias=not batch_norm,
                activation=None if batch_norm else "relu",
                name=conv,
            )(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=bn_momentum, name=f"{conv}_bn")(x)
                x = layers.Activation("relu", name=f"{conv}_relu")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense_units, 1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name=f"fc{len(dense_units) + 1}")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- ResNet-20


def _basic_block(x: Any, filters: int, stride: int, prefix: str, bn_momentum: float) -> Any:
    shortcut = x
    y = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv1"
    )(x)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn1")(y)
    y = layers.Activation("relu", name=f"{prefix}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn2")(y)
    if stride != 1 or int(x.shape[-1]) != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{prefix}_proj_conv"
        )(x)
        shortcut = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_proj_bn")(
            shortcut
        )
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{prefix}_out")(y)


def build_resnet20(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    filters: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 3,
    bn_momentum: float = BN_MOMENTUM,
    name: str = "resnet20",
) -> keras.Model:
    """ResNet-20 (He et al. 2016, CIFAR variant): 3 stages x 3 basic blocks.

    ``conv1`` (16, 3x3) -> ``bn1`` -> ``relu1``, then stages of basic blocks named
    ``stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,add,out}``. The first block of
    stages 2 and 3 has stride 2 and a 1x1 projection shortcut
    (``..._proj_conv``/``..._proj_bn``). Ends with ``avg_pool`` (global average) and
    ``predictions`` (softmax). About 0.27M parameters.

    Args:
        input_shape: ``(height, width, channels)``, at least 8x8.
        num_classes: Number of classes.
        filters: Filters of each stage.
        blocks_per_stage: Basic blocks per stage (3 gives ResNet-20, 5 ResNet-32...).
        bn_momentum: Momentum of the BatchNorm moving statistics (see
            :data:`BN_MOMENTUM`).
        name: Model name.

    Returns:
        An uncompiled functional ``keras.Model``.

    Example:
        >>> m = build_resnet20((32, 32, 3), 10)  # doctest: +SKIP
        >>> m.get_layer("stage3_block1_proj_conv").strides  # doctest: +SKIP
        (2, 2)
    """
    shape = _check_args(input_shape, num_classes, min_side=2 ** (len(filters) - 1))
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
    inputs = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(filters[0], 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(momentum=bn_momentum, name="bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    for s, n_filters in enumerate(filters, 1):
        for b in range(1, blocks_per_stage + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = _basic_block(x, n_filters, stride, f"stage{s}_block{b}", bn_momentum)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _inverted_residual(
    x: Any, expansion: int, out_channels: int, stride: int, prefix: str, bn_momentum: float
) -> Any:
    in_channels = int(x.shape[-1])
    y = x
    if expansion != 1:
        y = layers.Conv2D(in_channels * expansion, 1, use_bias=False, name=f"{prefix}_expand")(y)
        y = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_expand_bn")(y)
        y = layers.ReLU(6.0, name=f"{prefix}_expand_relu")(y)
    y = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False, name=f"{prefix}_depthwise"
    )(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_depthwise_bn")(y)
    y = layers.ReLU(6.0, name=f"{prefix}_depthwise_relu")(y)
    y = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{prefix}_project")(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_project_bn")(y)
    if stride == 1 and in_channels == out_channels:
        y = layers.Add(name=f"{prefix}_add")([x, y])
    return y


#: MobileNetV2-small block settings: (expansion t, output channels c, repeats n, stride s).
MOBILENETV2_SMALL_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 2, 1),
    (6, 96, 1, 1),
)


def build_mobilenetv2_small(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    alpha: float = 1.0,
    blocks: Sequence[tuple[int, int, int, int]] = MOBILENETV2_SMALL_BLOCKS,
    head_channels: int = 256,
    stem_stride: int = 2,
    dropout: float = 0.2,
    bn_momentum: float = BN_MOMENTUM,
    name: str = "mobilenetv2_small",
) -> keras.Model:
    """A small MobileNetV2 (Sandler et al. 2018) for 28x28 / 32x32 inputs.

    ``stem_conv`` (3x3, stride 2) -> ``stem_bn`` -> ``stem_relu``, then inverted
    residual blocks ``block{i}`` made of ``block{i}_expand`` (1x1, omitted when t=1)
    -> ``block{i}_depthwise`` (3x3) -> ``block{i}_project`` (1x1, linear), each
    followed by BatchNorm (``..._bn``) and ReLU6 except the projection; ``block{i}_add``
    adds the input back when stride is 1 and channels match. Then ``head_conv`` (1x1)
    -> ``head_bn`` -> ``head_relu`` -> ``avg_pool`` -> ``head_dropout`` ->
    ``predictions`` (softmax). With the defaults a 28x28 input goes 14 -> 7 -> 4 and
    the model has about 0.23M parameters.

    Args:
        input_shape: ``(height, width, channels)``, at least 8x8.
        num_classes: Number of classes.
        alpha: Width multiplier applied to every channel count (rounded to 8).
        blocks: ``(t, c, n, s)`` settings: expansion, output channels, repeats, and
            stride of the first repeat.
        head_channels: Channels of the final 1x1 conv (scaled by ``alpha`` if > 1).
        stem_stride: Stride of the stem conv (2 as in the paper; 1 keeps the full
            resolution at ~4x the compute).
        dropout: Dropout rate before the classifier.
        bn_momentum: Momentum of the BatchNorm moving statistics (see
            :data:`BN_MOMENTUM`).
        name: Model name.

    Returns:
        An uncompiled functional ``keras.Model``.

    Example:
        >>> m = build_mobilenetv2_small((32, 32, 3), 10, alpha=0.5)  # doctest: +SKIP
        >>> m.get_layer("block2_depthwise").kernel_size  # doctest: +SKIP
        (3, 3)
    """
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    n_strided = sum(1 for _, _, _, s in blocks if s > 1) + (stem_stride == 2)
    shape = _check_args(input_shape, num_classes, min_side=2**n_strided)
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    inputs = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(
        _make_divisible(16 * alpha),
        3,
        strides=stem_stride,
        padding="same",
        use_bias=False,
        name="stem_conv",
    )(inputs)
    x = layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    index = 0
    for t, c, n, s in blocks:
        out_channels = _make_divisible(c * alpha)
        for r in range(n):
            index += 1
            x = _inverted_residual(
                x, t, out_channels, s if r == 0 else 1, f"block{index}", bn_momentum
            )
    head = _make_divisible(head_channels * alpha) if alpha > 1.0 else head_channels
    x = layers.Conv2D(head, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- registry

#: Reference models by name. Every builder is called as
#: ``builder(input_shape, num_classes, **kwargs) -> keras.Model``.
REFERENCE_MODELS: dict[str, Callable[..., keras.Model]] = {
    "lenet5": build_lenet5,
    "vgg_small": build_vgg_small,
    "resnet20": build_resnet20,
    "mobilenetv2_small": build_mobilenetv2_small,
}


def build_reference_model(
    name: str,
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    **kwargs: Any,
) -> keras.Model:
    """Build a reference model by registry name.

    Args:
        name: One of ``REFERENCE_MODELS`` (``"lenet5"``, ``"vgg_small"``,
            ``"resnet20"``, ``"mobilenetv2_small"``).
        input_shape: ``(height, width, channels)``.
        num_classes: Number of classes.
        **kwargs: Extra keyword arguments for the builder (e.g. ``alpha=0.5``).

    Returns:
        An uncompiled ``keras.Model``.

    Raises:
        UnknownModelError: (a ``KeyError``) if ``name`` is not a registered model;
            the message lists the valid names.

    Example:
        >>> build_reference_model("resnet20", (32, 32, 3), 100).output.shape  # doctest: +SKIP
        (None, 100)
    """
    try:
        builder = REFERENCE_MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(REFERENCE_MODELS))
        raise UnknownModelError(
            f"unknown reference model {name!r}; valid choices: {valid}"
        ) from None
    return builder(input_shape, num_classes, **kwargs)
