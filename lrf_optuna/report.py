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

import argparse
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrf_optuna.cache import SimilarityCache
from lrf_optuna.dashboard import load_study
from lrf_optuna.finetune import FINETUNE_SUFFIX, existing_finetune_study
from lrf_optuna.report_table import markdown_table

__all__ = ["ReportError", "add_report_parser", "collect", "write_report"]

ORIGINAL_ATTR = "lrf_optuna:original"
#: One colour per LRF method, the same in every figure.
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]


class ReportError(ValueError):
    """The report cannot be made (study not made by ``lrf-optuna search``, no cache)."""


# -- data ------------------------------------------------------------------------------------
@dataclass
class FinetuneRow:
    """One finished fine-tuning job, joined with its source search trial."""

    job: int
    source: int
    attrs: Mapping[str, Any]
    plan: dict[str, str]
    proxy: float | None
    search_params: int | None


@dataclass
class ReportData:
    """Everything the report shows, read from storage and the cache."""

    study_name: str
    original: Mapping[str, Any]
    baseline: Mapping[str, Any]
    metric: str
    aggregation: str
    n_trials: int
    complete: list[Any]
    front: list[Any]
    cache: SimilarityCache
    layers: list[str]
    finetune_name: str
    finetune_exists: bool
    finetuned: list[FinetuneRow] = field(default_factory=list)
    finetune_states: dict[str, int] = field(default_factory=dict)
    artifact_dir: str | None = None


def _describe(choice: Any) -> str:
    """A plan entry as ``"tucker2 r=8"`` / ``"keep"``, whatever form it was stored in."""
    if choice is None:
        return "keep"
    if isinstance(choice, str):
        return choice
    if isinstance(choice, Sequence) and len(choice) == 2:
        method, rank = choice
        return "keep" if method == "keep" else f"{method} r={int(rank)}"
    if isinstance(choice, Mapping) and "method" in choice:
        if choice["method"] == "keep":
            return "keep"
        return f"{choice['method']} r={int(choice.get('rank', 0))}"
    return str(choice)


def _parse_choice(text: str) -> tuple[str, int] | None:
    """``"tucker2 r=8"`` -> ``("tucker2", 8)``; ``"keep"`` -> ``None``."""
    method, _, rank = text.partition(" r=")
    if method == "keep" or not rank:
        return None
    try:
        return method, int(rank)
    except ValueError:
        return None


def _readable_plan(plan: Any) -> dict[str, str]:
    if not isinstance(plan, Mapping):
        return {}
    return {str(k): _describe(v) for k, v in plan.items()}


def collect(study: Any, *, cache_dir: str | os.PathLike[str] | None = None) -> ReportData:
    """Read the search study, its fine-tuning study and the similarity cache.

    Raises:
        ReportError: the study has no ``lrf_optuna:original`` attribute, or its similarity
            cache is missing.
    """
    from optuna.trial import TrialState

    original = study.user_attrs.get(ORIGINAL_ATTR)
    if not original:
        raise ReportError(f"study {study.study_name!r} has no {ORIGINAL_ATTR!r} attribute; "
                          "it was not made by `lrf-optuna search`")
    recorded = Path(str(original.get("cache", "")))
    cache_path = recorded
    if cache_dir is not None:  # the cache itself, or its parent (search's --cache-dir)
        cache_path = Path(cache_dir)
        if not (cache_path / "manifest.json").exists() and \
                (cache_path / recorded.name / "manifest.json").exists():
            cache_path = cache_path / recorded.name
    try:
        cache = SimilarityCache.load(cache_path)
    except FileNotFoundError as err:
        raise ReportError(f"the similarity cache of study {study.study_name!r} is missing "
                          f"({err}); rerun `lrf-optuna search` with the same options to "
                          "rebuild it, or pass --cache-dir") from err
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = list(study.best_trials) if complete else []
    layers = list(cache.layers)
    for t in complete:
        for name in _readable_plan(t.user_attrs.get("plan")):
            if name not in layers:
                layers.append(name)
    data = ReportData(
        study_name=study.study_name, original=original, baseline={},
        metric=str(original.get("metric", cache.metric)),
        aggregation=str(original.get("aggregation", "mean")), n_trials=len(trials),
        complete=complete, front=front, cache=cache, layers=layers,
        finetune_name=study.study_name + FINETUNE_SUFFIX, finetune_exists=False)
    finetune = existing_finetune_study(study)
    if finetune is None:
        return data
    data.finetune_exists = True
    data.baseline = dict(finetune.user_attrs.get("original") or {})
    data.artifact_dir = finetune.user_attrs.get("artifact_dir")
    by_number = {t.number: t for t in trials}
    for t in finetune.get_trials(deepcopy=False):
        data.finetune_states[t.state.name] = data.finetune_states.get(t.state.name, 0) + 1
        if t.state != TrialState.COMPLETE:
            continue
        ua = t.user_attrs
        try:
            source_number = int(ua.get("source_trial", -1))
        except (TypeError, ValueError):
            source_number = -1
        source = by_number.get(source_number)
        plan = _readable_plan(source.user_attrs.get("plan")) if source is not None else {}
        if not plan:
            plan = _readable_plan(ua.get("plan"))
        proxy = source.user_attrs.get("proxy") if source is not None else None
        params = source.user_attrs.get("params") if source is not None else None
        data.finetuned.append(FinetuneRow(t.number, source_number, dict(ua), plan,
                                          proxy, params))
    data.finetuned.sort(key=lambda r: (_float(r.attrs.get("params")) or math.inf, r.source,
                                       r.job))
    return data


