"""Cross-process locks tied to a study's storage (Optuna has no locking API).

Optuna's ``enqueue_trial(skip_if_exists=True)`` checks then inserts, and on SQLite popping
an enqueued trial is not atomic either; two workers started together would both seed the
same plans or claim the same job. :func:`study_lock` serialises such short sections:

* SQLite: ``flock`` on ``<database>.<purpose>.lock`` beside the database file (also
  between threads of one process, each opening its own file description);
* PostgreSQL: a session-level ``pg_advisory_lock`` keyed by study name and purpose;
* anything else (in-memory storage: one process): no lock.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import Any

import optuna

from lrf_optuna.search import sqlite_path

__all__ = ["rdb_of", "study_lock"]


def rdb_of(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind a study's storage (Optuna wraps it in a cache), if any."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


@contextlib.contextmanager
def study_lock(study: optuna.Study, purpose: str) -> Iterator[None]:
    """Hold an exclusive lock for ``purpose`` on ``study`` across processes."""
    rdb = rdb_of(study._storage)  # no public accessor; optuna-dashboard reads it the same way
    url = rdb.url if rdb is not None else ""
    db = sqlite_path(url)
    if db is not None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            yield
            return
        with open(db.with_name(f"{db.name}.{purpose}.lock"), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if rdb is not None and url.startswith("postgresql"):
        from sqlalchemy import text

        key = zlib.crc32(f"lrf_optuna:{purpose}:{study.study_name}".encode())
        with rdb.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    yield
