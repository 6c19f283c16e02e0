from django.db import migrations

from cms.services import roles_sync_migration


class Migration(migrations.Migration):
    dependencies = [
        ("cms", "0001_system_settings"),
        ("clinical", "0003_access_grants"),
        ("accounts", "0002_database_rules"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(roles_sync_migration, migrations.RunPython.noop)]
