from django.db import migrations

from cms.services import roles_sync_migration


class Migration(migrations.Migration):
    """The role matrix names appointment and prescription permissions, which exist from clinical 0010."""

    dependencies = [
        ("cms", "0004_sync_roles_documents"),
        ("clinical", "0010_prescriptions"),
    ]

    operations = [migrations.RunPython(roles_sync_migration, migrations.RunPython.noop)]
