"""Plain-text and Markdown tables for the terminal and the reports."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "markdown_table"]


def _is_number(cell: str) -> bool:
    """``"1,234"``, ``"0.5"``, ``"12.5 %"``, ``"1.50x"``: a number, maybe with thousands
    separators and a ``%`` or ``x`` suffix."""
    stripped = cell.strip().replace(",", "").rstrip("%x").strip()
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Align columns for a terminal; numbers right-aligned, text left-aligned.

    Example:
        >>> print(format_table(["name", "n"], [["a", 1], ["bb", 22]]))
        name   n
        ----  --
        a      1
        bb    22
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells[1:] if r[i]) and len(cells) > 1
               for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w)
                 for c, w, num in zip(row, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


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
