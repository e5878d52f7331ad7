"""Every table lrf_optuna prints or writes: the Pareto front, the fine-tuning results,
per-layer plans, the similarity cache, the baselines; as terminal text, Markdown or HTML.

The CLI (``show``, ``search``, ``finetune``), the demo and the report take their tables
from here (:class:`Table`); cells, numbers and the Markdown / terminal / HTML rendering are
:mod:`lrf_optuna.formatting`'s, which the dashboard notes share.

Example:
    >>> print(Table(["a", "b"], [["1", "x|y"]]).markdown())
    | a | b |
    | --- | --- |
    | 1 | x\\|y |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrf_optuna.formatting import as_float, fmt, format_table, html_table, markdown_table
from lrf_optuna.study.finetune_records import (
    KERAS_BYTES_ATTR,
    LATENCY_MS_KERAS_ATTR,
    LATENCY_MS_TFLITE_ATTR,
    TEST_ACC_ATTR,
    TFLITE_BYTES_ATTR,
    VAL_ACC_ATTR,
    FinetuneRecord,
    Measured,
)
from lrf_optuna.study.records import FLOPS_ATTR, PARAMS_ATTR, PROXY_ATTR, SearchRecord

if TYPE_CHECKING:
    import optuna

    from lrf_optuna.models.training import TrainingResult
    from lrf_optuna.paired import PairedDrop
    from lrf_optuna.report.data import ReportData
    from lrf_optuna.study.finetune_records import WithinBudget

__all__ = ["CACHE_HEADER", "FRONT_HEADER", "RESULT_HEADER", "Table", "baselines_table",
           "cache_table", "front_table", "front_text", "plan_table", "results_table",
           "results_text", "spread", "within_budget_table", "within_budget_text"]


@dataclass(frozen=True)
class Table:
    """A header, rows of text cells and a title; rendered for the terminal, Markdown or
    HTML."""

    header: list[str]
    rows: list[list[str]]
    title: str = ""

    def text(self) -> str:
        """Title, then the aligned table (for the terminal)."""
        body = format_table(self.header, self.rows)
        return f"{self.title}\n{body}" if self.title else body

    def markdown(self, *, align: bool = False) -> str:
        return markdown_table(self.header, self.rows, align=align)

    def html(self, css: str = "") -> str:
        return html_table(self.header, self.rows, css)

    def columns(self, names: Iterable[str]) -> Table:
        """The same table with only these columns, in this order."""
        index = [self.header.index(n) for n in names]
        return Table([self.header[i] for i in index], [[r[i] for i in index] for r in self.rows],
                     self.title)


def spread(items: Sequence[Any], top: int | None) -> list[Any]:
    """At most ``top`` items, evenly spaced (first and last kept)."""
    if top is None or len(items) <= top:
        return list(items)
    step = (len(items) - 1) / max(top - 1, 1)
    return [items[round(i * step)] for i in range(top)]


def _ratio(original: Any, value: Any) -> str:
    """``original / value`` as ``"2.00x"`` (n/a when unknown)."""
    a, b = as_float(original), as_float(value)
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _changed(plan: Mapping[str, str]) -> str:
    changed = [f"{k}: {v}" for k, v in plan.items() if v != "keep"]
    return ", ".join(changed) or "(all kept)"


RESULT_HEADER = ["trial", "job", "params", "params ratio", "FLOPs", "FLOPs ratio",
                 "val acc before", "val acc after", "test acc", "val drop vs ref (pp)",
                 "test drop vs ref (pp)", "test drop vs orig (pp)",
                 "Keras ms", "Keras speed-up", "TFLite ms", "TFLite speed-up",
                 ".keras bytes", ".keras ratio", ".tflite bytes", ".tflite ratio",
                 "deployed file", "epochs", "fine-tune s", "recipe"]
#: The columns of the results table that fit a terminal.
RESULT_TEXT_COLUMNS = ["trial", "params", "params ratio", "FLOPs", "val acc before",
                       "val acc after", "test acc", "val drop vs ref (pp)",
                       "test drop vs ref (pp)", "test drop vs orig (pp)", "Keras ms",
                       "TFLite ms", ".tflite bytes", "epochs"]


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _deployed_cell(job: FinetuneRecord) -> str:
    """``"int8 91,576 B, val 0.9770, test 0.9768, arena 61,344 B"`` for a job whose recipe
    converts its model (``FinetuneConfig.quantize``), else empty."""
    d = job.deployed
    if d is None:
        return ""
    return (f"{job.quantize} {fmt(d.tflite_bytes, ',')} B, val {fmt(d.val_acc, '.4f')}, "
            f"test {fmt(d.test_acc, '.4f')}, arena "
            f"{fmt(job.deployed_info.get('arena_bytes'), ',')} B")


def results_table(data: ReportData) -> Table:
    """The untouched original, the fair reference of each recipe (the original fine-tuned
    with it), then each fine-tuned trial (its latest COMPLETE job per recipe), smallest
    first; ratios are original / compressed; drops are in percentage points (positive:
    worse) against the fair reference of the job's recipe ("ref") and the untouched
    original ("orig"), measured paired on the same images, ± one standard error
    (:mod:`lrf_optuna.paired`)."""
    base = {**{k: data.original.get(k) for k in (PARAMS_ATTR, FLOPS_ATTR)}, **data.baseline}
    val = fmt(base.get(VAL_ACC_ATTR), ".4f") if VAL_ACC_ATTR in base else ""
    rows = [["original", "", fmt(base.get(PARAMS_ATTR), ","), "1.00x",
             fmt(base.get(FLOPS_ATTR), ","), "1.00x", val, val,
             fmt(base.get(TEST_ACC_ATTR), ".4f"), "", "", "",
             fmt(base.get(LATENCY_MS_KERAS_ATTR), ".3f"),
             "1.00x", fmt(base.get(LATENCY_MS_TFLITE_ATTR), ".3f"), "1.00x",
             fmt(base.get(KERAS_BYTES_ATTR), ","), "1.00x", fmt(base.get(TFLITE_BYTES_ATTR), ","),
             "1.00x", "", "", "", ""]]
    original = Measured.from_attrs(base)

    def row(label: str, job: FinetuneRecord, reference: FinetuneRecord | None) -> list[str]:
        m = job.measured
        drops = job.drops_pp(reference, original)
        paired = job.paired_drops(reference, original)
        return [label, str(job.job), fmt(m.params, ","),
                _ratio(base.get(PARAMS_ATTR), m.params), fmt(m.flops, ","),
                _ratio(base.get(FLOPS_ATTR), m.flops), fmt(job.val_acc_before, ".4f"),
                fmt(job.val_acc_after, ".4f"), fmt(m.test_acc, ".4f"),
                "" if job.is_reference else _drop(paired["val_vs_reference"],
                                                  drops["val_vs_reference"]),
                "" if job.is_reference else _drop(paired["test_vs_reference"],
                                                  drops["test_vs_reference"]),
                _drop(paired["test_vs_original"], drops["test_vs_original"]),
                fmt(m.latency_ms_keras, ".3f"),
                _ratio(base.get(LATENCY_MS_KERAS_ATTR), m.latency_ms_keras),
                fmt(m.latency_ms_tflite, ".3f"),
                _ratio(base.get(LATENCY_MS_TFLITE_ATTR), m.latency_ms_tflite),
                fmt(m.keras_bytes, ","), _ratio(base.get(KERAS_BYTES_ATTR), m.keras_bytes),
                fmt(m.tflite_bytes, ","), _ratio(base.get(TFLITE_BYTES_ATTR), m.tflite_bytes),
                _deployed_cell(job), fmt(job.epochs_run, ".0f"), fmt(job.finetune_seconds, ".1f"),
                data.recipe_texts.get(job.recipe or "", job.recipe or "")]

    for ref in data.references.values():
        rows.append(row("fair reference", ref, None))
    for r in data.finetuned:
        rows.append(row(f"#{r.source}", r.record, r.reference))
    title = (f"Fine-tuned trials of study {data.study_name!r} ({len(data.finetuned)} in "
             f"{data.finetune_name!r}; latencies: batch 1, median; drops in pp, positive = "
             "worse, against the fair reference (the original fine-tuned with the same "
             "recipe) and the untouched original)")
    return Table(RESULT_HEADER, rows, title)


def _reduction(original: float | None, value: float | None) -> str:
    if original is None or value is None or original == 0:
        return "n/a"
    return f"{100 * (1 - value / original):.1f}%"


def _drop(paired: PairedDrop | None, plain: float | None) -> str:
    """A drop in pp with one standard error where per-image results are recorded."""
    return paired.text() if paired is not None else _pp(plain)


def within_budget_table(answer: WithinBudget) -> Table:
    """The probes of a max-drop search (:func:`lrf_optuna.finetune.finetune_within`), in
    the order they were evaluated; drops in pp against the fair reference of the probe's
    recipe and the untouched original (positive: worse), measured paired on the same
    images, with one standard error."""
    rows = []
    deployed = answer.reference.quantize or "float32"
    chosen = (answer.chosen.number, answer.job.recipe) if (
        answer.chosen is not None and answer.job is not None) else None
    for order, (trial, job, probe) in enumerate(answer.probes, 1):
        m = job.measured
        reference = answer.reference_of(job)
        drops = job.drops_pp(reference, answer.original)
        paired = job.paired_drops(reference, answer.original)
        paired["val_vs_reference"] = job.decided_drop(reference)
        escalated = job.recipe != answer.search_recipe_key
        file = job.deployed if job.deployed is not None else m
        rows.append([str(order) + (" (known)" if probe.known else ""), f"#{trial.number}",
                     fmt(m.params, ","), _reduction(answer.original_params, m.params),
                     _reduction(answer.original_flops, m.flops),
                     fmt(trial.user_attrs.get(PROXY_ATTR), ".4f"),
                     "longer" if escalated else "first", fmt(file.tflite_bytes, ","),
                     fmt(job.decided_val_acc, ".4f"),
                     _drop(paired["val_vs_reference"], drops["val_vs_reference"]),
                     _drop(paired["test_vs_reference"], drops["test_vs_reference"]),
                     _drop(paired["test_vs_original"], drops["test_vs_original"]),
                     ("yes" if probe.passed else "no") + (
                         " <- chosen" if (trial.number, job.recipe) == chosen else "")])
    header = ["probe", "trial", "params", "params saved", "FLOPs saved", "proxy", "recipe",
              f".tflite bytes ({deployed})", f"val acc ({deployed})",
              f"val drop vs ref ({deployed}, pp)", "test drop vs ref (pp)",
              "test drop vs orig (pp)", f"within {answer.max_drop:g} pp"]
    n_val = answer.resolution.images if answer.resolution is not None else None
    longer = (f"; longer recipe: {answer.escalated_recipe}, "
                 f"{answer.escalation.n_evaluated} fine-tuned now"
                 if answer.escalation is not None else "")
    balanced = (f"; {len(answer.balanced_candidates)} balanced plan(s) (tau) smaller than "
                f"the front's answer, {answer.balanced.n_evaluated} fine-tuned now"
                if answer.balanced is not None else "")
    title = (f"Max-drop search: {len(answer.candidates)} candidate(s) on the (params, proxy) "
             f"front, {answer.search.n_evaluated} fine-tuned now{balanced}; first recipe: "
             f"{answer.recipe}{longer}; drops paired on the same images, ± one standard "
             f"error; decided on {fmt(n_val, ',')} validation images at confidence "
             f"{answer.confidence:g}")
    return Table(header, rows, title)


def within_budget_text(answer: WithinBudget) -> str:
    """The answer of a max-drop search in a few lines: how finely validation resolves the
    budget, whether the original is sound, the chosen trial and its drops (± one standard
    error)."""
    ref = answer.reference
    lines = []
    if answer.resolution is not None:
        lines.append(answer.resolution.text())
    check = answer.original_check.text() if answer.original_check is not None else None
    if check:
        lines.append(f"warning: {check}")
    lines.append(f"fair reference (the original fine-tuned the same way): val "
                 f"{fmt(ref.val_acc_after, '.4f')}, test {fmt(ref.measured.test_acc, '.4f')}; "
                 f"untouched original: val {fmt(answer.original.val_acc, '.4f')}, test "
                 f"{fmt(answer.original.test_acc, '.4f')}")
    if answer.chosen is None or answer.job is None:
        lines.append(f"no compressed trial stays within {answer.max_drop:g} pp of the fair "
                     "reference on validation accuracy")
        return "\n".join(lines)
    m = answer.job.measured
    d = answer.drops_pp()
    p = answer.paired_drops()
    searches = [s for s in (answer.search, answer.balanced, answer.escalation) if s is not None]
    note = ("" if all(s.converged for s in searches)
            else " (probe budget exhausted: a smaller one may pass)")
    recipe = (f", with the longer recipe ({answer.escalated_recipe})"
              if answer.job.recipe != answer.search_recipe_key else "")
    lines.append(
        f"smallest model within {answer.max_drop:g} pp (decided on validation): "
        f"trial #{answer.chosen.number}{recipe}, {fmt(m.params, ',')} params "
        f"({_reduction(answer.original_params, m.params)} fewer, "
        f"{_ratio(answer.original_params, m.params)}), FLOPs "
        f"{_reduction(answer.original_flops, m.flops)} fewer; val drop "
        f"{_drop(p['val_vs_reference'], d['val_vs_reference'])} pp, test drop "
        f"{_drop(p['test_vs_reference'], d['test_vs_reference'])} pp vs the fair reference "
        f"({_drop(p['test_vs_original'], d['test_vs_original'])} pp vs the untouched "
        f"original){note}")
    job, ref = answer.job, answer.reference
    if job.deployed is not None and ref.deployed is not None:
        info = job.deployed_info
        drop = job.decided_drop(ref)
        test = job.deployed.drop_against(ref.deployed, "test")
        unsupported = info.get("micro_unsupported") or []
        lines.append(
            f"deployed as a LiteRT file ({job.quantize}, decided on it): "
            f"{fmt(job.deployed.tflite_bytes, ',')} bytes against "
            f"{fmt(ref.deployed.tflite_bytes, ',')} for the fair reference's "
            f"({_ratio(ref.deployed.tflite_bytes, job.deployed.tflite_bytes)}), arena "
            f"{fmt(info.get('arena_bytes'), ',')} bytes, batch-1 latency "
            f"{fmt(info.get('latency_ms'), '.3f')} ms ({info.get('runtime')}); val drop "
            f"{_drop(drop, None)} pp, test drop {_drop(test, None)} pp against the fair "
            "reference's file; "
            + ("every op in the TFLite Micro set" if not unsupported else
               f"ops outside the TFLite Micro set: {', '.join(unsupported)}"))
    return "\n".join(lines)


def plan_table(data: ReportData, trials: Sequence[tuple[str, Mapping[str, str]]]) -> Table:
    """One row per layer, one column per trial (``(label, plan)`` pairs)."""
    rows = []
    for layer in data.layers:
        table = data.cache.tables.get(layer) if data.cache is not None else None
        kind = table.class_name if table is not None else ""
        rows.append([layer, kind, *[plan.get(layer, "keep") for _, plan in trials]])
    return Table(["layer", "type", *[label for label, _ in trials]], rows)


FRONT_HEADER = ["trial", "params", "compression", "FLOPs", "FLOPs saved", "proxy",
                "seeded by", "fine-tuned", "plan (changed layers)"]


def front_table(data: ReportData, *, top: int | None = 20) -> Table:
    """The Pareto front, smallest model first (at most ``top`` trials spread along it),
    after the original model's row."""
    tuned = {r.source for r in data.finetuned}
    trials = sorted(data.front, key=lambda t: (t.user_attrs.get(PARAMS_ATTR, 0), t.number))
    o = data.original
    rows = [["original", fmt(o.get(PARAMS_ATTR), ","), "1.00x", fmt(o.get(FLOPS_ATTR), ","),
             "0.0%", "1.0000", "", "", "(original model)"]]
    for t in spread(trials, top):
        rec = SearchRecord.of(t)
        rows.append([str(rec.number), fmt(rec.params, ","),
                     f"{rec.compression_ratio or 0:.2f}x", fmt(rec.flops, ","),
                     f"{100 * (rec.flops_reduction or 0):.1f}%", fmt(rec.proxy, ".4f"),
                     rec.strategy, "yes" if rec.number in tuned else "", _changed(rec.plan)])
    shown = f", {min(len(trials), top)} shown" if top is not None and len(trials) > top else ""
    title = (f"Pareto front of study {data.study_name!r}: {len(data.front)} trial(s) of "
             f"{data.n_trials}{shown}")
    return Table(FRONT_HEADER, rows, title)


