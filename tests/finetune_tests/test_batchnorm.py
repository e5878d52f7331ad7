"""BatchNorm re-estimation (lrf_optuna.finetune.batchnorm), in fine-tuning and in the
similarity scoring (lrf_optuna.scoring.similarity.BatchNormView,
lrf_optuna.scoring.cache.batchnorm_view)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quadrant_images

from lrf_optuna.data import from_arrays, prepare_splits
from lrf_optuna.finetune import FinetuneConfig, finetune_model
from lrf_optuna.finetune.batchnorm import (
    batchnorm_layers,
    reestimate_batchnorm,
    train_mode_accuracy,
)
from lrf_optuna.models.training import evaluate
from lrf_optuna.scoring.cache import SimilarityCache, batchnorm_view
from lrf_optuna.scoring.similarity import BatchNormView, similarity


def _net(dropout: float = 0.0):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(dropout, name="drop")(x)
    x = keras.layers.Conv2D(8, 3, name="conv2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Add()([keras.layers.ReLU()(y), x])   # conv2 feeds bn2 and the Add
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="bnnet")


@pytest.fixture(scope="module")
def trained():
    x, y = quadrant_images(400, 12)
    data = from_arrays(x[:320], y[:320], x[320:], y[320:], name="quad")
    splits = prepare_splits(data, val_fraction=0.2, calibration_size=64)
    model = _net(dropout=0.3)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(splits.x_train, splits.y_train, epochs=6, batch_size=32, verbose=0)
    return model, splits


def _spoil(model) -> None:
    """Moving statistics far from the truth (as after a factorization, or a bad export)."""
    for bn in batchnorm_layers(model):
        bn.moving_mean.assign(bn.moving_mean.numpy() + 5.0)
        bn.moving_variance.assign(bn.moving_variance.numpy() * 40.0)


def test_statistics_are_the_exact_batch_average(trained) -> None:
    import keras

    model, splits = trained
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    layers = batchnorm_layers(clone)
    layers[1].trainable = False                       # frozen BN is updated too
    momenta = [bn.momentum for bn in layers]
    before = {w.path: w.numpy() for w in clone.weights}
    update = reestimate_batchnorm(clone, splits.x_train, images=None,
                                  batch_size=len(splits.x_train))
    assert (update.layers, update.images, update.batches) == (2, len(splits.x_train), 1)
    # one batch of every image: the moving mean is that batch's mean of conv1's outputs
    conv1 = keras.Model(clone.input, clone.get_layer("conv1").output)
    y = np.asarray(conv1(splits.x_train))
    np.testing.assert_allclose(layers[0].moving_mean.numpy(), y.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layers[0].moving_variance.numpy(), y.var(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-5)
    # nothing else changed, every setting restored
    for w in clone.weights:
        if "moving" not in w.path:
            np.testing.assert_array_equal(w.numpy(), before[w.path])
    assert [bn.momentum for bn in layers] == momenta
    assert layers[1].trainable is False and clone.get_layer("drop").rate == 0.3
    # batches average: two halves give the mean of the two batch means
    reestimate_batchnorm(clone, splits.x_train[:64], images=None, batch_size=32)
    halves = [y[:32].mean(axis=(0, 1, 2)), y[32:64].mean(axis=(0, 1, 2))]
    np.testing.assert_allclose(layers[0].moving_mean.numpy(), np.mean(halves, axis=0),
                               rtol=1e-4, atol=1e-5)


def test_reestimation_repairs_stale_statistics(trained) -> None:
    import keras

    model, splits = trained
    spoiled = keras.models.clone_model(model)
    spoiled.set_weights(model.get_weights())
    _spoil(spoiled)
    good = evaluate(model, splits.x_val, splits.y_val)
    bad = evaluate(spoiled, splits.x_val, splits.y_val)
    assert bad < good - 0.2
    # training-mode accuracy sees through stale statistics, and leaves them as they were
    stats = [bn.moving_mean.numpy().copy() for bn in batchnorm_layers(spoiled)]
    assert train_mode_accuracy(spoiled, splits.x_val, splits.y_val) > bad + 0.2
    for bn, mean in zip(batchnorm_layers(spoiled), stats):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    reestimate_batchnorm(spoiled, splits.x_train, images=200)
    assert evaluate(spoiled, splits.x_val, splits.y_val) >= good - 0.05


def test_finetune_model_reestimates_first_and_records_it(trained) -> None:
    import keras

    model, splits = trained
    spoiled = keras.models.clone_model(model)
    spoiled.set_weights(model.get_weights())
    _spoil(spoiled)
    config = FinetuneConfig(epochs=1, batch_size=32, verbose=0, bn_images=256, distill=0.0)
    out = finetune_model(spoiled, splits, config)
    assert out.bn_reestimated and out.val_acc_built is not None
    assert out.val_acc_before > out.val_acc_built + 0.2
    assert out.val_acc_after >= out.val_acc_before      # never ends below its start
    off = keras.models.clone_model(model)
    off.set_weights(model.get_weights())
    _spoil(off)
    none = finetune_model(off, splits, FinetuneConfig(epochs=1, batch_size=32, verbose=0,
                                                     bn_images=0, distill=0.0))
    assert not none.bn_reestimated and none.val_acc_before == none.val_acc_built


def test_step_budget_decides_the_epochs(trained) -> None:
    import keras

    model, splits = trained
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    n = len(splits.x_train)                               # 256 images, 8 steps of 32
    config = FinetuneConfig(batch_size=32, min_steps=40, min_epochs=2, max_epochs=9,
                            keep_epoch="last", verbose=0, revert_if_worse=False,
                            distill=0.0)
    assert config.epochs_for(n) == 5
    out = finetune_model(clone, splits, config)
    assert out.epochs_run == 5 and out.steps == 40


def test_batchnorm_view_scores_what_the_reestimated_net_sees() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=(128, 5, 5, 3)) * np.array([1.0, 2.0, 0.5]) + 1.0
    view = BatchNormView(np.array([1.0, 0.5, 2.0]), np.array([0.1, 0.0, -0.2]), 1e-3)
    # a per-channel rescaling (a channel whose energy a truncation removed) is undone
    shrunk = y * np.array([1.0, 0.3, 1.0]) - 0.4
    assert similarity("cosine", view.apply(y), view.apply(shrunk)) == pytest.approx(1.0)
    assert similarity("cosine", y, shrunk) < 0.99
    # lost structure still counts
    noisy = y + rng.normal(size=y.shape)
    assert similarity("cosine", view.apply(y), view.apply(noisy)) < 0.95
    kept = view.kept(np.array([True, False, True]))
    np.testing.assert_array_equal(kept.gamma, [1.0, 2.0])


def test_cache_scores_through_the_only_batchnorm_consumer(trained, tmp_path) -> None:
    model, splits = trained
    view = batchnorm_view(model, "conv1")
    assert view is not None
    np.testing.assert_array_equal(view.gamma, model.get_layer("bn1").gamma.numpy())
    assert batchnorm_view(model, "fc") is None        # no BatchNorm after it
    with_bn = SimilarityCache.build(model, splits.x_cal, cache_dir=tmp_path, progress=False,
                                    layers=["conv1", "conv2"])
    plain = SimilarityCache.build(model, splits.x_cal, cache_dir=tmp_path, progress=False,
                                  layers=["conv1", "conv2"], batchnorm=False)
    assert with_bn.fingerprint != plain.fingerprint
    assert with_bn.manifest["batchnorm"] is True and plain.manifest["batchnorm"] is False
    for path in ("conv1", "conv2"):
        scores_a = [c.score("cosine") for c in with_bn.layer(path).candidates]
        scores_b = [c.score("cosine") for c in plain.layer(path).candidates]
        assert (scores_a != scores_b) == (path == "conv1")   # conv2 has no sole-BN view
    # through the view, the exact factorization (full rank) still scores 1
    from lrf_optuna.decompose import layer_weights
    from lrf_optuna.rewrite import find_layers
    from lrf_optuna.scoring.build import progress_bar
    from lrf_optuna.scoring.cache import score_candidates
    from lrf_optuna.scoring.calibration import capture_activations

    found = find_layers(model)["conv1"]
    acts = capture_activations(model, splits.x_cal, ["conv1"])["conv1"]
    table, _ = score_candidates("conv1", found.info, layer_weights(found.layer), acts.inputs,
                                acts.outputs, {"channel_svd": [8]}, ["cosine"], 32,
                                progress_bar(0, False), view=view)
    assert table.candidates[0].score("cosine") == pytest.approx(1.0, abs=1e-6)
