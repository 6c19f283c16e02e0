"""Embedded defaults for a machine with no configuration.

Used only by the local and test settings: an embedded PostgreSQL from the
``pgserver`` package under ``var/``, and secrets generated once and kept under
``var/`` with owner-only permissions. Production settings never import this.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path


def local_secret(path: Path, make: Callable[[], str]) -> str:
    """Return the secret stored at ``path``, creating it with ``make()`` first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(make())
    return path.read_text().strip()


def new_field_key() -> str:
    """A fresh ``id:base64key`` entry for ``FIELD_ENCRYPTION_KEYS``."""
    key_id = "k" + secrets.token_hex(4)
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def new_secret_key() -> str:
    return secrets.token_urlsafe(50)


def embedded_database_url(var_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``var/pgdata``.

    The server keeps running after this process exits, so the next command
    reuses it instead of paying the start-up again.
    """
    # pgserver announces every start and exit at INFO, and platformdirs warns
    # about a missing XDG_RUNTIME_DIR on headless machines: both are noise here.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import pgserver  # development-only dependency

    data_dir = var_dir / "pgdata"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    return str(server.get_uri())
