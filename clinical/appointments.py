"""Writes for appointments: book, reschedule, cancel, complete, mark a no-show.

Each service is one transaction and raises ``django.core.exceptions.ValidationError``
with a dict naming the field at fault, like ``clinical.services``. Who may
call them is the caller's question (``clinical.access``).

The database holds the same rules (``clinical.schema``): two scheduled
appointments of one doctor or one patient cannot overlap (exclusion
constraints), a status only moves from scheduled to completed, cancelled or
no-show (trigger), and a booking needs the doctor's membership at the
institution (trigger). The overlap rule is left to the database alone: a
check in Python first would still race with a concurrent booking, so the
services turn the constraint's error into a ValidationError on ``starts_at``.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.audit import bind_actor
from clinical import access, schema
from clinical.models import (
    Appointment,
    AppointmentStatus,
    Doctor,
    InstitutionMembership,
    MedicalInstitution,
    MembershipRole,
    Patient,
)
from clinical.models.care import ALLOWED_TRANSITIONS, MAX_APPOINTMENT_DURATION
from clinical.services import validate

OVERLAP_MESSAGES = {
    schema.APPOINTMENT_DOCTOR_NO_OVERLAP: "The doctor already has an appointment at this time.",
    schema.APPOINTMENT_PATIENT_NO_OVERLAP: "The patient already has an appointment at this time.",
}


def _checked_times(starts_at: Any, ends_at: Any) -> tuple[datetime.datetime, datetime.datetime]:
    """Both times aware, in UTC, end after start, at most 8 hours apart, starting from now on."""
    errors = {}
    for name, value in (("starts_at", starts_at), ("ends_at", ends_at)):
        if not isinstance(value, datetime.datetime):
            errors[name] = "Give a date and time."
        elif timezone.is_naive(value):
            errors[name] = "Give the time with its time zone or UTC offset."
    if errors:
        raise ValidationError(errors)
    starts_at, ends_at = starts_at.astimezone(datetime.UTC), ends_at.astimezone(datetime.UTC)
    if ends_at <= starts_at:
        raise ValidationError({"ends_at": "The appointment must end after it starts."})
    if ends_at - starts_at > MAX_APPOINTMENT_DURATION:
        raise ValidationError({"ends_at": "An appointment lasts at most 8 hours."})
    if starts_at < timezone.now():
        raise ValidationError({"starts_at": "An appointment cannot start in the past."})
    return starts_at, ends_at


def _check_doctor_works_there(doctor: Doctor, institution: MedicalInstitution, ends_at: datetime.datetime) -> None:
    """The doctor is active and holds a doctor membership at ``institution`` now and until ``ends_at``."""
    if not doctor.is_active:
        raise ValidationError({"doctor": "This doctor is not active."})
    works_there = (
        InstitutionMembership.objects.active()
        .filter(user_id=doctor.user_id, institution=institution, role=MembershipRole.DOCTOR)
        .filter(Q(valid_until__isnull=True) | Q(valid_until__gte=ends_at))
        .exists()
    )
    if not works_there:
        raise ValidationError({"doctor": "The doctor has no doctor membership at this institution for that time."})


DEADLOCK_DETECTED = "40P01"


def _lock_calendars(appointment: Appointment) -> None:
    """Queue this transaction behind others booking the same doctor or patient (released at commit).

    Two concurrent inserts that conflict on an exclusion constraint wait for each other
    while checking it, and PostgreSQL then fails one with a deadlock. Taking the two
    calendars' locks first, always in the same order, turns that into a plain wait: the
    second booking then meets the first one's row and fails on the constraint.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY["
            "hashtextextended('caretrail.appointment.doctor.' || %s, 0),"
            "hashtextextended('caretrail.appointment.patient.' || %s, 0)]) AS k ORDER BY k",
            [appointment.doctor_id, appointment.patient_id],
        )


def _save_scheduled(appointment: Appointment, **save_options: Any) -> None:
    """Save in a savepoint; an overlap becomes a ValidationError on ``starts_at``, never a 500."""
    _lock_calendars(appointment)
    try:
        with transaction.atomic():
            appointment.save(**save_options)
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
        if constraint in OVERLAP_MESSAGES:
            raise ValidationError({"starts_at": OVERLAP_MESSAGES[constraint]}) from exc
        raise
    except OperationalError as exc:
        # Should a deadlock still happen (a writer that skipped _lock_calendars), the other
        # booking took the slot.
        if getattr(exc.__cause__, "sqlstate", None) == DEADLOCK_DETECTED:
            raise ValidationError({"starts_at": "Someone else just booked this time; choose another."}) from exc
        raise


def _has_prescription(appointment: Appointment) -> bool:
    from clinical.models import Prescription

    return Prescription.objects.filter(appointment_id=appointment.pk).exists()


