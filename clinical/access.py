"""The one answer to "may this user see or change this patient".

Every admin page, API view, export, task and the assistant asks here; nothing
else decides access to PHI. Model-level permissions never reveal a patient.

Current policy (foundation): superusers see and change every patient; nobody
else sees any. The access work extends these functions (primary doctor,
institution staff, care-team and break-the-glass grants, the patient's own
record) without changing their signatures.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from clinical.models import Patient


def _is_superuser(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_superuser)


def patients_visible_to(user: Any) -> QuerySet[Patient]:
    """Patients ``user`` may view."""
    if _is_superuser(user):
        return Patient.objects.all()
    return Patient.objects.none()


def patients_changeable_by(user: Any) -> QuerySet[Patient]:
    """Patients ``user`` may change."""
    if _is_superuser(user):
        return Patient.objects.all()
    return Patient.objects.none()


def can_view_patient(user: Any, patient: Patient) -> bool:
    return patients_visible_to(user).filter(pk=patient.pk).exists()


def can_change_patient(user: Any, patient: Patient) -> bool:
    return patients_changeable_by(user).filter(pk=patient.pk).exists()
