"""Demo care for ``seed_demo``: appointments past and future, prescriptions, a few documents.

Past appointments cannot be booked (the booking service refuses the past),
so they are inserted in bulk, consistent for their status; the database
checks them as usual (exclusion constraints, status rules). Future
appointments go through ``appointments.appointment_book``, prescriptions
through ``prescriptions.prescription_issue`` (so their items become
PRESCRIPTION records in the ledger and the PDF task runs after commit),
documents through ``services.document_upload`` (encrypted in storage).
A bounded number of patients get care, whatever the size of the seed.
"""

from __future__ import annotations

import datetime
import random
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.utils import timezone

from clinical import appointments, prescriptions, services
from clinical import models as m

CARE_PATIENTS = 40
LAB_REPORTS = 6
REASONS = (
    "Annual check-up",
    "Follow-up visit",
    "Cough and fever",
    "Blood pressure review",
    "Medication review",
    "Back pain",
    "Headaches",
    "Skin rash",
    "Diabetes review",
    "Vaccination",
)
CANCELLATIONS = ("Patient called to cancel", "Doctor unavailable", "Rebooked by the patient")
DOSES = {
    "tablet": "1 tablet",
    "capsule": "1 capsule",
    "inhaler": "2 puffs",
    "oral solution": "5 ml",
    "oral suspension": "5 ml",
    "cream": "thin layer",
    "ointment": "thin layer",
    "eye drops": "1 drop",
    "nasal spray": "1 spray",
    "patch": "1 patch",
    "suppository": "1 suppository",
    "injection": "1 injection",
}
ROUTE_BY_FORM = {
    "inhaler": m.Route.INHALATION,
    "cream": m.Route.TOPICAL,
    "ointment": m.Route.TOPICAL,
    "eye drops": m.Route.OPHTHALMIC,
    "nasal spray": m.Route.NASAL,
    "patch": m.Route.TRANSDERMAL,
    "suppository": m.Route.RECTAL,
    "injection": m.Route.SUBCUTANEOUS,
}


@dataclass
class CareCounts:
    appointments: int = 0
    prescriptions: int = 0
    documents: int = 0


