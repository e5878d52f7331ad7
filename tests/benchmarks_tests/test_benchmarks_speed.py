"""The decomposition-speed benchmark in a tiny configuration, and the RESULTS.md helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import rel_err

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))

from benchmarks._results import markdown_table, median_time, write_section  # noqa: E402
from benchmarks.decomposition_speed import (  # noqa: E402
    CONV_METHODS,
    DENSE_METHODS,
    SECTION,
    SpeedConfig,
    reconstruct_kernel,
    render,
    run,
    trained_like_kernel,
)
from lrf_optuna.decompose import describe_layer, get_method  # noqa: E402

TINY = SpeedConfig(conv_in=8, conv_out=12, conv_hw=6, dense_in=32, dense_out=16,
                   conv_ranks=(2, 5), dense_ranks=(3, 16, 64), repeats=1)


# -- RESULTS.md helpers ----------------------------------------------------------------------
def test_write_section_replaces_and_keeps_the_others(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\nIntro.\n\n"
                    "## Baselines\n\nbaseline table\n\n"
                    "## Decomposition speed\n\nold numbers\n\n### detail\n\nold detail\n"
                    "```\n## not a heading (inside a code block)\n```\nold tail\n\n"
                    "## Later\n\nkept too\n")
    write_section("Decomposition speed", "new numbers\n", path)
    assert path.read_text() == ("# Benchmark results\n\nIntro.\n\n"
                                "## Baselines\n\nbaseline table\n\n"
                                "## Decomposition speed\n\nnew numbers\n\n"
                                "## Later\n\nkept too\n")
    # "## " prefix accepted; the last section is replaced up to the end of the file
    write_section("## Later", "\n\nreplaced\n\n", path)
    assert path.read_text().endswith("## Decomposition speed\n\nnew numbers\n\n"
                                     "## Later\n\nreplaced\n")
    write_section("Appended", "x", path)
    text = path.read_text()
    assert text.endswith("## Later\n\nreplaced\n\n## Appended\n\nx\n")
    assert text.count("## Baselines") == 1 and "baseline table" in text


def test_write_section_creates_the_file(tmp_path):
    path = tmp_path / "sub" / "RESULTS.md"
    write_section("A", "body", path)
    assert path.read_text() == "# Benchmark results\n\n## A\n\nbody\n"
    write_section("A", "body", path)  # idempotent
    assert path.read_text() == "# Benchmark results\n\n## A\n\nbody\n"


def test_markdown_table_and_median_time():
    table = markdown_table(["name", "ms"], [["a|b", "1.5"], ["c", "-"]])
    assert table.splitlines() == ["| name | ms  |", "|------|----:|",
                                  "| a\\|b | 1.5 |", "| c    |   - |"]
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [["only one"]])
    calls = []
    assert median_time(lambda: calls.append(1), 3) >= 0.0
    assert len(calls) == 3
    with pytest.raises(ValueError):
        median_time(lambda: None, 0)


# -- the benchmark -----------------------------------------------------------------------------
def test_tiny_benchmark_writes_one_row_per_method_and_rank(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Baselines\n\nkeep me\n")
    report = run(TINY, results_path=path, command="python -m benchmarks.decomposition_speed x")

    expected = {(m, r) for m in CONV_METHODS for r in TINY.conv_ranks}
    # dense max ranks: svd/qr min(32, 16) = 16; tt (modes [4,4,2]x[2,2,4], s_k = 8) 8
    expected |= {(m, r) for m in ("svd", "qr") for r in (3, 16)}
    expected |= {("tt", 3)}
    got = [(r.method, r.rank) for r in report.rows]
    assert sorted(got) == sorted(expected)  # one row each, no duplicates
    assert {m.method for m in report.methods} == set(CONV_METHODS) | set(DENSE_METHODS)
    for m in report.methods:
        assert m.prepare_s > 0
        assert m.grid_s == pytest.approx(m.prepare_s + sum(r.factorize_s for r in m.ranks))
        assert m.skipped == {"svd": [64], "qr": [64], "tt": [16, 64]}.get(m.method, [])
    for row in report.rows:
        assert row.factorize_s > 0
        assert 0.0 <= row.rel_error < 1.0
    by_key = {(r.method, r.rank): r for r in report.rows}
    # at the full rank the SVD and QR are exact; higher rank never hurts the SVD
    assert by_key["svd", 16].rel_error < 1e-10
    assert by_key["qr", 16].rel_error < 1e-10
    assert by_key["svd", 3].rel_error <= by_key["qr", 3].rel_error + 1e-12
    assert by_key["cp", 5].note.startswith("ALS")

    text = path.read_text()
    assert text.startswith("# Benchmark results\n\n## Baselines\n\nkeep me\n\n")
    assert text.count(f"## {SECTION}") == 1
    assert "`python -m benchmarks.decomposition_speed x`" in text
    assert "DEFAULT_TIME_BUDGET" in text and "nproc" in text and "BLAS" in text
    section = text.split(f"## {SECTION}", 1)[1]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in section.splitlines() if line.startswith("| ")]
    header = next(c for c in cells if c[:3] == ["layer", "method", "rank"])
    table_rows = [c for c in cells if len(c) == len(header) and c[2].isdigit()]
    assert sorted((c[1], int(c[2])) for c in table_rows) == sorted(expected)
    for c in table_rows:  # factorize (ms) is positive, error a number
        assert float(c[header.index("factorize (ms)")]) > 0
        assert 0 <= float(c[header.index("rel. weight error")]) < 1

    # the warnings a loaded machine triggers
    by_key["cp", 5].budget_hits = 1
    report.environment.update(load_before="9.50 1.00 1.00", nproc=2,
                              blas=[{**b, "num_threads": 2} for b in report.environment["blas"]])
    text = render(report)
    assert "time budget stopped the ALS at rank 5 (1 of 1 repeat(s))" in text
    assert "oversubscribed" in text


@pytest.mark.parametrize("method", [*CONV_METHODS, *DENSE_METHODS])
def test_reconstruction_matches_the_replacement_layer(method):
    """``reconstruct_kernel`` rebuilds exactly the kernel the replacement layer applies."""
    rng = np.random.default_rng(0)
    if method in CONV_METHODS:
        layer = keras.layers.Conv2D(12, 3, padding="same")
        shape, rank = (6, 6, 8), 4
    else:
        layer = keras.layers.Dense(16)
        shape, rank = (32,), 5
    layer.build((None, *shape))
    kernel = trained_like_kernel(tuple(layer.kernel.shape), seed=3)
    bias = rng.standard_normal(layer.bias.shape).astype(np.float32)
    info = describe_layer(layer, input_shape=shape)
    m = get_method(method)
    weights = {"kernel": kernel, "bias": bias}
    factors = m.factorize(info, m.prepare(info, weights), rank)
    small = m.decompose(info, weights, rank, factors=factors)
    layer.set_weights([reconstruct_kernel(method, info, factors).astype(np.float32), bias])
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    assert rel_err(small(x), layer(x)) < 1e-4


def test_trained_like_kernel_is_seeded_and_not_white_noise():
    a = trained_like_kernel((64, 32), seed=1)
    assert a.dtype == np.float32 and a.shape == (64, 32)
    np.testing.assert_array_equal(a, trained_like_kernel((64, 32), seed=1))
    assert np.std(a) == pytest.approx(np.sqrt(2 / 64), rel=1e-3)
    s = np.linalg.svd(a, compute_uv=False)
    top = float(np.sum(s[:8] ** 2) / np.sum(s**2))
    assert top > 0.7  # the leading quarter of the spectrum; ~0.5 for a Gaussian 64x32 matrix
