"""The second factor's secrets at rest: the authenticator secret encrypted, backup codes only as keyed hashes."""

from __future__ import annotations

import base64
import hashlib
import importlib
from io import StringIO
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from accounts.encryption import DecryptionError
from accounts.models import AuthenticatorApp, BackupCode, BackupCodes, backup_code_hashes
from accounts.services import mfa_backup_codes_issue, mfa_code_match, mfa_enrolment_start
from config.embedded import new_field_key
from tests.conftest import totp_code

pytestmark = pytest.mark.django_db

migration = importlib.import_module("accounts.migrations.0005_mfa_devices_keep_secrets")


def row_text(table: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT t::text FROM {table} t WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def stored_key(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT key FROM accounts_authenticatorapp WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


# The authenticator secret ------------------------------------------------------------------------


def test_the_authenticator_secret_never_reaches_the_table_in_the_clear(staff):
    device = mfa_enrolment_start(user=staff)
    secret_hex = device.key
    secret_b32 = base64.b32encode(device.bin_key).decode()

    text = row_text("accounts_authenticatorapp", device.pk)
    assert secret_hex not in text and secret_hex.upper() not in text
    assert secret_b32 not in text
    assert stored_key(device.pk).startswith("ct1$")
    assert AuthenticatorApp.objects.get(pk=device.pk).key == secret_hex


def test_a_secret_copied_into_another_users_row_does_not_open(staff, make_user):
    mine = mfa_enrolment_start(user=staff)
    theirs = mfa_enrolment_start(user=make_user(email="mallory@example.org", is_staff=True))
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE accounts_authenticatorapp SET key = (SELECT key FROM accounts_authenticatorapp WHERE id = %s)"
            " WHERE id = %s",
            [mine.pk, theirs.pk],
        )
    with pytest.raises(DecryptionError):
        _ = AuthenticatorApp.objects.get(pk=theirs.pk).key


def test_the_app_keeps_working_after_the_field_keys_are_rotated(staff):
    old, new = new_field_key(), new_field_key()
    with override_settings(FIELD_ENCRYPTION_KEYS=old):
        device = mfa_enrolment_start(user=staff)
        secret = device.key
    before = stored_key(device.pk)

    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new},{old}"):
        call_command("rotate_keys", stdout=StringIO(), stderr=StringIO())
    with override_settings(FIELD_ENCRYPTION_KEYS=new):  # the old key is gone
        device = AuthenticatorApp.objects.get(pk=device.pk)
        assert device.key == secret
        AuthenticatorApp.objects.filter(pk=device.pk).update(confirmed=True)
        assert mfa_code_match(user=staff, code=totp_code(device)) == device
    after = stored_key(device.pk)
    assert after != before and after.split("$")[1] == new.split(":")[0]


def test_a_code_is_accepted_once(staff, device):
    code = totp_code(device)
    assert mfa_code_match(user=staff, code=code) == device
    assert mfa_code_match(user=staff, code=code) is None


def test_a_throttled_app_refuses_even_the_right_code_until_it_cools_off(staff, device):
    AuthenticatorApp.objects.filter(pk=device.pk).update(throttling_failure_count=10, throttling_failure_timestamp=None)
    device.refresh_from_db()
    assert mfa_code_match(user=staff, code="000000") is None  # a failure: 2**10 seconds from now
    device.refresh_from_db()
    assert device.throttling_failure_count == 11
    assert mfa_code_match(user=staff, code=totp_code(device)) is None
    AuthenticatorApp.objects.filter(pk=device.pk).update(throttling_failure_count=0, throttling_failure_timestamp=None)
    device.refresh_from_db()
    assert mfa_code_match(user=staff, code=totp_code(device)) == device
    device.refresh_from_db()
    assert device.throttling_failure_count == 0


def test_enrolment_is_audited_with_the_secret_masked_and_sign_ins_are_not(staff):
    device = mfa_enrolment_start(user=staff)
    kind = ContentType.objects.get_for_model(AuthenticatorApp)
    entries = LogEntry.objects.filter(content_type=kind, object_id=device.pk)
    created = entries.get(action=LogEntry.Action.CREATE)
    assert created.changes["key"][1] == "[encrypted]"
    assert device.key not in row_text("auditlog_logentry", created.pk)

    AuthenticatorApp.objects.filter(pk=device.pk).update(confirmed=True)
    device.refresh_from_db()
    assert mfa_code_match(user=staff, code=totp_code(device)) == device
    assert mfa_code_match(user=staff, code="000000") is None
    assert entries.count() == 1  # step, drift and throttling bookkeeping is not an audit event


# Backup codes ------------------------------------------------------------------------------------------


def test_backup_codes_are_stored_only_as_keyed_hashes(staff):
    codes = mfa_backup_codes_issue(user=staff)
    assert len(codes) == len(set(codes)) == 10
    with connection.cursor() as cursor:
        cursor.execute("SELECT b::text FROM accounts_backupcode b")
        rows = " ".join(row[0] for row in cursor.fetchall())
    for code in codes:
        assert code not in rows and code.upper() not in rows
        assert hashlib.sha256(code.encode()).hexdigest() not in rows  # keyed, not a plain digest


