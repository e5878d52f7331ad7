"""The resumable build both caches share (lrf_optuna.scoring.build)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from lrf_optuna.scoring._store import read_results, write_json
from lrf_optuna.scoring.build import ProgressBar, ResumableBuild, Unit, run_build


class _Counting(ResumableBuild[dict]):
    """Units ``0..n-1``; unit ``fail_at`` raises; records what it prepared and ran."""

    def __init__(self, directory: Path, n: int, fail_at: int | None = None) -> None:
        self.directory, self.n, self.fail_at = directory, n, fail_at
        self.prepared: list[list[str]] = []
        self.ran: list[str] = []
        self.steps = 0

    def units(self) -> list[Unit]:
        return [Unit("layer", f"l{i}", self.directory / f"{i:03d}.json", steps=i + 1)
                for i in range(self.n)]

    def prepare(self, todo: Sequence[Unit]) -> None:
        self.prepared.append([u.name for u in todo])

    def run(self, unit: Unit, bar: ProgressBar) -> dict:
        if unit.name == f"l{self.fail_at}":
            raise KeyboardInterrupt
        self.ran.append(unit.name)
        bar.update(unit.steps)
        self.steps += unit.steps
        return {"name": unit.name}

    def write(self, unit: Unit, result: dict) -> None:
        write_json(unit.file, result)


def test_a_killed_build_keeps_its_finished_units_and_resumes_with_the_rest(tmp_path) -> None:
    first = _Counting(tmp_path, 5, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_build(first, workers=1, progress=False)
    assert first.ran == ["l0", "l1", "l2"]
    assert [d["name"] for d in read_results(tmp_path)] == ["l0", "l1", "l2"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind

    again = _Counting(tmp_path, 5)
    assert run_build(again, workers=1, progress=False) == 2
    assert again.prepared == [["l3", "l4"]] and sorted(again.ran) == ["l3", "l4"]
    assert again.steps == 4 + 5  # the progress of the units it ran, not of the done ones

    done = _Counting(tmp_path, 5)
    assert run_build(done, progress=False) == 0
    assert done.prepared == [] and done.ran == []


def test_units_run_on_threads_each_once(tmp_path) -> None:
    build = _Counting(tmp_path, 12)
    assert run_build(build, workers=3, progress=False) == 12
    assert sorted(build.ran) == sorted(f"l{i}" for i in range(12))
    assert sorted(json.loads(f.read_text())["name"] for f in tmp_path.glob("*.json")) == \
        sorted(build.ran)
