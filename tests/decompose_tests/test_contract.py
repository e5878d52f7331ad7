"""Every tested method held to the contract of :mod:`.contract`: one parametrised test per
check, over each method's cases (``CASES``); ids are ``<method>-<case>``.

What is specific to one method (its algorithm, its stage layout, its knobs) is tested in
that method's ``test_<method>.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import pytest

from .contract import (
    CASES,
    Case,
    check_bad_ranks,
    check_error_non_increasing,
    check_exact_at_max_rank,
    check_macs,
    check_non_finite_weights,
    check_params,
    check_save_load,
    check_unsupported,
)

L = keras.layers
METHODS = list(CASES)
FC_METHODS = ("svd", "qr", "tt", "svd_aware")
CHANNEL_SVD_METHODS = ("channel_svd", "channel_svd_aware")


def method_cases(picks: Mapping[str, Sequence[int]] | None = None) -> list[Any]:
    """``(method, case)`` parameters: every case of every method, or the ``picks``."""
    return [pytest.param(m, CASES[m][i], id=f"{m}-{CASES[m][i].id}") for m in METHODS
            for i in (picks[m] if picks is not None else range(len(CASES[m])))]


# The checks that need not see every case run on a few chosen ones (indices into CASES).
BAD_RANK_CASES = {"tucker2": (0, 8), **dict.fromkeys(CHANNEL_SVD_METHODS, (0, 8)),
                  "cp": (0, 3), "spatial_svd": (0, 4), **dict.fromkeys(FC_METHODS, (0, 7))}
NON_FINITE_CASES = {"tucker2": (0, 3), **dict.fromkeys(CHANNEL_SVD_METHODS, (0, 3)),
                    "cp": (0, 6), "spatial_svd": (2, 4), **dict.fromkeys(FC_METHODS, (0, 6))}
SAVE_LOAD_CASES = {"tucker2": (3, 9), **dict.fromkeys(CHANNEL_SVD_METHODS, (3, 9)),
                   "cp": (1, 6), "spatial_svd": (2, 4), **dict.fromkeys(FC_METHODS, (1, 6))}

#: Extra room for the error to grow between neighbouring ranks: ALS (cp) finds a local
#: optimum per rank.
ERROR_SLACK: dict[str, dict[str, float]] = {"cp": {"slack": 0.05, "abs_slack": 1e-3}}

Unsupported = list[tuple[keras.layers.Layer, tuple[int, ...], str]]


#: Fresh layers each method refuses, with their input shape and the reason (a regex).
UNSUPPORTED: dict[str, Callable[[], Unsupported]] = {
    "tucker2": lambda: [
        (L.Conv2D(8, 1, name="pointwise"), (5, 5, 4), "FC method"),
        (L.Conv2D(8, 1, groups=2, name="grouped_1x1"), (5, 5, 4), "1x1"),
        (L.DepthwiseConv2D(3, name="dw"), (5, 5, 4), "not DepthwiseConv2D"),
        (L.SeparableConv2D(8, 3, name="sep"), (5, 5, 4), "not SeparableConv2D"),
        (L.Dense(8, name="fc"), (4,), "not Dense"),
    ],
    **dict.fromkeys(CHANNEL_SVD_METHODS, lambda: [
        (L.Conv2D(8, 1, name="pointwise"), (5, 5, 4), "FC method"),
        (L.DepthwiseConv2D(3, name="dw"), (5, 5, 4), "not DepthwiseConv2D"),
        (L.SeparableConv2D(8, 3, name="sep"), (5, 5, 4), "not SeparableConv2D"),
        (L.Dense(8, name="fc"), (4,), "not Dense"),
    ]),
    "cp": lambda: [
        (L.Conv2D(8, 1, name="pointwise"), (5, 5, 4), "FC method"),
        (L.Conv2D(8, 3, groups=2, name="grouped"), (5, 5, 4), "grouped"),
        (L.Conv2DTranspose(8, 3, name="transposed"), (5, 5, 4), "transposed"),
        (L.DepthwiseConv2D(3, name="dw"), (5, 5, 4), "not DepthwiseConv2D"),
        (L.Dense(8, name="fc"), (4,), "not Dense"),
    ],
    "spatial_svd": lambda: [
        (L.Conv2D(8, 1, name="pointwise"), (5, 5, 4), "1x1"),
        (L.Conv1D(8, 3, name="conv1d"), (9, 4), "has 1"),
        (L.Conv3D(8, 3, name="conv3d"), (5, 5, 5, 4), "has 3"),
        (L.DepthwiseConv1D(3, name="dw1d"), (9, 4), "has 1"),
        (L.Conv2DTranspose(8, 3, name="transposed"), (5, 5, 4), "transposed"),
        (L.SeparableConv2D(8, 3, name="sep"), (5, 5, 4), "SeparableConv"),
        (L.Dense(8, name="fc"), (4,), "Dense"),
    ],
    **dict.fromkeys(FC_METHODS, lambda: [
        (L.Conv2D(8, 1, groups=2, name="grouped"), (5, 5, 4), "grouped"),
        (L.Conv2D(8, 3, name="kxk"), (5, 5, 4), "not a matrix"),
        (L.DepthwiseConv2D(3, name="dw"), (5, 5, 4), "not a matrix"),
    ]),
}


@pytest.mark.parametrize(("method", "case"), method_cases())
def test_exact_at_max_rank(method: str, case: Case) -> None:
    check_exact_at_max_rank(method, case)


@pytest.mark.parametrize(("method", "case"), method_cases())
def test_error_non_increasing_in_rank(method: str, case: Case) -> None:
    check_error_non_increasing(method, case, **ERROR_SLACK.get(method, {}))


@pytest.mark.parametrize(("method", "case"), method_cases())
def test_params_match_count_params(method: str, case: Case) -> None:
    check_params(method, case)


@pytest.mark.parametrize(("method", "case"), method_cases())
def test_macs_match_brute_force(method: str, case: Case) -> None:
    check_macs(method, case)


@pytest.mark.parametrize(("method", "case"), method_cases(BAD_RANK_CASES))
def test_bad_ranks(method: str, case: Case) -> None:
    check_bad_ranks(method, case)


@pytest.mark.parametrize(("method", "case"), method_cases(NON_FINITE_CASES))
def test_non_finite_weights(method: str, case: Case) -> None:
    check_non_finite_weights(method, case)


@pytest.mark.parametrize("method", METHODS)
def test_unsupported_layers(method: str) -> None:
    check_unsupported(method, UNSUPPORTED[method]())


@pytest.mark.parametrize(("method", "case"), method_cases(SAVE_LOAD_CASES))
def test_save_load_round_trip(method: str, case: Case, tmp_path: object) -> None:
    check_save_load(method, case, tmp_path)
