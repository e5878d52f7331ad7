"""The benchmark's output: the markdown section, the plotly curves and the JSON."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._results import markdown_table
from benchmarks._results import pct as _pct
from benchmarks._results import pp as _pp
from benchmarks.compression.config import _best_key

# -- output -------------------------------------------------------------------------------------

def _acc(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(results: dict[str, Any], html_name: str | None) -> str:
    mode = results["mode"]
    lines = [f"`{results['command']}` ({results['machine']}; {results['date']}; "
             f"{results['seconds'] / 60:.0f} min in all).", ""]
    if mode != "full":
        lines += [f"**{mode.upper()} MODE**: training subsets and short recipes, for the "
                  "harness and a first look only; the targets are judged on the full mode.", ""]
    if html_name:
        lines += [f"Accuracy-vs-parameters curves (plotly, HTML): [{html_name}]({html_name}).",
                  ""]
    sim = results.get("probe_strategies")
    for name, m in results["models"].items():
        o = m["original"]
        key = _best_key(m["max_drop_pp"])
        lines += [f"### {name}", "",
                  f"Original: {o['params']:,} params, {o['flops']:,} FLOPs, trained "
                  f"{o['train_epochs']} epochs on {o['train_images']:,} images (val accuracy by "
                  f"epoch, last 3: {', '.join(_acc(v) for v in o['val_accuracy_by_epoch'][-3:])}"
                  f"); untouched val / test {_acc(m['untouched_val_accuracy'])} / "
                  f"{_acc(m['untouched_test_accuracy'])} %. Fair reference (the original "
                  f"fine-tuned with {m['recipe_text']}): val / test "
                  f"{_acc(m['fair_reference_val_accuracy'])} / "
                  f"{_acc(m['fair_reference_test_accuracy'])} %. Budget: "
                  f"{m['max_drop_pp']:g} pp of val accuracy below the fair reference, "
                  "decided on val, reported on test.", ""]
        rows = []
        for sel, r in sorted(m[key].items(), key=lambda kv: -kv[1]["param_reduction"]):
            rows.append([sel, r.get("label") or "(none within)", _pct(r["param_reduction"]),
                         _pct(r["flops_reduction"]), _pp(r.get("val_drop_pp")),
                         _pp(r.get("test_drop_pp")), _pp(r.get("test_drop_vs_original_pp")),
                         f"{r.get('latency_speedup_keras', 0):.2f}x" if r["within"] else "-",
                         f"{r.get('latency_speedup_tflite', 0):.2f}x" if r["within"] else "-",
                         f"{r['probes']}/{r['candidates']}", f"{r['seconds']:.0f}"])
        lines += [markdown_table(["selection", "pick", "params saved", "FLOPs saved",
                                  "val drop vs ref (pp)", "test drop vs ref (pp)",
                                  "test drop vs orig (pp)", "Keras speed-up",
                                  "TFLite speed-up", "probes / candidates", "s"], rows), ""]
        pq = m["proxy_quality"]
        if pq:
            prow = []
            for label, block in (("after fine-tuning", pq.get("finetuned")),
                                 ("without fine-tuning", pq.get("without_finetuning")),
                                 ("pruned plans (search+prune), after fine-tuning",
                                  pq.get("pruned_finetuned")),
                                 ("pruned plans (search+prune), without fine-tuning",
                                  pq.get("pruned_without_finetuning"))):
                if block and block["n"]:
                    prow.append([label, str(block["n"]), *(f"{block.get(a, float('nan')):.3f}"
                                                          for a in ("product", "mean", "min",
                                                                    "log_params"))])
            lines += ["Proxy quality: Spearman between the proxy and val accuracy "
                      "(aggregations of the same per-layer cosine similarities; log(params) "
                      "alone for comparison; after fine-tuning: trials spread along the "
                      "NSGA-II front).", "",
                      markdown_table(["accuracy", "plans", "product (default)", "mean", "min",
                                      "log(params)"], prow), ""]
        hv = m["hypervolume"]
        if hv:
            counts = [n for n, _ in next(iter(hv.values()))]
            lines += ["Hypervolume of (params, FLOPs, 1 - proxy), normalised by the original, "
                      "reference point 1.1, against the trial count (same cache, same seeded "
                      "strategy plans):", "",
                      markdown_table(["sampler", *[str(n) for n in counts]],
                                     [[s, *[f"{v:.4f}" for _, v in series]]
                                      for s, series in hv.items()]), ""]
        for kind, c in m["claims"].items():
            crow = [[label, _pct(r["param_reduction"]), _pp(r.get("val_drop_pp")),
                     _pp(r.get("test_drop_pp")), f"{r['probes']}/{r['candidates']}"]
                    for label, r in c["rows"].items()]
            extra = (f"; TT minus the best of SVD and QR: {c['tt_minus_best_of_svd_qr_pp']:+.1f}"
                     " pp (paper: up to +20 %)" if "tt_minus_best_of_svd_qr_pp" in c else "")
            lines += [f"Paper claim, {kind} layers ({c['layer_params']:,} params): largest "
                      f"reduction of these layers' parameters within the budget; hybrid minus "
                      f"the best single method: {c['hybrid_minus_best_single_pp']:+.1f} pp"
                      + (" (paper: +11.3 %)" if kind == "conv" else "") + extra + ".", "",
                      markdown_table([f"{kind} selection", "layer params saved",
                                      "val drop vs ref (pp)", "test drop vs ref (pp)",
                                      "probes / candidates"], crow), ""]
        lv = m["levers"]
        lrows = []
        for rname, r in lv["recipes"].items():
            s = r["search"]
            fixed = "; ".join(f"{_pct(a['param_reduction'])}: {_acc(a['val_after'])} / "
                              f"{_acc(a['test_after'])}" for a in r["at_fixed_sizes"])
            lrows.append([rname, r["recipe"], f"{_acc(r['fair_reference_val'])} / "
                          f"{_acc(r['fair_reference_test'])}", _pct(s.get("param_reduction")),
                          _pp(s.get("val_drop_pp")), _pp(s.get("test_drop_pp")), fixed])
        lines += ["Levers, recipes (search selection; absolute val / test accuracy of the same "
                  "plans at fixed sizes, since a recipe that lowers the fair reference "
                  "\"improves\" the drop without a better model):", "",
                  markdown_table(["recipe", "settings", "fair ref val / test (%)",
                                  "search: params saved", "val drop (pp)", "test drop (pp)",
                                  "same plans: saved: val / test (%)"], lrows), ""]
        aw = lv["aware"]
        if aw.get("available"):
            lines += [f"Activation-aware methods ({', '.join(aw['methods'])}): search within "
                      f"the budget with them {_pct(aw['on'].get('param_reduction'))}, without "
                      f"{_pct(aw['off'].get('param_reduction'))} params saved.", ""]
        else:
            lines += [f"Activation-aware methods: {aw.get('note')}.", ""]
        ps = lv["probe_strategy"]
        if ps:
            lines += ["Probe strategy on the search selection: " + ", ".join(
                f"{k} {v['evaluations']} evaluations -> {v['chosen']}" for k, v in ps.items())
                + ".", ""]
        st = m["stage_seconds"]
        lines += ["Wall time by stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in st.items())
                  + f"; {m['finetunings_run']} fine-tuning(s) run now (the rest from the cache).",
                  ""]
    if sim:
        lines += ["### Probe strategies", "",
                  f"On {sim['fronts']} simulated fronts (10-60 candidates, accuracy saturating "
                  "in the proxy, noise 0 / 0.2 / 0.5 pp, target 1 pp below): " + ", ".join(
                      f"{k}: {v['mean_probes']} probes on average, at most {v['max_probes']}, "
                      f"{v['not_the_smallest_passing']} fronts answered with a larger than "
                      "the smallest passing candidate"
                      for k, v in sim.items() if k != "fronts") + ".", ""]
    return "\n".join(lines)


def write_curves(results: dict[str, Any], path: Path, *, inline: bool) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = list(results["models"])
    fig = make_subplots(rows=len(models), cols=1, subplot_titles=models,
                        vertical_spacing=0.12 / max(len(models), 1))
    for i, name in enumerate(models, 1):
        m = results["models"][name]
        for sel, pts in m["curves"].items():
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[p["params"] for p in pts], y=[100 * p["val"] for p in pts],
                mode="lines+markers", name=f"{name}: {sel}", legendgroup=name,
                customdata=[[p["label"], 100 * p["test"]] for p in pts],
                hovertemplate=(f"<b>{sel}</b> %{{customdata[0]}}<br>params %{{x:,}}<br>"
                               "val %{y:.2f} %<br>test %{customdata[1]:.2f} %<extra></extra>")),
                row=i, col=1)
        ref = 100 * m["fair_reference_val_accuracy"]
        for y, dash, label in ((ref, "dash", "fair reference (val)"),
                               (ref - m["max_drop_pp"], "dot", "budget")):
            fig.add_hline(y=y, line_dash=dash, annotation_text=label, row=i, col=1)
        fig.update_xaxes(type="log", title_text="parameters", row=i, col=1)
        fig.update_yaxes(title_text="val accuracy after fine-tuning (%)", row=i, col=1)
    fig.update_layout(height=520 * len(models), template="plotly_white",
                      title=f"Compression benchmark ({results['mode']} mode): accuracy vs "
                            "parameters at equal fine-tuning")
    fig.write_html(str(path), include_plotlyjs=True if inline else "cdn")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    if dataclasses.is_dataclass(x):
        return _jsonable(dataclasses.asdict(x))  # type: ignore[arg-type]
    return x
