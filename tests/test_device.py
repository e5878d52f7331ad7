"""Where scoring and fine-tuning run (:mod:`lrf_optuna.device`)."""

from __future__ import annotations

import pytest

from lrf_optuna import device as D


def test_the_cpu_when_tensorflow_sees_no_gpu(monkeypatch) -> None:
    monkeypatch.delenv(D.DEVICE_ENV, raising=False)
    monkeypatch.setattr(D, "_visible_gpus", lambda: ())
    assert D.compute_device() == "CPU:0"
    import tensorflow as tf

    with D.on_compute_device() as device:
        assert device == "CPU:0"
        assert "CPU:0" in tf.constant([1.0]).device


def test_the_first_gpu_when_tensorflow_sees_one(monkeypatch) -> None:
    monkeypatch.delenv(D.DEVICE_ENV, raising=False)
    monkeypatch.setattr(D, "_visible_gpus", lambda: ("/physical_device:GPU:0",))
    assert D.compute_device() == "GPU:0"


def test_the_environment_overrides_and_is_checked(monkeypatch) -> None:
    monkeypatch.setenv(D.DEVICE_ENV, "gpu:1")
    assert D.compute_device() == "GPU:1"
    monkeypatch.setenv(D.DEVICE_ENV, "TPU")
    with pytest.raises(ValueError, match="LRF_OPTUNA_DEVICE='TPU': expected CPU:<n>"):
        D.compute_device()


def test_this_machine_reports_what_tensorflow_sees(monkeypatch) -> None:
    import tensorflow as tf

    monkeypatch.delenv(D.DEVICE_ENV, raising=False)
    expected = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
    assert D.compute_device() == expected
