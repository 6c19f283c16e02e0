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

Cost: one query reads the user's whole scope (role permission, doctor record,
membership institutions, granted patients); the patient query is then built
from those plain ids, which the planner serves from indexes. The number of
queries never depends on the number of patients.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.db import connection
from django.db.models import JSONField, Q, QuerySet
from django.db.models.expressions import RawSQL

from clinical.models import (
    InstitutionMembership,
    MembershipRole,
    Patient,
)
from config.pagination import Parts, keyset_page

VIEW = "view"
CHANGE = "change"
CLINICAL_MEMBERSHIP_ROLES = (MembershipRole.DOCTOR, MembershipRole.NURSE, MembershipRole.INSTITUTION_ADMIN)
GRANT_CODENAMES = {VIEW: ("view_patient", "change_patient"), CHANGE: ("change_patient",)}

# clock_timestamp(), not now(): now() is the transaction's start, earlier than a
# membership or grant written inside the same transaction.
SCOPE_CTE = """
WITH grants AS (
    SELECT g.content_object_id, g.is_break_glass
    FROM clinical_patientuserobjectpermission g
    JOIN auth_permission p ON p.id = g.permission_id
    JOIN django_content_type ct ON ct.id = p.content_type_id
    WHERE g.user_id = %(user)s AND g.revoked_at IS NULL
      AND (g.expires_at IS NULL OR g.expires_at > clock_timestamp())
      AND ct.app_label = 'clinical' AND p.codename = ANY(%(grant_codenames)s)
),
scope AS (
    SELECT
        EXISTS (
            SELECT 1
            FROM auth_permission p
            JOIN django_content_type ct ON ct.id = p.content_type_id
            WHERE ct.app_label = 'clinical' AND p.codename = %(role_codename)s
              AND (
                  EXISTS (SELECT 1 FROM accounts_user_user_permissions up
                          WHERE up.user_id = %(user)s AND up.permission_id = p.id)
                  OR EXISTS (SELECT 1 FROM accounts_user_groups ug
                             JOIN auth_group_permissions gp ON gp.group_id = ug.group_id
                             WHERE ug.user_id = %(user)s AND gp.permission_id = p.id)
              )
        ) AS role_allows,
        (SELECT d.id FROM clinical_doctor d
         WHERE d.user_id = %(user)s AND d.is_active ORDER BY d.id LIMIT 1) AS doctor_id,
        ARRAY(SELECT DISTINCT m.institution_id FROM clinical_institutionmembership m
              WHERE m.user_id = %(user)s AND m.role = ANY(%(roles)s)
                AND m.valid_from <= clock_timestamp()
                AND (m.valid_until IS NULL OR m.valid_until > clock_timestamp())) AS institution_ids,
        ARRAY(SELECT content_object_id FROM grants) AS granted_ids,
        ARRAY(SELECT content_object_id FROM grants WHERE NOT is_break_glass) AS care_team_ids
)
"""
# Constant text only; every value is a bound parameter.
SCOPE_SQL = SCOPE_CTE + "SELECT role_allows, doctor_id, institution_ids, granted_ids, care_team_ids FROM scope"  # noqa: S608
# The same as one JSON value, for a page's row query (uncorrelated: PostgreSQL reads it once).
SCOPE_VALUE_SQL = (
    "("  # noqa: S608
    + SCOPE_CTE
    + "SELECT jsonb_build_array(role_allows, doctor_id, institution_ids, granted_ids, care_team_ids) FROM scope)"
)

