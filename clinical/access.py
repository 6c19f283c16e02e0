"""The one answer to "may this user see or change this patient".

Every admin page, API view, export, task and the assistant asks here; nothing
else decides access to PHI. The rules (DESIGN.md, "Access policy"):

- superusers see and change everyone;
- a patient's own portal user sees that patient (read only);
- clinical staff reach patients through their role *and* a scope: the patients
  whose primary doctor they are, and the patients of institutions where they
  hold an active doctor, nurse or institution-admin membership. The role's
  model permission (``clinical.view_patient`` / ``change_patient``) says what
  they may do; without it a membership reveals nothing;
- active grants (care team, break-the-glass) reach one patient each, view or
  change, whatever the holder's role; expired and revoked grants never count.

Model permissions alone never reveal a patient, and guardian's
``ObjectPermissionBackend`` is not used: it knows nothing of expiry.

Each function costs a fixed number of queries, whatever the number of
patients: the user's scope is read first (memberships, doctor id, grants are
joined in as one subquery), then the patient query is built from plain ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from clinical.models import (
    Doctor,
    InstitutionMembership,
    MembershipRole,
    Patient,
    PatientUserObjectPermission,
)

VIEW = "view"
CHANGE = "change"
CLINICAL_MEMBERSHIP_ROLES = (MembershipRole.DOCTOR, MembershipRole.NURSE, MembershipRole.INSTITUTION_ADMIN)
GRANT_CODENAMES = {VIEW: ("view_patient", "change_patient"), CHANGE: ("change_patient",)}


def _signed_in(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


@dataclass(frozen=True)
class Scope:
    """What reaches patients for one user and one kind of access."""

    everything: bool = False
    doctor_id: int | None = None
    institution_ids: tuple[int, ...] = ()
    own_user_id: int | None = None
    grants: bool = False

    def condition(self, user: Any, kind: str, *, break_glass: bool = True) -> Q | None:
        parts = []
        if self.doctor_id is not None:
            parts.append(Q(doctor_id=self.doctor_id))
        if self.institution_ids:
            parts.append(Q(institution_id__in=self.institution_ids))
        if self.own_user_id is not None:
            parts.append(Q(user_id=self.own_user_id))
        if self.grants:
            grants = active_grants(user, kind)
            if not break_glass:
                grants = grants.filter(is_break_glass=False)
            parts.append(Q(pk__in=grants.values("content_object_id")))
        if not parts:
            return None
        condition = parts[0]
        for part in parts[1:]:
            condition |= part
        return condition


def active_grants(user: Any, kind: str) -> QuerySet[PatientUserObjectPermission]:
    return PatientUserObjectPermission.objects.active().filter(
        user_id=user.pk,
        permission__content_type__app_label="clinical",
        permission__codename__in=GRANT_CODENAMES[kind],
    )


def scope_of(user: Any, kind: str) -> Scope:
    """The routes by which ``user`` reaches patients for ``kind`` (view or change)."""
    if not _signed_in(user):
        return Scope()
    if user.is_superuser:
        return Scope(everything=True)
    role_allows = user.has_perm(f"clinical.{kind}_patient")
    doctor_id = None
    institution_ids: tuple[int, ...] = ()
    if role_allows:
        doctor_id = Doctor.objects.filter(user_id=user.pk, is_active=True).values_list("pk", flat=True).first()
        institution_ids = tuple(
            InstitutionMembership.objects.active()
            .filter(user_id=user.pk, role__in=CLINICAL_MEMBERSHIP_ROLES)
            .order_by()
            .values_list("institution_id", flat=True)
            .distinct()
        )
    return Scope(
        doctor_id=doctor_id,
        institution_ids=institution_ids,
        own_user_id=user.pk if kind == VIEW else None,
        grants=True,
    )


def _patients(user: Any, kind: str, *, break_glass: bool = True) -> QuerySet[Patient]:
    scope = scope_of(user, kind)
    if scope.everything:
        return Patient.objects.all()
    condition = scope.condition(user, kind, break_glass=break_glass)
    if condition is None:
        return Patient.objects.none()
    return Patient.objects.filter(condition)


def patients_visible_to(user: Any) -> QuerySet[Patient]:
    """Patients ``user`` may view."""
    return _patients(user, VIEW)


def patients_changeable_by(user: Any) -> QuerySet[Patient]:
    """Patients ``user`` may change."""
    return _patients(user, CHANGE)


def can_view_patient(user: Any, patient: Patient) -> bool:
    return patients_visible_to(user).filter(pk=patient.pk).exists()


def can_change_patient(user: Any, patient: Patient) -> bool:
    return patients_changeable_by(user).filter(pk=patient.pk).exists()


def is_break_glass_access(user: Any, patient: Patient) -> bool:
    """True when only an active break-the-glass grant lets ``user`` see ``patient``."""
    if not _signed_in(user) or user.is_superuser:
        return False
    if _patients(user, VIEW, break_glass=False).filter(pk=patient.pk).exists():
        return False
    return active_grants(user, VIEW).filter(content_object_id=patient.pk, is_break_glass=True).exists()


def holds_grants(user: Any, kind: str) -> bool:
    """Whether ``user`` holds any active grant of ``kind`` (used to open the admin's patient pages)."""
    return _signed_in(user) and active_grants(user, kind).exists()


def can_break_glass(user: Any) -> bool:
    return _signed_in(user) and user.has_perm("clinical.break_glass")


def institutions_administered_by(user: Any) -> QuerySet[Any]:
    """Institutions where ``user`` is an active institution admin (all for superusers)."""
    from clinical.models import MedicalInstitution

    if not _signed_in(user):
        return MedicalInstitution.objects.none()
    if user.is_superuser:
        return MedicalInstitution.objects.all()
    if not user.has_perm("clinical.view_institutionmembership"):  # the Institution Admin role
        return MedicalInstitution.objects.none()
    return MedicalInstitution.objects.filter(
        pk__in=InstitutionMembership.objects.active()
        .filter(user_id=user.pk, role=MembershipRole.INSTITUTION_ADMIN)
        .values("institution_id")
    )
