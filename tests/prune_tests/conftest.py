"""The trained model and caches the pruning-cache and pruning-search tests share."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lrf_optuna.prune import PruneCache, PruneConfig
from lrf_optuna.scoring.cache import GridConfig, SimilarityCache
from lrf_optuna.scoring.calibration import capture_activations

L = keras.layers
CONFIG = PruneConfig(ratios=(0.0, 0.25, 0.5, 0.75), points=3)


def trained_model() -> tuple[keras.Model, np.ndarray]:
    """A small CNN trained briefly on quadrant images (untrained random weights make
    pruning scores meaningless), and 48 calibration images."""
    from conftest import quadrant_images

    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((10, 10, 1)),
        L.Conv2D(8, 3, activation="relu", name="c1"),
        L.Conv2D(12, 3, activation="relu", name="c2"),
        L.Flatten(name="flat"),
        L.Dense(24, activation="relu", name="fc1"),
        L.Dense(4, name="fc2"),
    ], name="small")
    x, y = quadrant_images(240, 10)
    x = x[..., None].astype("float32") / 255.0
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:192], y[:192], epochs=4, batch_size=32, verbose=0)
    return model, x[192:]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model, x = trained_model()
    base = SimilarityCache.build(model, x, cache_dir=tmp_path_factory.mktemp("pc"),
                                 grid=GridConfig(points=4), progress=False)
    pruning = PruneCache.build(model, x, base, config=CONFIG, progress=False)
    acts = capture_activations(model, x, ["c1", "c2", "fc1", "fc2"])
    return model, x, base, pruning, acts
