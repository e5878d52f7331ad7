"""The file store of the caches: safe file names, atomic writes, manifests, factor files.

Every file a cache writes goes through :func:`atomic_write` (or :func:`write_factors`), so a
reader -- another thread, another process, a build resumed after a kill -- sees a whole file
or none; a unit of work is done exactly when its result file exists
(:mod:`lrf_optuna.scoring.build`). Safe formats only: JSON and ``.npz`` without pickles.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "factor_file", "read_factors", "read_manifest", "read_results",
           "safe_file_name", "write_factors", "write_json"]


def safe_file_name(path: str) -> str:
    """A layer path as a file-name part.

    Example:
        >>> safe_file_name("outer/inner conv")
        'outer_inner_conv'
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, value: Any, *, indent: int | None = None) -> None:
    """``value`` as JSON at ``path``, atomically."""
    atomic_write(path, json.dumps(value, indent=indent).encode())


def read_results(folder: Path) -> Iterator[Any]:
    """The JSON results stored in ``folder`` (one file per finished unit), by file name."""
    for f in sorted(folder.glob("*.json")):
        yield json.loads(f.read_text())


def read_manifest(directory: Path, fmt: int, what: str) -> dict[str, Any]:
    """The ``manifest.json`` of a cache directory, checked to be of format ``fmt``.

    Raises:
        FileNotFoundError: no manifest (not a cache directory).
        ValueError: another format (the cache must be rebuilt).
    """
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"no {what} at {directory} (no manifest.json)")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    if manifest.get("format") != fmt:
        raise ValueError(f"{what} {directory} has format {manifest.get('format')!r}, this "
                         f"lrf_optuna reads format {fmt}; rebuild it")
    return manifest


def factor_file(directory: Path, path: str, method: str, *, kept: int | None = None) -> Path:
    """Where a cache directory keeps the factors of (layer ``path``, ``method``), of the
    layer pruned to ``kept`` filters when given."""
    pruned = "" if kept is None else f"--k{kept}"
    return directory / "factors" / f"{safe_file_name(path)}{pruned}--{method}.npz"


def write_factors(file: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Store one (layer, method)'s factors, ``{"r<rank>_<i>": array}``, atomically."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.stem}.tmp.npz")
    np.savez(tmp, allow_pickle=False, **arrays)
    os.replace(tmp, file)


def read_factors(file: Path, rank: int) -> list[np.ndarray] | None:
    """The factors of ``rank`` in a file written by :func:`write_factors` (``None``: none)."""
    if not file.exists():
        return None
    with np.load(file, allow_pickle=False) as z:
        keys = sorted((k for k in z.files if k.startswith(f"r{rank}_")),
                      key=lambda k: int(k.split("_")[1]))
        return [z[k] for k in keys] or None
