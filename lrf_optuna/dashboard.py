"""optuna-dashboard for lrf_optuna studies: the ``dashboard`` subcommand and study notes.

The search study and its fine-tuning study (``"<name>:finetune"``, same storage) are served
by `optuna-dashboard <https://optuna-dashboard.readthedocs.io>`_ together with the artifact
store holding the fine-tuned ``.keras`` / ``.tflite`` files, so the models can be
downloaded from the trial pages. Before serving, a Markdown note explaining the objectives,
the original model and how to resume is written on each search study (shown on the
study's "Note" tab); a note edited by hand in the dashboard is never overwritten.

Artifact store location: ``--artifact-dir``, else the ``artifact_dir`` the fine-tuning
study recorded, else :func:`artifact_dir_for`: ``<db stem>_artifacts/`` beside the SQLite
file for ``sqlite:///path/name.db``, else ``studies/artifacts``.

Examples::

    lrf-optuna dashboard --study-name vgg_small         # sqlite:///studies/vgg_small.db
    lrf-optuna dashboard --storage postgresql://u@db/lrf --port 8081
    python -m lrf_optuna.dashboard --study-name vgg_small --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrf_optuna.finetune import FINETUNE_SUFFIX, existing_finetune_study
from lrf_optuna.search import artifact_dir_for, sqlite_path

__all__ = ["StudyLookupError", "add_dashboard_parser", "add_study_notes", "load_study",
           "recorded_artifact_dir", "resolve_storage", "run_dashboard", "search_study_names",
           "study_note"]

_NOTE_TAG = "lrf-optuna note"


class StudyLookupError(ValueError):
    """No such storage or study (a user error: the CLI prints it as one line)."""


# -- storage, studies ------------------------------------------------------------------------
def resolve_storage(study_name: str | None, storage: str | None) -> str:
    """``storage``, or ``sqlite:///studies/<study_name>.db`` like ``lrf-optuna search``.

    Raises:
        StudyLookupError: neither is given, or the SQLite database file does not exist.
    """
    if storage is None:
        if not study_name:
            raise StudyLookupError("pass --study-name or --storage")
        storage = f"sqlite:///{Path('studies') / f'{study_name}.db'}"
    db = sqlite_path(storage)
    if db is not None and not db.exists():
        raise StudyLookupError(f"no study database at {db}; run `lrf-optuna search` first or "
                               "pass --storage")
    return storage


def search_study_names(storage: Any) -> list[str]:
    """Names of the search studies in a storage (fine-tuning studies left out)."""
    import optuna

    return [n for n in optuna.get_all_study_names(storage)
            if not n.endswith(FINETUNE_SUFFIX)]


def load_study(study_name: str | None, storage: str | None) -> Any:
    """Load a search study by name (and/or storage), with clear errors.

    With only ``storage``, the storage must hold exactly one search study.

    Raises:
        StudyLookupError: no database, no such study, or an ambiguous storage.
    """
    import optuna

    url = resolve_storage(study_name, storage)
    names = search_study_names(url)
    if study_name is None:
        if len(names) != 1:
            raise StudyLookupError(f"{url} holds {len(names)} search studies {names}; pass "
                                   "--study-name")
        study_name = names[0]
    if study_name not in names:
        raise StudyLookupError(f"no study {study_name!r} in {url}; it has {names}")
    return optuna.load_study(study_name=study_name, storage=url)


# -- the study note --------------------------------------------------------------------------
def _num(value: Any, fmt: str = ",") -> str:
    if value is None:
        return "n/a"
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def _resume_command(study: Any, storage_url: str | None) -> str:
    spec = study.user_attrs.get("lrf_optuna:problem") or {}
    n_done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
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


def study_note(study: Any, *, storage_url: str | None = None) -> str:
    """The Markdown note :func:`add_study_notes` writes (without its footer)."""
    original = study.user_attrs.get("lrf_optuna:original") or {}
    metric = original.get("metric", "cosine")
    aggregation = original.get("aggregation", "mean")
    names = study.metric_names or ["params", "flops", "proxy"]
    trials = study.get_trials(deepcopy=False)
    n_complete = sum(1 for t in trials if t.state.name == "COMPLETE")
    lines = [
        f"# LRF compression search `{study.study_name}`",
        "",
        f"Per-layer low-rank factorization of model **{original.get('model', '?')}**, "
        f"searched with NSGA-II: {n_complete} complete trial(s) of {len(trials)} when this "
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
        f"| parameters | {_num(original.get('params'))} |",
        f"| FLOPs | {_num(original.get('flops'))} |",
        f"| similarity metric / aggregation | {metric} / {aggregation} |",
        f"| similarity cache | `{original.get('cache', 'n/a')}` |",
    ]
    finetune = existing_finetune_study(study)
    if finetune is not None:
        base = finetune.user_attrs.get("original") or {}
        rows = [("test accuracy", base.get("test_acc"), ".4f"),
                ("Keras file (bytes)", base.get("keras_bytes"), ","),
                ("TFLite file (bytes)", base.get("tflite_bytes"), ","),
                ("Keras latency (ms)", base.get("latency_ms_keras"), ".3f"),
                ("TFLite latency (ms)", base.get("latency_ms_tflite"), ".3f")]
        lines += [f"| {label} | {_num(value, fmt)} |" for label, value, fmt in rows
                  if value is not None]
        done = [t for t in finetune.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        sources = sorted({int(t.user_attrs["source_trial"]) for t in done
                          if isinstance(t.user_attrs.get("source_trial"), int)})
        lines += ["", "## Fine-tuning",
                  "",
                  f"Study `{finetune.study_name}` holds {len(done)} finished fine-tuning "
                  "job(s): each one rebuilds a search trial's plan (`source_trial`), "
                  "fine-tunes it and records `val_acc_before`, `val_acc_after`, `test_acc`, "
                  "sizes and latencies; the `.keras` / `.tflite` files are its artifacts."]
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


def add_study_notes(study: Any, *, storage_url: str | None = None,
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


# -- serving ---------------------------------------------------------------------------------
def run_dashboard(storage: Any, *, host: str = "127.0.0.1", port: int = 8080,
                  artifact_dir: str | os.PathLike[str] | None = None) -> None:
    """Serve optuna-dashboard on ``storage`` with the fine-tuning artifact store; blocks.

    ``storage`` is a URL or an Optuna storage object; ``artifact_dir`` defaults to
    :func:`artifact_dir_for` of the URL (``studies/artifacts`` for a storage object).
    Returns when the server stops (Ctrl-C).
    """
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    if artifact_dir is None:
        artifact_dir = artifact_dir_for(storage if isinstance(storage, str) else "")
    directory = Path(artifact_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):  # bottle normally swallows it already
        run_server(storage, host=host, port=port,
                   artifact_store=FileSystemArtifactStore(directory))


def recorded_artifact_dir(studies: Sequence[Any]) -> Path | None:
    """The artifact directory the fine-tuning studies of ``studies`` recorded (user
    attribute ``artifact_dir``), if any; the first one when they disagree (with a
    warning: the dashboard serves one artifact store)."""
    found: list[str] = []
    for study in studies:
        finetune = existing_finetune_study(study)
        recorded = finetune.user_attrs.get("artifact_dir") if finetune is not None else None
        if recorded and recorded not in found:
            found.append(str(recorded))
    if len(found) > 1:
        print(f"warning: the fine-tuning studies use several artifact directories {found}; "
              f"serving {found[0]} (pass --artifact-dir to choose)", file=sys.stderr)
    return Path(found[0]) if found else None


def _url(host: str, port: int, path: str = "/dashboard") -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{path}"


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna

    storage = resolve_storage(args.study_name, args.storage)
    if args.study_name is not None:
        studies = [load_study(args.study_name, storage)]
    else:
        studies = [optuna.load_study(study_name=n, storage=storage)
                   for n in search_study_names(storage)]
    for study in studies:
        if "lrf_optuna:original" in study.user_attrs:
            try:
                add_study_notes(study, storage_url=storage)
            except Exception as err:  # a note is a nicety: serve anyway
                print(f"warning: could not write the note of study {study.study_name!r}: "
                      f"{err}", file=sys.stderr)
    artifact_dir = (Path(args.artifact_dir) if args.artifact_dir
                    else recorded_artifact_dir(studies) or artifact_dir_for(storage))
    path = (f"/dashboard/studies/{studies[0]._study_id}" if args.study_name is not None
            else "/dashboard")
    print(f"optuna-dashboard for {storage} (artifacts: {artifact_dir})", flush=True)
    print(f"open {_url(args.host, args.port, path)}   (Ctrl-C to stop)", flush=True)
    try:
        run_dashboard(storage, host=args.host, port=args.port, artifact_dir=artifact_dir)
    except OSError as err:  # port in use, address not available, unwritable artifact dir
        raise ValueError(f"cannot serve on {args.host}:{args.port} with artifacts in "
                         f"{artifact_dir}: {err}") from err
    print("dashboard stopped", flush=True)
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study-name", default=None,
                   help="study to open (its storage defaults to sqlite:///studies/"
                        "<study-name>.db, like `lrf-optuna search`)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: from --study-name); without "
                        "--study-name every study in it is listed")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the dashboard to the "
                        "network (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    p.add_argument("--artifact-dir", default=None,
                   help="artifact store of the fine-tuned models (default: the one the "
                        "fine-tuning study recorded, else <db stem>_artifacts beside a "
                        "SQLite database, else studies/artifacts)")
    p.set_defaults(func=_cmd_dashboard)


def add_dashboard_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``dashboard`` subcommand to an ``argparse`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard", help="browse the search and fine-tuning studies in optuna-dashboard",
        description="Serve optuna-dashboard on the study storage, with the fine-tuned "
                    "models' artifact store, after writing an explanatory note on each "
                    "search study. Serves until Ctrl-C.")
    _add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lrf_optuna.dashboard``: the ``dashboard`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="python -m lrf_optuna.dashboard",
                                     description="Serve optuna-dashboard on an lrf_optuna "
                                                 "study storage (until Ctrl-C).")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return int(args.func(args))
    except (FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"lrf-optuna dashboard: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
