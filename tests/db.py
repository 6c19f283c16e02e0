"""Helpers for asserting which database rule rejected a write."""

from __future__ import annotations

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
