from django.db import migrations

from cms.services import roles_sync_migration


class Migration(migrations.Migration):
    """The role matrix names medical record permissions, which exist from clinical 0005."""

    dependencies = [
        ("cms", "0002_sync_roles"),
        ("clinical", "0005_medical_records"),
    ]

    operations = [migrations.RunPython(roles_sync_migration, migrations.RunPython.noop)]