def _locked(appointment: Appointment, *, to: str) -> Appointment:
    """The appointment, locked, if it may move to status ``to``.

    A visit with a prescription took place: it cannot then be cancelled or missed
    (the ``clinical_appointment_keeps_prescription`` trigger holds the same rule).
    """
    locked = Appointment.objects.select_for_update().get(pk=appointment.pk)
    if to not in ALLOWED_TRANSITIONS[locked.status]:
        raise ValidationError(
            {"status": f"A {locked.get_status_display().lower()} appointment cannot become {to.replace('_', '-')}."}
        )
    if to != AppointmentStatus.COMPLETED and _has_prescription(locked):
        raise ValidationError(
            {"status": f"This appointment has a prescription, so it cannot become {to.replace('_', '-')}."}
        )
    return locked


@transaction.atomic
def appointment_book(
    *,
    patient: Patient,
    doctor: Doctor,
    institution: MedicalInstitution,
    starts_at: datetime.datetime,
    ends_at: datetime.datetime,
    reason: str | None,
    booked_by: Any,
) -> Appointment:
    """Book ``patient`` with ``doctor`` at ``institution`` from ``starts_at`` until just before ``ends_at``.

    Times must be aware; they are stored in UTC. The doctor must hold a
    doctor membership at the institution now and until the appointment ends.
    A slot that overlaps a scheduled appointment of the doctor or of the
    patient is refused on ``starts_at``.
    """
    starts_at, ends_at = _checked_times(starts_at, ends_at)
    if not patient.is_active:
        raise ValidationError({"patient": "This patient is not active."})
    _check_doctor_works_there(doctor, institution, ends_at)
    if not access.doctor_reaches_patient(doctor, patient, institution):
        # The slot would block the doctor's calendar for a patient they cannot see, nor prescribe for.
        raise ValidationError(
            {
                "doctor": "This doctor cannot see this patient's record: book at the patient's institution, "
                "or give the doctor a care-team grant first."
            }
        )
    appointment = Appointment(
        patient=patient,
        doctor=doctor,
        institution=institution,
        starts_at=starts_at,
        ends_at=ends_at,
        reason=(reason or "").strip() or None,
        booked_by=booked_by,
    )
    validate(appointment)
    _save_scheduled(appointment, force_insert=True)
    return appointment


@transaction.atomic
def appointment_reschedule(
    *, appointment: Appointment, starts_at: datetime.datetime, ends_at: datetime.datetime, by: Any
) -> Appointment:
    """Move a scheduled appointment to new times, with the same doctor, patient and institution.

    The same rules as a booking apply to the new times. ``by`` is the user who
    moves it: the audit entry of the change names them when the request's
    audit context has no actor yet.
    """
    starts_at, ends_at = _checked_times(starts_at, ends_at)
    bind_actor(by)
    locked = Appointment.objects.select_for_update().get(pk=appointment.pk)
    if locked.status != AppointmentStatus.SCHEDULED:
        raise ValidationError({"status": f"A {locked.get_status_display().lower()} appointment cannot be moved."})
    if _has_prescription(locked):
        raise ValidationError({"status": "This appointment has a prescription, so it cannot be moved."})
    _check_doctor_works_there(locked.doctor, locked.institution, ends_at)
    locked.starts_at, locked.ends_at = starts_at, ends_at
    validate(locked)
    _save_scheduled(locked, update_fields=["starts_at", "ends_at", "updated_at"])
    return locked


@transaction.atomic
def appointment_cancel(*, appointment: Appointment, by: Any, reason: str) -> Appointment:
    """Cancel a scheduled appointment, saying who and why. Its slot is free again."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the appointment is cancelled."})
    locked = _locked(appointment, to=AppointmentStatus.CANCELLED)
    locked.status = AppointmentStatus.CANCELLED
    locked.cancelled_by = by
    locked.cancelled_at = timezone.now()
    locked.cancellation_reason = reason
    validate(locked)
    locked.save(update_fields=["status", "cancelled_by", "cancelled_at", "cancellation_reason", "updated_at"])
    return locked


def _record_outcome(appointment: Appointment, *, status: str, by: Any) -> Appointment:
    appointment.status = status
    appointment.outcome_recorded_by = by
    appointment.outcome_recorded_at = timezone.now()
    validate(appointment)
    appointment.save(update_fields=["status", "outcome_recorded_by", "outcome_recorded_at", "updated_at"])
    return appointment


@transaction.atomic
def appointment_complete(*, appointment: Appointment, by: Any) -> Appointment:
    """Record that a scheduled appointment took place."""
    locked = _locked(appointment, to=AppointmentStatus.COMPLETED)
    return _record_outcome(locked, status=AppointmentStatus.COMPLETED, by=by)


@transaction.atomic
def appointment_mark_no_show(*, appointment: Appointment, by: Any) -> Appointment:
    """Record that the patient did not come. Only once the appointment's start time has passed."""
    locked = _locked(appointment, to=AppointmentStatus.NO_SHOW)
    if timezone.now() < locked.starts_at:
        raise ValidationError({"status": "A patient can only miss an appointment once its start time has passed."})
    return _record_outcome(locked, status=AppointmentStatus.NO_SHOW, by=by)
