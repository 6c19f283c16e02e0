from django.db import migrations

from accounts.schema import touch_updated_at
from clinical import schema


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_database_rules"),
        ("clinical", "0001_initial"),
    ]

    operations = [
        touch_updated_at(
            "clinical_medicalinstitution",
            "clinical_institutionmembership",
            "clinical_doctor",
            "clinical_patient",
            "clinical_healthprofile",
            "clinical_patientcondition",
            "clinical_patientmedication",
            "clinical_patientallergy",
            "clinical_email",
            "clinical_phone",
            "clinical_address",
        ),
        migrations.RunSQL(schema.ADD_PATIENT_DOCTOR_INSTITUTION_FK, schema.DROP_PATIENT_DOCTOR_INSTITUTION_FK),
        migrations.RunSQL(schema.ADD_PATIENT_DOB_TRIGGER, schema.DROP_PATIENT_DOB_TRIGGER),
        migrations.RunSQL(schema.ADD_DOCTOR_MEMBERSHIP_TRIGGER, schema.DROP_DOCTOR_MEMBERSHIP_TRIGGER),
        migrations.RunSQL(
            schema.ADD_MEMBERSHIP_KEEPS_DOCTOR_TRIGGER, schema.DROP_MEMBERSHIP_KEEPS_DOCTOR_TRIGGER
        ),
    ]
