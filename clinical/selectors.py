"""Reads for the clinical app. Anything that returns PHI starts from ``clinical.access``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import reverse

from clinical.access import patient_parts_visible_to, patients_visible_to
from clinical.models import Doctor, MedicalInstitution, Patient, ValidationStatus
from config.pagination import Parts

PATIENT_LIST_RELATED = ("institution", "doctor__user", "sex", "gender")


def patient_list(*, user: Any) -> QuerySet[Patient]:
    return patients_visible_to(user).select_related(*PATIENT_LIST_RELATED)


def patient_page_parts(*, user: Any) -> Parts:
    """The patients ``user`` may view, split by access route for keyset pages (``config.pagination``)."""
    return Parts(patient_parts_visible_to(user), select_related=PATIENT_LIST_RELATED)


def headline_counts(*, user: Any) -> list[dict[str, Any]]:
    """The admin index's figures, counted over what ``user`` may see."""
    if not getattr(user, "is_staff", False):
        return []
    visible = patients_visible_to(user)
    return [
        {"label": "Patients", "value": visible.count(), "url": reverse("admin:clinical_patient_changelist")},
        {
            "label": "Pending validations",
            "value": visible.filter(validation_status=ValidationStatus.PENDING).count(),
            "url": reverse("admin:clinical_patient_changelist") + "?validation_status__exact=pending",
        },
        {
            "label": "Institutions",
            "value": MedicalInstitution.objects.filter(is_active=True).count(),
            "url": reverse("admin:clinical_medicalinstitution_changelist"),
        },
        {
            "label": "Doctors",
            "value": Doctor.objects.filter(is_active=True).count(),
            "url": reverse("admin:clinical_doctor_changelist"),
        },
    ]
