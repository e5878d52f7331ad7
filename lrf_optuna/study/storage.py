"""Where studies live: storage URLs, default locations, opening storages, and locks.

* :func:`open_storage`: SQLite in write-ahead-log mode (its directory created), PostgreSQL
  with Optuna's table creation serialised between workers, an optional heartbeat.
* Default locations: :func:`default_storage` (``sqlite:///studies/<name>.db``) and
  :func:`artifact_dir_for` (``<db stem>_artifacts`` beside a SQLite file).
* :func:`study_lock`: a cross-process lock tied to a study's storage (Optuna has no locking
  API): a file lock beside a SQLite database (``filelock``, also on Windows), a
  PostgreSQL advisory lock on a server database.

Example:
    >>> sqlite_path("sqlite:///studies/vgg.db?timeout=30").as_posix()
    'studies/vgg.db'
    >>> artifact_dir_for("sqlite:///studies/vgg_small.db").as_posix()
    'studies/vgg_small_artifacts'
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

__all__ = [
    "DEFAULT_STUDIES_DIR",
    "artifact_dir_for",
    "default_storage",
    "heartbeat_storage",
    "open_storage",
    "rdb_of",
    "safe_name",
    "sqlite_path",
    "storage_of",
    "storage_url",
    "study_lock",
]

#: Where SQLite studies go by default (relative to the working directory).
DEFAULT_STUDIES_DIR = "studies"
_CREATE_LOCK_KEY = 0x4C5246  # "LRF": advisory-lock key guarding Optuna's table creation


# -- URLs and default locations ---------------------------------------------------------------

def sqlite_path(storage_url: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URL (``None`` for other URLs / in-memory).

    Example:
        >>> sqlite_path("postgresql://u@h/db") is None
        True
    """
    from urllib.parse import urlsplit

    if not storage_url.startswith("sqlite:///"):
        return None
    path = urlsplit(storage_url[len("sqlite:///"):]).path  # drop ?timeout=... options
    if not path or path == ":memory:":
        return None
    return Path(path)


def default_storage(study_name: str, directory: str | os.PathLike[str] = DEFAULT_STUDIES_DIR
                    ) -> str:
    """``sqlite:///studies/<study_name>.db``: where ``lrf-optuna search`` puts a study.

    Example:
        >>> default_storage("vgg")
        'sqlite:///studies/vgg.db'
    """
    return f"sqlite:///{Path(directory) / f'{study_name}.db'}"


def artifact_dir_for(storage_url: str) -> Path:
    """Default artifact directory for a storage URL.

    ``sqlite:///dir/name.db`` -> ``dir/name_artifacts`` (beside the database, so a study
    folder can be copied as a whole); any other storage (PostgreSQL, MySQL, in-memory
    SQLite) -> ``studies/artifacts`` (relative to the working directory).

    Example:
        >>> artifact_dir_for("postgresql://user@host/lrf").as_posix()
        'studies/artifacts'
    """
    db = sqlite_path(str(storage_url))
    if db is None:
        return Path(DEFAULT_STUDIES_DIR) / "artifacts"
    return db.with_name(f"{db.stem}_artifacts")


def safe_name(name: str) -> str:
    """``name`` as one file name: anything but letters, digits, ``_.-`` becomes ``_``.

    Example:
        >>> safe_name("vgg:finetune/../x")
        'vgg_finetune_.._x'
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# -- storages of live studies -----------------------------------------------------------------

def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object of a study (Optuna has no public accessor; optuna-dashboard
    reads it the same way)."""
    return study._storage


def rdb_of(storage: optuna.storages.BaseStorage | str) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind a storage (Optuna wraps it in a cache), if any."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def storage_url(study: optuna.Study) -> str:
    """The database URL of a study's storage (``""`` for in-memory / journal storages)."""
    rdb = rdb_of(storage_of(study))
    return rdb.url if rdb is not None else ""


# -- opening ----------------------------------------------------------------------------------

def _heartbeat_kwargs(heartbeat_interval: int | None, grace_period: int | None,
                      max_retry: int) -> dict[str, Any]:
    if heartbeat_interval is None:
        return {}
    return dict(heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 3 * heartbeat_interval,
                heartbeat_stale_trial_callback=(
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)))


