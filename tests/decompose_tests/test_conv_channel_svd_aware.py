"""``channel_svd_aware`` specifics (the method contract is checked in
``test_contract.py``): its input patches for every stride / padding / dilation / group /
transposed layout, optimality of the output error, degenerate inputs, damping, errors."""

from __future__ import annotations

import pytest

from . import aware
from .contract import TUCKER2_CASES, ConvCase, case_ids

METHOD, PLAIN = "channel_svd_aware", "channel_svd"
CASES = TUCKER2_CASES  # Conv1D/2D/3D, strided, dilated, causal, grouped, transposed
SOME = [CASES[i] for i in (0, 3, 7, 9)]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_rows_reproduce_the_layer(case: ConvCase) -> None:
    aware.check_rows_reproduce_the_layer(case)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_output_error_is_optimal_and_never_worse_than_channel_svd(case: ConvCase) -> None:
    aware.check_optimal_output_error(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", SOME, ids=case_ids(SOME))
def test_degenerate_inputs(case: ConvCase) -> None:
    aware.check_degenerate_inputs(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_costs_and_stages_equal_channel_svd(case: ConvCase) -> None:
    aware.check_costs_and_stages_equal_plain(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", SOME[:2], ids=case_ids(SOME[:2]))
def test_damping_limits(case: ConvCase) -> None:
    aware.check_damping_limits(METHOD, PLAIN, case)


@pytest.mark.parametrize("case", SOME[:3], ids=case_ids(SOME[:3]))
def test_needs_inputs(case: ConvCase) -> None:
    aware.check_needs_inputs(METHOD, case)
