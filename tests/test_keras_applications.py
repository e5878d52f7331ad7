"""Rewrite everything (issue 9): every ``keras.applications`` family that builds at a small
input, and the zoo, with every decomposable layer rewritten at full rank, methods taken
round-robin (:mod:`benchmarks.rewrite_coverage` runs the same checks and writes the
per-family table to ``benchmarks/RESULTS.md``).

Per architecture (built once): the outputs of the model and of every rewritten layer
match the original's, so does the model loaded back from ``.keras`` with
``safe_mode=True``, a rewrite at a quarter of each rank runs with finite outputs that
differ from the original's, ``model_costs`` agrees with ``count_params()`` on all of
them, every layer of a decomposable class is rewritten, and only layers of other classes
are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import pytest
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))

from benchmarks.rewrite_coverage import (  # noqa: E402
    ARCHITECTURES,
    build,
    check,
)
from lrf_optuna.rewrite import iter_layers  # noqa: E402

L = keras.layers
DECOMPOSABLE = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
                L.Conv3DTranspose, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
                L.SeparableConv2D)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_rewrite_everything_at_full_rank(name: str, tmp_path) -> None:
    model = build(name)
    layers = dict(iter_layers(model))
    expected = {p for p, layer in layers.items() if isinstance(layer, DECOMPOSABLE)}
    with threadpool_limits(limits=1, user_api="blas"):  # a busy 2-core machine: see the module
        result = check(name, model, tmp_path)
    keras.backend.clear_session()

    assert result.rewritten == len(expected) > 0
    assert set(result.refused).isdisjoint(expected), result.refused
    for path, reason in result.refused.items():
        assert "is not a decomposable kind" in reason, (path, reason)
    assert result.full_rank_error < 1e-4
    assert result.round_trip_error < 1e-4
    assert result.worst_layer_error < 1e-4, result.worst_layer
    assert result.partial_finite
    assert result.partial_error > 1e-3  # the quarter-rank rewrite really changed the model
    assert result.params_agree, result.params
    # every method meets real layers: among the layers the same methods apply to, each of
    # those methods is used as soon as there are as many layers as methods
    groups: dict[tuple[str, ...], list[str]] = {}
    for path, methods in result.applicable.items():
        groups.setdefault(methods, []).append(result.plan[path][0])
    for methods, used in groups.items():
        if len(used) >= len(methods):
            assert set(used) == set(methods), (methods, used)


def test_render_lists_rows_and_refusals(tmp_path) -> None:
    """The benchmark's table: one row per architecture, refused layers grouped by reason."""
    from benchmarks.rewrite_coverage import SECTION, render

    x = keras.Input((8, 8, 3))
    y = keras.layers.LayerNormalization(name="ln")(keras.layers.Conv2D(4, 3, name="c")(x))
    model = keras.Model(x, keras.layers.Dense(2, name="fc")(y))
    result = check("tiny", model, tmp_path)
    assert (result.rewritten, result.refused) == (2, {"ln": result.refused["ln"]})
    assert result.full_rank_error < 1e-5 and result.params_agree
    body = render([result], "python -m benchmarks.rewrite_coverage --architectures tiny")
    assert "| tiny " in body and "LayerNormalization is not a decomposable kind" in body
    assert "--architectures tiny" in body and SECTION.startswith("Rewrite coverage")
