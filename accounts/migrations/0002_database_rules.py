from django.db import migrations

from accounts.schema import CREATE_TOUCH_FUNCTION, TOUCH_FUNCTION, touch_updated_at


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [
        migrations.RunSQL(CREATE_TOUCH_FUNCTION, f"DROP FUNCTION IF EXISTS {TOUCH_FUNCTION}();"),
        touch_updated_at("accounts_user"),
    ]
