"""Reports and tables: what a study found, for people.

* :mod:`~lrf_optuna.report.data`: a study (and its fine-tuning study) read once;
* :mod:`~lrf_optuna.report.tables`: every table (front, results, plans, cache, baselines)
  as terminal text, Markdown or HTML (rendered by :mod:`lrf_optuna.formatting`);
* :mod:`~lrf_optuna.report.figures`: the interactive plotly figures;
* :mod:`~lrf_optuna.report.page`: the self-contained HTML page and the Markdown summary.

Example::

    lrf-optuna report --study-name vgg_small            # -> reports/vgg_small/report.html
"""

from __future__ import annotations

from lrf_optuna.report.data import ReportData, collect, read_study
from lrf_optuna.report.page import write_report
from lrf_optuna.report.tables import front_text, results_text

__all__ = ["ReportData", "collect", "front_text", "read_study", "results_text",
           "write_report"]
