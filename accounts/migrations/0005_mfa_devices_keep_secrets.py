"""MFA devices that keep their secrets: the authenticator secret encrypted, backup codes hashed.

They replace django-otp's TOTP and static plugins, whose tables held both in
plain text. A database that has those tables (an earlier Caretrail) gets every
device carried over, then the plugin tables are dropped, so no plain secret
stays behind; a new database never had them.
"""

import accounts.fields
import accounts.models
import django.db.models.deletion
import uuid
from django.conf import settings
from django.db import migrations, models
from django.utils.crypto import salted_hmac

OLD_TABLES = ("otp_static_statictoken", "otp_static_staticdevice", "otp_totp_totpdevice")


def _exists(cursor, table):
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
    return cursor.fetchone()[0]


def _rows(cursor, sql):
    cursor.execute(sql)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def carry_over_plugin_devices(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if not any(_exists(cursor, table) for table in OLD_TABLES):
            return
        apps_ = apps.get_model("accounts", "AuthenticatorApp")
        if _exists(cursor, "otp_totp_totpdevice"):
            for old in _rows(cursor, "SELECT * FROM otp_totp_totpdevice ORDER BY id"):
                if (old["step"], old["t0"], old["digits"], old["tolerance"]) != (30, 0, 6, 1):
                    raise RuntimeError(
                        f"TOTP device {old['id']} has settings other than 30 s / 6 digits; re-enrol it by hand"
                    )
                new = apps_.objects.create(
                    user_id=old["user_id"],
                    name=old["name"],
                    confirmed=old["confirmed"],
                    key=old["key"],
                    drift=old["drift"],
                    last_t=old["last_t"],
                    throttling_failure_timestamp=old["throttling_failure_timestamp"],
                    throttling_failure_count=old["throttling_failure_count"],
                    last_used_at=old["last_used_at"],
                )
                apps_.objects.filter(pk=new.pk).update(created_at=old["created_at"])
        if _exists(cursor, "otp_static_staticdevice"):
            codes_model = apps.get_model("accounts", "BackupCodes")
            code_model = apps.get_model("accounts", "BackupCode")
            tokens = {}
            for token in _rows(cursor, "SELECT device_id, token FROM otp_static_statictoken"):
                tokens.setdefault(token["device_id"], set()).add(token["token"].lower())
            for old in _rows(cursor, "SELECT * FROM otp_static_staticdevice ORDER BY id"):
                new = codes_model.objects.create(
                    user_id=old["user_id"],
                    name=old["name"],
                    confirmed=old["confirmed"],
                    throttling_failure_timestamp=old["throttling_failure_timestamp"],
                    throttling_failure_count=old["throttling_failure_count"],
                )
                # As accounts.models.backup_code_hashes stores a code (with the current SECRET_KEY).
                code_model.objects.bulk_create(
                    code_model(
                        device=new,
                        code_hash=salted_hmac(
                            "accounts.BackupCode", token, secret=settings.SECRET_KEY, algorithm="sha256"
                        ).hexdigest(),
                    )
                    for token in sorted(tokens.get(old["id"], ()))
                )
        for table in OLD_TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute("DELETE FROM django_migrations WHERE app IN ('otp_totp', 'otp_static')")


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_touch_updated_at_exempts_key_rotation'),
    ]

    operations = [
        migrations.CreateModel(
            name='AuthenticatorApp',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text='The human-readable name of this device.', max_length=64)),
                ('confirmed', models.BooleanField(default=True, help_text='Is this device ready for use?')),
                ('throttling_failure_timestamp', models.DateTimeField(blank=True, default=None, help_text='A timestamp of the last failed verification attempt. Null if last attempt succeeded.', null=True)),
                ('throttling_failure_count', models.PositiveIntegerField(default=0, help_text='Number of successive failed attempts.')),
                ('created_at', models.DateTimeField(auto_now_add=True, help_text='The date and time when this device was initially created in the system.', null=True)),
                ('last_used_at', models.DateTimeField(blank=True, help_text='The most recent date and time this device was used.', null=True)),
                ('uuid', models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ('key', accounts.fields.EncryptedTextField(default=accounts.models.new_totp_secret, help_text='The shared secret (hex), encrypted.')),
                ('drift', models.SmallIntegerField(default=0, help_text="Time steps the app's clock is known to be off by.")),
                ('last_t', models.BigIntegerField(default=-1, help_text='The time step of the last accepted code.')),
                ('user', models.ForeignKey(help_text='The user that this device belongs to.', on_delete=django.db.models.deletion.CASCADE, to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'authenticator app',
                'abstract': False,
            },
        ),
        migrations.CreateModel(
            name='BackupCodes',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text='The human-readable name of this device.', max_length=64)),
                ('confirmed', models.BooleanField(default=True, help_text='Is this device ready for use?')),
                ('throttling_failure_timestamp', models.DateTimeField(blank=True, default=None, help_text='A timestamp of the last failed verification attempt. Null if last attempt succeeded.', null=True)),
                ('throttling_failure_count', models.PositiveIntegerField(default=0, help_text='Number of successive failed attempts.')),
                ('user', models.ForeignKey(help_text='The user that this device belongs to.', on_delete=django.db.models.deletion.CASCADE, to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'backup codes',
                'verbose_name_plural': 'backup codes',
                'abstract': False,
            },
        ),
        migrations.CreateModel(
            name='BackupCode',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('code_hash', models.CharField(max_length=64)),
                ('device', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='codes', to='accounts.backupcodes')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('device', 'code_hash'), name='accounts_backupcode_unique_per_set')],
            },
        ),
        # Not reversible: the old tables would have to get the plain secrets back.
        migrations.RunPython(carry_over_plugin_devices, elidable=False),
    ]
