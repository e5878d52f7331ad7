"""The Markdown notes optuna-dashboard shows for lrf_optuna studies (a study's or trial's
"Note" tab).

* :func:`add_study_notes` on a search study (objectives, the original model, how to
  resume; a note edited by hand is never overwritten): its body is :func:`study_note`;
* :func:`original_note` on a fine-tuning study: the original model, measured like the
  jobs;
* :func:`job_note` on each fine-tuning job: the job against the untouched original and the
  fair reference of its recipe;
* :func:`save_note_quietly`: saving a note without ever failing a job over it.

The fine-tuning jobs (:mod:`lrf_optuna.finetune.jobs`) write the last three as they run;
``lrf-optuna dashboard`` writes the first before serving (:mod:`lrf_optuna.dashboard`).

Example:
    >>> add_study_notes(study, storage_url="sqlite:///studies/vgg.db")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shlex
from collections.abc import Mapping
from typing import Any

import optuna

from lrf_optuna.errors import UserError
from lrf_optuna.formatting import kib, markdown_table
from lrf_optuna.plan import PLAN_ATTR
from lrf_optuna.study.finetune_records import (
    BASELINE_ATTR,
    BN_REESTIMATED_ATTR,
    DEPLOYED_ATTR,
    EPOCHS_RUN_ATTR,
    FINETUNE_SECONDS_ATTR,
    KERAS_BYTES_ATTR,
    LATENCY_MS_KERAS_ATTR,
    LATENCY_MS_TFLITE_ATTR,
    QUANTIZE_ATTR,
    RECIPE_TEXT_ATTR,
    REFERENCE_ATTR,
    REVERTED_ATTR,
    TEST_ACC_ATTR,
    TEST_ACC_BEFORE_ATTR,
    TFLITE_BYTES_ATTR,
    VAL_ACC_AFTER_ATTR,
    VAL_ACC_ATTR,
    VAL_ACC_BEFORE_ATTR,
    VAL_ACC_BUILT_ATTR,
    VAL_IMAGES_ATTR,
    FinetuneRecord,
    Measured,
)
from lrf_optuna.study.lookup import (
    fair_references,
    find_finetune_study,
    latest_jobs,
)
from lrf_optuna.study.records import (
    FLOPS_ATTR,
    PARAMS_ATTR,
    PROBLEM_ATTR,
    original_info,
    problem_spec,
)

__all__ = ["add_study_notes", "job_note", "original_note", "save_note_quietly", "study_note"]

logger = logging.getLogger(__name__)

_NOTE_TAG = "lrf-optuna note"


# -- the study note ------------------------------------------------------------------------
def _num(value: Any, fmt: str = ",") -> str:
    if value is None:
        return "n/a"
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def _resume_command(study: optuna.Study, storage_url: str | None) -> str:
    spec = study.user_attrs.get(PROBLEM_ATTR) or {}
    with contextlib.suppress(UserError):  # the paths as they resolve (store-relative ones)
        spec = problem_spec(study).to_json()
    n_done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    argv = ["lrf-optuna", "search", "--model", str(spec.get("model", "<model>"))]
    if spec.get("dataset"):
        argv += ["--dataset", str(spec["dataset"])]
    if spec.get("data_dir"):
        argv += ["--data-dir", str(spec["data_dir"])]
    if spec.get("calibration_size") is not None:
        argv += ["--calibration-size", str(spec["calibration_size"])]
    if spec.get("seed") is not None:
        argv += ["--seed", str(spec["seed"])]
    if spec.get("cache_dir"):
        argv += ["--cache-dir", str(spec["cache_dir"])]
    argv += ["--study-name", study.study_name]
    if storage_url:
        argv += ["--storage", storage_url]
    argv += ["--n-trials", str(n_done + 200)]
    # one option per line: a long line would widen the dashboard's note past the screen
    lines = [" ".join(shlex.quote(a) for a in argv[:2])]
    i = 2
    while i < len(argv):
        lines.append("    " + " ".join(shlex.quote(a) for a in argv[i:i + 2]))
        i += 2
    return " \\\n".join(lines)


def study_note(study: optuna.Study, *, storage_url: str | None = None) -> str:
    """The Markdown note :func:`add_study_notes` writes (without its footer)."""
    info = original_info(study)
    original = info.to_json() if info is not None else {}
    metric = original.get("metric", "cosine")
    aggregation = original.get("aggregation", "mean")
    names = study.metric_names or ["params", "flops", "proxy"]
    n_complete = len(study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.COMPLETE,)))
    lines = [
        f"# LRF compression search `{study.study_name}`",
        "",
        f"Per-layer low-rank factorization of model **{original.get('model', '?')}**, "
        f"searched with NSGA-II: {n_complete} complete trial(s) when this "
        "note was written. Every trial picks, for each decomposable layer, a method "
        "(`keep`, `svd`, `tucker2`, `cp`, `tt` ...) and a rank level; trials are "
        "scored from the similarity cache only, nothing is trained during the search.",
        "",
        "## Objectives",
        "",
    ]
    meaning = {
        "params": "parameters of the whole compressed model (**minimise**)",
        "bytes": "weight memory of the whole compressed model in bytes (**minimise**)",
        "flops": "FLOPs of one forward pass of the compressed model, 2 x MACs (**minimise**)",
        "macs": "multiply-accumulates of one forward pass (**minimise**)",
        "proxy": (f"accuracy proxy (**maximise**): the `{aggregation}` over searched layers "
                  f"of the `{metric}` similarity between the factorized layer's output "
                  "feature maps and the original layer's, on calibration images from the "
                  "training split; a kept layer counts 1.0, the original model scores "
                  "1.0"),
    }
    for i, name in enumerate(names):
        lines.append(f"* objective {i} `{name}`: {meaning.get(name, name)}")
    lines += [
        "",
        "Trial user attributes: `params`, `flops`, `proxy`, `compression_ratio` "
        "(original params / params), `flops_reduction` (1 - FLOPs / original FLOPs), "
        "`plan` (`{layer: \"method r=rank\" | \"keep\"}`), `lrf_plan` (machine-readable) "
        "and `strategy` for the trials seeded by rank-selection heuristics "
        "(`original`, `tau:0.95`, `vbmf`, `uniform:...`).",
        "",
        "## Original model",
        "",
        "| quantity | value |",
        "| --- | --- |",
        f"| parameters | {_num(original.get(PARAMS_ATTR))} |",
        f"| FLOPs | {_num(original.get(FLOPS_ATTR))} |",
        f"| similarity metric / aggregation | {metric} / {aggregation} |",
        f"| similarity cache | `{original.get('cache', 'n/a')}` |",
    ]
    finetune = find_finetune_study(study)
    if finetune is not None:
        base = finetune.user_attrs.get(BASELINE_ATTR) or {}
        rows = [("val accuracy", base.get(VAL_ACC_ATTR), ".4f"),
                ("test accuracy", base.get(TEST_ACC_ATTR), ".4f"),
                ("Keras file (bytes)", base.get(KERAS_BYTES_ATTR), ","),
                ("TFLite file (bytes)", base.get(TFLITE_BYTES_ATTR), ","),
                ("Keras latency (ms)", base.get(LATENCY_MS_KERAS_ATTR), ".3f"),
                ("TFLite latency (ms)", base.get(LATENCY_MS_TFLITE_ATTR), ".3f")]
        lines += [f"| {label} | {_num(value, fmt)} |" for label, value, fmt in rows
                  if value is not None]
        for recipe, job in fair_references(finetune).items():
            ref = FinetuneRecord.of(job)
            text = job.user_attrs.get(RECIPE_TEXT_ATTR) or recipe
            lines.append(f"| fair reference val / test accuracy ({text}) | "
                         f"{_num(ref.val_acc_after, '.4f')} / "
                         f"{_num(ref.measured.test_acc, '.4f')} |")
        done = [t for t in finetune.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
                and not t.user_attrs.get(REFERENCE_ATTR)]
        sources = sorted(n for n, job in latest_jobs(finetune).items()
                         if not job.user_attrs.get(REFERENCE_ATTR))
        lines += ["", "## Fine-tuning",
                  "",
                  f"Study `{finetune.study_name}` holds {len(done)} finished fine-tuning "
                  "job(s): each one rebuilds a search trial's plan (`source_trial`), "
                  "fine-tunes it and records `val_acc_before`, `val_acc_after`, `test_acc`, "
                  "sizes and latencies; the `.keras` / `.tflite` files are its artifacts. "
                  "The *fair reference* of each recipe is the original model fine-tuned "
                  "with exactly that recipe: drops are measured against it (and against "
                  "the untouched original)."]
        if sources:
            lines += ["", "Fine-tuned search trials: "
                      + ", ".join(f"#{n}" for n in sources) + "."]
    lines += [
        "",
        "## Resume or extend the search",
        "",
        "`--n-trials` is the total number of finished trials wanted (here: 200 more); "
        "rerunning continues where the study stopped and reuses the similarity cache. Add "
        "the search options the study was created with (`--methods`, `--layers`, "
        "`--objectives`, `--population-size` ...): a different search space is refused.",
        "",
        "```sh",
        _resume_command(study, storage_url),
        "```",
        "",
        "Then `lrf-optuna show --study-name ...` prints the Pareto front and "
        "`lrf-optuna report --study-name ...` writes an HTML/Markdown report.",
    ]
    return "\n".join(lines)


def _footer(body: str) -> str:
    digest = hashlib.sha256(body.encode()).hexdigest()[:12]
    return (f"\n\n---\n_{_NOTE_TAG} {digest}: written by `lrf-optuna dashboard`; edit it "
            "freely, an edited note is never overwritten._")


def _is_ours(note: str) -> bool:
    """Whether ``note`` is a note this module wrote and nobody edited since."""
    head, sep, _ = note.rpartition("\n\n---\n_" + _NOTE_TAG + " ")
    return bool(sep) and head + _footer(head) == note


def add_study_notes(study: optuna.Study, *, storage_url: str | None = None,
                    force: bool = False) -> bool:
    """Write the explanatory Markdown note on a (live) search study.

    The note says what the objectives and user attributes mean, gives the original
    model's numbers (and the fine-tuning study's, when there is one) and the command that
    resumes the search. It replaces an earlier note written by this function, but not a
    note somebody wrote or edited (unless ``force``). Read it back with
    ``optuna_dashboard.get_note(study)``.

    Returns:
        Whether a note was written (``False``: unchanged, or a hand-written note kept).
    """
    from optuna_dashboard import get_note, save_note

    body = study_note(study, storage_url=storage_url)
    note = body + _footer(body)
    current = get_note(study)
    if current == note:
        return False
    if current.strip() and not _is_ours(current) and not force:
        return False
    save_note(study, note)
    return True



# -- the fine-tuning notes -------------------------------------------------------------------

def _with_original(label: str, mine: str, original: Mapping[str, Any] | None, key: str,
                   fmt: str) -> list[str]:
    theirs = "" if not original else (kib(original[key]) if fmt == "kib"
                                      else format(original[key], fmt))
    return [label, mine, theirs]


def job_note(source: int, study_name: str, ua: Mapping[str, Any],
             original: Mapping[str, Any] | None, *,
             reference: FinetuneRecord | None = None) -> str:
    """The Markdown note of a fine-tuning job (its user attributes ``ua``) against the
    untouched original model and, when known, the fair reference (the original fine-tuned
    with the same recipe)."""
    rows = [_with_original("parameters", f"{ua[PARAMS_ATTR]:,}", original, PARAMS_ATTR, ","),
            _with_original("FLOPs", f"{ua[FLOPS_ATTR]:,}", original, FLOPS_ATTR, ","),
            _with_original("val accuracy",
                           f"{ua[VAL_ACC_BEFORE_ATTR]:.4f} -> {ua[VAL_ACC_AFTER_ATTR]:.4f}",
                           original, VAL_ACC_ATTR, ".4f"),
            _with_original("test accuracy",
                           f"{ua[TEST_ACC_BEFORE_ATTR]:.4f} -> {ua[TEST_ACC_ATTR]:.4f}",
                           original, TEST_ACC_ATTR, ".4f"),
            _with_original(".keras size (KiB)", kib(ua[KERAS_BYTES_ATTR]), original,
                           KERAS_BYTES_ATTR, "kib"),
            _with_original(".tflite size (KiB)", kib(ua[TFLITE_BYTES_ATTR]), original,
                           TFLITE_BYTES_ATTR, "kib"),
            _with_original("latency Keras, batch 1 (ms)", f"{ua[LATENCY_MS_KERAS_ATTR]:.3f}",
                           original, LATENCY_MS_KERAS_ATTR, ".3f"),
            _with_original("latency TFLite, batch 1 (ms)", f"{ua[LATENCY_MS_TFLITE_ATTR]:.3f}",
                           original, LATENCY_MS_TFLITE_ATTR, ".3f")]
    header = ["", "fine-tuned", "original"]
    if reference is not None:
        ref = reference
        ref_cells = [f"{ref.measured.params:,}" if ref.measured.params is not None else "",
                     f"{ref.measured.flops:,}" if ref.measured.flops is not None else "",
                     _num(ref.val_acc_after, ".4f"), _num(ref.measured.test_acc, ".4f"),
                     kib(ref.measured.keras_bytes), kib(ref.measured.tflite_bytes),
                     _num(ref.measured.latency_ms_keras, ".3f"),
                     _num(ref.measured.latency_ms_tflite, ".3f")]
        rows = [[r[0], r[1], cell, r[2]] for r, cell in zip(rows, ref_cells)]
        header = ["", "fine-tuned", "fair reference", "original"]
    recipe = ua.get(RECIPE_TEXT_ATTR)
    title = ("## Fair reference: the original model fine-tuned like the jobs"
             if ua.get(REFERENCE_ATTR) else f"## Fine-tuned trial {source} of `{study_name}`")
    note = [title, "", markdown_table(header, rows), ""]
    if reference is not None and original is not None:
        mine = Measured.from_attrs(ua)

        def drop(theirs: Measured, split: str, plain: float) -> str:
            paired = mine.drop_against(theirs, split)
            return f"{plain:+.2f}" if paired is None else paired.text()

        val = drop(reference.measured, "val",
                   100 * ((reference.val_acc_after or 0) - ua[VAL_ACC_AFTER_ATTR]))
        test = drop(reference.measured, "test",
                    100 * ((reference.measured.test_acc or 0) - ua[TEST_ACC_ATTR]))
        test_orig = drop(Measured.from_attrs(original), "test",
                         100 * (original[TEST_ACC_ATTR] - ua[TEST_ACC_ATTR]))
        n_val = ua.get(VAL_IMAGES_ATTR)
        on = f" on {n_val:,} validation images" if isinstance(n_val, int) else ""
        note += [f"Drop against the fair reference: **{val} pp** on validation, "
                 f"**{test} pp** on test ({test_orig} pp on test against the "
                 "untouched original; positive: worse; ± one standard error, paired on the "
                 f"same images{on}).", ""]
    deployed = ua.get(DEPLOYED_ATTR)
    if isinstance(deployed, Mapping):
        ref_file = reference.deployed if reference is not None else None
        paired = (Measured.from_attrs(deployed).drop_against(ref_file, "val")
                  if ref_file is not None else None)
        note += [f"Deployed as a {deployed.get(QUANTIZE_ATTR)} LiteRT file: "
                 f"{deployed.get('file_bytes', 0):,} bytes, val accuracy "
                 f"{deployed.get(VAL_ACC_ATTR, 0):.4f}, test {deployed.get(TEST_ACC_ATTR, 0):.4f}, "
                 f"tensor arena {deployed.get('arena_bytes', 0):,} bytes, batch-1 latency "
                 f"{deployed.get('latency_ms', 0):.3f} ms ({deployed.get('runtime')})"
                 + (f"; val drop against the fair reference's file **{paired.text()} pp**"
                    if paired is not None else "") + ".", ""]
    if ua.get(BN_REESTIMATED_ATTR):
        note += [f"BatchNorm statistics re-estimated before fine-tuning: val accuracy "
                 f"{ua.get(VAL_ACC_BUILT_ATTR, 0):.4f} as built -> {ua[VAL_ACC_BEFORE_ATTR]:.4f}.",
                 ""]
    note += [f"{ua[EPOCHS_RUN_ATTR]} epoch(s) in {ua[FINETUNE_SECONDS_ATTR]:.1f} s"
             + (f" ({recipe})" if recipe else "")
             + (" (reverted: fine-tuning did not improve validation accuracy)"
                if ua[REVERTED_ATTR] else ""), "",
             "### Plan", "",
             markdown_table(["layer", "choice"], [[k, v] for k, v in ua[PLAN_ATTR].items()])]
    return "\n".join(note)


def original_note(study_name: str, o: Mapping[str, Any]) -> str:
    """The Markdown note of a fine-tuning study: the original model, measured like the
    jobs."""
    rows = [["parameters", f"{o[PARAMS_ATTR]:,}"], ["FLOPs", f"{o[FLOPS_ATTR]:,}"],
            ["val accuracy", f"{o[VAL_ACC_ATTR]:.4f}"],
            ["test accuracy", f"{o[TEST_ACC_ATTR]:.4f}"],
            [".keras size (KiB)", kib(o[KERAS_BYTES_ATTR])],
            [".tflite size (KiB)", kib(o[TFLITE_BYTES_ATTR])],
            ["latency Keras, batch 1 (ms)", f"{o[LATENCY_MS_KERAS_ATTR]:.3f}"],
            ["latency TFLite, batch 1 (ms)", f"{o[LATENCY_MS_TFLITE_ATTR]:.3f}"]]
    return "\n".join([f"## Fine-tuning jobs of `{study_name}`", "",
                      "One trial per fine-tuned Pareto-optimal search trial. The original "
                      "model, measured the same way:", "",
                      markdown_table(["original model", ""], rows)])


def save_note_quietly(target: optuna.Study | optuna.Trial, body: str) -> None:
    """``optuna_dashboard.save_note``, logged instead of raised when it fails (a note is a
    nicety: it never fails a job)."""
    try:
        from optuna_dashboard import save_note

        save_note(target, body)
    except Exception:
        logger.warning("could not save a dashboard note", exc_info=True)
