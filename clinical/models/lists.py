"""The curated current summary of a patient: conditions, medications, allergies.

These are the lists a clinician keeps up to date; medical records (a later
module) are the immutable evidence they may point to.
"""

from __future__ import annotations

import datetime

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.fields import EncryptedManager, EncryptedTextField
from accounts.models import TimestampedModel
from clinical.models.catalogs import CODE_SYSTEM_CHOICES, MedicalCondition, Medication
from clinical.models.directory import Doctor, Patient


class ConditionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    RECURRENCE = "recurrence", "Recurrence"
    REMISSION = "remission", "Remission"
    RESOLVED = "resolved", "Resolved"


class PatientCondition(TimestampedModel):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="conditions")
    condition = models.ForeignKey(MedicalCondition, on_delete=models.PROTECT)
    status = models.CharField(max_length=16, choices=ConditionStatus.choices, default=ConditionStatus.ACTIVE)
    onset_date = models.DateField(null=True, blank=True)
    resolved_date = models.DateField(null=True, blank=True)
    diagnosed_by = models.ForeignKey(Doctor, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    notes = EncryptedTextField(null=True, blank=True)

    objects = EncryptedManager()

    class Meta:
        ordering = ["-onset_date", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(resolved_date__isnull=True)
                | Q(onset_date__isnull=True)
                | Q(resolved_date__gte=F("onset_date")),
                name="clinical_patientcondition_resolved_after_onset",
            ),
            models.UniqueConstraint(
                fields=["patient", "condition"],
                condition=Q(status__in=["active", "recurrence"]),
                name="clinical_patientcondition_one_active",
            ),
        ]

    def __str__(self) -> str:
        return str(self.condition)


class PatientMedication(TimestampedModel):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="medications")
    medication = models.ForeignKey(Medication, on_delete=models.PROTECT)
    dose = models.CharField(max_length=100, blank=True, help_text="e.g. 1 tablet")
    route = models.CharField(max_length=50, blank=True, help_text="e.g. oral")
    frequency = models.CharField(max_length=100, blank=True, help_text="e.g. twice a day")
    start_date = models.DateField(default=datetime.date.today)
    end_date = models.DateField(null=True, blank=True)
    prescribed_by = models.ForeignKey(Doctor, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    notes = EncryptedTextField(null=True, blank=True)

    objects = EncryptedManager()

    class Meta:
        ordering = ["-start_date", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(end_date__isnull=True) | Q(end_date__gte=F("start_date")),
                name="clinical_patientmedication_end_not_before_start",
            ),
        ]

    def __str__(self) -> str:
        return str(self.medication)

    @property
    def is_current(self) -> bool:
        return self.end_date is None or self.end_date >= timezone.localdate()


class AllergyCategory(models.TextChoices):
    FOOD = "food", "Food"
    MEDICATION = "medication", "Medication"
    ENVIRONMENT = "environment", "Environment"
    BIOLOGIC = "biologic", "Biologic"


class AllergyCriticality(models.TextChoices):
    LOW = "low", "Low risk"
    HIGH = "high", "High risk"
    UNABLE_TO_ASSESS = "unable-to-assess", "Unable to assess"


class AllergySeverity(models.TextChoices):
    MILD = "mild", "Mild"
    MODERATE = "moderate", "Moderate"
    SEVERE = "severe", "Severe"


class PatientAllergy(TimestampedModel):
    """An allergy or intolerance, coded where a code is known (SNOMED CT, RxNorm…)."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="allergies")
    substance = models.CharField(max_length=200)
    code_system = models.CharField(max_length=100, choices=CODE_SYSTEM_CHOICES, blank=True)
    code = models.CharField(max_length=40, blank=True)
    category = models.CharField(max_length=16, choices=AllergyCategory.choices)
    criticality = models.CharField(max_length=20, choices=AllergyCriticality.choices, default=AllergyCriticality.LOW)
    severity = models.CharField(max_length=10, choices=AllergySeverity.choices, blank=True)
    reaction = EncryptedTextField(null=True, blank=True)
    recorded_on = models.DateField(default=datetime.date.today)

    objects = EncryptedManager()

    class Meta:
        verbose_name_plural = "patient allergies"
        ordering = ["substance"]
        constraints = [
            models.CheckConstraint(
                condition=Q(code_system="", code="") | (~Q(code_system="") & ~Q(code="")),
                name="clinical_patientallergy_code_has_system",
            ),
        ]

    def __str__(self) -> str:
        return self.substance
