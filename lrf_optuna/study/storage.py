"""Where studies live: storage URLs, default locations, opening storages, and locks.

* :func:`open_storage`: SQLite in write-ahead-log mode (its directory created), PostgreSQL
  with Optuna's table creation serialised between workers, an optional heartbeat.
* Default locations: :func:`default_storage` (``sqlite:///studies/<name>.db``) and
  :func:`artifact_dir_for` (``<db stem>_artifacts`` beside a SQLite file).
* :func:`study_lock`: a cross-process lock tied to a study's storage (Optuna has no locking
  API): a file lock beside a SQLite database (``filelock``, also on Windows), a
  PostgreSQL advisory lock on a server database.
* :func:`check_storage`: everything that can be wrong with a storage URL, found before
  anything expensive runs and without creating or changing anything: a malformed URL, an
  unknown database, a missing driver; a file that is not SQLite, or a SQLite database of
  another application; a database (or directory) that cannot be written; an unreachable
  or read-only server. Each is one :class:`~lrf_optuna.errors.UserError` line.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from lrf_optuna.errors import UserError, one_line

__all__ = [
    "DEFAULT_STUDIES_DIR",
    "StorageCheck",
    "artifact_dir_for",
    "check_storage",
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
    """``sqlite:///studies/<study_name>.db``: where ``lrf-optuna search`` puts a study (the
    name made a safe file name, :func:`safe_name`).

    Example:
        >>> default_storage("vgg")
        'sqlite:///studies/vgg.db'
        >>> default_storage("../../etc/x")
        'sqlite:///studies/___.._etc_x.db'
    """
    return f"sqlite:///{Path(directory) / f'{safe_name(study_name)}.db'}"


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


#: Longest name :func:`safe_name` returns (file systems allow 255 bytes; room for suffixes).
_MAX_NAME = 120


def safe_name(name: str) -> str:
    """``name`` (a study name: any text) as one plain file name that stays in its directory.

    Anything but letters, digits and ``_.-`` becomes ``_``, so there is no path separator;
    leading dots become ``_`` (no ``.``, ``..`` or hidden file); an empty name becomes
    ``_``; a long name is cut and ends in a hash of the whole name.

    Example:
        >>> safe_name("vgg:finetune/../x")
        'vgg_finetune_.._x'
        >>> safe_name(".."), safe_name("/etc/passwd"), safe_name("")
        ('__', '_etc_passwd', '_')
    """
    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    out = re.sub(r"^\.+", lambda m: "_" * len(m.group()), out) or "_"
    if len(out) > _MAX_NAME:
        out = f"{out[:_MAX_NAME - 9]}_{zlib.crc32(name.encode()):08x}"
    return out


# -- checking a storage before using it ------------------------------------------------------

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Tables every Optuna RDB storage has (a SQLite file without them is another application's).
_OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
_URL_HELP = ("expected sqlite:///path/to/study.db (a file) or "
             "postgresql+psycopg://user@host/database (a server)")
#: Seconds to wait for a database server to answer, and for a SQLite write lock.
CONNECT_TIMEOUT = 10
SQLITE_LOCK_TIMEOUT = 60
#: A write every database must allow us (rolled back): with Optuna's tables, without.
_WRITE_PROBE = {True: "UPDATE version_info SET schema_version = schema_version",
                False: "CREATE TABLE lrf_optuna_write_probe (x INTEGER)"}


@dataclass(frozen=True)
class StorageCheck:
    """What :func:`check_storage` found.

    Attributes:
        url: The URL checked.
        kind: ``"sqlite"``, ``"postgresql"``, ``"mysql"`` or ``"memory"``.
        has_studies: The database exists and holds Optuna's tables (so it may hold the
            study to resume); ``False`` for a database :func:`open_storage` will create.
    """

    url: str
    kind: str
    has_studies: bool


def shown_url(url: str) -> str:
    """``url`` without its password, for messages.

    Example:
        >>> shown_url("postgresql+psycopg://me:secret@db.example/lrf")
        'postgresql+psycopg://me:***@db.example/lrf'
    """
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


def _url_kind(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if "://" not in url:
        hint = f"; did you mean sqlite:///{url}?" if re.search(r"\.(db|sqlite3?)$", url) else ""
        raise UserError(f"storage {url!r} is not a database URL ({_URL_HELP}){hint}")
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise UserError(f"storage {url!r} is not a valid database URL: {one_line(err)} "
                        f"({_URL_HELP})") from err
    kind = parsed.get_backend_name()
    if kind not in ("sqlite", "postgresql", "mysql"):
        raise UserError(f"storage {shown_url(url)!r}: unsupported database {kind!r} "
                        f"({_URL_HELP})")
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as err:
        raise UserError(f"storage {shown_url(url)!r}: the database driver "
                        f"{parsed.drivername!r} is not installed ({one_line(err)}); install "
                        "it (postgresql+psycopg:// needs pip install 'psycopg[binary]')"
                        ) from err
    if kind == "sqlite":
        if not url.startswith("sqlite:///"):
            raise UserError(f"storage {url!r}: a SQLite URL has three slashes before the "
                            "path (sqlite:///relative/study.db, sqlite:////abs/study.db)")
        if sqlite_path(url) is None:
            return "memory"
    return kind


def _sqlite_uri(db: Path, mode: str) -> str:
    from urllib.parse import quote

    return f"file:{quote(str(db.resolve()))}?mode={mode}"


def _sqlite_error(db: Path, doing: str, err: Exception) -> UserError:
    cause = one_line(err)
    if "readonly" in cause or "unable to open" in cause:
        hint = (f"check that the file and its directory {db.parent} are writable (SQLite "
                "writes its journal, -wal and -shm files, beside the database), or pass "
                "another --storage")
    else:
        hint = "is it a damaged SQLite file? pass another --storage"
    return UserError(f"cannot {doing} the study database {db}: {cause}; {hint}")


def _sqlite_tables(db: Path, *, probe_write: bool) -> set[str]:
    """Table names of an existing SQLite file; with ``probe_write``, also write to it and
    roll back (fails when the file or, in WAL mode, its directory is not writable).
    Nothing is stored."""
    import sqlite3

    try:
        con = sqlite3.connect(_sqlite_uri(db, "rw" if probe_write else "ro"), uri=True,
                              timeout=SQLITE_LOCK_TIMEOUT, isolation_level=None)
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
            tables = {str(r[0]) for r in rows}
            if probe_write:
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.execute(_WRITE_PROBE[tables >= _OPTUNA_TABLES])
                finally:
                    con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as err:
        raise _sqlite_error(db, "write to" if probe_write else "read", err) from err
    return tables


def _check_writable(db: Path) -> None:
    """The file and its directory (where SQLite writes its journal) must be writable."""
    for path, what in ((db, "the file"), (db.parent, "its directory")):
        if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise UserError(f"cannot write to the study database {db}: {what} {path} is "
                            "read-only (SQLite writes its journal, -wal and -shm files, beside "
                            "the database); check the permissions or pass another --storage")


def _check_sqlite(db: Path, write: bool) -> bool:
    if db.is_dir():
        raise UserError(f"the study database {db} is a directory; pass a file name "
                        "(sqlite:///path/to/study.db)")
    if db.exists():
        try:
            with db.open("rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as err:
            raise UserError(f"cannot read the study database {db}: {err.strerror}") from err
        if head and head != _SQLITE_MAGIC:
            raise UserError(f"{db} is not a SQLite database (it starts with {head[:8]!r}); "
                            "pass the URL of an Optuna study database, or a new file name")
        if write:
            _check_writable(db)
        tables = _sqlite_tables(db, probe_write=write)  # an empty file: a new database
        if tables and not tables >= _OPTUNA_TABLES:
            raise UserError(f"{db} is a SQLite database of another application (tables "
                            f"{sorted(tables)[:6]}), not an Optuna study database; pass "
                            "another --storage")
        return bool(tables)
    # a new database: its nearest existing ancestor directory must let us create it
    ancestor = db.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot create the study database {db}: {ancestor} is not a "
                        "directory")
    if write and not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the study database {db}: the directory {ancestor} "
                        "is not writable; pass a --storage in a writable directory")
    return False


def _check_server(url: str, kind: str, write: bool) -> bool:
    import sqlalchemy

    connect_args = {"connect_timeout": CONNECT_TIMEOUT} if kind == "postgresql" else {}
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=connect_args)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            has_studies = tables >= _OPTUNA_TABLES
            if write:
                try:  # a write the database must allow, in the transaction inspect began
                    conn.execute(sqlalchemy.text(_WRITE_PROBE[has_studies]))
                finally:
                    conn.rollback()
    except sqlalchemy.exc.SQLAlchemyError as err:
        what = "write to" if "permission denied" in str(err).lower() else "use"
        raise UserError(f"cannot {what} the storage {shown_url(url)}: {one_line(err)}") from err
    finally:
        engine.dispose()
    return has_studies


def check_storage(url: str, *, write: bool = True) -> StorageCheck:
    """Check that ``url`` can hold studies, creating and changing nothing.

    Cheap (no TensorFlow, one connection): call it before anything expensive. SQLite: the
    file, when it exists, is a SQLite database with Optuna's tables (or empty), and with
    ``write`` it can be locked for writing; a new file's nearest existing directory is
    writable (:func:`open_storage` creates the missing ones). A server: it answers within
    :data:`CONNECT_TIMEOUT` seconds and, with ``write``, lets us write (a statement rolled
    back).

    Raises:
        UserError: what is wrong, in one line (see the module docstring).
    """
    kind = _url_kind(url)
    if kind == "memory":
        return StorageCheck(url, kind, False)
    if kind == "sqlite":
        db = sqlite_path(url)
        assert db is not None
        return StorageCheck(url, kind, _check_sqlite(db, write))
    return StorageCheck(url, kind, _check_server(url, kind, write))


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

    Raises:
        UserError: the database cannot be created or opened (call :func:`check_storage`
            first for the precise reason).
    """
    if not isinstance(url, str):
        return url
    import sqlalchemy

    try:
        return _open_storage(url, heartbeat_interval)
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as err:
        # e.g. a schema of another Optuna version, or a database that went away
        raise UserError(f"cannot open the storage {shown_url(url)}: {one_line(err)}") from err
    except OSError as err:
        raise UserError(f"cannot create the storage {shown_url(url)}: {err}") from err


def _open_storage(url: str, heartbeat_interval: int | None
                  ) -> optuna.storages.BaseStorage | str:
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
