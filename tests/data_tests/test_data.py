"""Tests for lrf_optuna.data: idx loading, fallbacks, user data, leakage-free splits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from lrf_optuna import data
from lrf_optuna.data import (
    DataNotFoundError,
    Dataset,
    IdxFormatError,
    arrays_from_tf_dataset,
    calibration_subset,
    fingerprint_arrays,
    from_arrays,
    from_tf_datasets,
    load_fashion_mnist,
    load_fashion_mnist_dir,
    prepare_splits,
    read_idx,
    sources,
    stratified_indices,
    train_val_split,
)

N_TRAIN, N_TEST = 60, 20


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fake_fashion(directory: Path, *, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for role, stem in data.FASHION_MNIST_FILES.items():
        raw = _idx_bytes(arrays[role])
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


@pytest.fixture
def no_default_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make the Debian directory, the env var and keras' downloader all fail."""
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-here")
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)

    def offline() -> Dataset:
        raise Exception("URL fetch failure: offline (test)")

    monkeypatch.setattr(sources, "_load_from_keras", offline)


# --------------------------------------------------------------------------- idx files


@pytest.mark.parametrize("gz", [True, False])
def test_load_dir_gz_and_raw(tmp_path: Path, gz: bool) -> None:
    arrays = _write_fake_fashion(tmp_path, gz=gz)
    ds = load_fashion_mnist_dir(tmp_path)
    assert ds.x_train.shape == (N_TRAIN, 28, 28, 1)
    assert ds.x_test.shape == (N_TEST, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["x_train"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.num_classes == 10 and ds.input_shape == (28, 28, 1)


def test_read_idx_other_dtypes(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    raw = struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 3) + arr.tobytes()
    (tmp_path / "a").write_bytes(raw)
    out = read_idx(tmp_path / "a")
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))
    assert out.dtype == np.dtype("int32")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x01\x02\x08\x01\x00\x00\x00\x01\x00", "magic"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x00", "type code"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated idx header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x00\x01", "5 data bytes|holds 2 data bytes"),
        (b"\x00\x00", "too short"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
        (gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07" * 50)[:-12], "gzip"),
    ],
)
def test_read_idx_corrupt(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(IdxFormatError, match=match):
        read_idx(path)


def test_images_labels_count_mismatch(tmp_path: Path) -> None:
    _write_fake_fashion(tmp_path, gz=True)
    stem = data.FASHION_MNIST_FILES["y_train"]
    (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(7, np.uint8))))
    with pytest.raises(IdxFormatError, match=f"{N_TRAIN} train images but 7 train labels"):
        load_fashion_mnist_dir(tmp_path)


# --------------------------------------------------------------------------- fallbacks


def test_explicit_path_first(tmp_path: Path, no_default_sources: None) -> None:
    _write_fake_fashion(tmp_path / "mine", gz=True)
    ds = load_fashion_mnist(tmp_path / "mine")
    assert ds.source == str(tmp_path / "mine")
    assert len(ds.x_train) == N_TRAIN


def test_env_var_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_sources: None
) -> None:
    _write_fake_fashion(tmp_path / "env", gz=False)
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert load_fashion_mnist().source == str(tmp_path / "env")


def test_falls_back_after_bad_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_sources: None
) -> None:
    _write_fake_fashion(tmp_path / "debian", gz=True)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    ds = load_fashion_mnist(tmp_path / "does-not-exist")
    assert ds.source == str(tmp_path / "debian")


def test_keras_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_sources: None
) -> None:
    fake = from_arrays(
        np.zeros((4, 28, 28), np.uint8),
        [0, 1, 2, 3],
        np.zeros((2, 28, 28), np.uint8),
        [0, 1],
        source="keras",
    )
    monkeypatch.setattr(sources, "_load_from_keras", lambda: fake)
    assert load_fashion_mnist().source == "keras"


