"""A throwaway PostgreSQL cluster, for the multi-worker tests and the soak benchmark.

The cluster lives in a temporary directory, listens on a unix socket only (on a free port
number), runs with ``fsync=off`` and is stopped (``-m immediate``) and deleted afterwards.
As root, ``initdb`` / ``pg_ctl`` run as the ``postgres`` user through ``runuser``.

Example:
    >>> with throwaway_postgres() as url:  # doctest: +SKIP
    ...     optuna.create_study(storage=url)
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PostgresUnavailableError", "pg_bin", "throwaway_postgres"]


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server binaries, the psycopg driver or a user to run them is missing."""


def pg_bin() -> Path | None:
    """The directory of the PostgreSQL server binaries (``initdb``, ``pg_ctl``), if any."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_postgres(*, max_connections: int = 100) -> Iterator[str]:
    """Start a cluster; yield the SQLAlchemy URL of its ``postgres`` database.

    Raises:
        PostgresUnavailableError: no server binaries, no ``psycopg`` (v3) driver, or running as
            root without a ``postgres`` user.
    """
    pg = pg_bin()
    if pg is None:
        raise PostgresUnavailableError("PostgreSQL server binaries (initdb, pg_ctl) are not "
                                  "installed")
    if importlib.util.find_spec("psycopg") is None:
        raise PostgresUnavailableError("the psycopg (v3) driver is not installed")
    root = Path(tempfile.mkdtemp(prefix="lrf_pg_"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            raise PostgresUnavailableError("running as root and there is no 'postgres' user to "
                                      "run the server") from None
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)

    try:
        run(str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {root} -c listen_addresses='' -c fsync=off "
                  f"-c max_connections={max_connections}", "start")
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*prefix, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
