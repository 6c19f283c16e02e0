from django.db import migrations

from accounts.schema import CREATE_TOUCH_FUNCTION, CREATE_TOUCH_FUNCTION_EXEMPTING_KEY_ROTATION


class Migration(migrations.Migration):
    """Key rotation re-seals ciphertexts; it must not move ``updated_at`` (see accounts.schema)."""

    dependencies = [("accounts", "0003_login_hardening")]

    operations = [
        migrations.RunSQL(CREATE_TOUCH_FUNCTION_EXEMPTING_KEY_ROTATION, CREATE_TOUCH_FUNCTION),
    ]
