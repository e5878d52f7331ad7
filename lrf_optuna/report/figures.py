"""The report's interactive figures (plotly): the Pareto front, accuracy after
fine-tuning, similarity vs rank per layer."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lrf_optuna.formatting import as_float, fmt
from lrf_optuna.plan import parse_choice, readable_plan
from lrf_optuna.report.data import ReportData
from lrf_optuna.study.finetune_records import TEST_ACC_ATTR
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR, STRATEGY_ATTR

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["accuracy_figure", "pareto_figure", "similarity_figure"]

#: One colour per LRF method, the same in every figure.
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]


def _hover_plan(plan: Mapping[str, str]) -> str:
    changed = [f"{html.escape(k)}: {html.escape(v)}" for k, v in plan.items() if v != "keep"]
    return "<br>".join(changed) or "(all kept)"


def pareto_figure(data: ReportData) -> go.Figure:
    """Figure (a): params (log) vs proxy, colour = FLOPs."""
    import plotly.graph_objects as go

    front_numbers = {t.number for t in data.front}
    groups: dict[str, list[Any]] = {"dominated": [], "front": [], "seeded": []}
    for t in data.complete:
        if t.user_attrs.get(STRATEGY_ATTR):
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
            strategy = f"<br>strategy: {html.escape(str(ua[STRATEGY_ATTR]))}" if \
                ua.get(STRATEGY_ATTR) else ""
            custom.append([t.number, tag, strategy, _hover_plan(
                readable_plan(ua))])
        fig.add_trace(go.Scatter(
            x=[t.user_attrs.get(PARAMS_ATTR) for t in trials],
            y=[t.user_attrs.get(PROXY_ATTR) for t in trials],
            mode="markers", name=name, customdata=custom,
            marker={"symbol": symbol, "size": size, "opacity": opacity,
                    "color": [t.user_attrs.get(FLOPS_ATTR) for t in trials],
                    "coloraxis": "coloraxis",
                    "line": {"width": line, "color": "#222"}},
            hovertemplate=("<b>trial %{customdata[0]}</b>%{customdata[1]}<br>"
                           "params %{x:,}<br>FLOPs %{marker.color:,}<br>proxy %{y:.4f}"
                           "%{customdata[2]}<br>%{customdata[3]}<extra></extra>")))
    by_number = {t.number: t for t in data.complete}
    tuned = [(r, by_number[r.source]) for r in data.finetuned if r.source in by_number]
    if tuned:
        fig.add_trace(go.Scatter(
            x=[t.user_attrs.get(PARAMS_ATTR) for _, t in tuned],
            y=[t.user_attrs.get(PROXY_ATTR) for _, t in tuned],
            mode="markers+text", name="fine-tuned",
            text=[f"#{r.source}" for r, _ in tuned], textposition="top center",
            textfont={"color": "#c0392b"},
            customdata=[[r.source, fmt(r.record.measured.test_acc, ".4f"),
                         _hover_plan(r.plan)] for r, _ in tuned],
            marker={"symbol": "circle-open", "size": 22, "color": "#c0392b",
                    "line": {"width": 2.5}},
            hovertemplate=("<b>fine-tuned trial %{customdata[0]}</b><br>params %{x:,}<br>"
                           "proxy %{y:.4f}<br>test acc %{customdata[1]}<br>"
                           "%{customdata[2]}<extra></extra>")))
    fig.add_trace(go.Scatter(
        x=[data.original.get(PARAMS_ATTR)], y=[1.0], mode="markers+text", name="original model",
        text=["original"], textposition="bottom center",
        marker={"symbol": "x", "size": 14, "color": "black"},
        hovertemplate=(f"<b>original model</b><br>params %{{x:,}}<br>FLOPs "
                       f"{fmt(data.original.get(FLOPS_ATTR), ',')}<br>proxy 1.0"
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


def accuracy_figure(data: ReportData) -> go.Figure | None:
    """Accuracy of the fine-tuned trials against their parameters (None without any)."""
    if not data.finetuned:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    x = [r.record.measured.params for r in data.finetuned]
    custom = [[r.source, fmt(r.proxy, ".4f")] for r in data.finetuned]
    accuracies = (
        ([r.record.val_acc_before for r in data.finetuned], "val acc before fine-tuning",
         "circle-open"),
        ([r.record.val_acc_after for r in data.finetuned], "val acc after fine-tuning",
         "circle"),
        ([r.record.measured.test_acc for r in data.finetuned], "test acc (after)", "star"))
    for values, name, symbol in accuracies:
        fig.add_trace(go.Scatter(
            x=x, y=values, mode="markers", name=name,
            customdata=custom, marker={"symbol": symbol, "size": 11},
            hovertemplate=(f"<b>trial %{{customdata[0]}}</b><br>{name} %{{y:.4f}}<br>"
                           "params %{x:,}<br>proxy %{customdata[1]}<extra></extra>")))
    if as_float(data.baseline.get(TEST_ACC_ATTR)) is not None:
        fig.add_trace(go.Scatter(
            x=[data.baseline.get(PARAMS_ATTR, data.original.get(PARAMS_ATTR))],
            y=[data.baseline[TEST_ACC_ATTR]], mode="markers+text", name="original (test)",
            text=["original"], textposition="bottom center",
            marker={"symbol": "x", "size": 14, "color": "black"},
            hovertemplate="<b>original</b><br>test acc %{y:.4f}<extra></extra>"))
    for recipe, ref in data.references.items():
        label = data.recipe_texts.get(recipe, recipe)
        fig.add_trace(go.Scatter(
            x=[ref.measured.params], y=[ref.measured.test_acc], mode="markers",
            name=f"fair reference (test; {label})",
            marker={"symbol": "diamond-open", "size": 13, "color": "black"},
            hovertemplate=(f"<b>fair reference</b> ({label})<br>test acc %{{y:.4f}}"
                           "<extra></extra>")))
    fig.update_layout(title="Accuracy of the fine-tuned trials",
                      xaxis={"title": "parameters (log)", "type": "log"},
                      yaxis={"title": "accuracy"}, height=460, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
                      margin={"t": 90})
    return fig


def similarity_figure(data: ReportData) -> go.Figure:
    """Figure (c): similarity vs rank per layer, one line per method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cache = data.cache
    assert cache is not None, "similarity_figure needs collect(), not read_study()"
    layers = [p for p in data.layers if p in cache.tables]
    cols = min(3, max(len(layers), 1))
    rows = max(1, math.ceil(len(layers) / cols))
    titles = [f"{p} ({cache.tables[p].class_name}, "
              f"{cache.tables[p].original_params:,} params)" for p in layers]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or ["(no layer)"],
                        horizontal_spacing=0.07, vertical_spacing=min(0.12, 0.5 / rows))
    methods = list(dict.fromkeys(m for p in layers for m in cache.tables[p].methods))
    colours = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}
    shown: set[str] = set()
    for i, path in enumerate(layers):
        row, col = divmod(i, cols)
        table = cache.tables[path]
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
            choice = parse_choice(r.plan.get(path, "keep"))
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
