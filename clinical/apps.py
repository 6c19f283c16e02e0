from django.apps import AppConfig


class ClinicalConfig(AppConfig):
    name = "clinical"
    verbose_name = "Clinical"

    def ready(self) -> None:
        from accounts.audit import audit_register
        from clinical import models as m

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
        # Codes and dates in record_metadata are PHI: kept out of audit diffs like the payload.
        audit_register(m.MedicalRecord, exclude_fields=["record_metadata"])