# -- formatting ------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _fmt(value: Any, spec: str) -> str:
    number = _float(value)
    if number is None:
        return "n/a"
    if spec == ",":
        return f"{round(number):,}"
    return format(number, spec)


def _ratio(original: Any, value: Any) -> str:
    """``original / value`` as ``"2.00x"`` (n/a when unknown)."""
    a, b = _float(original), _float(value)
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _delta(value: Any, original: Any) -> str:
    a, b = _float(value), _float(original)
    if a is None or b is None:
        return "n/a"
    return f"{a - b:+.4f}"


def _changed(plan: Mapping[str, str]) -> str:
    changed = [f"{k}: {v}" for k, v in plan.items() if v != "keep"]
    return ", ".join(changed) or "(all kept)"


RESULT_HEADER = ["trial", "job", "params", "params ratio", "FLOPs", "FLOPs ratio",
                 "val acc before", "val acc after", "test acc", "test acc delta",
                 "Keras ms", "Keras speed-up", "TFLite ms", "TFLite speed-up",
                 ".keras bytes", ".keras ratio", ".tflite bytes", ".tflite ratio",
                 "epochs", "fine-tune s"]


def results_rows(data: ReportData) -> list[list[str]]:
    """Rows of table (d): the original model, then each fine-tuned trial."""
    base = {**{k: data.original.get(k) for k in ("params", "flops")}, **data.baseline}
    val = _fmt(base.get("val_acc"), ".4f") if "val_acc" in base else ""
    rows = [["original", "", _fmt(base.get("params"), ","), "1.00x",
             _fmt(base.get("flops"), ","), "1.00x", val, val,
             _fmt(base.get("test_acc"), ".4f"), "", _fmt(base.get("latency_ms_keras"), ".3f"),
             "1.00x", _fmt(base.get("latency_ms_tflite"), ".3f"), "1.00x",
             _fmt(base.get("keras_bytes"), ","), "1.00x", _fmt(base.get("tflite_bytes"), ","),
             "1.00x", "", ""]]
    for r in data.finetuned:
        a = r.attrs
        rows.append([
            f"#{r.source}", str(r.job), _fmt(a.get("params"), ","),
            _ratio(base.get("params"), a.get("params")), _fmt(a.get("flops"), ","),
            _ratio(base.get("flops"), a.get("flops")), _fmt(a.get("val_acc_before"), ".4f"),
            _fmt(a.get("val_acc_after"), ".4f"), _fmt(a.get("test_acc"), ".4f"),
            _delta(a.get("test_acc"), base.get("test_acc")),
            _fmt(a.get("latency_ms_keras"), ".3f"),
            _ratio(base.get("latency_ms_keras"), a.get("latency_ms_keras")),
            _fmt(a.get("latency_ms_tflite"), ".3f"),
            _ratio(base.get("latency_ms_tflite"), a.get("latency_ms_tflite")),
            _fmt(a.get("keras_bytes"), ","), _ratio(base.get("keras_bytes"),
                                                    a.get("keras_bytes")),
            _fmt(a.get("tflite_bytes"), ","), _ratio(base.get("tflite_bytes"),
                                                     a.get("tflite_bytes")),
            _fmt(a.get("epochs_run"), ".0f"),
            _fmt(a.get("finetune_seconds"), ".1f")])
    return rows


