"""The registry: one module per method, found without being listed anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

import lrf_optuna.decompose as decompose
from lrf_optuna.decompose import LRFMethod, available_methods, get_method, register_method


def test_every_method_module_registers_exactly_one_method() -> None:
    package = Path(decompose.__file__).parent
    modules = {f"lrf_optuna.decompose.{p.stem}" for p in package.glob("*.py")
               if p.stem.startswith(("conv_", "fc_"))}
    registered = [type(get_method(name)).__module__ for name in available_methods()]
    assert sorted(registered) == sorted(modules)
    assert len(available_methods()) == 9
    assert available_methods()[:5] == ["channel_svd", "channel_svd_aware", "cp", "spatial_svd",
                                       "tucker2"]


def test_names_are_unique_and_unknown_names_are_explained() -> None:
    class Clash(LRFMethod):
        name = "svd"

    with pytest.raises(ValueError, match="already registered"):
        register_method(Clash)  # type: ignore[type-abstract]
    with pytest.raises(KeyError, match="unknown LRF method 'nope'; registered"):
        get_method("nope")
