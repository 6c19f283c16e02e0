"""The care workflow: appointments.

An appointment ties a patient to a doctor at an institution for a span of
time. The institution is stored, not derived from the doctor: a doctor who
moves leaves their past appointments where they happened.

Times are stored in UTC and shown in the institution's time zone. Rules a
bulk update or raw SQL could break live in PostgreSQL: the checks below, and
(added by raw SQL in the migration, named in ``clinical.schema``) the
exclusion constraints against overlapping scheduled appointments of a doctor
or of a patient, the status-transition trigger and the doctor-membership
trigger. Writes go through ``clinical.appointments``.
"""

from __future__ import annotations

import datetime
import zoneinfo

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from accounts.fields import EncryptedManager, EncryptedQuerySet, EncryptedTextField
from accounts.models import TimestampedModel
from clinical.models.directory import Doctor, MedicalInstitution, Patient

MAX_APPOINTMENT_DURATION = datetime.timedelta(hours=8)


class AppointmentStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    NO_SHOW = "no_show", "No-show"


# The only moves a status makes; the database trigger
# (clinical.schema.APPOINTMENT_STATUS_TRANSITION) holds the same table.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    AppointmentStatus.SCHEDULED: frozenset(
        {AppointmentStatus.COMPLETED, AppointmentStatus.CANCELLED, AppointmentStatus.NO_SHOW}
    ),
    AppointmentStatus.COMPLETED: frozenset(),
    AppointmentStatus.CANCELLED: frozenset(),
    AppointmentStatus.NO_SHOW: frozenset(),
}


class AppointmentQuerySet(EncryptedQuerySet):
    def scheduled(self) -> AppointmentQuerySet:
        return self.filter(status=AppointmentStatus.SCHEDULED)


class Appointment(TimestampedModel):
    # Each key leads a (key, starts_at) index below, which also serves the foreign key.
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="appointments", db_index=False)
    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, related_name="appointments", db_index=False)
    institution = models.ForeignKey(
        MedicalInstitution, on_delete=models.PROTECT, related_name="appointments", db_index=False
    )
    starts_at = models.DateTimeField(help_text="Stored in UTC.")
    ends_at = models.DateTimeField(help_text="Stored in UTC; the appointment ends just before it.")
    status = models.CharField(max_length=16, choices=AppointmentStatus.choices, default=AppointmentStatus.SCHEDULED)
    reason = EncryptedTextField(null=True, blank=True, help_text="Why the patient comes.")
    booked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancellation_reason = EncryptedTextField(null=True, blank=True)
    # Who recorded that the appointment took place (completed) or that the patient did not come (no-show).
    outcome_recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    outcome_recorded_at = models.DateTimeField(null=True, blank=True)

    objects = EncryptedManager.from_queryset(AppointmentQuerySet)()

    class Meta:
        ordering = ["starts_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=F("starts_at")), name="clinical_appointment_ends_after_start"
            ),
            models.CheckConstraint(
                condition=Q(ends_at__lte=F("starts_at") + MAX_APPOINTMENT_DURATION),
                name="clinical_appointment_at_most_8_hours",
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        status=AppointmentStatus.SCHEDULED,
                        cancelled_by__isnull=True,
                        cancelled_at__isnull=True,
                        cancellation_reason__isnull=True,
                        outcome_recorded_by__isnull=True,
                        outcome_recorded_at__isnull=True,
                    )
                    | Q(
                        status__in=[AppointmentStatus.COMPLETED, AppointmentStatus.NO_SHOW],
                        cancelled_by__isnull=True,
                        cancelled_at__isnull=True,
                        cancellation_reason__isnull=True,
                        outcome_recorded_by__isnull=False,
                        outcome_recorded_at__isnull=False,
                    )
                    | Q(
                        status=AppointmentStatus.CANCELLED,
                        cancelled_by__isnull=False,
                        cancelled_at__isnull=False,
                        cancellation_reason__isnull=False,
                        outcome_recorded_by__isnull=True,
                        outcome_recorded_at__isnull=True,
                    )
                ),
                name="clinical_appointment_status_consistent",
            ),
            # The target of the prescription's composite foreign key, which holds a
            # prescription's patient and doctor equal to its appointment's.
            models.UniqueConstraint(fields=["id", "patient", "doctor"], name="clinical_appointment_parties_unique"),
        ]
        indexes = [
            models.Index(fields=["doctor", "starts_at"], name="clinical_appt_doctor_start"),
            models.Index(fields=["patient", "starts_at"], name="clinical_appt_patient_start"),
            models.Index(fields=["institution", "starts_at"], name="clinical_appt_inst_start"),
        ]

    def __str__(self) -> str:
        return f"Appointment {self.uuid} ({self.get_status_display()})"

    @property
    def time_zone(self) -> zoneinfo.ZoneInfo:
        """The institution's time zone, in which the appointment is shown."""
        return zoneinfo.ZoneInfo(self.institution.time_zone)

    @property
    def local_starts_at(self) -> datetime.datetime:
        return self.starts_at.astimezone(self.time_zone)

    @property
    def local_ends_at(self) -> datetime.datetime:
        return self.ends_at.astimezone(self.time_zone)

    @property
    def duration(self) -> datetime.timedelta:
        return self.ends_at - self.starts_at