def plan_rows(data: ReportData, trials: Sequence[tuple[str, Mapping[str, str]]]
              ) -> tuple[list[str], list[list[str]]]:
    """Table (b): one row per layer, one column per trial (``(label, plan)`` pairs)."""
    header = ["layer", "type", *[label for label, _ in trials]]
    rows = []
    for layer in data.layers:
        table = data.cache.tables.get(layer)
        kind = table.class_name if table is not None else ""
        rows.append([layer, kind, *[plan.get(layer, "keep") for _, plan in trials]])
    return header, rows


def _spread(items: Sequence[Any], top: int | None) -> list[Any]:
    if top is None or len(items) <= top:
        return list(items)
    step = (len(items) - 1) / max(top - 1, 1)
    return [items[round(i * step)] for i in range(top)]


def front_rows(data: ReportData, top: int | None = 20) -> list[list[str]]:
    tuned = {r.source for r in data.finetuned}
    trials = sorted(data.front, key=lambda t: (t.user_attrs.get("params", 0), t.number))
    rows = []
    for t in _spread(trials, top):
        ua = t.user_attrs
        rows.append([str(t.number), _fmt(ua.get("params"), ","),
                     f"{_float(ua.get('compression_ratio')) or 0:.2f}x",
                     _fmt(ua.get("flops"), ","),
                     f"{100 * (_float(ua.get('flops_reduction')) or 0):.1f}%",
                     _fmt(ua.get("proxy"), ".4f"), str(ua.get("strategy", "")),
                     "yes" if t.number in tuned else "",
                     _changed(_readable_plan(ua.get("plan")))])
    return rows


FRONT_HEADER = ["trial", "params", "compression", "FLOPs", "FLOPs saved", "proxy",
                "seeded by", "fine-tuned", "plan (changed layers)"]


def cache_rows(data: ReportData) -> list[list[str]]:
    """One row per layer: what the cache scored and the cheapest good candidates."""
    rows = []
    for layer in data.layers:
        table = data.cache.tables.get(layer)
        if table is None:
            continue
        cells = [layer, table.class_name, _fmt(table.original_params, ","),
                 _fmt(table.original_macs, ","), ", ".join(table.methods),
                 str(len(table.candidates))]
        for threshold in (0.99, 0.95):
            best = table.best(metric=data.metric, min_similarity=threshold)
            cells.append("none" if best is None else
                         f"{best.method} r={best.rank} ({best.params:,} params)")
        rows.append(cells)
    return rows


CACHE_HEADER = ["layer", "type", "params", "MACs", "methods", "candidates",
                "cheapest >= 0.99", "cheapest >= 0.95"]


# -- figures ---------------------------------------------------------------------------------
def _hover_plan(plan: Mapping[str, str]) -> str:
    changed = [f"{html.escape(k)}: {html.escape(v)}" for k, v in plan.items() if v != "keep"]
    return "<br>".join(changed) or "(all kept)"