# A keyset page of the patients a user may view, in one statement with the scope: each
# route is read in key order from its own (route, created_at, id) index, at most a page
# from each, and the union gives the page. The same routes as Scope.condition (the
# property test in tests/clinical/test_access_property.py holds the two to one answer).
# The doctor and institution routes are LATERAL subqueries on the scope's ids: with the id
# a parameter of the scan, PostgreSQL reads a page from the route's index in key order and
# stops (a plain join with the scope sorted all of the doctor's patients first).
# {beyond}: the cursor's row comparison, {only}: extra filters, {dir}: ASC or DESC.
# Constant text; the {} holes take fixed fragments and every value is bound.
PAGE_SQL = (
    SCOPE_CTE  # noqa: S608
    + """,
page AS (
    (SELECT k.created_at, k.id
     FROM scope s CROSS JOIN LATERAL (
         SELECT p.created_at, p.id FROM clinical_patient p
         WHERE p.doctor_id = s.doctor_id {beyond} {only}
         ORDER BY p.created_at {dir}, p.id {dir} LIMIT %(limit)s
     ) k
     WHERE s.role_allows)
    UNION
    (SELECT k.created_at, k.id
     FROM scope s CROSS JOIN LATERAL unnest(s.institution_ids) AS i(institution_id)
     CROSS JOIN LATERAL (
         SELECT p.created_at, p.id FROM clinical_patient p
         WHERE p.institution_id = i.institution_id {beyond} {only}
         ORDER BY p.created_at {dir}, p.id {dir} LIMIT %(limit)s
     ) k
     WHERE s.role_allows)
    UNION
    (SELECT p.created_at, p.id FROM clinical_patient p
     WHERE p.user_id = %(own_user)s {beyond} {only})
    UNION
    (SELECT p.created_at, p.id FROM clinical_patient p, scope s
     WHERE p.id = ANY(s.granted_ids) {beyond} {only}
     ORDER BY p.created_at {dir}, p.id {dir} LIMIT %(limit)s)
)
SELECT id FROM page ORDER BY created_at {dir}, id {dir} LIMIT %(limit)s
"""
)


