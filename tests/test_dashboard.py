"""The dashboard: artifact directory rule, study look-up, the command, study notes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note, save_note
from report_tests.test_report import copy_study, fake_finetune_study

from lrf_optuna.cli import build_parser, main
from lrf_optuna.errors import UserError
from lrf_optuna.study import artifact_dir_for, load_study, resolve_storage
from lrf_optuna.study.notes import add_study_notes


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///studies/vgg_small.db", "studies/vgg_small_artifacts"),
    ("sqlite:////abs/dir/run.1.db", "/abs/dir/run.1_artifacts"),
    ("sqlite:///x.db?timeout=30", "x_artifacts"),
    ("sqlite:///:memory:", "studies/artifacts"),
    ("sqlite://", "studies/artifacts"),
    ("postgresql://user:pw@db:5432/lrf", "studies/artifacts"),
    ("mysql+pymysql://u@h/db", "studies/artifacts"),
])
def test_artifact_dir_for(url: str, expected: str) -> None:
    assert artifact_dir_for(url) == Path(expected)


def test_resolve_storage_and_lookup_errors(tiny_study, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"no study database at studies/vgg\.db"):
        resolve_storage("vgg", None)
    with pytest.raises(UserError, match="pass --study-name or --storage"):
        resolve_storage(None, None)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "vgg.db").touch()
    assert resolve_storage("vgg", None) == "sqlite:///studies/vgg.db"
    assert resolve_storage("x", "postgresql://h/db") == "postgresql://h/db"
    assert load_study(None, tiny_study["storage"]).study_name == "tiny"  # the only one
    with pytest.raises(UserError, match=r"no study 'other' .* it has \['tiny'\]"):
        load_study("other", tiny_study["storage"])


def test_parser_defaults_and_help(capsys) -> None:
    args = build_parser().parse_args(["dashboard", "--study-name", "vgg"])
    assert (args.study_name, args.storage, args.host, args.port, args.artifact_dir) == (
        "vgg", None, "127.0.0.1", 8080, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dashboard", "--help"])
    out = capsys.readouterr().out
    for flag in ("--study-name", "--storage", "--host", "--port", "--artifact-dir", "Ctrl-C"):
        assert flag in out
    res = subprocess.run([sys.executable, "-m", "lrf_optuna.cli", "dashboard", "--help"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert "--artifact-dir" in res.stdout


def test_add_study_notes(tiny_study, tmp_path) -> None:
    storage = copy_study(tiny_study, tmp_path)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert add_study_notes(study, storage_url=storage) is True
    note = get_note(study)
    for text in ("# LRF compression search `tiny`", "`params`", "`flops`", "`proxy`",
                 "**maximise**", "| parameters | 10,720 |", "| FLOPs | 90,880 |",
                 "lrf-optuna search", "--study-name tiny", f"--storage {storage}",
                 "compression_ratio", "lrf-optuna note"):
        assert text in note, text
    assert "test accuracy" not in note  # no fine-tuning study yet
    assert add_study_notes(study, storage_url=storage) is False  # unchanged: not rewritten
    fake_finetune_study(storage)
    assert add_study_notes(study, storage_url=storage) is True  # ours: updated
    note = get_note(study)
    assert "| test accuracy | 0.9125 |" in note and "tiny:finetune" in note
    assert "3 finished fine-tuning job(s)" in note and "Fine-tuned search trials: #" in note
    assert "| fair reference val / test accuracy (CE, 3 epochs) | 0.9100 / 0.9150 |" in note
    # a note edited in the dashboard is never overwritten (unless forced)
    save_note(study, note.replace("Per-layer", "My edit: per-layer"))
    assert add_study_notes(study, storage_url=storage) is False
    assert "My edit" in get_note(study)
    save_note(study, "my own notes")
    assert add_study_notes(study) is False and get_note(study) == "my own notes"
    assert add_study_notes(study, force=True) is True
    assert get_note(study).startswith("# LRF compression search")


def test_dashboard_command_serves_with_artifacts(tiny_study, tmp_path, monkeypatch,
                                                 capsys) -> None:
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    storage = copy_study(tiny_study, tmp_path)
    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server",
                        lambda *a, **kw: calls.append((a, kw)))
    assert main(["dashboard", "--storage", storage, "--study-name", "tiny",
                 "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "open http://127.0.0.1:8123/dashboard/studies/1" in out
    (served, ), kw = calls[0]
    assert served == storage and kw["host"] == "127.0.0.1" and kw["port"] == 8123
    assert isinstance(kw["artifact_store"], FileSystemArtifactStore)
    assert (tmp_path / "study_artifacts").is_dir()  # the default: beside the database
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert get_note(study).startswith("# LRF compression search `tiny`")
    # the artifact directory a fine-tuning study records is never served: a study file is
    # not trusted with paths (it could name any directory); only the default or
    # --artifact-dir
    fake_finetune_study(storage, artifact_dir=str(tmp_path / "recorded"))
    assert main(["dashboard", "--storage", storage]) == 0  # every study
    out = capsys.readouterr().out
    assert f"(artifacts: {tmp_path / 'study_artifacts'})" in out
    assert "http://127.0.0.1:8080/dashboard   (Ctrl-C" in out
    assert not (tmp_path / "recorded").exists()
    assert main(["dashboard", "--storage", storage, "--artifact-dir",
                 str(tmp_path / "arts")]) == 0
    assert f"(artifacts: {tmp_path / 'arts'})" in capsys.readouterr().out
    assert (tmp_path / "arts").is_dir()


def test_dashboard_command_errors(tiny_study, tmp_path, capsys) -> None:
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert main(["dashboard", "--storage", missing]) == 2
    assert "no study database at" in capsys.readouterr().err
    assert main(["dashboard", "--storage", tiny_study["storage"], "--study-name", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_dashboard_port_in_use(tiny_study, tmp_path, capsys) -> None:
    import socket

    storage = copy_study(tiny_study, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", "--storage", storage, "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot serve on 127.0.0.1:{port}: the port is in use" in err
    assert "open http" not in out  # said before anything is promised
