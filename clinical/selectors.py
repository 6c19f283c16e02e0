"""Reads for the clinical app. Anything that returns PHI starts from ``clinical.access``."""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.urls import reverse

from clinical.access import VIEW, VisiblePatients, patients_visible_to, scope_of
from clinical.fhir import system_uri
from clinical.models import (
    Doctor,
    Gender,
    InstitutionMembership,
    LedgerEntry,
    LedgerEntryKind,
    MedicalInstitution,
    MedicalRecord,
    MembershipRole,
    Patient,
    RecordStatus,
    Sex,
    ValidationStatus,
)

PATIENT_LIST_RELATED = ("institution", "doctor__user", "sex", "gender")


def patient_list(*, user: Any) -> QuerySet[Patient]:
    return patients_visible_to(user).select_related(*PATIENT_LIST_RELATED)


# What a list row shows (PatientSerializer): the patient's own columns, the institution and
# the doctor's name. Sex and gender codes come from scalar subqueries rather than joins:
# with two more tables in the join, PostgreSQL spent about 1.5 ms planning each page.
PATIENT_ROW_FIELDS = (
    "uuid",
    "created_at",
    "updated_at",
    "user_id",
    "institution_id",
    "doctor_id",
    "sex_id",
    "gender_id",
    "mrn",
    "first_name",
    "last_name",
    "date_of_birth",
    "validation_status",
    "is_active",
    "institution__uuid",
    "institution__name",
    "doctor__uuid",
    "doctor__user__first_name",
    "doctor__user__last_name",
    "doctor__user__email",
)


def patient_rows(patients: QuerySet[Patient]) -> QuerySet[Patient]:
    """``patients`` shaped for a list page: only the columns a row shows, codes as annotations."""
    return (
        patients.select_related("institution", "doctor__user")
        .only(*PATIENT_ROW_FIELDS)
        .annotate(
            sex_code=Subquery(Sex.objects.filter(pk=OuterRef("sex_id")).values("code")[:1]),
            gender_code=Subquery(Gender.objects.filter(pk=OuterRef("gender_id")).values("code")[:1]),
        )
    )


def patient_page_parts(*, user: Any) -> VisiblePatients:
    """The patients ``user`` may view, for keyset pages (``config.pagination``), rows shaped for a list."""
    return VisiblePatients(user, load=patient_rows)


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


def record_list(
    *,
    patient: Patient,
    status: str | None = RecordStatus.CURRENT,
    record_type: str | None = None,
    effective_from: datetime.date | None = None,
    effective_to: datetime.date | None = None,
    system: str | None = None,
    code: str | None = None,
) -> QuerySet[MedicalRecord]:
    """``patient``'s records (current versions unless ``status`` says otherwise), with their ledger entry id.

    The caller has already asked ``clinical.access`` whether the patient is
    visible. ``system`` (a URI or an alias such as ``loinc``) and ``code``
    match the coding pairs in ``record_metadata`` through its GIN index.
    """
    records = MedicalRecord.objects.filter(patient=patient)
    if status:
        records = records.filter(status=status)
    if record_type:
        records = records.filter(record_type=record_type)
    if effective_from:
        records = records.filter(effective_date__gte=effective_from)
    if effective_to:
        records = records.filter(effective_date__lte=effective_to)
    if code:
        coding = {"code": code} if not system else {"system": system_uri(system), "code": code}
        records = records.filter(record_metadata__contains={"codings": [coding]})
    elif system:
        records = records.filter(record_metadata__contains={"codings": [{"system": system_uri(system)}]})
    return with_record_details(records)


def with_record_details(records: QuerySet[MedicalRecord]) -> QuerySet[MedicalRecord]:
    """Joins and annotations the record serializer reads, so a page costs a fixed number of queries."""
    version_entry = LedgerEntry.objects.filter(
        record_id=OuterRef("pk"), version=OuterRef("version"), kind=LedgerEntryKind.VERSION
    ).order_by("seq")
    return records.select_related("patient", "institution", "author", "verified_by").annotate(
        ledger_entry_uuid=Subquery(version_entry.values("uuid")[:1]),
        supersedes_uuid=F("supersedes__uuid"),
    )


def document_list(*, patient: Patient) -> QuerySet[Any]:
    """``patient``'s documents, newest first, with what the API shows of their links and uploader.

    The caller has already asked ``clinical.access`` whether the patient is visible.
    """
    from clinical.models import Document

    return (
        Document.objects.filter(patient=patient)
        .select_related("patient", "uploaded_by")
        .annotate(
            medical_record_uuid=F("medical_record__uuid"),
            appointment_uuid=F("appointment__uuid"),
            prescription_uuid=F("prescription__uuid"),
            extraction_status=F("extraction__status"),
            extraction_engine=F("extraction__engine"),
        )
    )


# Care workflow ----------------------------------------------------------------------------

