"""The suite's own housekeeping: per-process test databases of killed runs are dropped."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from tests.db import drop_stale_test_databases, maintenance_connection

# Above Linux's largest pid (4194304), so no process can have it.
DEAD_RUN = "test_caretrail_4194399"

pytestmark = pytest.mark.django_db


def databases() -> set[str]:
    with maintenance_connection(connection) as server:
        return {row[0] for row in server.execute("SELECT datname FROM pg_database")}


def create_dead_runs_database() -> None:
    with maintenance_connection(connection) as server:
        server.execute(f'DROP DATABASE IF EXISTS "{DEAD_RUN}"')
        server.execute(f'CREATE DATABASE "{DEAD_RUN}"')


def test_a_killed_runs_database_is_dropped_and_the_running_ones_kept():
    create_dead_runs_database()

    dropped = drop_stale_test_databases(connection)

    assert DEAD_RUN in dropped
    assert DEAD_RUN not in databases()
    assert connection.settings_dict["NAME"] in databases()  # this run's own
    assert connection.settings_dict["NAME"] not in dropped


def test_a_database_someone_is_connected_to_is_kept():
    create_dead_runs_database()
    params = {**connection.get_connection_params(), "dbname": DEAD_RUN}
    with psycopg.connect(**params):
        assert DEAD_RUN not in drop_stale_test_databases(connection)
        assert DEAD_RUN in databases()
    assert DEAD_RUN in drop_stale_test_databases(connection)