def test_error_lists_every_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_sources: None
) -> None:
    corrupt = tmp_path / "corrupt"
    _write_fake_fashion(corrupt, gz=True)
    (corrupt / f"{data.FASHION_MNIST_FILES['x_test']}.gz").write_bytes(b"\x1f\x8bnot gzip")
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env-dir"))
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(corrupt)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    locations = [loc for loc, _ in err.attempts]
    assert len(locations) == 4
    assert str(corrupt) in locations[0] and "corrupt gzip" in err.attempts[0][1]
    assert str(tmp_path / "env-dir") in locations[1]
    assert "no-debian-here" in locations[2]
    assert "keras" in locations[3] and "offline" in err.attempts[3][1]
    message = str(err)
    assert "sudo apt-get install -y dataset-fashion-mnist" in message
    assert "path=" in message
    for loc in locations:
        assert loc in message


# --------------------------------------------------------------------------- user arrays


def test_from_arrays_converts() -> None:
    ds = from_arrays(
        np.full((6, 8, 8), 255, np.uint8),
        np.array([[0], [1], [2], [0], [1], [2]]),
        np.zeros((3, 8, 8, 1), np.float64),
        np.eye(3),
    )
    assert ds.x_train.shape == (6, 8, 8, 1) and ds.x_train.dtype == np.float32
    assert float(ds.x_train.max()) == 1.0
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2])
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 3


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"x_train": np.zeros((4, 8))}, ValueError, r"shape \(N, H, W, C\).*got shape \(4, 8\)"),
        ({"y_train": np.zeros(3, np.int64)}, ValueError, "3 labels for 4 images"),
        ({"x_test": np.zeros((2, 9, 9, 1))}, ValueError, "same shape"),
        ({"x_train": np.zeros((4, 8, 8, 1), np.int32)}, TypeError, "must be uint8"),
        ({"x_train": np.array([["a"]] * 4)}, TypeError, "numeric"),
        ({"y_train": np.array([0.5, 1, 2, 3])}, TypeError, "non-integral"),
        ({"y_train": np.array([-1, 0, 1, 2])}, ValueError, ">= 0"),
        ({"y_train": np.array([[0.2, 0.8]] * 4)}, ValueError, "not one-hot"),
        ({"x_train": np.full((4, 8, 8, 1), np.nan)}, ValueError, "NaN"),
        ({"x_test": np.zeros((0, 8, 8, 1)), "y_test": np.zeros(0, int)}, ValueError, "empty"),
    ],
)
def test_from_arrays_validation(kwargs: dict, exc: type[Exception], match: str) -> None:
    args = {
        "x_train": np.zeros((4, 8, 8, 1), np.float32),
        "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.zeros((2, 8, 8, 1), np.float32),
        "y_test": np.array([0, 1]),
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        from_arrays(**args)


def test_tf_data_batched_and_unbatched() -> None:
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype(np.float32)
    y = np.arange(10) % 3
    elements = tf.data.Dataset.from_tensor_slices((x, y))
    for ds in (elements, elements.batch(4)):
        xa, ya = arrays_from_tf_dataset(ds)
        np.testing.assert_array_equal(xa, x)
        np.testing.assert_array_equal(ya, y)
    xa, ya = arrays_from_tf_dataset(elements.batch(4), max_elements=6)
    assert xa.shape == (6, 8, 8, 1) and len(ya) == 6
    full = from_tf_datasets(elements.batch(3), elements.take(4), name="tfd")
    assert full.x_train.shape == (10, 8, 8, 1) and full.x_test.shape == (4, 8, 8, 1)
    with pytest.raises(TypeError, match=r"\(x, y\) pairs"):
        arrays_from_tf_dataset(tf.data.Dataset.from_tensor_slices(x))
    with pytest.raises(ValueError, match="no elements"):
        arrays_from_tf_dataset(elements.take(0))


# --------------------------------------------------------------------------- sampling


def _imbalanced(n_per_class: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    x = np.arange(len(y), dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1))
    return x.astype(np.float32), y


def test_calibration_subset_stratified_and_deterministic() -> None:
    x, y = _imbalanced((500, 300, 150, 40, 10, 1))
    xc, yc = calibration_subset(x, y, size=100, seed=3)
    counts = np.bincount(yc, minlength=6)
    assert counts.sum() == 100 and (counts >= 1).all()
    expected = np.bincount(y) / len(y) * 100
    assert np.all(np.abs(counts - expected) <= 1.5), (counts, expected)
    # The images belong to the labels we got (rows are kept together).
    np.testing.assert_array_equal(y[xc[:, 0, 0, 0].astype(int)], yc)
    xc2, yc2 = calibration_subset(x, y, size=100, seed=3)
    np.testing.assert_array_equal(xc, xc2)
    np.testing.assert_array_equal(yc, yc2)
    xc3, _ = calibration_subset(x, y, size=100, seed=4)
    assert not np.array_equal(xc, xc3)


def test_calibration_subset_errors() -> None:
    x, y = _imbalanced((5, 5, 5))
    with pytest.raises(ValueError, match="too small"):
        calibration_subset(x, y, size=2)
    with pytest.raises(ValueError, match="3 labels"):
        calibration_subset(x, y[:3], size=2)
    xc, _ = calibration_subset(x, y, size=1000)  # clipped to all examples
    assert len(xc) == 15


def test_stratified_indices_no_duplicates() -> None:
    _, y = _imbalanced((7, 3, 2))
    idx = stratified_indices(y, 12, seed=0)
    np.testing.assert_array_equal(idx, np.arange(12))
    idx = stratified_indices(y, 5, seed=1)
    assert len(np.unique(idx)) == 5 and set(y[idx]) == {0, 1, 2}


def test_train_val_split_stratified() -> None:
    x, y = _imbalanced((80, 40, 20))
    xt, _, xv, yv = train_val_split(x, y, val_fraction=0.25, seed=0)
    assert len(xv) == 35 and len(xt) == 105
    np.testing.assert_array_equal(np.bincount(yv), [20, 10, 5])
    ids_t, ids_v = xt[:, 0, 0, 0], xv[:, 0, 0, 0]
    assert not set(ids_t) & set(ids_v)
    assert sorted(np.concatenate([ids_t, ids_v])) == list(range(140))
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        train_val_split(x, y, val_fraction=1.0)
    _, _, xv0, _ = train_val_split(x, y, val_fraction=0.0)
    assert len(xv0) == 0


def test_prepare_splits_no_leakage() -> None:
    rng = np.random.default_rng(0)
    ds = from_arrays(
        rng.random((300, 6, 6, 1)),
        np.arange(300) % 10,
        rng.random((50, 6, 6, 1)),
        np.arange(50) % 10,
    )
    s = prepare_splits(ds, val_fraction=0.2, calibration_size=40, seed=7)
    assert (len(s.x_train), len(s.x_val), len(s.x_cal)) == (240, 60, 40)
    # Indices: val and train partition the original training set; cal is inside train.
    assert not np.intersect1d(s.train_indices, s.val_indices).size
    assert np.union1d(s.train_indices, s.val_indices).size == 300
    assert np.isin(s.cal_indices, s.train_indices).all()
    assert not np.isin(s.cal_indices, s.val_indices).any()
    np.testing.assert_array_equal(s.x_cal, ds.x_train[s.cal_indices])
    np.testing.assert_array_equal(s.x_val, ds.x_train[s.val_indices])
    # Nothing in the calibration set comes from the test set (compare contents).
    test_rows = {row.tobytes() for row in ds.x_test}
    assert not any(row.tobytes() in test_rows for row in s.x_cal)
    assert s.x_test is ds.x_test
    np.testing.assert_array_equal(np.bincount(s.y_cal), [4] * 10)
    # Same split as train_val_split, and calibration_subset reproduces the cal set.
    xt, _, xv, _ = train_val_split(ds.x_train, ds.y_train, val_fraction=0.2, seed=7)
    np.testing.assert_array_equal(xt, s.x_train)
    np.testing.assert_array_equal(xv, s.x_val)
    xc, _ = calibration_subset(s.x_train, s.y_train, size=40, seed=7)
    np.testing.assert_array_equal(xc, s.x_cal)


def test_fingerprint_sensitive_to_content_and_shape() -> None:
    a = np.zeros((2, 3), np.float32)
    assert fingerprint_arrays(a) == fingerprint_arrays(a.copy())
    assert fingerprint_arrays(a) != fingerprint_arrays(a.reshape(3, 2))
    b = a.copy()
    b[1, 2] = 1e-6
    assert fingerprint_arrays(a) != fingerprint_arrays(b)