def test_issuing_backup_codes_again_voids_the_old_ones(staff):
    old = mfa_backup_codes_issue(user=staff)
    new = mfa_backup_codes_issue(user=staff)
    stored = set(BackupCode.objects.filter(device__user=staff).values_list("code_hash", flat=True))
    assert stored == {backup_code_hashes(code)[0] for code in new}
    assert BackupCodes.objects.filter(user=staff).count() == 1
    assert mfa_code_match(user=staff, code=old[0]) is None


def test_backup_codes_outlive_a_secret_key_rotation_through_the_fallbacks(staff, settings):
    first_key = settings.SECRET_KEY
    codes = mfa_backup_codes_issue(user=staff)
    with override_settings(SECRET_KEY="a-new-secret-key-" + "x" * 40, SECRET_KEY_FALLBACKS=[first_key]):
        assert mfa_code_match(user=staff, code=codes[0]) is not None
    with override_settings(SECRET_KEY="a-new-secret-key-" + "x" * 40, SECRET_KEY_FALLBACKS=[]):
        assert mfa_code_match(user=staff, code=codes[1]) is None


def test_a_wrong_backup_code_changes_nothing_but_the_throttle(staff):
    mfa_backup_codes_issue(user=staff)
    assert mfa_code_match(user=staff, code="aaaaaaaa") is None
    assert BackupCode.objects.filter(device__user=staff).count() == 10
    assert BackupCodes.objects.get(user=staff).throttling_failure_count == 1


# The migration from django-otp's plugin tables -----------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE otp_totp_totpdevice (
    id serial PRIMARY KEY, name varchar(64) NOT NULL, confirmed boolean NOT NULL, user_id bigint NOT NULL,
    key varchar(80) NOT NULL, step smallint NOT NULL, t0 bigint NOT NULL, digits smallint NOT NULL,
    tolerance smallint NOT NULL, drift smallint NOT NULL, last_t bigint NOT NULL,
    throttling_failure_timestamp timestamptz NULL, throttling_failure_count integer NOT NULL,
    created_at timestamptz NULL, last_used_at timestamptz NULL
);
CREATE TABLE otp_static_staticdevice (
    id serial PRIMARY KEY, name varchar(64) NOT NULL, confirmed boolean NOT NULL, user_id bigint NOT NULL,
    throttling_failure_timestamp timestamptz NULL, throttling_failure_count integer NOT NULL,
    created_at timestamptz NULL, last_used_at timestamptz NULL
);
CREATE TABLE otp_static_statictoken (
    id serial PRIMARY KEY, device_id integer NOT NULL REFERENCES otp_static_staticdevice (id), token varchar(16)
);
INSERT INTO django_migrations (app, name, applied) VALUES
    ('otp_totp', '0001_initial', now()), ('otp_static', '0001_initial', now());
"""

OLD_KEY = "3132333435363738393031323334353637383930"  # RFC 6238's test secret


def old_tables(staff: Any, *, step: int = 30) -> None:
    with connection.cursor() as cursor:
        cursor.execute(OLD_SCHEMA)
        cursor.execute(
            "INSERT INTO otp_totp_totpdevice (name, confirmed, user_id, key, step, t0, digits, tolerance, drift,"
            " last_t, throttling_failure_count, created_at)"
            " VALUES ('Phone', true, %s, %s, %s, 0, 6, 1, 0, -1, 0, '2026-01-02T03:04:05Z')",
            [staff.pk, OLD_KEY, step],
        )
        cursor.execute(
            "INSERT INTO otp_static_staticdevice (name, confirmed, user_id, throttling_failure_count)"
            " VALUES ('Backup codes', true, %s, 0) RETURNING id",
            [staff.pk],
        )
        static_id = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO otp_static_statictoken (device_id, token) VALUES (%s, 'abcdefgh'), (%s, 'ijklmnop')",
            [static_id, static_id],
        )


def carry_over() -> None:
    with connection.schema_editor() as editor:
        migration.carry_over_plugin_devices(apps, editor)


def test_the_migration_carries_devices_over_and_drops_the_plain_tables(staff):
    old_tables(staff)
    carry_over()

    device = AuthenticatorApp.objects.get(user=staff)
    assert (device.key, device.name, device.confirmed) == (OLD_KEY, "Phone", True)
    assert device.created_at.isoformat() == "2026-01-02T03:04:05+00:00"
    assert OLD_KEY not in row_text("accounts_authenticatorapp", device.pk)
    assert mfa_code_match(user=staff, code=totp_code(device)) == device
    assert mfa_code_match(user=staff, code="ABCD EFGH") is not None
    assert BackupCode.objects.filter(device__user=staff).count() == 1
    assert not any(table_exists(t) for t in migration.OLD_TABLES)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations WHERE app IN ('otp_totp', 'otp_static')")
        assert cursor.fetchone()[0] == 0


def test_the_migration_refuses_a_device_it_cannot_carry_over_and_drops_nothing(staff):
    old_tables(staff, step=60)
    with pytest.raises(RuntimeError, match="re-enrol"):
        carry_over()
    assert table_exists("otp_totp_totpdevice")
    assert not AuthenticatorApp.objects.exists()


def test_the_migration_does_nothing_on_a_database_that_never_had_the_plugins(staff):
    carry_over()
    assert not AuthenticatorApp.objects.exists() and not BackupCodes.objects.exists()
