"""The package's top level: every advertised name resolves, and the leaves stay light."""

from __future__ import annotations

import subprocess
import sys

import lrf_optuna


def test_every_name_in_all_resolves() -> None:
    missing = [name for name in lrf_optuna.__all__ if getattr(lrf_optuna, name, None) is None]
    assert missing == []
    assert "plan" in lrf_optuna.__all__ and lrf_optuna.plan.KEEP == "keep"


def test_leaf_modules_and_the_cli_do_not_load_tensorflow() -> None:
    code = ("import sys, lrf_optuna.plan, lrf_optuna.paired, lrf_optuna.formatting,"
            " lrf_optuna.study.finetune_records,"
            " lrf_optuna.search.settings, lrf_optuna.cli;"
            " print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
