import uuid

import django.contrib.postgres.functions
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_database_rules")]

    operations = [
        # The database default gives every existing user a stamp of their own
        # (PostgreSQL evaluates a volatile default per row when adding the column).
        migrations.AddField(
            model_name="user",
            name="security_stamp",
            field=models.UUIDField(
                db_default=django.contrib.postgres.functions.RandomUUID(),
                default=uuid.uuid4,
                editable=False,
                help_text="Changing it ends every session and API token of the user at their next request.",
            ),
        ),
        # Existing tokens inherit their owner's current stamp, so they keep working.
        migrations.AddField(
            model_name="apitoken",
            name="security_stamp",
            field=models.UUIDField(editable=False, null=True),
        ),
        migrations.RunSQL(
            "UPDATE accounts_apitoken AS t SET security_stamp = u.security_stamp "
            "FROM accounts_user AS u WHERE u.id = t.user_id;",
            migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="apitoken",
            name="security_stamp",
            field=models.UUIDField(
                editable=False,
                help_text="The user's security stamp when the token was issued; it must still match.",
            ),
        ),
        migrations.CreateModel(
            name="PasswordResetRequest",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("ip_address", models.GenericIPAddressField()),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "indexes": [
                    models.Index(fields=["ip_address", "created_at"], name="accounts_pwreset_ip_time"),
                    models.Index(fields=["created_at"], name="accounts_pwreset_time"),
                ],
            },
        ),
    ]