CACHE_HEADER = ["layer", "type", "params", "MACs", "methods", "candidates",
                "cheapest >= 0.99", "cheapest >= 0.95"]


def cache_table(data: ReportData) -> Table:
    """One row per layer: what the cache scored and the cheapest good candidates."""
    rows = []
    for layer in data.layers:
        table = data.cache.tables.get(layer) if data.cache is not None else None
        if table is None:
            continue
        cells = [layer, table.class_name, fmt(table.original_params, ","),
                 fmt(table.original_macs, ","), ", ".join(table.methods),
                 str(len(table.candidates))]
        for threshold in (0.99, 0.95):
            best = table.best(metric=data.metric, min_similarity=threshold)
            cells.append("none" if best is None else
                         f"{best.method} r={best.rank} ({best.params:,} params)")
        rows.append(cells)
    return Table(CACHE_HEADER, rows)


def baselines_table(results: Mapping[str, TrainingResult]) -> Table:
    """The trained (or cached) reference models: size, test accuracy, training."""
    rows = []
    for name, result in results.items():
        rec = result.record
        when = "cached" if result.cached else f"trained in {rec.train_seconds or 0:.0f} s"
        rows.append([name, f"{rec.params:,}", f"{rec.test_accuracy:.4f}", str(rec.epochs),
                     when])
    return Table(["model", "params", "test accuracy", "epochs", "train time"], rows)


# -- straight from a study, for the terminal ---------------------------------------------------

def front_text(study: optuna.Study, *, top: int | None = None) -> str:
    """The Pareto front of a described study as terminal text (``lrf-optuna show``)."""
    from lrf_optuna.report.data import read_study

    return front_table(read_study(study), top=top).text()


def results_text(study: optuna.Study) -> str:
    """The fine-tuned trials against the original model as terminal text."""
    from lrf_optuna.report.data import read_study

    return results_table(read_study(study)).columns(RESULT_TEXT_COLUMNS).text()
