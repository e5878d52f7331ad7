"""``python -m benchmarks.scoring_scale --tiny``: the multi-worker scoring benchmark runs,
kills a worker, and its table says what it checked."""

from __future__ import annotations

import pytest

from benchmarks import scoring_scale


@pytest.mark.slow
def test_tiny_run_kills_a_worker_and_compares_the_caches(tmp_path) -> None:
    out = tmp_path / "RESULTS.md"
    scoring_scale.main(["--tiny", "--compare", "--results-md", str(out)])
    text = out.read_text()
    assert scoring_scale.SECTION in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "2 workers, one killed", "1 worker", "local build (threads), default path"]
    killed = rows[0].split("|")
    assert killed[8].strip() != "-" and killed[8].strip() == killed[9].strip()
    assert all(float(r.split("|")[10]) <= 1e-6 for r in rows[1:])
    assert {r.split("|")[3].strip() for r in rows} == {rows[0].split("|")[3].strip()}
