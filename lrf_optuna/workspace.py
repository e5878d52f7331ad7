"""Deprecated: the problem spec moved to :mod:`lrf_optuna.problem`; the study records to
:mod:`lrf_optuna.study.records`. Kept so that old imports keep working."""

from __future__ import annotations

from lrf_optuna.problem import Problem, ProblemError, ProblemSpec
from lrf_optuna.study.records import PROBLEM_ATTR, record_problem
from lrf_optuna.study.records import problem_spec as spec_of_study

__all__ = ["PROBLEM_ATTR", "Problem", "ProblemError", "ProblemSpec", "record_problem",
           "spec_of_study"]
