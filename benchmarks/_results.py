"""Shared helpers of the benchmark scripts: ``RESULTS.md`` sections, tables, timing.

* :func:`write_section` replaces (or appends) one ``## heading`` section of
  ``benchmarks/RESULTS.md`` and keeps every other section as it is.
* :func:`markdown_table` renders a GitHub-flavoured Markdown table.
* :func:`median_time` is the median wall-clock time of a callable over repeats.
* :func:`add_output_arguments` / :func:`resolve_outputs`: the ``--cache-dir``, ``--out``,
  ``--results-md`` and ``--no-write`` options of a benchmark with a tiny (CI) mode, which
  never writes the repository's results.

Example:
    >>> print(markdown_table(["method", "time (s)"], [["svd", 1.5], ["qr", 0.25]]))
    | method | time (s) |
    |--------|---------:|
    | svd    |      1.5 |
    | qr     |     0.25 |
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lrf_optuna import formatting

__all__ = ["RESULTS_PATH", "add_output_arguments", "markdown_table", "median_time", "pct", "pp",
           "replace_section", "resolve_outputs", "write_section"]

#: The results document all benchmarks write to.
RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
#: Title a new results document starts with.
DOCUMENT_TITLE = "# Benchmark results"

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def _heading_text(heading: str) -> str:
    """``"Decomposition speed"`` from either ``"Decomposition speed"`` or ``"## ..."``."""
    text = heading.strip()
    if text.startswith("## "):
        text = text[3:].strip()
    if not text or "\n" in text:
        raise ValueError(f"a section heading must be one non-empty line, got {heading!r}")
    return text


def _section_starts(lines: Sequence[str]) -> list[int]:
    """Indices of the lines starting a ``## `` section, outside fenced code blocks."""
    starts, fenced = [], False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            starts.append(i)
    return starts


def replace_section(document: str, heading: str, body: str) -> str:
    """``document`` with its ``## heading`` section replaced by ``body`` (or appended).

    A section runs from its heading line up to the next ``## `` heading (``###`` and
    deeper headings, and ``## `` lines inside fenced code blocks, belong to it) or the end.
    Other sections are kept byte for byte; an empty document gets a title first.

    Example:
        >>> replace_section("# R\\n\\n## A\\nold\\n\\n## B\\nb\\n", "A", "new")
        '# R\\n\\n## A\\n\\nnew\\n\\n## B\\nb\\n'
    """
    title = _heading_text(heading)
    block = f"## {title}\n\n{body.strip()}\n"
    lines = document.splitlines(keepends=True)
    starts = _section_starts(lines)
    for n, start in enumerate(starts):
        if lines[start].rstrip() == f"## {title}":
            end = starts[n + 1] if n + 1 < len(starts) else len(lines)
            before, after = "".join(lines[:start]), "".join(lines[end:])
            if after:
                return before + block + "\n" + after
            return before + block
    if not document.strip():
        return f"{DOCUMENT_TITLE}\n\n{block}"
    return document.rstrip("\n") + "\n\n" + block


@contextmanager
def _locked(path: Path) -> Iterator[IO[str]]:
    """The file opened for update under an exclusive ``flock`` (where available), so that
    two benchmarks finishing together do not lose each other's section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_section(heading: str, body: str, path: str | os.PathLike[str] = RESULTS_PATH) -> Path:
    """Replace the ``## heading`` section of the results file by ``body``, or append it.

    Args:
        heading: The section title, with or without the leading ``"## "``.
        body: The section's Markdown content (surrounding blank lines are stripped).
        path: The document; created (with a ``# Benchmark results`` title) if missing.

    Returns:
        The path written.
    """
    path = Path(path)
    with _locked(path) as handle:
        handle.seek(0)
        old = handle.read()
        new = replace_section(old, heading, body)
        if new != old:
            handle.seek(0)
            handle.truncate()
            handle.write(new)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """:func:`lrf_optuna.formatting.markdown_table` with ``align=True``: columns padded,
    all-number columns (``-`` counts as missing) right-aligned.

    Raises:
        ValueError: if a row has a different number of cells than ``headers``.
    """
    return formatting.markdown_table(headers, rows, align=True)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall-clock seconds (``time.perf_counter``) of ``repeats`` calls of ``fn``."""
    if isinstance(repeats, bool) or int(repeats) < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    durations = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return float(statistics.median(durations))


def add_output_arguments(parser: argparse.ArgumentParser, *, cache_name: str,
                         writes: str) -> None:
    """``--cache-dir``, ``--out``, ``--results-md`` and ``--no-write`` (defaults filled in by
    :func:`resolve_outputs`); ``writes`` says what goes to ``--out``."""
    parser.add_argument("--cache-dir", default=None,
                        help=f"caches (default: benchmarks/.cache/{cache_name}; tiny: in --out)")
    parser.add_argument("--out", default=None,
                        help=f"directory of {writes} (default: benchmarks/; tiny: a new "
                             "temporary directory)")
    parser.add_argument("--results-md", default=None,
                        help="the Markdown document (default: benchmarks/RESULTS.md; tiny: "
                             "<out>/RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")


def resolve_outputs(args: argparse.Namespace, *, tiny: bool, cache_name: str) -> None:
    """Fill in the defaults of :func:`add_output_arguments`: ``benchmarks/`` and
    ``benchmarks/.cache/<cache_name>``; in tiny mode a new temporary directory holding
    everything, never the repository's results."""
    here = RESULTS_PATH.parent
    if tiny:
        args.out = args.out or tempfile.mkdtemp(prefix=f"lrf_{cache_name}_tiny_")
        args.cache_dir = args.cache_dir or str(Path(args.out) / "cache")
        args.results_md = args.results_md or str(Path(args.out) / "RESULTS.md")
    args.out = args.out or str(here)
    args.cache_dir = args.cache_dir or str(here / ".cache" / cache_name)
    args.results_md = args.results_md or str(RESULTS_PATH)


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal, ``-`` when unknown."""
    return "-" if x is None else f"{100 * x:.1f}%"


def pp(x: float | None) -> str:
    """Percentage points with a sign, ``-`` when unknown."""
    return "-" if x is None else f"{x:+.2f}"
