"""The RESULTS.md section, the targets and the JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks._results import (
    markdown_table,
)
from benchmarks._results import pct as _pct
from benchmarks._results import pp as _pp
from benchmarks.user_nets.config import BASELINES


def _se(x: float | None) -> str:
    return "" if x is None else f" ± {x:.2f}"


def _baseline_cell(row: dict[str, Any]) -> str:
    if not row["within"]:
        return f"none ({row['probes']} tried; {row['seconds']:.0f} s)"
    more = " (smallest tried)" if row["smallest_candidate"] else ""
    return (f"{_pct(row['param_reduction'])} {row['label']}{more}, test "
            f"{_pp(row['test_drop_pp'])}; {row['seconds']:.0f} s")


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md section: the summary table, every baseline's pick, the targets."""
    mode = results["mode"]
    lines = [f"`{results['command']}` ({results['machine']}; {results['date']}; "
             f"{results['seconds'] / 60:.0f} min in all).", ""]
    if mode != "full":
        lines += [f"**{mode.upper()} MODE**: " + ("synthetic data and tiny nets, a smoke "
                  "test of the harness only." if mode == "tiny" else
                  "4,000 images and fewer widths / ratios; the targets are judged on the "
                  "full mode."), ""]
    lines += [
        f"Nets written as users write them (not from the zoo), trained from scratch on a "
        f"stratified subset of the training images; the validation split is the library's "
        f"(`prepare_splits(val_fraction={results['val_fraction']}, "
        f"seed={results['seed']})`, the one `compress` uses), held out of every training. "
        f"Budget {results['max_drop_pp']:g} pp of **validation** accuracy, decided on "
        "validation, reported on **test**. compress: `compress_detailed` with its "
        "defaults against its fair reference; narrow: the net at smaller widths trained "
        "from scratch for the original's epochs plus the longest fine-tuning a compress "
        "probe got, against the untouched original; narrow + KD: the same, trained with "
        "the library's distillation loss from the original's outputs (weight and "
        "temperature of the default recipe); uniform SVD (`channel_svd` on k x k "
        "convs, `svd` on 1x1 convs and dense, first conv and classifier kept) and tau "
        "(similarity threshold): fine-tuned with `FinetuneConfig()`, against the fair "
        "reference (the original fine-tuned the same way). Every decision: `passes()`, the "
        "library's paired decision (`PairedDrop.within` at compress's default confidence), "
        "candidates probed by bisection. Drops ± one standard error (paired on the same "
        "images). Cells: params saved, pick, test drop vs its reference (pp), wall time.",
        ""]
    rows, detail = [], []
    for r in results["runs"]:
        c, o, t = r["compress"], r["original"], r["targets"]
        comp = (f"**none** within ({c['probes']} probes)" if not c["within"] else
                f"{_pct(c['param_reduction'])} / {_pct(c['flops_reduction'])}")
        rows.append([r["net"], f"{r['train_images']:,} / {r['val_images']:,}",
                     f"{r['budget_images']} ({r['one_image_pp']:.2g} pp each)",
                     f"{o['params']:,}", f"{100 * o['test_acc']:.2f}", comp,
                     f"{_pp(c['val_drop_pp'])}{_se(c.get('val_drop_se_pp'))} / "
                     f"{_pp(c['test_drop_pp'])}{_se(c.get('test_drop_se_pp'))}"
                     + (" (longer recipe)" if c.get("chosen_recipe") == "longer" else ""),
                     _pp(c["test_drop_vs_original_pp"]), f"{c['seconds']:.0f}",
                     *[_baseline_cell(r["baselines"][b]) for b in BASELINES],
                     "yes" if t["beats_every_baseline"] else "no",
                     "yes" if t["at_most_half_params_of_best"] else "no"])
        for b in BASELINES:
            x = r["baselines"][b]
            detail.append([r["net"], f"{r['size']:,}", b, x["label"] or "(none within)",
                           _pct(x["param_reduction"]),
                           _pct(x["flops_reduction"]) if x["within"] else "-",
                           _pp(x["val_drop_pp"]), _pp(x["test_drop_pp"]),
                           _pp(x["test_drop_vs_original_pp"]), x["reference"],
                           f"{x['probes']}/{x['candidates']}", f"{x['seconds']:.0f}"])
    lines += [markdown_table(
        ["net", "train / val images", "budget in val images", "params", "test acc (%)",
         "compress: params / FLOPs saved", "val / test drop vs ref (pp)",
         "test drop vs orig (pp)", "compress s", "best narrow", "best narrow + KD",
         "best uniform SVD", "tau",
         "beats every baseline", "<= half the params of the best"], rows), "",
        "Every baseline's pick (narrow: against the untouched original; plans: against "
        "the fair reference):", "",
        markdown_table(["net", "images", "baseline", "pick", "params saved", "FLOPs saved",
                        "val drop (pp)", "test drop (pp)", "test drop vs orig (pp)",
                        "reference", "probes / candidates", "s"], detail), ""]
    runs = results["runs"]
    beats = sum(r["targets"]["beats_every_baseline"] for r in runs)
    half = sum(r["targets"]["at_most_half_params_of_best"] for r in runs)
    lines += [f"Targets: compress saves more parameters than every baseline on {beats} of "
              f"{len(runs)} (target: all), and leaves at most half the parameters of the "
              f"best baseline on {half} of {len(runs)} (target: at least half).", ""]
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


