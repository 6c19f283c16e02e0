"""Helpers for asserting which database rule rejected a write, and for the test databases themselves."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction


def violated(write: Callable[[], Any]) -> Any:
    """Run ``write`` in a savepoint and return the psycopg diagnostics of the error it raised.

    Deferred rules are made immediate first, so constraint triggers fire at
    the statement instead of at a commit that tests never reach.
    """
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        write()
    return caught.value.__cause__.diag  # type: ignore[union-attr]


def rule_name(write: Callable[[], Any]) -> str:
    diag = violated(write)
    return str(diag.constraint_name)


def raw(sql: str, params: list[Any] | tuple[Any, ...] = ()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


STALE_NAME = re.compile(r"^test_caretrail_(\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def maintenance_connection(database: Any) -> Any:
    """A psycopg connection, in autocommit, to the ``postgres`` database of ``database``'s server."""
    import psycopg

    params = database.get_connection_params()  # the settings' host, port, user and OPTIONS, as Django connects
    params["dbname"] = "postgres"
    return psycopg.connect(**params, autocommit=True)


def drop_stale_test_databases(database: Any) -> list[str]:
    """Drop the per-process test databases of test runs whose process is gone (a killed run leaves one).

    ``database``: a Django connection to the server. Plain ``DROP DATABASE``: a
    database someone is connected to (a run on another machine sharing the
    server) is refused by PostgreSQL and kept. Returns the names dropped.
    """
    import psycopg

    dropped = []
    with maintenance_connection(database) as maintenance:
        names = [row[0] for row in maintenance.execute("SELECT datname FROM pg_database")]
        for name in names:
            match = STALE_NAME.match(name)
            if match is None or _alive(int(match.group(1))):
                continue
            try:
                maintenance.execute(psycopg.sql.SQL("DROP DATABASE {}").format(psycopg.sql.Identifier(name)))
            except psycopg.errors.ObjectInUse:
                continue
            dropped.append(name)
    return dropped
