from django.db import migrations

from cms.services import roles_sync_migration


class Migration(migrations.Migration):
    """The role matrix names document permissions, which exist from clinical 0008."""

    dependencies = [
        ("cms", "0003_sync_roles_medical_records"),
        ("clinical", "0008_documents"),
    ]

    operations = [migrations.RunPython(roles_sync_migration, migrations.RunPython.noop)]