class DemoCare:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.medications = list(m.Medication.objects.order_by("id"))
        self.taken: set[tuple[str, int, datetime.datetime]] = set()

    def _slot(self, patient: m.Patient, zone: zoneinfo.ZoneInfo, days: int) -> datetime.datetime | None:
        """A free half-hour on a weekday ``days`` from today (negative: past), 09:00-16:30 local time."""
        for _ in range(8):
            day = timezone.localdate() + datetime.timedelta(days=days + self.rng.randint(0, 3))
            if day.weekday() >= 5:
                day += datetime.timedelta(days=7 - day.weekday())
            minute = self.rng.randrange(9 * 60, 17 * 60, 30)
            start = datetime.datetime.combine(day, datetime.time(minute // 60, minute % 60), tzinfo=zone)
            start = start.astimezone(datetime.UTC)
            keys = {("doctor", patient.doctor_id, start), ("patient", patient.pk, start)}
            if not keys & self.taken:
                self.taken |= keys
                return start
        return None

    def _past(self, patient: m.Patient, zone: zoneinfo.ZoneInfo, now: datetime.datetime) -> list[m.Appointment]:
        rows = []
        for _ in range(self.rng.randint(1, 3)):
            start = self._slot(patient, zone, -self.rng.randint(10, 360))
            if start is None or start >= now:
                continue
            status = self.rng.choices(
                [m.AppointmentStatus.COMPLETED, m.AppointmentStatus.CANCELLED, m.AppointmentStatus.NO_SHOW],
                weights=[80, 12, 8],
            )[0]
            closed = start + datetime.timedelta(minutes=30)
            outcome: dict[str, Any] = (
                {
                    "cancelled_by": patient.doctor.user,
                    "cancelled_at": start - datetime.timedelta(days=1),
                    "cancellation_reason": self.rng.choice(CANCELLATIONS),
                }
                if status == m.AppointmentStatus.CANCELLED
                else {"outcome_recorded_by": patient.doctor.user, "outcome_recorded_at": closed}
            )
            rows.append(
                m.Appointment(
                    patient=patient,
                    doctor=patient.doctor,
                    institution_id=patient.institution_id,
                    starts_at=start,
                    ends_at=closed,
                    status=status,
                    reason=self.rng.choice(REASONS),
                    booked_by=patient.doctor.user,
                    created_at=start - datetime.timedelta(days=self.rng.randint(1, 20)),
                    **outcome,
                )
            )
        return rows

    def _items(self) -> list[dict[str, Any]]:
        items = []
        for medication in self.rng.sample(self.medications, k=self.rng.randint(1, 3)):
            days = self.rng.choice([5, 7, 10, 14, 30, 90])
            frequency = self.rng.choice(
                [m.Frequency.ONCE_DAILY, m.Frequency.TWICE_DAILY, m.Frequency.THREE_TIMES_DAILY, m.Frequency.AS_NEEDED]
            )
            per_day = {m.Frequency.TWICE_DAILY: 2, m.Frequency.THREE_TIMES_DAILY: 3}.get(frequency, 1)
            items.append(
                {
                    "medication": medication,
                    "dose": DOSES.get(medication.form, "1 dose"),
                    "route": ROUTE_BY_FORM.get(medication.form, m.Route.ORAL),
                    "frequency": frequency,
                    "duration_days": days,
                    "quantity": min(10000, days * per_day),
                    "instructions": self.rng.choice(["After meals", "With water", "", "Avoid alcohol"]),
                }
            )
        return items

    def for_patients(self, patients: Sequence[m.Patient], counts: CareCounts) -> None:
        now = timezone.now()
        past: list[m.Appointment] = []
        for patient in patients:
            past += self._past(patient, zoneinfo.ZoneInfo(patient.institution.time_zone), now)
        from clinical.demo import bulk_insert  # the demo's checked bulk insert

        bulk_insert(m.Appointment, past)
        counts.appointments += len(past)
        for visit in past:
            if visit.status == m.AppointmentStatus.COMPLETED and self.rng.random() < 0.5:
                prescriptions.prescription_issue(
                    appointment=visit,
                    items=self._items(),
                    issued_by=visit.doctor.user,
                    notes=self.rng.choice(["", "Come back if it does not improve within a week."]),
                )
                counts.prescriptions += 1
        for patient in patients:
            if self.rng.random() < 0.6:
                start = self._slot(patient, zoneinfo.ZoneInfo(patient.institution.time_zone), self.rng.randint(1, 30))
                if start is None:
                    continue
                try:
                    appointments.appointment_book(
                        patient=patient,
                        doctor=patient.doctor,
                        institution=patient.institution,
                        starts_at=start,
                        ends_at=start + datetime.timedelta(minutes=30),
                        reason=self.rng.choice(REASONS),
                        booked_by=patient.doctor.user,
                    )
                except ValidationError:  # the doctor's membership ended, or the slot is taken: skip it
                    continue
                counts.appointments += 1
        for patient in patients[:LAB_REPORTS]:
            services.document_upload(
                patient=patient,
                upload=ContentFile(self._lab_report(patient).encode(), name="lab-report.txt"),
                kind=m.DocumentKind.LAB_REPORT,
                uploaded_by=patient.doctor.user,
            )
            counts.documents += 1

    def _lab_report(self, patient: m.Patient) -> str:
        rng = self.rng
        return (
            "LABORATORY REPORT\n"
            f"Patient: {patient.first_name} {patient.last_name}   MRN: {patient.mrn}\n"
            f"Collected: {timezone.localdate() - datetime.timedelta(days=rng.randint(1, 60))}\n\n"
            f"Haemoglobin        {rng.uniform(11.5, 16.5):.1f} g/dL   (12.0-16.0)\n"
            f"White cell count   {rng.uniform(4.0, 11.0):.1f} 10*9/L (4.0-11.0)\n"
            f"Platelets          {rng.randint(150, 400)} 10*9/L   (150-400)\n"
            f"Glucose, fasting   {rng.uniform(4.0, 7.5):.1f} mmol/L (3.9-5.5)\n"
        )


def seed_care(rng: random.Random, doctors: Sequence[m.Doctor]) -> CareCounts:
    """Care for up to ``CARE_PATIENTS`` of the demo doctors' validated patients."""
    counts = CareCounts()
    patients = list(
        m.Patient.objects.filter(doctor__in=doctors, validation_status=m.ValidationStatus.VALIDATED)
        .select_related("doctor__user", "institution")
        .order_by("id")[:CARE_PATIENTS]
    )
    DemoCare(rng).for_patients(patients, counts)
    return counts
