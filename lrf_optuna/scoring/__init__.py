"""Scoring: every (layer, method, rank) candidate judged once, by how similar its output
feature maps stay to the original layer's on real inputs, and kept on disk.

The pipeline, one module each:

=============================== =========================================================
``calibration``                 one forward pass captures each target layer's input and
                                output on calibration images, within a memory budget
``similarity``                  the metrics (cosine by default, linear CKA, 1 - NMSE) and
                                the view through a re-estimated BatchNorm
``build``                       one resumable build for every cache: units of work
                                (enumerate, done?, run one, write it), run on threads
                                with one progress bar
``_store``                      the file store: safe names, atomic writes, manifests,
                                factor files
``cache``                       the similarity cache (:class:`SimilarityCache`): per layer
                                and method a rank grid (:class:`GridConfig`), each
                                candidate factorized, run alone and scored; fingerprinted,
                                resumable, read without TensorFlow
=============================== =========================================================

The pruning candidates are scored by the same build beside it
(:class:`lrf_optuna.prune.PruneCache`). Importing this package does not load TensorFlow
(``calibration`` does: import it where it is used).

Example:
    >>> from lrf_optuna.scoring import GridConfig, SimilarityCache
    >>> GridConfig(points=4).thin(range(1, 65))
    [1, 4, 16, 64]
    >>> cache = SimilarityCache.build(model, x_cal, cache_dir=".lrf_cache")  # doctest: +SKIP
    >>> cache.layer("fc1").best("svd", metric="cosine", min_similarity=0.95)  # doctest: +SKIP
"""

from __future__ import annotations

from lrf_optuna.scoring.cache import (
    CACHE_FORMAT,
    Candidate,
    GridConfig,
    LayerTable,
    SimilarityCache,
    batchnorm_view,
    fingerprint,
)
from lrf_optuna.scoring.similarity import DEFAULT_METRIC, METRICS, BatchNormView

__all__ = ["CACHE_FORMAT", "DEFAULT_METRIC", "METRICS", "BatchNormView", "Candidate",
           "GridConfig", "LayerTable", "SimilarityCache", "batchnorm_view", "fingerprint"]
