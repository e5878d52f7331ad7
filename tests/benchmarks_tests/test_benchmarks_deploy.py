"""benchmarks/deploy.py in a tiny configuration: a small trained .keras model given with
--model, every quantize mode, the representative sweep, the RESULTS.md section."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
from conftest import quadrant_images

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import deploy as bench  # noqa: E402


def test_deploy_benchmark_tiny_mode(tmp_path, capsys) -> None:
    x, y = quadrant_images(300, 12)
    np.savez(tmp_path / "d.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:],
             y_test=y[240:])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 1)),
                              keras.layers.Conv2D(8, 3, activation="relu", name="c"),
                              keras.layers.MaxPooling2D(),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="fc")],
                             name="tiny")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:240] / 255.0, y[:240], epochs=5, verbose=0)
    model.save(tmp_path / "tiny.keras")
    results = tmp_path / "RESULTS.md"
    argv = ["--models", "--model", str(tmp_path / "tiny.keras"), "--dataset",
            str(tmp_path / "d.npz"), "--representative", "16", "--representative-sweep",
            "8", "32", "--latency-repeats", "2", "--results", str(results)]
    assert bench.main(argv) == 0
    text = results.read_text()
    assert "## Deployed files" in text and "### Representative images for int8" in text
    body = text.split("## Deployed files")[1]
    for label in ("float32", "float16", "dynamic range", "int8 (full integer)",
                  "int8, FC per tensor"):
        assert f"| tiny  | {label}" in body or f"| tiny | {label}" in body, label
    assert "(litert)" in body and "TFLM" in body
    assert "Ops of the int8 files: tiny:" in body and "CONV_2D" in body
    rows = [line for line in body.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 5 + 2   # 5 modes + 2 sweep rows
    assert "wrote" in capsys.readouterr().out
