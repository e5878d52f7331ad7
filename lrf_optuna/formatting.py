"""Numbers and tables as text: the formatting the report, the notes and the CLI share.

A leaf (it imports nothing of lrf_optuna), so that every layer may format with it:

* :func:`as_float`: a recorded value as a number, or ``None`` (missing, not a number, NaN);
* :func:`fmt` (a number with a format spec, ``"n/a"`` when it is none) and :func:`kib`
  (bytes as KiB);
* :func:`markdown_table`, :func:`format_table` (aligned for a terminal) and
  :func:`html_table`.

Example:
    >>> print(markdown_table(["a", "b"], [[1, "x|y"]]))
    | a | b |
    | --- | --- |
    | 1 | x\\|y |
    >>> fmt("1234.5", ","), fmt(None, ".4f"), kib(2560)
    ('1,234', 'n/a', '2.5')
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["as_float", "fmt", "format_table", "html_table", "kib", "markdown_table"]


def as_float(value: Any) -> float | None:
    """``float(value)``, or ``None`` for missing, non-numeric or NaN values.

    Example:
        >>> as_float("0.5"), as_float(None), as_float(float("nan"))
        (0.5, None, None)
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec`` (``","``: a rounded integer with separators);
    ``"n/a"`` when it is not a number."""
    number = as_float(value)
    if number is None:
        return "n/a"
    if spec == ",":
        return f"{round(number):,}"
    return format(number, spec)


def kib(n: float | None) -> str:
    """Bytes as KiB with one decimal.

    Example:
        >>> kib(2560)
        '2.5'
    """
    return "n/a" if n is None else f"{n / 1024:,.1f}"


def _is_number(cell: str) -> bool:
    """``"1,234"``, ``"0.5"``, ``"12.5 %"``, ``"1.50x"``: a number, maybe with thousands
    separators and a ``%`` or ``x`` suffix."""
    stripped = cell.strip().replace(",", "").rstrip("%x").strip()
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def format_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """Align columns for a terminal (``tabulate``'s ``simple`` format); a column whose
    cells are all numbers (``"1,234"``, ``"2.50x"``, ``"12.5%"``) is right-aligned.

    Example:
        >>> print(format_table(["name", "n"], [["a", 1], ["bb", 22]]))
        name      n
        ------  ---
        a         1
        bb       22
    """
    from tabulate import tabulate

    cells = [[str(c) for c in row] for row in rows]
    align = ["right" if cells and all(_is_number(r[i]) for r in cells if r[i])
             and any(r[i] for r in cells) else "left" for i in range(len(header))]
    return str(tabulate(cells, headers=[str(h) for h in header], tablefmt="simple",
                        colalign=align, disable_numparse=True))


def _markdown_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]], *,
                   align: bool = False) -> str:
    """A GitHub-flavoured Markdown table; ``|`` in a cell is escaped, a newline becomes a
    space.

    With ``align``, columns are padded to a common width and a column whose cells are all
    numbers (empty or ``-`` cells count as missing) is right-aligned.

    Raises:
        ValueError: if a row has a different number of cells than ``header``.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, "x"]]))
        | a | b |
        | --- | --- |
        | 1 | x |
        >>> print(markdown_table(["method", "time (s)"], [["svd", 1.5], ["qr", "-"]],
        ...                      align=True))
        | method | time (s) |
        |--------|---------:|
        | svd    |      1.5 |
        | qr     |        - |
    """
    head = [_markdown_cell(h) for h in header]
    body = [[_markdown_cell(c) for c in row] for row in rows]
    for i, row in enumerate(body):
        if len(row) != len(head):
            raise ValueError(f"row {i} has {len(row)} cells, but there are {len(head)} headers")
    if align:
        widths = [max([len(h), 3, *(len(r[j]) for r in body)]) for j, h in enumerate(head)]
        right = [bool(body) and all(_is_number(r[j]) or r[j].strip() in ("", "-") for r in body)
                 and any(_is_number(r[j]) for r in body) for j in range(len(head))]
        rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2)
                              for w, r in zip(widths, right)) + "|"
    else:
        widths, right = [0] * len(head), [False] * len(head)
        rule = "| " + " | ".join("---" for _ in head) + " |"

    def line(cells: Sequence[str], to_right: Sequence[bool]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w)
                                 for c, w, r in zip(cells, widths, to_right)) + " |"

    return "\n".join([line(head, [False] * len(head)), rule, *(line(r, right) for r in body)])


def html_table(header: Sequence[object], rows: Sequence[Sequence[object]], css: str = "") -> str:
    """An HTML ``<table>`` (every cell escaped)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return (f'<table class="{css}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")
