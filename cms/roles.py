"""The role matrix, declared in code. ``manage.py sync_roles`` makes the groups match it.

A role says *what* a user may do (model permissions and named actions). Which
patients a clinical role reaches is decided by memberships and grants in
``clinical.access``: no model permission reveals a patient on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRUD = ("add", "change", "delete", "view")
CATALOGS = (
    "clinical.country",
    "clinical.region",
    "clinical.institutiontype",
    "clinical.specialtycategory",
    "clinical.specialty",
    "clinical.sex",
    "clinical.gender",
    "clinical.bloodtype",
    "clinical.bloodcompatibility",
    "clinical.emailtype",
    "clinical.phonetype",
    "clinical.medicalcondition",
    "clinical.medication",
)
PATIENT_LISTS = (
    "clinical.patientcondition",
    "clinical.patientmedication",
    "clinical.patientallergy",
    "clinical.email",
    "clinical.phone",
    "clinical.address",
)


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    actions: tuple[str, ...] = ()

    def permissions(self) -> set[str]:
        """Every permission as ``app_label.codename``."""
        perms = set(self.actions)
        for model, verbs in self.models.items():
            app_label, model_name = model.split(".")
            perms.update(f"{app_label}.{verb}_{model_name}" for verb in verbs)
        return perms


def _each(models: tuple[str, ...], verbs: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(models, verbs)


CMS_ADMIN = "CMS Admin"
CMS_EDITOR = "CMS Editor"
INSTITUTION_ADMIN = "Institution Admin"
DOCTOR = "Doctor"
NURSE = "Nurse"
PATIENT = "Patient"

ROLES: tuple[Role, ...] = (
    Role(
        CMS_ADMIN,
        "Runs the CMS: catalogs, settings, roles' content; reads the audit log. No PHI.",
        models={**_each(CATALOGS, CRUD), "cms.systemsetting": CRUD, "clinical.medicalinstitution": CRUD},
        actions=("cms.manage_settings", "cms.view_audit_log"),
    ),
    Role(
        CMS_EDITOR,
        "Edits catalogs. No PHI.",
        models={**_each(CATALOGS, ("add", "change", "view")), "cms.systemsetting": ("view",)},
    ),
    Role(
        INSTITUTION_ADMIN,
        "Manages an institution's memberships, grants and break-the-glass reviews; sees its patients.",
        models={
            "clinical.medicalinstitution": ("view", "change"),
            "clinical.institutionmembership": CRUD,
            "clinical.doctor": ("add", "change", "view"),
            "clinical.patient": ("add", "change", "view"),
            "clinical.healthprofile": ("change", "view"),
            "clinical.patientuserobjectpermission": CRUD,
            "clinical.breakglassreview": ("change", "view"),
            "clinical.medicalrecord": ("view",),
            "clinical.document": ("view",),
            "clinical.appointment": ("add", "change", "view"),  # the front desk books and cancels
            "clinical.prescription": ("view",),
            "clinical.prescriptionitem": ("view",),
            "accounts.user": ("view",),  # to pick staff for memberships and grants
            **_each(PATIENT_LISTS, ("view",)),
        },
        actions=("clinical.validate_patient", "clinical.export_patient_data", "cms.view_audit_log"),
    ),
    Role(
        DOCTOR,
        "Cares for patients: their own, their institutions', and those granted to them.",
        models={
            "clinical.patient": ("add", "change", "view"),
            "clinical.healthprofile": ("change", "view"),
            **_each(PATIENT_LISTS, CRUD),
            "clinical.medicalrecord": ("add", "change", "view", "verify"),
            "clinical.document": ("add", "view"),
            "clinical.appointment": ("add", "change", "view"),
            "clinical.prescription": ("add", "view"),
            "clinical.prescriptionitem": ("view",),
            "clinical.doctor": ("view",),
            "clinical.medicalinstitution": ("view",),
            "clinical.medicalcondition": ("view",),
            "clinical.medication": ("view",),
        },
        actions=("clinical.validate_patient", "clinical.export_patient_data", "clinical.break_glass"),
    ),
    Role(
        NURSE,
        "Supports care at their institutions.",
        models={
            "clinical.patient": ("change", "view"),
            "clinical.healthprofile": ("change", "view"),
            **_each(PATIENT_LISTS, ("add", "change", "view")),
            "clinical.medicalrecord": ("add", "view"),
            "clinical.document": ("add", "view"),
            "clinical.appointment": ("add", "change", "view"),
            "clinical.prescription": ("view",),
            "clinical.prescriptionitem": ("view",),
            "clinical.doctor": ("view",),
            "clinical.medicalinstitution": ("view",),
            "clinical.medicalcondition": ("view",),
            "clinical.medication": ("view",),
        },
        actions=("clinical.break_glass",),
    ),
    Role(PATIENT, "Uses the portal for their own record only.", models={}, actions=()),
)

CLINICAL_ROLES = (INSTITUTION_ADMIN, DOCTOR, NURSE)
ROLE_BY_NAME = {role.name: role for role in ROLES}