def pareto_figure(data: ReportData) -> Any:
    """Figure (a): params (log) vs proxy, colour = FLOPs."""
    import plotly.graph_objects as go

    front_numbers = {t.number for t in data.front}
    groups: dict[str, list[Any]] = {"dominated": [], "front": [], "seeded": []}
    for t in data.complete:
        if t.user_attrs.get("strategy"):
            groups["seeded"].append(t)
        elif t.number in front_numbers:
            groups["front"].append(t)
        else:
            groups["dominated"].append(t)
    styles = {
        "dominated": ("dominated trials", "circle", 7, 0.45, 0.0),
        "front": ("Pareto front", "circle", 11, 1.0, 1.0),
        "seeded": ("seeded by a strategy", "diamond", 12, 0.95, 1.0),
    }
    fig = go.Figure()
    for key, trials in groups.items():
        if not trials:
            continue
        name, symbol, size, opacity, line = styles[key]
        custom = []
        for t in trials:
            ua = t.user_attrs
            tag = (" (Pareto)" if t.number in front_numbers else "")
            strategy = f"<br>strategy: {html.escape(str(ua['strategy']))}" if \
                ua.get("strategy") else ""
            custom.append([t.number, tag, strategy, _hover_plan(
                _readable_plan(ua.get("plan")))])
        fig.add_trace(go.Scatter(
            x=[t.user_attrs.get("params") for t in trials],
            y=[t.user_attrs.get("proxy") for t in trials],
            mode="markers", name=name, customdata=custom,
            marker={"symbol": symbol, "size": size, "opacity": opacity,
                    "color": [t.user_attrs.get("flops") for t in trials],
                    "coloraxis": "coloraxis",
                    "line": {"width": line, "color": "#222"}},
            hovertemplate=("<b>trial %{customdata[0]}</b>%{customdata[1]}<br>"
                           "params %{x:,}<br>FLOPs %{marker.color:,}<br>proxy %{y:.4f}"
                           "%{customdata[2]}<br>%{customdata[3]}<extra></extra>")))
    by_number = {t.number: t for t in data.complete}
    tuned = [(r, by_number[r.source]) for r in data.finetuned if r.source in by_number]
    if tuned:
        fig.add_trace(go.Scatter(
            x=[t.user_attrs.get("params") for _, t in tuned],
            y=[t.user_attrs.get("proxy") for _, t in tuned],
            mode="markers+text", name="fine-tuned",
            text=[f"#{r.source}" for r, _ in tuned], textposition="top center",
            textfont={"color": "#c0392b"},
            customdata=[[r.source, _fmt(r.attrs.get("test_acc"), ".4f"),
                         _hover_plan(r.plan)] for r, _ in tuned],
            marker={"symbol": "circle-open", "size": 22, "color": "#c0392b",
                    "line": {"width": 2.5}},
            hovertemplate=("<b>fine-tuned trial %{customdata[0]}</b><br>params %{x:,}<br>"
                           "proxy %{y:.4f}<br>test acc %{customdata[1]}<br>"
                           "%{customdata[2]}<extra></extra>")))
    fig.add_trace(go.Scatter(
        x=[data.original.get("params")], y=[1.0], mode="markers+text", name="original model",
        text=["original"], textposition="bottom center",
        marker={"symbol": "x", "size": 14, "color": "black"},
        hovertemplate=(f"<b>original model</b><br>params %{{x:,}}<br>FLOPs "
                       f"{_fmt(data.original.get('flops'), ',')}<br>proxy 1.0"
                       "<extra></extra>")))
    fig.update_layout(
        title=f"Pareto front of {data.study_name!r}: {len(data.front)} of "
              f"{len(data.complete)} complete trials (colour = FLOPs)",
        xaxis={"title": "parameters (log)", "type": "log"},
        yaxis={"title": f"proxy ({data.aggregation} {data.metric} similarity)"},
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": "FLOPs"}},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        height=560, margin={"t": 110}, template="plotly_white")
    return fig


def accuracy_figure(data: ReportData) -> Any | None:
    """Accuracy of the fine-tuned trials against their parameters (None without any)."""
    if not data.finetuned:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    x = [r.attrs.get("params") for r in data.finetuned]
    custom = [[r.source, _fmt(r.proxy, ".4f")] for r in data.finetuned]
    for key, name, symbol in (("val_acc_before", "val acc before fine-tuning", "circle-open"),
                              ("val_acc_after", "val acc after fine-tuning", "circle"),
                              ("test_acc", "test acc (after)", "star")):
        fig.add_trace(go.Scatter(
            x=x, y=[r.attrs.get(key) for r in data.finetuned], mode="markers", name=name,
            customdata=custom, marker={"symbol": symbol, "size": 11},
            hovertemplate=(f"<b>trial %{{customdata[0]}}</b><br>{name} %{{y:.4f}}<br>"
                           "params %{x:,}<br>proxy %{customdata[1]}<extra></extra>")))
    if _float(data.baseline.get("test_acc")) is not None:
        fig.add_trace(go.Scatter(
            x=[data.baseline.get("params", data.original.get("params"))],
            y=[data.baseline["test_acc"]], mode="markers+text", name="original (test)",
            text=["original"], textposition="bottom center",
            marker={"symbol": "x", "size": 14, "color": "black"},
            hovertemplate="<b>original</b><br>test acc %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Accuracy of the fine-tuned trials",
                      xaxis={"title": "parameters (log)", "type": "log"},
                      yaxis={"title": "accuracy"}, height=460, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
                      margin={"t": 90})
    return fig


def similarity_figure(data: ReportData) -> Any:
    """Figure (c): similarity vs rank per layer, one line per method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layers = [p for p in data.layers if p in data.cache.tables]
    cols = min(3, max(len(layers), 1))
    rows = max(1, math.ceil(len(layers) / cols))
    titles = [f"{p} ({data.cache.tables[p].class_name}, "
              f"{data.cache.tables[p].original_params:,} params)" for p in layers]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or ["(no layer)"],
                        horizontal_spacing=0.07, vertical_spacing=min(0.12, 0.5 / rows))
    methods = list(dict.fromkeys(m for p in layers for m in data.cache.tables[p].methods))
    colours = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}
    shown: set[str] = set()
    for i, path in enumerate(layers):
        row, col = divmod(i, cols)
        table = data.cache.tables[path]
        for method in table.methods:
            cands = sorted(table.for_method(method), key=lambda c: c.rank)
            fig.add_trace(go.Scatter(
                x=[c.rank for c in cands], y=[c.score(data.metric) for c in cands],
                mode="lines+markers", name=method, legendgroup=method,
                showlegend=method not in shown, line={"color": colours[method]},
                marker={"size": 5},
                customdata=[[c.params, c.macs] for c in cands],
                hovertemplate=(f"<b>{html.escape(path)}: {html.escape(method)}</b><br>"
                               "rank %{x}<br>similarity %{y:.4f}<br>params %{customdata[0]:,}"
                               "<br>MACs %{customdata[1]:,}<extra></extra>")),
                row=row + 1, col=col + 1)
            shown.add(method)
        chosen = []
        for r in data.finetuned:
            choice = _parse_choice(r.plan.get(path, "keep"))
            if choice is None:
                continue
            try:
                cand = table.lookup(*choice)
            except KeyError:
                continue
            chosen.append((r.source, cand))
        if chosen:
            fig.add_trace(go.Scatter(
                x=[c.rank for _, c in chosen], y=[c.score(data.metric) for _, c in chosen],
                mode="markers+text", name="fine-tuned choice", legendgroup="chosen",
                showlegend="chosen" not in shown, text=[f"#{n}" for n, _ in chosen],
                textposition="top center", textfont={"size": 10, "color": "#c0392b"},
                marker={"symbol": "star", "size": 12, "color": "#c0392b"},
                customdata=[[n, c.method] for n, c in chosen],
                hovertemplate=("<b>trial %{customdata[0]}</b>: %{customdata[1]} r=%{x}<br>"
                               "similarity %{y:.4f}<extra></extra>")),
                row=row + 1, col=col + 1)
            shown.add("chosen")
        fig.update_xaxes(type="log", title_text="rank (log)", row=row + 1, col=col + 1)
        fig.update_yaxes(title_text=f"{data.metric} similarity" if col == 0 else None,
                         row=row + 1, col=col + 1)
    fig.update_layout(title=f"Similarity vs rank per layer ({data.metric}, from the cache)",
                      height=330 * rows + 100, template="plotly_white",
                      legend={"orientation": "v", "yanchor": "top", "y": 1, "x": 1.02,
                              "title": {"text": "method"}},
                      margin={"t": 90})
    return fig


# -- output ----------------------------------------------------------------------------------
def _html_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return (f'<table class="{css}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


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
            "as fast; the delta is test accuracy minus the original's." + where)


def _summary(data: ReportData) -> str:
    o = data.original
    return (f"Model **{o.get('model', '?')}**: {_fmt(o.get('params'), ',')} parameters, "
            f"{_fmt(o.get('flops'), ',')} FLOPs. {len(data.complete)} complete trial(s) of "
            f"{data.n_trials}; {len(data.front)} on the Pareto front (objectives: params, "
            f"FLOPs minimised; proxy = {data.aggregation} {data.metric} similarity, "
            "maximised).")


def _plans_for_table(data: ReportData) -> tuple[str, list[tuple[str, Mapping[str, str]]]]:
    if data.finetuned:
        return ("Per-layer method and rank of each fine-tuned trial.",
                [(f"#{r.source}", r.plan) for r in data.finetuned])
    trials = _spread(sorted(data.front, key=lambda t: (t.user_attrs.get("params", 0),
                                                       t.number)), 12)
    return ("No fine-tuned trial yet: the per-layer plans of Pareto-front trials instead.",
            [(f"#{t.number}", _readable_plan(t.user_attrs.get("plan"))) for t in trials])


def _markdown(data: ReportData, html_name: str) -> str:
    o = data.original
    plans_note, plans = _plans_for_table(data)
    plan_header, plan_table = plan_rows(data, plans)
    base = data.baseline
    orig_rows = [["parameters", _fmt(o.get("params"), ",")], ["FLOPs", _fmt(o.get("flops"), ",")],
                 ["similarity metric / aggregation", f"{data.metric} / {data.aggregation}"]]
    for label, key, spec in (("test accuracy", "test_acc", ".4f"),
                             ("Keras latency (ms)", "latency_ms_keras", ".3f"),
                             ("TFLite latency (ms)", "latency_ms_tflite", ".3f"),
                             (".keras bytes", "keras_bytes", ","),
                             (".tflite bytes", "tflite_bytes", ",")):
        if key in base:
            orig_rows.append([label, _fmt(base.get(key), spec)])
    parts = [
        f"# LRF compression report: `{data.study_name}`", "",
        _summary(data), "",
        f"Interactive figures (Pareto front, similarity vs rank): [{html_name}]({html_name}).",
        "", "## Original model", "", markdown_table(["quantity", "value"], orig_rows), "",
        "## Fine-tuning results against the original model", "", _finetune_status(data), ""]
    if data.finetuned:
        parts += [markdown_table(RESULT_HEADER, results_rows(data)), ""]
    parts += ["## Per-layer plans", "", plans_note, ""]
    if plans:
        parts += [markdown_table(plan_header, plan_table), ""]
    front = front_rows(data)
    parts += ["## Pareto front of the search", "",
              f"{len(data.front)} trial(s)"
              + (f", {len(front)} shown spread along the front" if len(front) < len(data.front)
                 else "") + ", smallest first.", ""]
    if front:
        parts += [markdown_table(FRONT_HEADER, front), ""]
    parts += ["## Similarity cache", "",
              f"`{data.cache.directory}`: the cheapest scored candidate per layer reaching a "
              f"{data.metric} similarity of 0.99 / 0.95.", "",
              markdown_table(CACHE_HEADER, cache_rows(data)), ""]
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
    plan_header, plan_table = plan_rows(data, plans)
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
        parts += [_html_table(RESULT_HEADER, results_rows(data)), rendered["accuracy"]]
    parts += ['<h2 id="plans">(b) Per-layer plans</h2>', f"<p>{esc(plans_note)}</p>"]
    if plans:
        parts.append(_html_table(plan_header, plan_table, css="plans"))
    parts += ['<h2 id="similarity">(c) Similarity vs rank per layer</h2>',
              f'<p class="note">From the similarity cache <code>{esc(str(data.cache.directory))}'
              "</code>; red stars: the fine-tuned trials' choices.</p>",
              rendered["similarity"],
              _html_table(CACHE_HEADER, cache_rows(data)),
              '<h2 id="front">Pareto-front trials</h2>',
              _html_table(FRONT_HEADER, front_rows(data, top=None), css="plans"),
              "</body></html>"]
    return "\n".join(parts)


def _md_inline(text: str) -> str:
    """Escape, then render the Markdown ``**bold**`` and ``code`` spans of our own text."""
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def write_report(study: Any, out_dir: str | os.PathLike[str], *,
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
        ReportError: the study was not made by ``lrf-optuna search`` or its cache is
            missing.
    """
    data = collect(study, cache_dir=cache_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(_html(data, md_path.name), encoding="utf-8")
    md_path.write_text(_markdown(data, html_path.name), encoding="utf-8")
    return html_path, md_path


def _cmd_report(args: argparse.Namespace) -> int:
    study = load_study(args.study_name, args.storage)
    out = Path(args.out) if args.out else Path("reports") / study.study_name.replace(
        ":", "_").replace("/", "_")
    html_path, md_path = write_report(study, out, cache_dir=args.cache_dir)
    print(f"wrote {html_path} (self-contained, open it in a browser) and {md_path}")
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to an ``argparse`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report", help="write an HTML + Markdown report of a study",
        description="Write a self-contained HTML report (interactive Pareto front, "
                    "similarity vs rank per layer, fine-tuning results) and a Markdown "
                    "summary of a search study and its fine-tuning study.")
    p.add_argument("--study-name", default=None,
                   help="the search study (default: the only one in --storage)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///studies/<study-name>.db)")
    p.add_argument("--out", default=None,
                   help="output directory (default: reports/<study-name>)")
    p.add_argument("--cache-dir", default=None,
                   help="similarity cache directory, if it moved since the search "
                        "(default: the one recorded in the study)")
    p.set_defaults(func=_cmd_report)
    return p
