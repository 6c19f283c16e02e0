"""Prescriptions: what a doctor prescribes at an appointment.

At most one prescription per appointment (the seed's one-to-one), written by
the appointment's doctor for the appointment's patient. That equality is held
by PostgreSQL, not only by the service: the prescription's
``(appointment_id, patient_id, doctor_id)`` is a foreign key to the same three
columns of the appointment (a composite key added in migration 0010, named
``PRESCRIPTION_MATCHES_APPOINTMENT``), so a prescription can never name
another doctor or patient than its appointment's, and the appointment's
patient and doctor cannot change under it. Triggers of the same migration
hold the visit rules: a prescription needs a visit that has begun and was
not cancelled or missed (``PRESCRIPTION_VISIT``), and a visit with a
prescription cannot then be cancelled, missed or moved
(``APPOINTMENT_KEEPS_PRESCRIPTION``).

Each item is one medication from the catalog with its dose, route, frequency,
duration, quantity and instructions; issuing the prescription writes one
PRESCRIPTION medical record (a FHIR MedicationRequest) per item, which is the
clinical evidence. The printable PDF and signed copies are documents pointing
to the prescription. Rows are written by ``clinical.prescriptions`` only.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.fields import EncryptedManager, EncryptedTextField
from accounts.models import TimestampedModel
from clinical.models.care import Appointment
from clinical.models.catalogs import Medication
from clinical.models.directory import Doctor, Patient
from clinical.models.records import MedicalRecord

PRESCRIPTION_MATCHES_APPOINTMENT = "clinical_prescription_matches_appointment"
APPOINTMENT_PARTIES_UNIQUE = "clinical_appointment_parties_unique"
PRESCRIPTION_VISIT = "clinical_prescription_visit"
APPOINTMENT_KEEPS_PRESCRIPTION = "clinical_appointment_keeps_prescription"


class Route(models.TextChoices):
    """Routes of administration, each with its SNOMED CT code (``ROUTE_CODES``) for FHIR."""

    ORAL = "oral", "Oral"
    SUBLINGUAL = "sublingual", "Sublingual"
    TOPICAL = "topical", "Topical (skin)"
    TRANSDERMAL = "transdermal", "Transdermal"
    INHALATION = "inhalation", "Inhalation"
    NASAL = "nasal", "Nasal"
    OPHTHALMIC = "ophthalmic", "Eye"
    OTIC = "otic", "Ear"
    RECTAL = "rectal", "Rectal"
    VAGINAL = "vaginal", "Vaginal"
    SUBCUTANEOUS = "subcutaneous", "Subcutaneous injection"
    INTRAMUSCULAR = "intramuscular", "Intramuscular injection"
    INTRAVENOUS = "intravenous", "Intravenous"


ROUTE_CODES: dict[str, str] = {
    Route.ORAL: "26643006",
    Route.SUBLINGUAL: "37839007",
    Route.TOPICAL: "6064005",
    Route.TRANSDERMAL: "45890007",
    Route.INHALATION: "447694001",
    Route.NASAL: "46713006",
    Route.OPHTHALMIC: "54485002",
    Route.OTIC: "10547007",
    Route.RECTAL: "37161004",
    Route.VAGINAL: "16857009",
    Route.SUBCUTANEOUS: "34206005",
    Route.INTRAMUSCULAR: "78421000",
    Route.INTRAVENOUS: "47625008",
}


class Frequency(models.TextChoices):
    """How often a dose is taken; ``FREQUENCY_TIMING`` gives each its FHIR Timing.repeat."""

    ONCE_DAILY = "once_daily", "Once a day"
    TWICE_DAILY = "twice_daily", "Twice a day"
    THREE_TIMES_DAILY = "three_times_daily", "Three times a day"
    FOUR_TIMES_DAILY = "four_times_daily", "Four times a day"
    EVERY_4_HOURS = "every_4_hours", "Every 4 hours"
    EVERY_6_HOURS = "every_6_hours", "Every 6 hours"
    EVERY_8_HOURS = "every_8_hours", "Every 8 hours"
    AT_BEDTIME = "at_bedtime", "At bedtime"
    ONCE_WEEKLY = "once_weekly", "Once a week"
    AS_NEEDED = "as_needed", "When needed"
    ONCE = "once", "Once only"


# (frequency, period, period unit) for FHIR Timing.repeat; extra keys where needed.
FREQUENCY_TIMING: dict[str, dict[str, object]] = {
    Frequency.ONCE_DAILY: {"frequency": 1, "period": 1, "periodUnit": "d"},
    Frequency.TWICE_DAILY: {"frequency": 2, "period": 1, "periodUnit": "d"},
    Frequency.THREE_TIMES_DAILY: {"frequency": 3, "period": 1, "periodUnit": "d"},
    Frequency.FOUR_TIMES_DAILY: {"frequency": 4, "period": 1, "periodUnit": "d"},
    Frequency.EVERY_4_HOURS: {"frequency": 1, "period": 4, "periodUnit": "h"},
    Frequency.EVERY_6_HOURS: {"frequency": 1, "period": 6, "periodUnit": "h"},
    Frequency.EVERY_8_HOURS: {"frequency": 1, "period": 8, "periodUnit": "h"},
    Frequency.AT_BEDTIME: {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["HS"]},
    Frequency.ONCE_WEEKLY: {"frequency": 1, "period": 1, "periodUnit": "wk"},
    Frequency.AS_NEEDED: {},
    Frequency.ONCE: {"count": 1},
}


class Prescription(TimestampedModel):
    appointment = models.OneToOneField(Appointment, on_delete=models.PROTECT, related_name="prescription")
    # Equal to the appointment's (composite foreign key, see the module docstring).
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="prescriptions", db_index=False)
    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, related_name="prescriptions")
    issued_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    notes = EncryptedTextField(null=True, blank=True, help_text="For the patient; printed on the prescription.")
    # The PDF generated by the ``clinical.prescription_pdf`` task, once it ran.
    printable = models.OneToOneField(
        "clinical.Document", on_delete=models.PROTECT, null=True, blank=True, related_name="+", editable=False
    )

    objects = EncryptedManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["patient", "created_at", "id"], name="clinical_prescription_patient")]

    def __str__(self) -> str:
        return f"Prescription {self.uuid}"


class PrescriptionItem(TimestampedModel):
    prescription = models.ForeignKey(Prescription, on_delete=models.PROTECT, related_name="items")
    position = models.PositiveSmallIntegerField(help_text="Order on the prescription, from 1.")
    medication = models.ForeignKey(Medication, on_delete=models.PROTECT, related_name="+")
    dose = models.CharField(max_length=60, help_text="Each dose, e.g. '1 tablet' or '5 ml'.")
    route = models.CharField(max_length=20, choices=Route.choices, default=Route.ORAL)
    frequency = models.CharField(max_length=20, choices=Frequency.choices)
    duration_days = models.PositiveSmallIntegerField(help_text="How many days to take it.")
    quantity = models.PositiveIntegerField(help_text="How many units to dispense.")
    instructions = EncryptedTextField(null=True, blank=True, help_text="E.g. 'after meals'.")
    # The PRESCRIPTION record (FHIR MedicationRequest) written for this item.
    medical_record = models.OneToOneField(MedicalRecord, on_delete=models.PROTECT, related_name="prescription_item")

    objects = EncryptedManager()

    class Meta:
        ordering = ["prescription", "position"]
        constraints = [
            models.UniqueConstraint(fields=["prescription", "position"], name="clinical_prescriptionitem_position"),
            models.CheckConstraint(condition=Q(position__gte=1), name="clinical_prescriptionitem_position_positive"),
            models.CheckConstraint(
                condition=Q(duration_days__gte=1, duration_days__lte=365),
                name="clinical_prescriptionitem_duration_range",
            ),
            models.CheckConstraint(
                condition=Q(quantity__gte=1, quantity__lte=10000), name="clinical_prescriptionitem_quantity_range"
            ),
            models.CheckConstraint(condition=~Q(dose=""), name="clinical_prescriptionitem_dose_given"),
            models.CheckConstraint(condition=Q(route__in=Route.values), name="clinical_prescriptionitem_route_valid"),
            models.CheckConstraint(
                condition=Q(frequency__in=Frequency.values), name="clinical_prescriptionitem_frequency_valid"
            ),
        ]

    def __str__(self) -> str:
        # No medication or dose: this is the audit log's label for the row, and what is prescribed is PHI.
        return f"Prescription item {self.uuid}"
