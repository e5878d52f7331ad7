"""The study report: one self-contained HTML page and a Markdown summary.

``write_report(study, out_dir)`` reads the search study, its fine-tuning study
(``"<name>:finetune"`` in the same storage, optional) and the similarity cache, and writes

* ``report.html``: interactive plotly figures with plotly.js embedded inline (opens
  offline, no network), and the tables below;
* ``report.md``: the same numbers as Markdown tables (for a README or a pull request).

Contents:

(a) the Pareto front, parameters vs proxy, colour = FLOPs, hover = trial number + plan;
    seeded strategy trials (diamonds), fine-tuned trials (red rings) and the original
    model (black cross) are marked;
(b) the method and rank of each layer in each fine-tuned trial (layers x trials);
(c) similarity vs rank per layer from the similarity cache, one line per method, with the
    fine-tuned trials' choices marked;
(d) fine-tuning results against the original model: validation accuracy before / after
    fine-tuning, test accuracy, parameters, FLOPs, Keras and TFLite latency, file sizes,
    and their ratios (original / compressed: ``2.00x`` = half the size, twice as fast).

Without a fine-tuning study the report still works and says so.

Example::

    lrf-optuna report --study-name vgg_small            # -> reports/vgg_small/report.html
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path

import optuna

from lrf_optuna.formatting import fmt, markdown_table
from lrf_optuna.plan import readable_plan
from lrf_optuna.report.data import ReportData, collect
from lrf_optuna.report.figures import accuracy_figure, pareto_figure, similarity_figure
from lrf_optuna.report.tables import (
    cache_table,
    front_table,
    plan_table,
    results_table,
    spread,
)
from lrf_optuna.study.finetune_records import (
    KERAS_BYTES_ATTR,
    LATENCY_MS_KERAS_ATTR,
    LATENCY_MS_TFLITE_ATTR,
    TEST_ACC_ATTR,
    TFLITE_BYTES_ATTR,
    VAL_ACC_ATTR,
)
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR

__all__ = ["write_report"]


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
table.plans td{text-align:left}p.note{color:#555}code{background:#f4f4f4;padding:0 .2em}
nav a{margin-right:1em}
"""


def _finetune_status(data: ReportData) -> str:
    if not data.finetune_exists:
        return (f"No fine-tuning study `{data.finetune_name}` yet: fine-tune some Pareto-front "
                "trials (`lrf-optuna finetune`) and rerun the report to see accuracies, "
                "latencies and file sizes.")
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(data.finetune_states.items()))
    if not data.finetuned:
        return (f"The fine-tuning study `{data.finetune_name}` has no finished job yet "
                f"({states or 'no job'}).")
    where = (f" The fine-tuned `.keras` / `.tflite` files are Optuna artifacts in "
             f"`{data.artifact_dir}` (download them from the fine-tuning study's trial pages "
             "in `lrf-optuna dashboard`)." if data.artifact_dir else "")
    return (f"{len(data.finetuned)} finished fine-tuning job(s) in `{data.finetune_name}` "
            f"({states}). Ratios are original / compressed: 2.00x = half the size or twice "
            "as fast. Drops are in percentage points (positive: worse) against the *fair "
            "reference* (the original model fine-tuned with exactly the same recipe, shown "
            "as its own row) and against the untouched original." + where)


def _summary(data: ReportData) -> str:
    o = data.original
    return (f"Model **{o.get('model', '?')}**: {fmt(o.get(PARAMS_ATTR), ',')} parameters, "
            f"{fmt(o.get(FLOPS_ATTR), ',')} FLOPs. {data.n_trials} complete trial(s), "
            f"{len(data.front)} on the Pareto front (objectives: params, "
            f"FLOPs minimised; proxy = {data.aggregation} {data.metric} similarity, "
            "maximised).")


def _plans_for_table(data: ReportData) -> tuple[str, list[tuple[str, Mapping[str, str]]]]:
    if data.finetuned:
        return ("Per-layer method and rank of each fine-tuned trial.",
                [(f"#{r.source}", r.plan) for r in data.finetuned])
    trials = spread(sorted(data.front, key=lambda t: (t.user_attrs.get(PARAMS_ATTR, 0),
                                                       t.number)), 12)
    return ("No fine-tuned trial yet: the per-layer plans of Pareto-front trials instead.",
            [(f"#{t.number}", readable_plan(t)) for t in trials])


