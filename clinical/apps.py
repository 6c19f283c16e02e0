from django.apps import AppConfig


class ClinicalConfig(AppConfig):
    name = "clinical"
    verbose_name = "Clinical"

    def ready(self) -> None:
        from accounts.audit import audit_register
        from accounts.rotation import register_rotators
        from clinical import models as m
        from clinical.services import document_file_rotators

        for model in (
            m.MedicalInstitution,
            m.InstitutionMembership,
            m.Doctor,
            m.Patient,
            m.HealthProfile,
            m.PatientCondition,
            m.PatientMedication,
            m.PatientAllergy,
            m.Email,
            m.Phone,
            m.Address,
        ):
            audit_register(model)
        # What a record says is PHI: its codes, dates, interpretation and scales stay out of
        # audit diffs like the payload (masked as encrypted).
        audit_register(
            m.MedicalRecord,
            exclude_fields=[
                "record_metadata",
                "effective_date",
                "interpretation",
                "severity",
                "confidence",
            ],
        )
        audit_register(m.Appointment)
        audit_register(m.Document)  # original_name is encrypted, so masked
        audit_register(m.Prescription)  # notes are encrypted, so masked
        # What is prescribed is PHI like a record's content: the medication, dose and the rest stay
        # out of the diff (instructions are encrypted, so masked); the item's record is named.
        audit_register(
            m.PrescriptionItem,
            exclude_fields=["medication", "dose", "route", "frequency", "duration_days", "quantity"],
        )
        register_rotators(document_file_rotators)
