"""Helpers shared by the care-workflow tests (appointments, prescriptions)."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils import timezone

from clinical.models import Appointment, AppointmentStatus, Medication


def visit(
    patient: Any,
    doctor: Any,
    *,
    status: str = AppointmentStatus.COMPLETED,
    starts_at: datetime.datetime | None = None,
    hours_ago: float = 2,
) -> Appointment:
    """An appointment that has begun (written around the services: bookings cannot start in the past),
    consistent for its status, booked by its doctor."""
    starts_at = starts_at or timezone.now() - datetime.timedelta(hours=hours_ago)
    outcome: dict[str, Any] = {}
    if status in (AppointmentStatus.COMPLETED, AppointmentStatus.NO_SHOW):
        outcome = {"outcome_recorded_by": doctor.user, "outcome_recorded_at": timezone.now()}
    elif status == AppointmentStatus.CANCELLED:
        outcome = {"cancelled_by": doctor.user, "cancelled_at": timezone.now(), "cancellation_reason": "Ill"}
    (appointment,) = Appointment.objects.bulk_create(
        [
            Appointment(
                patient=patient,
                doctor=doctor,
                institution_id=doctor.institution_id,
                starts_at=starts_at,
                ends_at=starts_at + datetime.timedelta(minutes=30),
                status=status,
                booked_by=doctor.user,
                **outcome,
            )
        ]
    )
    return appointment


def medication(name: str = "amoxicillin") -> Medication:
    """A catalog medication by generic name (the catalog's first if it has none of that name)."""
    return Medication.objects.filter(generic_name=name).order_by("id").first() or Medication.objects.order_by("id")[0]
