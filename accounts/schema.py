"""Database-side rules that Django's migration operations cannot express.

Used from migrations: ``updated_at`` triggers (so ``QuerySet.update`` and raw
SQL keep it true) and the shared trigger function they call.
"""

from __future__ import annotations

from django.db import migrations

TOUCH_FUNCTION = "caretrail_touch_updated_at"

CREATE_TOUCH_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {TOUCH_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;
"""


def trigger_name(table: str) -> str:
    return f"{table}_touch_updated_at"


def touch_updated_at(*tables: str) -> migrations.RunSQL:
    """A migration operation that keeps ``updated_at`` current on ``tables``."""
    forward = [
        f"CREATE TRIGGER {trigger_name(t)} BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {TOUCH_FUNCTION}();"
        for t in tables
    ]
    backward = [f"DROP TRIGGER IF EXISTS {trigger_name(t)} ON {t};" for t in tables]
    return migrations.RunSQL(forward, backward)
