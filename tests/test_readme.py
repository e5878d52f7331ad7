"""The README's Python blocks run as printed; its command lines parse.

The blocks run verbatim in a fresh directory; only the data is a small stand-in
(``load_fashion_mnist`` returns 28x28 images whose class decides which quadrant is bright)
and the model cache is a temporary directory, so the whole path -- train, search, pick a
trial, fine-tune, export, reload -- takes a minute or two instead of an hour.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import quadrant_images

import lrf_optuna.data

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _stand_in_fashion_mnist() -> lrf_optuna.data.Dataset:
    x, y = quadrant_images(480, 28)
    return lrf_optuna.data.from_arrays(x[:400], y[:400], x[400:], y[400:], name="stand_in")


@pytest.mark.slow
def test_python_blocks_run_as_printed(tmp_path, monkeypatch, capsys) -> None:
    blocks = _blocks("python")
    assert len(blocks) == 3 and "compress(" in blocks[0] and "create_lrf_study" in blocks[1]
    data = _stand_in_fashion_mnist()
    monkeypatch.setattr(lrf_optuna.data, "load_fashion_mnist", lambda path=None: data)
    monkeypatch.setenv("LRF_OPTUNA_CACHE", str(tmp_path / "model_cache"))
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "studies").exists()  # the storage URL's directory is created
    namespace: dict = {}
    exec(compile(blocks[0], "README.md python block 1", "exec"), namespace)
    assert namespace["small"].count_params() < namespace["model"].count_params()
    assert len(list((tmp_path / "compressed").glob("*.tflite"))) == 1
    exec(compile(blocks[1], "README.md python block 2", "exec"), namespace)
    study, trial, jobs = namespace["study"], namespace["trial"], namespace["jobs"]
    assert (tmp_path / "studies" / "lenet5.db").exists()
    assert trial.user_attrs["lrf_plan"], "the picked trial must be compressed"
    assert namespace["compressed"].count_params() == trial.user_attrs["params"]
    assert namespace["compressed"].count_params() < namespace["model"].count_params()
    assert len(jobs) == 3 and all(j.state.name == "COMPLETE" for j in jobs)
    assert all(not j.user_attrs.get("fair_reference") for j in jobs)
    restored = namespace["restored"]
    assert restored.count_params() == jobs[0].user_attrs["params"]
    assert Path(namespace["tflite_path"]).stat().st_size == jobs[0].user_attrs["tflite_bytes"]
    out = capsys.readouterr().out
    assert f"Fine-tuned trials of study {study.study_name!r} (3 in" in out

    exec(compile(blocks[2], "README.md python block 3", "exec"), namespace)
    raw = namespace["study"]  # the second block's study, made with Optuna's own calls
    assert raw.study_name == "lenet5_raw" and len(raw.trials) >= 300
    assert raw.user_attrs["lrf_optuna:original"]["params"] == namespace["model"].count_params()
    assert any(t.user_attrs.get("strategy") == "original" for t in raw.trials)


def test_command_lines_parse() -> None:
    from lrf_optuna.cli import build_parser

    lines = [ln.split("#")[0].strip() for block in _blocks("bash") for ln in block.splitlines()]
    commands = [shlex.split(ln)[1:] for ln in lines if ln.startswith("lrf-optuna ")]
    assert {c[0] for c in commands} == {"search", "show", "finetune", "compress", "export",
                                       "report", "dashboard"}
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.command == argv[0]