APPOINTMENT_RELATED = ("patient", "doctor__user", "institution", "booked_by", "cancelled_by")


def appointment_list(*, patient: Patient) -> QuerySet[Any]:
    """``patient``'s appointments (newest start first) with their parties, for the API.

    The caller has already asked ``clinical.access`` whether the patient is visible.
    """
    from clinical.models import Appointment

    return (
        Appointment.objects.filter(patient=patient)
        .select_related(*APPOINTMENT_RELATED)
        .annotate(prescription_uuid=F("prescription__uuid"))
        .order_by("-starts_at", "-id")
    )


# Every civil time zone lies within UTC-12 and UTC+14.
_EARLIEST_OFFSET = datetime.timedelta(hours=14)
_LATEST_OFFSET = datetime.timedelta(hours=12)


def doctor_day(*, user: Any, doctor: Doctor, day: datetime.date) -> list[Any]:
    """``doctor``'s appointments that start on ``day``, each on the clock of the institution it is at,
    of patients ``user`` may see, in start order.

    A doctor working in two time zones sees an appointment on the day it has where it happens.
    """
    from clinical.models import Appointment

    midnight = datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC)
    start, end = midnight - _EARLIEST_OFFSET, midnight + datetime.timedelta(days=1) + _LATEST_OFFSET
    appointments = Appointment.objects.filter(doctor=doctor, starts_at__gte=start, starts_at__lt=end)
    if not getattr(user, "is_superuser", False):
        appointments = appointments.filter(patient__in=patients_visible_to(user))
    candidates = (
        appointments.select_related("patient", "institution")
        .annotate(prescription_uuid=F("prescription__uuid"))
        .order_by("starts_at", "id")
    )
    return [a for a in candidates if a.starts_at.astimezone(a.time_zone).date() == day]


def prescription_list(*, patient: Patient) -> QuerySet[Any]:
    """``patient``'s prescriptions, newest first, with their items, appointment and documents.

    The caller has already asked ``clinical.access`` whether the patient is visible.
    """
    from django.db.models import Prefetch

    from clinical.models import Document, Prescription, PrescriptionItem

    return (
        Prescription.objects.filter(patient=patient)
        .select_related("patient", "doctor__user", "appointment__institution", "issued_by", "printable")
        .prefetch_related(
            Prefetch(
                "items",
                queryset=PrescriptionItem.objects.select_related("medication", "medical_record").order_by("position"),
            ),
            Prefetch("documents", queryset=Document.objects.order_by("created_at", "id")),
        )
    )


def appointments_left_by(membership: Any) -> QuerySet[Any]:
    """Scheduled appointments still to come that ``membership``'s doctor holds at its institution.

    After the membership ends they need another doctor or a cancellation; the
    booking rules are not applied again to rows already booked.
    """
    from django.utils import timezone

    from clinical.models import Appointment, AppointmentStatus, MembershipRole

    if membership.role != MembershipRole.DOCTOR:
        return Appointment.objects.none()
    return Appointment.objects.filter(
        doctor__user_id=membership.user_id,
        institution_id=membership.institution_id,
        status=AppointmentStatus.SCHEDULED,
        starts_at__gte=timezone.now(),
    )


def awaiting_prescription(*, user: Any) -> QuerySet[Any]:
    """``user``'s own appointments that may get a prescription now (``prescriptions.prescription_issue``'s
    rules: begun, not cancelled or missed, none yet), of patients they may change; the last 90 days."""
    from django.utils import timezone

    from clinical.access import patients_changeable_by
    from clinical.models import Appointment, AppointmentStatus

    now = timezone.now()
    return (
        Appointment.objects.filter(
            doctor__user=user,
            prescription__isnull=True,
            starts_at__lte=now,
            starts_at__gte=now - datetime.timedelta(days=90),
            status__in=[AppointmentStatus.SCHEDULED, AppointmentStatus.COMPLETED],
            patient__in=patients_changeable_by(user),
        )
        .select_related("patient", "institution")
        .order_by("-starts_at", "-id")
    )


def doctors_seen_by(*, user: Any) -> QuerySet[Doctor]:
    """The doctors the day view offers ``user``: themselves, the doctors working where they work,
    and the doctors of patients granted to them (everyone's, for a superuser)."""
    doctors = Doctor.objects.filter(is_active=True).select_related("user", "institution")
    scope = scope_of(user, VIEW)
    if scope.everything:
        return doctors
    working_there = InstitutionMembership.objects.active().filter(
        role=MembershipRole.DOCTOR, institution_id__in=scope.institution_ids
    )
    granted = Patient.objects.filter(pk__in=scope.granted_ids)
    return doctors.filter(
        Q(user_id=user.pk) | Q(user_id__in=working_there.values("user_id")) | Q(pk__in=granted.values("doctor_id"))
    )