def _signed_in(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


@dataclass(frozen=True)
class Scope:
    """What reaches patients for one user and one kind of access, as plain ids."""

    everything: bool = False
    doctor_id: int | None = None
    institution_ids: tuple[int, ...] = ()
    own_user_id: int | None = None
    granted_ids: tuple[int, ...] = ()
    care_team_ids: tuple[int, ...] = ()

    def condition(self, *, break_glass: bool = True) -> Q | None:
        """The patient filter; without ``break_glass``, break-the-glass grants do not count."""
        parts = []
        if self.doctor_id is not None:
            parts.append(Q(doctor_id=self.doctor_id))
        if self.institution_ids:
            parts.append(Q(institution_id__in=self.institution_ids))
        if self.own_user_id is not None:
            parts.append(Q(user_id=self.own_user_id))
        granted = self.granted_ids if break_glass else self.care_team_ids
        if granted:
            parts.append(Q(pk__in=granted))
        if not parts:
            return None
        condition = parts[0]
        for part in parts[1:]:
            condition |= part
        return condition


def _scope_params(user: Any, kind: str) -> dict[str, Any]:
    return {
        "user": user.pk,
        "role_codename": f"{kind}_patient",
        "roles": list(CLINICAL_MEMBERSHIP_ROLES),
        "grant_codenames": list(GRANT_CODENAMES[kind]),
    }


def scope_of(user: Any, kind: str) -> Scope:
    """The routes by which ``user`` reaches patients for ``kind`` (view or change), in one query."""
    if not _signed_in(user):
        return Scope()
    if user.is_superuser:
        return Scope(everything=True)
    with connection.cursor() as cursor:
        cursor.execute(SCOPE_SQL, _scope_params(user, kind))
        return _scope_from_row(user, kind, cursor.fetchone())


def _scope_from_row(user: Any, kind: str, row: Sequence[Any]) -> Scope:
    """A Scope from the scope query's columns (``SCOPE_SQL``, or ``SCOPE_VALUE_SQL``'s array)."""
    role_allows, doctor_id, institution_ids, granted_ids, care_team_ids = row
    return Scope(
        doctor_id=doctor_id if role_allows else None,
        institution_ids=tuple(institution_ids) if role_allows else (),
        own_user_id=user.pk if kind == VIEW else None,
        granted_ids=tuple(granted_ids),
        care_team_ids=tuple(care_team_ids),
    )


def patients_in(scope: Scope) -> QuerySet[Patient]:
    """The patients a scope reaches (for a caller that already read the scope, to read it once per request)."""
    if scope.everything:
        return Patient.objects.all()
    condition = scope.condition()
    if condition is None:
        return Patient.objects.none()
    return Patient.objects.filter(condition)


def _patients(user: Any, kind: str) -> QuerySet[Patient]:
    return patients_in(scope_of(user, kind))


def patients_visible_to(user: Any) -> QuerySet[Patient]:
    """Patients ``user`` may view."""
    return _patients(user, VIEW)


def patients_changeable_by(user: Any) -> QuerySet[Patient]:
    """Patients ``user`` may change."""
    return _patients(user, CHANGE)


@dataclass(frozen=True)
class VisiblePatients:
    """The patients a user may view, for keyset pages (``config.pagination``), in one statement a page.

    ``load`` shapes the rows read (columns, joins); ``filter`` narrows by
    plain column values, applied inside every route. Each row comes back with
    ``break_glass_only``: whether only a break-the-glass grant shows it to the user.
    """

    user: Any
    load: Callable[[QuerySet[Patient]], QuerySet[Patient]] = lambda queryset: queryset
    filters: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        unknown = {column for column, _ in self.filters} - PAGE_FILTERS
        if unknown:  # column names go into the SQL text: only the allow-listed ones
            raise ValueError(f"cannot filter a patient page by {sorted(unknown)}")

    def filter(self, **values: Any) -> VisiblePatients:
        unknown = set(values) - PAGE_FILTERS
        if unknown:
            raise ValueError(f"cannot filter a patient page by {sorted(unknown)}")
        return replace(self, filters=(*self.filters, *sorted(values.items())))

    def keyset_page(
        self, *, fields: tuple[str, str], size: int, cursor: Any, descending: bool = False
    ) -> tuple[list[Patient], bool]:
        if fields != ("created_at", "id"):
            raise ValueError("patient pages are keyed by (created_at, id)")
        if not _signed_in(self.user):
            return [], False
        if self.user.is_superuser:
            everyone = Patient.objects.filter(**dict(self.filters))
            page, more = keyset_page(
                Parts((everyone,), self.load), fields=fields, size=size, cursor=cursor, descending=descending
            )
            for patient in page:
                patient.break_glass_only = False  # a superuser needs no grant
            return page, more
        forward = cursor is None or cursor.forward
        ascending = forward != descending
        params = {**_scope_params(self.user, VIEW), "own_user": self.user.pk, "limit": size + 1}
        beyond = ""
        if cursor is not None:
            beyond = f"AND (p.created_at, p.id) {'>' if ascending else '<'} (%(after_at)s, %(after_id)s)"
            params.update(after_at=cursor.key[0], after_id=cursor.key[1])
        only = ""
        for index, (column, value) in enumerate(self.filters):
            only += f" AND p.{column} = %(filter_{index})s"
            params[f"filter_{index}"] = value
        sql = PAGE_SQL.format(beyond=beyond, only=only, dir="ASC" if ascending else "DESC")
        # One statement: the page's ids as a subquery of the row query that ``load`` shapes,
        # and the reader's scope as a value on each row (for the access entry's flag).
        page_ids = RawSQL(*_positional(sql, params))  # noqa: S611 - values bound
        scope_value = RawSQL(*_positional(SCOPE_VALUE_SQL, params), output_field=JSONField())  # noqa: S611
        order = ("created_at", "id") if ascending else ("-created_at", "-id")
        found = self.load(Patient.objects.filter(pk__in=page_ids)).annotate(reader_scope=scope_value)
        rows: list[Any] = list(found.order_by(*order)[: size + 1])
        more = len(rows) > size
        rows = rows[:size]
        if not forward:
            rows.reverse()
        if rows:
            scope = _scope_from_row(self.user, VIEW, rows[0].reader_scope)
            urgent = break_glass_only(self.user, [row.pk for row in rows], scope)
            for row in rows:
                row.break_glass_only = row.pk in urgent
        return rows, more


PAGE_FILTERS = {"validation_status"}
_NAMED_PARAMETER = re.compile(r"%\((\w+)\)s")


def _positional(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """``sql`` with its ``%(name)s`` parameters as ``%s`` and their values in order (RawSQL's form)."""
    return _NAMED_PARAMETER.sub("%s", sql), [params[name] for name in _NAMED_PARAMETER.findall(sql)]


def can_view_patient(user: Any, patient: Patient) -> bool:
    return patients_visible_to(user).filter(pk=patient.pk).exists()


def can_change_patient(user: Any, patient: Patient) -> bool:
    return patients_changeable_by(user).filter(pk=patient.pk).exists()


def is_break_glass_access(user: Any, patient: Patient, scope: Scope | None = None) -> bool:
    """True when only an active break-the-glass grant lets ``user`` see ``patient``.

    ``scope``: the user's view scope if the caller already read it this request.
    """
    return patient.pk in break_glass_only(user, [patient.pk], scope)


def break_glass_only(user: Any, patient_ids: Iterable[int], scope: Scope | None = None) -> set[int]:
    """Of ``patient_ids``, those ``user`` sees only through an active break-the-glass grant.

    No query when none of them is under such a grant (the usual case), else one;
    plus one for the scope unless the caller passes it.
    """
    scope = scope if scope is not None else scope_of(user, VIEW)
    if scope.everything:
        return set()
    candidates = set(patient_ids) & (set(scope.granted_ids) - set(scope.care_team_ids))
    if not candidates:
        return set()
    other_routes = scope.condition(break_glass=False)
    if other_routes is None:
        return candidates
    reached = Patient.objects.filter(other_routes, pk__in=candidates).values_list("pk", flat=True)
    return candidates - set(reached)


def can_add_record(user: Any, patient: Patient) -> bool:
    """Write a new medical record for ``patient``: the role's permission and change access to the patient."""
    return _signed_in(user) and user.has_perm("clinical.add_medicalrecord") and can_change_patient(user, patient)


def can_add_document(user: Any, patient: Patient) -> bool:
    """Upload a document to ``patient`` as staff: the role's permission and change access to the patient."""
    return _signed_in(user) and user.has_perm("clinical.add_document") and can_change_patient(user, patient)


def can_book_appointment(user: Any, patient: Patient) -> bool:
    """Book an appointment for ``patient``: the role's permission and change access to the patient."""
    return _signed_in(user) and user.has_perm("clinical.add_appointment") and can_change_patient(user, patient)


def can_change_appointment(user: Any, patient: Patient) -> bool:
    """Reschedule, cancel, complete or mark a no-show an appointment of ``patient``."""
    return _signed_in(user) and user.has_perm("clinical.change_appointment") and can_change_patient(user, patient)


def can_prescribe_for(user: Any, patient: Patient) -> bool:
    """Write prescriptions for ``patient`` at all: the role's permission and change access to the patient."""
    return _signed_in(user) and user.has_perm("clinical.add_prescription") and can_change_patient(user, patient)


def can_issue_prescription(user: Any, appointment: Any) -> bool:
    """Write the prescription of ``appointment``: only its own doctor, who may prescribe for its patient.

    A prescription is the prescriber's act, so not even a superuser writes one for another doctor.
    """
    return appointment.doctor.user_id == getattr(user, "pk", None) and can_prescribe_for(user, appointment.patient)


def doctor_reaches_patient(doctor: Any, patient: Patient, institution: Any) -> bool:
    """Whether ``doctor``, seeing ``patient`` at ``institution``, will be able to open the patient's record.

    By the policy's routes that a booking can know of: the patient's institution (the doctor is
    then its clinical staff), the patient's primary doctor, or an active grant on the patient.
    """
    from clinical.models import PatientUserObjectPermission

    if institution.pk == patient.institution_id or patient.doctor_id == doctor.pk:
        return True
    return PatientUserObjectPermission.objects.active().filter(user_id=doctor.user_id, content_object=patient).exists()


def can_amend_record(user: Any, patient: Patient) -> bool:
    """Amend or mark entered-in-error a record of ``patient``."""
    return _signed_in(user) and user.has_perm("clinical.change_medicalrecord") and can_change_patient(user, patient)


def can_verify_record(user: Any, patient: Patient) -> bool:
    return _signed_in(user) and user.has_perm("clinical.verify_medicalrecord") and can_change_patient(user, patient)


def holds_grants(user: Any, kind: str) -> bool:
    """Whether ``user`` holds any active grant of ``kind`` (used to open the admin's patient pages)."""
    return bool(scope_of(user, kind).granted_ids)


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
