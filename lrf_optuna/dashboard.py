"""optuna-dashboard for lrf_optuna studies: serving it.

The search study and its fine-tuning study (``"<name>:finetune"``, same storage) are served
by `optuna-dashboard <https://optuna-dashboard.readthedocs.io>`_ together with the artifact
store holding the fine-tuned ``.keras`` / ``.tflite`` files, so the models can be
downloaded from the trial pages (:func:`run_dashboard`, after :func:`check_can_serve`;
CLI: ``lrf-optuna dashboard``, which first writes the search study's note). The Markdown
notes the dashboard shows are :mod:`lrf_optuna.study.notes`'s.

Artifact store location: ``--artifact-dir``, else
:func:`~lrf_optuna.study.storage.artifact_dir_for`: ``<db stem>_artifacts/`` beside the
SQLite file for ``sqlite:///path/name.db``, else ``studies/artifacts``. Never a directory
a study names (the ``artifact_dir`` a fine-tuning study records is for information only):
a study file is shared and not trusted with paths.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

import optuna

from lrf_optuna.errors import UserError
from lrf_optuna.study.storage import artifact_dir_for

__all__ = ["check_can_serve", "run_dashboard"]


def check_can_serve(host: str, port: int) -> None:
    """Raise unless a server can listen on ``host:port`` now (checked before saying where
    the dashboard is).

    Raises:
        UserError: the port is in use, or the address is not one of this machine's.
    """
    if not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, but got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port}: unknown address ({err})") from err
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        try:
            sock.bind(address)
        except OSError as err:
            what = "the port is in use" if err.errno == errno.EADDRINUSE else err.strerror
            raise UserError(f"cannot serve on {host}:{port}: {what}; pass another --port "
                            "(or stop the other server)") from err


def run_dashboard(storage: str | optuna.storages.BaseStorage, *, host: str = "127.0.0.1",
                  port: int = 8080, artifact_dir: str | os.PathLike[str] | None = None) -> None:
    """Serve optuna-dashboard on ``storage`` with the fine-tuning artifact store; blocks.

    ``storage`` is a URL or an Optuna storage object; ``artifact_dir`` defaults to
    :func:`artifact_dir_for` of the URL (``studies/artifacts`` for a storage object).
    Returns when the server stops (Ctrl-C).
    """
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    if artifact_dir is None:
        artifact_dir = artifact_dir_for(storage if isinstance(storage, str) else "")
    directory = Path(artifact_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):  # bottle normally swallows it already
        run_server(storage, host=host, port=port,
                   artifact_store=FileSystemArtifactStore(directory))
