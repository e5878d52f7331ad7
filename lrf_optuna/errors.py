"""The one error type for user errors.

A :class:`UserError` means the input was wrong (a missing study or database, a model or
dataset that cannot be used, an option out of range), not that the code is: its message
says what was received and what was expected. The ``lrf-optuna`` command line prints it as
one line and exits with status 2; Python callers catch it like any ``ValueError``.

:func:`one_line` turns a third-party error (Keras, NumPy, SQLAlchemy, a database driver)
into text fit for such a message; :func:`is_int` is the integer check such messages guard
(a rank, a seed, a count).

Example:
    >>> try:
    ...     raise UserError("no study 'vgg' in sqlite:///studies/vgg.db; it has []")
    ... except ValueError as err:
    ...     print(err)
    no study 'vgg' in sqlite:///studies/vgg.db; it has []
    >>> one_line(ValueError("\\x1b[31mbad shape\\x1b[0m\\n  array([[1, 2], ...])"))
    'bad shape'
"""

from __future__ import annotations

import numbers
import re
from typing import Any

__all__ = ["UserError", "is_int", "one_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UserError(ValueError):
    """Wrong input from the user; the CLI prints the message as one line (exit status 2)."""


def one_line(error: BaseException | str, *, limit: int = 300) -> str:
    """The first non-empty line of an error message, without terminal colour codes, at
    most ``limit`` characters (an error of a wrapped driver: its original's message)."""
    cause = getattr(error, "orig", None)  # SQLAlchemy wraps the driver's error
    text = str(cause if isinstance(cause, BaseException) else error)
    text = _ANSI.sub("", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else (type(error).__name__ if isinstance(error, BaseException)
                                    else "")
    return first if len(first) <= limit else first[:limit - 3] + "..."


def is_int(value: Any) -> bool:
    """An integer, not a bool (``2.0`` and ``True`` are not ranks)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