def open_storage(url: str | optuna.storages.BaseStorage, *,
                 heartbeat_interval: int | None = None) -> optuna.storages.BaseStorage | str:
    """An Optuna storage for ``url``, tuned for many small trials.

    SQLite: the database's directory is created, and the database is switched to
    write-ahead logging with ``synchronous=NORMAL`` (a trial makes ~25 small commits; this
    cut the per-trial time ~5x here, see ``benchmarks/RESULTS.md``). WAL stays safe against
    process crashes; only a power loss can drop the last committed trials. PostgreSQL:
    workers started together on an empty database would race to create Optuna's tables;
    the creation is serialised with an advisory lock. With ``heartbeat_interval``, the
    trials of a killed worker are failed and retried
    (``RetryHeartbeatStaleTrialCallback``). A storage object is returned as it is; any
    other URL is returned unchanged for Optuna to open.
    """
    if not isinstance(url, str):
        return url
    kwargs = _heartbeat_kwargs(heartbeat_interval, None, max_retry=3)
    if url.startswith("sqlite:"):
        from sqlalchemy import event

        db = sqlite_path(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(url, **kwargs)

        @event.listens_for(storage.engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        storage.engine.dispose()  # reconnect with the pragmas
        return storage
    if url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn, _advisory_lock(conn, _CREATE_LOCK_KEY):
                return optuna.storages.RDBStorage(url, **kwargs)
        finally:
            engine.dispose()
    if url.startswith("mysql"):
        return optuna.storages.RDBStorage(url, **kwargs)
    return url


def heartbeat_storage(study: optuna.Study, *, heartbeat_interval: int | None,
                      grace_period: int, max_retry: int
                      ) -> tuple[optuna.storages.BaseStorage, optuna.storages.RDBStorage | None]:
    """A second connection to ``study``'s database with a heartbeat, for a worker.

    Returns ``(storage, rdb)``: ``rdb`` is the heartbeat-enabled RDBStorage, or ``None``
    (and ``storage`` the study's own) for storages without a database URL or when
    ``heartbeat_interval`` is ``None``. SQLite connections wait up to 60 s for a lock.
    """
    base = storage_of(study)
    rdb = rdb_of(base)
    if rdb is None or heartbeat_interval is None:
        return base, None
    kwargs = dict(rdb.engine_kwargs)
    if rdb.url.startswith("sqlite"):
        connect = dict(kwargs.get("connect_args", {}))
        connect.setdefault("timeout", 60)
        kwargs["connect_args"] = connect
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            rdb.url, engine_kwargs=kwargs, skip_compatibility_check=True,
            **_heartbeat_kwargs(heartbeat_interval, grace_period, max_retry))
    return storage, storage


# -- locks ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _advisory_lock(conn: Any, key: int) -> Iterator[None]:
    from sqlalchemy import text

    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
    conn.commit()
    try:
        yield
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()


@contextlib.contextmanager
def study_lock(study: optuna.Study, purpose: str) -> Iterator[None]:
    """Hold an exclusive lock for ``purpose`` on ``study`` across processes.

    Optuna's ``enqueue_trial(skip_if_exists=True)`` checks then inserts, and on SQLite
    popping an enqueued trial is not atomic either; two workers started together would
    both seed the same plans or claim the same job. This serialises such short sections:

    * SQLite: a ``filelock.FileLock`` on ``<database>.<purpose>.lock`` beside the database
      (between processes, and between threads of one process: each call takes its own
      lock object);
    * PostgreSQL: a session-level ``pg_advisory_lock`` keyed by study name and purpose;
    * anything else (in-memory storage: one process): no lock.
    """
    url = storage_url(study)
    db = sqlite_path(url)
    if db is not None:
        from filelock import FileLock

        with FileLock(db.with_name(f"{db.name}.{purpose}.lock"), thread_local=False,
                      is_singleton=False):
            yield
        return
    rdb = rdb_of(storage_of(study))
    if rdb is not None and url.startswith("postgresql"):
        key = zlib.crc32(f"lrf_optuna:{purpose}:{study.study_name}".encode())
        with rdb.engine.connect() as conn, _advisory_lock(conn, key):
            yield
        return
    yield
