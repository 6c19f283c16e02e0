"""Database-side rules that Django's migration operations cannot express.

Used from migrations: ``updated_at`` triggers (so ``QuerySet.update`` and raw
SQL keep it true) and the shared trigger function they call.

One writer is exempt: key rotation (``accounts.rotation``) re-seals
ciphertexts without changing what they say, so it must not move
``updated_at``. It sets the transaction-local ``caretrail.key_rotation``
setting, which the trigger function honours. A custom setting needs no
privileges, unlike ``session_replication_role`` (superuser) or
``ALTER TABLE ... DISABLE TRIGGER`` (table owner, and an exclusive lock that
would stop the application's writes).
"""

from __future__ import annotations

from django.db import migrations

TOUCH_FUNCTION = "caretrail_touch_updated_at"

# Set with ``set_config(KEY_ROTATION_SETTING, 'on', true)``: local to the transaction.
KEY_ROTATION_SETTING = "caretrail.key_rotation"

# The function as accounts 0002 created it; 0004 replaces it.
CREATE_TOUCH_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {TOUCH_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;
"""

# ``current_setting(..., true)`` is NULL when the setting was never set, and
# may be '' after a transaction that set it ended: only 'on' exempts.
CREATE_TOUCH_FUNCTION_EXEMPTING_KEY_ROTATION = f"""
CREATE OR REPLACE FUNCTION {TOUCH_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('{KEY_ROTATION_SETTING}', true) = 'on' THEN
        RETURN NEW;
    END IF;
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
