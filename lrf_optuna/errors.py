"""The one error type for user errors.

A :class:`UserError` means the input was wrong (a missing study or database, a model or
dataset that cannot be used, an option out of range), not that the code is: its message
says what was received and what was expected. The ``lrf-optuna`` command line prints it as
one line and exits with status 2; Python callers catch it like any ``ValueError``.

Example:
    >>> try:
    ...     raise UserError("no study 'vgg' in sqlite:///studies/vgg.db; it has []")
    ... except ValueError as err:
    ...     print(err)
    no study 'vgg' in sqlite:///studies/vgg.db; it has []
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Wrong input from the user; the CLI prints the message as one line (exit status 2)."""
