"""Calibration capture, the on-disk similarity cache (fingerprint, resume, fast load)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import randomize_weights
from threadpoolctl import threadpool_limits

import lrf_optuna.scoring.cache as cache_mod
from lrf_optuna.decompose import get_method
from lrf_optuna.rewrite import find_layers, rewrite_model
from lrf_optuna.scoring.cache import GridConfig, SimilarityCache, batchnorm_view, fingerprint
from lrf_optuna.scoring.calibration import capture_activations, sample_index
from lrf_optuna.scoring.similarity import similarity

L = keras.layers


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential([keras.Input((6, 6, 8)),
                              L.Conv2D(8, 3, padding="same", activation="relu", name="ic")],
                             name="inner")
    x_in = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, activation="relu", name="c1")(x_in)
    x = inner(x)
    x = L.Flatten()(x)
    x = L.Dense(24, activation="relu", name="fc1")(x)
    out = L.Dense(5, name="fc2")(x)
    return keras.Model(x_in, out, name="tiny")


@pytest.fixture
def data(rng) -> np.ndarray:
    return rng.uniform(0, 1, (48, 8, 8, 3)).astype("float32")


def test_capture_matches_submodels(data) -> None:
    model = _model()
    acts = capture_activations(model, data, ["c1", "inner/ic", "fc2"], batch_size=16)
    c1 = model.get_layer("c1")
    np.testing.assert_allclose(acts["c1"].outputs, c1(data), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts["fc2"].outputs, model(data), rtol=1e-5, atol=1e-6)
    ic = model.get_layer("inner").get_layer("ic")
    np.testing.assert_allclose(acts["inner/ic"].outputs, ic(acts["inner/ic"].inputs),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts["inner/ic"].inputs, c1(data), rtol=1e-5, atol=1e-6)


def test_capture_inside_nested_functional_model(data) -> None:
    inner_in = keras.Input((6, 6, 8))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, name="ic")(inner_in), name="inner")
    x_in = keras.Input((8, 8, 3))
    c1 = L.Conv2D(8, 3, name="c1")
    model = keras.Model(x_in, L.Flatten()(inner(c1(x_in))))
    acts = capture_activations(model, data, ["inner/ic"])
    np.testing.assert_allclose(acts["inner/ic"].inputs, c1(data), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts["inner/ic"].outputs, inner(c1(data)), rtol=1e-5,
                               atol=1e-6)


def test_capture_budget_keeps_evenly_spaced_samples(data) -> None:
    model = _model()
    per_sample = 4 * (8 * 8 * 3 + 6 * 6 * 8)
    acts = capture_activations(model, data, ["c1", "fc2"], max_bytes_per_layer=20 * per_sample,
                               min_samples=4)
    assert len(acts["c1"].inputs) == 20 == len(acts["c1"].outputs)
    assert len(acts["fc2"].inputs) == 48  # small maps: every sample fits
    np.testing.assert_array_equal(acts["c1"].sample_index, sample_index(48, 20))
    np.testing.assert_allclose(acts["c1"].inputs, data[sample_index(48, 20)])
    assert acts["c1"].nbytes <= 20 * per_sample


def test_build_scores_every_candidate(tmp_path, data) -> None:
    model = _model()
    cache = SimilarityCache.build(model, data, cache_dir=tmp_path, grid=GridConfig(points=5),
                                  extra_metrics=("nmse",), progress=False)
    assert cache.complete and set(cache.layers) == set(find_layers(model))
    info = find_layers(model)["fc1"].info
    for table in cache.tables.values():
        assert table.candidates and table.samples == len(data)
        for cand in table.candidates:
            assert set(cand.scores) == {"cosine", "nmse"}
            assert -1 <= cand.scores["cosine"] <= 1 + 1e-9
    fc1 = cache.layer("fc1")
    assert {"svd", "qr", "tt"} <= set(fc1.methods)
    for cand in fc1.candidates:
        method = get_method(cand.method)
        assert (cand.params, cand.macs) == (method.params(info, cand.rank),
                                            method.macs(info, cand.rank))
        assert method.saves(info, cand.rank)
    # the last layer's similarity is the whole model's output similarity: check it directly
    # (through build_model: data-aware methods' factors exist only in the cache)
    assert "svd_aware" in cache.layer("fc2").methods
    for cand in cache.layer("fc2").candidates:
        small = cache.build_model(model, {"fc2": (cand.method, cand.rank)})
        expected = similarity("cosine", model.predict(data, verbose=0),
                              small.predict(data, verbose=0))
        assert cand.scores["cosine"] == pytest.approx(expected, abs=1e-5)


def test_fingerprint_tracks_inputs(data) -> None:
    model = _model()
    grid = GridConfig()
    base = fingerprint(model, data, metrics=["cosine"], grid=grid, layers=["c1"])
    assert base == fingerprint(model, data.copy(), metrics=["cosine"], grid=grid,
                               layers=["c1"])
    assert base != fingerprint(model, data[:-1], metrics=["cosine"], grid=grid, layers=["c1"])
    assert base != fingerprint(model, data, metrics=["cka"], grid=grid, layers=["c1"])
    assert base != fingerprint(model, data, metrics=["cosine"], grid=GridConfig(points=3),
                               layers=["c1"])
    w = model.get_layer("c1").kernel
    w.assign(w.numpy() * 1.001)
    assert base != fingerprint(model, data, metrics=["cosine"], grid=grid, layers=["c1"])


def test_resume_after_interrupted_build(tmp_path, data, monkeypatch) -> None:
    model = _model()
    real = cache_mod.score_candidates
    calls: list[str] = []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "score_candidates", flaky)
    with pytest.raises(KeyboardInterrupt):
        SimilarityCache.build(model, data, cache_dir=tmp_path, grid=GridConfig(points=4),
                              workers=1, progress=False)
    done = set(calls[:2])
    partial = SimilarityCache.load(next(tmp_path.iterdir()))
    assert set(partial.tables) == done and not partial.complete
    calls.clear()
    monkeypatch.setattr(cache_mod, "score_candidates", real)
    monkeypatch.setattr(cache_mod, "score_candidates",
                        lambda path, *a, **k: (calls.append(path), real(path, *a, **k))[1])
    full = SimilarityCache.build(model, data, cache_dir=tmp_path, grid=GridConfig(points=4),
                                 workers=1, progress=False)
    assert full.complete and not done & set(calls)
    calls.clear()
    SimilarityCache.build(model, data, cache_dir=tmp_path, grid=GridConfig(points=4),
                          progress=False)
    assert calls == []  # complete: nothing recomputed


def test_safe_files_and_fast_load_without_tensorflow(tmp_path, data) -> None:
    model = _model()
    cache = SimilarityCache.build(model, data, cache_dir=tmp_path, grid=GridConfig(points=4),
                                  progress=False)
    files = [p for p in cache.directory.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".json", ".npz") for p in files)
    for p in files:
        if p.suffix == ".npz":
            np.load(p, allow_pickle=False).files  # noqa: B018
        else:
            json.loads(p.read_text())
    code = ("import sys, time; t = time.perf_counter(); "
            "from lrf_optuna.scoring.cache import SimilarityCache; "
            f"c = SimilarityCache.load({str(cache.directory)!r}); "
            "print(time.perf_counter() - t, len(c.tables), 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert float(out[0]) < 1.0 and int(out[1]) == len(cache.layers) and out[2] == "False"


def test_build_model_from_cache_matches_direct_rewrite(tmp_path, data, rng) -> None:
    model = _model()
    randomize_weights(model, rng, scale=0.3)
    cache = SimilarityCache.build(model, data, cache_dir=tmp_path, grid=GridConfig(points=4),
                                  progress=False)
    plan = {}
    for path, table in cache.tables.items():  # rewrite_model cannot refit data-aware ones
        cands = [c for c in table.candidates if not get_method(c.method).needs_inputs]
        cand = cands[len(cands) // 2]
        plan[path] = (cand.method, cand.rank)
    a = cache.build_model(model, plan).predict(data, verbose=0)
    b = rewrite_model(model, plan).predict(data, verbose=0)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bad_arguments(tmp_path, data) -> None:
    model = _model()
    with pytest.raises(ValueError, match="unknown similarity metric 'l1'"):
        SimilarityCache.build(model, data, cache_dir=tmp_path, metric="l1")
    with pytest.raises(KeyError, match=r"not decomposable layers.*'nope'"):
        SimilarityCache.build(model, data, cache_dir=tmp_path, layers=["nope"])
    with pytest.raises(KeyError, match="unknown LRF method"):
        SimilarityCache.build(model, data, cache_dir=tmp_path, grid=GridConfig(methods=("x",)))
    with pytest.raises(FileNotFoundError, match="no similarity cache"):
        SimilarityCache.load(tmp_path / "missing")


class _Scale(L.Layer):
    """A custom layer with weights and no ``compute_output_shape``."""

    def build(self, shape) -> None:
        self.g = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.g


def test_cache_builds_on_a_strided_conv_with_every_method(tmp_path, rng) -> None:
    """Issue 9: without oneDNN the cache build of a plain ``Conv2D(6, 5, strides=2)`` net
    crashed in cp's depthwise stages (unequal strides), and a custom layer anywhere
    stopped it (find_layers asked it for its output shape); every method's candidates
    score."""
    model = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(6, 5, strides=2, name="c"),
                              _Scale(name="scale"), L.Flatten(), L.Dense(4, name="fc")],
                             name="strided")
    randomize_weights(model, rng)
    x = rng.uniform(0, 1, (16, 12, 12, 3)).astype("float32")
    cache = SimilarityCache.build(model, x, cache_dir=tmp_path, grid=GridConfig(points=3),
                                  layers=["c"], workers=1, progress=False)
    table = cache.tables["c"]
    assert set(table.methods) == {"tucker2", "cp", "channel_svd", "spatial_svd",
                                  "channel_svd_aware"}
    assert all(np.isfinite(c.scores["cosine"]) for c in table.candidates)


def test_activation_aware_methods_end_to_end(tmp_path, data, rng) -> None:
    """The cache fits the data-aware methods to each layer's captured inputs, stores their
    factors and rebuilds exactly the layers it scored; off-grid ranks and rewrites without
    factors fail clearly."""
    from lrf_optuna.decompose import DecompositionError, layer_weights, validate_weights

    model = _model()
    randomize_weights(model, rng, scale=0.3)
    methods = ("channel_svd", "channel_svd_aware", "svd", "svd_aware")
    cache = SimilarityCache.build(model, data, cache_dir=tmp_path, progress=False,
                                  grid=GridConfig(points=4, methods=methods))
    found = find_layers(model)
    acts = capture_activations(model, data, list(found))
    for path, table in cache.tables.items():
        info, layer = found[path].info, found[path].layer
        aware = "svd_aware" if info.is_matrix else "channel_svd_aware"
        plain = aware.removesuffix("_aware")
        assert set(table.methods) == {aware, plain}
        assert [(c.rank, c.params, c.macs) for c in table.for_method(aware)] == [
            (c.rank, c.params, c.macs) for c in table.for_method(plain)]
        assert cache.factors(path, plain, table.for_method(plain)[0].rank) is None
        method = get_method(aware)
        with threadpool_limits(limits=1, user_api="blas"):  # as the cache's workers fit
            prepared = method.prepare_with_inputs(
                info, validate_weights(info, layer_weights(layer)), acts[path].inputs)
            refits = {c.rank: method.factorize(info, prepared, c.rank)
                      for c in table.for_method(aware)}
        for cand in table.for_method(aware):
            stored = cache.factors(path, aware, cand.rank)
            assert stored is not None
            for got, want in zip(stored, refits[cand.rank], strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            small = cache.build_model(model, {path: (aware, cand.rank)})
            rebuilt = small.get_layer(path.split("/")[0])
            if path.startswith("inner/"):
                rebuilt = rebuilt.get_layer(path.split("/")[1])
            y_hat = keras.ops.convert_to_numpy(rebuilt(acts[path].inputs))
            y_ref, view = acts[path].outputs, batchnorm_view(model, path)
            if view is not None:  # scored through its BatchNorm, as re-estimated
                y_ref, y_hat = view.apply(y_ref), view.apply(y_hat)
            assert cand.scores["cosine"] == pytest.approx(
                similarity("cosine", y_ref, y_hat), abs=1e-6)
    ranks = [c.rank for c in cache.layer("fc1").for_method("svd_aware")]
    off_grid = next(r for r in range(1, ranks[-1]) if r not in ranks)
    with pytest.raises(ValueError, match=rf"layer 'fc1'.*'svd_aware'.*{re.escape(str(ranks))}"
                                         rf".*rank {off_grid}"):
        cache.build_model(model, {"fc1": ("svd_aware", off_grid)})
    with pytest.raises(DecompositionError, match=r"'svd_aware' fits layer 'fc1'.*inputs="):
        rewrite_model(model, {"fc1": ("svd_aware", ranks[0])})


def test_fingerprints_survive_a_save_and_reload(tmp_path) -> None:
    """A Sequential model reloaded from its .keras file has other weight paths
    ('plain/c/kernel' in memory, 'c/kernel' reloaded): the cache fingerprint and the
    fine-tuning digest must not change, or the same model is scored and trained again."""
    from lrf_optuna.finetune.recipe import model_digest

    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="d")],
                             name="plain")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert [w.path for w in model.weights] != [w.path for w in again.weights]
    x = np.zeros((2, 6, 6, 1), "float32")
    assert fingerprint(model, x, metrics=["cosine"], grid=GridConfig(), layers=["c"]) == \
        fingerprint(again, x, metrics=["cosine"], grid=GridConfig(), layers=["c"])
    assert model_digest(model) == model_digest(again)


def test_layers_beyond_the_pass_budget_are_scored_in_several_passes(tmp_path, data,
                                                                    monkeypatch) -> None:
    """Activations too large for one calibration pass (``max_pass_bytes``) are captured
    and scored pass by pass, one pass's activations released before the next, with the
    scores of one pass."""
    model = _model()
    grid = GridConfig(points=4)
    one = SimilarityCache.build(model, data, cache_dir=tmp_path / "one", grid=grid,
                                progress=False, workers=1)
    build = SimilarityCache.builder(model, data, cache_dir=tmp_path / "many", grid=grid,
                                    max_pass_bytes=1)
    sizes = {u.name: build.pass_bytes([u.name]) for u in build.units()}
    # c1: in 8x8x3, out 6x6x8 floats, 48 samples kept + 2 batches of 48
    assert sizes["c1"] == 4 * (8 * 8 * 3 + 6 * 6 * 8) * (48 + 2 * 48)
    assert [len(p) for p in build.passes(build.units())] == [1, 1, 1, 1]
    budget = sizes["c1"] + sizes["inner/ic"]
    grouped = SimilarityCache.builder(model, data, cache_dir=tmp_path / "many", grid=grid,
                                      max_pass_bytes=budget)
    assert [[u.name for u in p] for p in grouped.passes(grouped.units())] == [
        ["c1", "inner/ic"], ["fc1", "fc2"]]
    held: list[int] = []
    real = capture_activations

    def capture(m, x, paths, **kwargs):
        held.append(len(build.acts))  # the previous pass's activations are gone
        return real(m, x, paths, **kwargs)

    monkeypatch.setattr("lrf_optuna.scoring.calibration.capture_activations", capture)
    from lrf_optuna.scoring.build import run_build

    assert run_build(build, workers=1, progress=False) == 4
    assert held == [0, 0, 0, 0]
    many = SimilarityCache.load(build.cache.directory)
    for path, table in one.tables.items():
        assert [(c.method, c.rank, c.scores) for c in many.tables[path].candidates] == \
            [(c.method, c.rank, c.scores) for c in table.candidates]


def test_a_forward_batch_too_large_for_memory_is_cut(data) -> None:
    """The calibration pass lowers its batch until every map of a batch fits
    ``max_forward_bytes``, with the same activations."""
    from lrf_optuna.scoring.calibration import forward_batch, forward_bytes_per_sample

    model = _model()
    per_sample = forward_bytes_per_sample(model)
    # outputs: c1 6x6x8, inner (its ic 6x6x8), flatten 288, fc1 24, fc2 5 (input layer 8x8x3)
    assert per_sample == 4 * (8 * 8 * 3 + 288 + 288 + 288 + 24 + 5)
    assert forward_batch(model, 64) == 64
    assert forward_batch(model, 64, max_forward_bytes=5 * per_sample) == 5
    assert forward_batch(model, 64, max_forward_bytes=1) == 1
    full = capture_activations(model, data, ["c1", "fc1"])
    cut = capture_activations(model, data, ["c1", "fc1"], max_forward_bytes=5 * per_sample)
    for path in full:
        np.testing.assert_allclose(cut[path].outputs, full[path].outputs, rtol=1e-5,
                                   atol=1e-6)