def _markdown(data: ReportData, html_name: str) -> str:
    o = data.original
    plans_note, plans = _plans_for_table(data)
    plans_table = plan_table(data, plans)
    base = data.baseline
    orig_rows = [["parameters", fmt(o.get(PARAMS_ATTR), ",")],
                 ["FLOPs", fmt(o.get(FLOPS_ATTR), ",")],
                 ["similarity metric / aggregation", f"{data.metric} / {data.aggregation}"]]
    for label, key, spec in (("val accuracy", VAL_ACC_ATTR, ".4f"),
                             ("test accuracy", TEST_ACC_ATTR, ".4f"),
                             ("Keras latency (ms)", LATENCY_MS_KERAS_ATTR, ".3f"),
                             ("TFLite latency (ms)", LATENCY_MS_TFLITE_ATTR, ".3f"),
                             (".keras bytes", KERAS_BYTES_ATTR, ","),
                             (".tflite bytes", TFLITE_BYTES_ATTR, ",")):
        if key in base:
            orig_rows.append([label, fmt(base.get(key), spec)])
    for recipe, ref in data.references.items():
        orig_rows.append([f"fair reference val / test accuracy "
                          f"({data.recipe_texts.get(recipe, recipe)})",
                          f"{fmt(ref.val_acc_after, '.4f')} / "
                          f"{fmt(ref.measured.test_acc, '.4f')}"])
    parts = [
        f"# LRF compression report: `{data.study_name}`", "",
        _summary(data), "",
        f"Interactive figures (Pareto front, similarity vs rank): [{html_name}]({html_name}).",
        "", "## Original model", "", markdown_table(["quantity", "value"], orig_rows), "",
        "## Fine-tuning results against the original model", "", _finetune_status(data), ""]
    if data.finetuned:
        parts += [results_table(data).markdown(), ""]
    parts += ["## Per-layer plans", "", plans_note, ""]
    if plans:
        parts += [plans_table.markdown(), ""]
    front = front_table(data)
    shown = len(front.rows) - 1  # the first row is the original model
    parts += ["## Pareto front of the search", "",
              f"{len(data.front)} trial(s)"
              + (f", {shown} shown spread along the front" if shown < len(data.front)
                 else "") + ", smallest first, after the original model.", ""]
    if data.front:
        parts += [front.markdown(), ""]
    assert data.cache is not None
    parts += ["## Similarity cache", "",
              f"`{data.cache.directory}`: the cheapest scored candidate per layer reaching a "
              f"{data.metric} similarity of 0.99 / 0.95.", "",
              cache_table(data).markdown(), ""]
    return "\n".join(parts)


def _html(data: ReportData, md_name: str) -> str:
    figures = [("pareto", "Pareto front", pareto_figure(data)),
               ("accuracy", "Accuracy after fine-tuning", accuracy_figure(data)),
               ("similarity", "Similarity vs rank", similarity_figure(data))]
    rendered: dict[str, str] = {}
    first = True
    for key, _, fig in figures:
        if fig is None:
            continue
        rendered[key] = fig.to_html(full_html=False, include_plotlyjs=first,
                                    div_id=f"fig-{key}",
                                    config={"displaylogo": False, "responsive": True})
        first = False
    plans_note, plans = _plans_for_table(data)
    assert data.cache is not None
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>LRF report: {esc(data.study_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>LRF compression report: <code>{esc(data.study_name)}</code></h1>",
        f"<p>{_md_inline(_summary(data))}</p>",
        f'<p class="note">Markdown summary: <a href="{esc(md_name)}">{esc(md_name)}</a>. '
        "Figures are interactive (hover, zoom, click legend entries to hide them).</p>",
        '<nav><a href="#pareto">Pareto front</a><a href="#results">Fine-tuning results</a>'
        '<a href="#plans">Per-layer plans</a><a href="#similarity">Similarity vs rank</a>'
        '<a href="#front">Pareto trials</a></nav>',
        '<h2 id="pareto">(a) Pareto front</h2>',
        '<p class="note">Diamonds: plans seeded by rank-selection strategies; red rings: '
        "fine-tuned trials; black cross: the original model. Hover a point for its trial "
        "number and plan.</p>",
        rendered["pareto"],
        '<h2 id="results">(d) Fine-tuning results against the original model</h2>',
        f"<p>{_md_inline(_finetune_status(data))}</p>"]
    if data.finetuned:
        parts += [results_table(data).html(), rendered["accuracy"]]
    parts += ['<h2 id="plans">(b) Per-layer plans</h2>', f"<p>{esc(plans_note)}</p>"]
    if plans:
        parts.append(plan_table(data, plans).html(css="plans"))
    parts += ['<h2 id="similarity">(c) Similarity vs rank per layer</h2>',
              f'<p class="note">From the similarity cache <code>{esc(str(data.cache.directory))}'
              "</code>; red stars: the fine-tuned trials' choices.</p>",
              rendered["similarity"],
              cache_table(data).html(),
              '<h2 id="front">Pareto-front trials</h2>',
              front_table(data, top=None).html(css="plans"),
              "</body></html>"]
    return "\n".join(parts)


def _md_inline(text: str) -> str:
    """Escape, then render the Markdown ``**bold**`` and ``code`` spans of our own text."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def write_report(study: optuna.Study, out_dir: str | os.PathLike[str], *,
                 cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into ``out_dir``.

    Args:
        study: The search study (made by ``lrf-optuna search``).
        out_dir: Output directory (created).
        cache_dir: The similarity cache directory, when it moved since the search (default:
            the one recorded in the study).

    Returns:
        ``(html_path, md_path)``.

    Raises:
        UserError: the study was not described by lrf_optuna, or its cache is missing.
    """
    data = collect(study, cache_dir=cache_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(_html(data, md_path.name), encoding="utf-8")
    md_path.write_text(_markdown(data, html_path.name), encoding="utf-8")
    return html_path, md_path
