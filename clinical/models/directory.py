"""The directory: institutions, memberships, doctors, patients and health profiles.

Rules that a bulk update or raw SQL could break live in the database. Those
Django cannot declare (the composite foreign key from a patient to its
doctor's institution, the "not in the future" date trigger, the doctor's
membership trigger) are added by raw SQL in the migrations and named in
``clinical.schema``.
"""

from __future__ import annotations

import datetime
import zoneinfo
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.fields import EncryptedManager, EncryptedTextField
from accounts.models import TimestampedModel
from clinical.models.catalogs import (
    BloodType,
    Country,
    Gender,
    InstitutionType,
    Region,
    Sex,
    Specialty,
)

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
e164_validator = RegexValidator(E164_PATTERN, "Enter the number in international E.164 form, for example +14155550123.")
EARLIEST_BIRTH_DATE = datetime.date(1890, 1, 1)


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone.", code="invalid_time_zone")


class MedicalInstitution(TimestampedModel):
    name = models.CharField(max_length=200)
    code = models.SlugField(max_length=40, unique=True, help_text="Short code, used in MRNs.")
    institution_type = models.ForeignKey(InstitutionType, on_delete=models.PROTECT)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    country = models.ForeignKey(Country, on_delete=models.PROTECT)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, null=True, blank=True)
    license_number = models.CharField(max_length=60, blank=True)
    website = models.URLField(blank=True)
    is_active = models.BooleanField(default=True)
    next_mrn = models.PositiveBigIntegerField(default=1, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(next_mrn__gte=1), name="clinical_institution_next_mrn_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class MembershipRole(models.TextChoices):
    DOCTOR = "doctor", "Doctor"
    NURSE = "nurse", "Nurse"
    INSTITUTION_ADMIN = "institution_admin", "Institution admin"
    STAFF = "staff", "Front-desk staff"


class MembershipQuerySet(models.QuerySet["InstitutionMembership"]):
    def active(self, at: datetime.datetime | None = None) -> MembershipQuerySet:
        at = at or timezone.now()
        return self.filter(Q(valid_until__isnull=True) | Q(valid_until__gt=at), valid_from__lte=at)


class InstitutionMembership(TimestampedModel):
    """A user works at an institution in a role, from a moment until another."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="memberships")
    institution = models.ForeignKey(MedicalInstitution, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=32, choices=MembershipRole.choices)
    valid_from = models.DateTimeField(default=timezone.now)
    valid_until = models.DateTimeField(null=True, blank=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["institution__name", "user__email"]
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_until__isnull=True) | Q(valid_until__gt=models.F("valid_from")),
                name="clinical_membership_ends_after_start",
            ),
            models.UniqueConstraint(
                fields=["user", "institution", "role"],
                condition=Q(valid_until__isnull=True),
                name="clinical_membership_one_open_per_role",
            ),
        ]
        indexes = [models.Index(fields=["user", "institution"])]

    def __str__(self) -> str:
        return f"{self.user} — {self.get_role_display()} at {self.institution}"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.valid_from <= now and (self.valid_until is None or self.valid_until > now)


class Doctor(TimestampedModel):
    """A clinician. ``institution`` is the primary one; an active membership there is required."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="doctor")
    institution = models.ForeignKey(MedicalInstitution, on_delete=models.PROTECT, related_name="doctors")
    specialty = models.ForeignKey(Specialty, on_delete=models.PROTECT, related_name="doctors")
    license_number = models.CharField(max_length=60)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["user__last_name", "user__first_name"]
        constraints = [
            models.UniqueConstraint(fields=["license_number"], name="clinical_doctor_license_unique"),
            # Target of the composite key that ties a patient's doctor to its institution.
            models.UniqueConstraint(fields=["id", "institution"], name="clinical_doctor_id_institution_key"),
        ]

    def __str__(self) -> str:
        return f"Dr {self.user.get_full_name() or self.user.email}"


class ValidationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    VALIDATED = "validated", "Validated"
    REJECTED = "rejected", "Rejected"


class Patient(TimestampedModel):
    """A person cared for at one institution by one primary doctor."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="patient",
        help_text="Portal account, if the patient has one.",
    )
    institution = models.ForeignKey(MedicalInstitution, on_delete=models.PROTECT, related_name="patients")
    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, related_name="patients")
    mrn = models.CharField("MRN", max_length=32, help_text="Medical record number, unique within the institution.")
    first_name = models.CharField(max_length=150)
    last_name = models.CharField(max_length=150)
    date_of_birth = models.DateField()
    sex = models.ForeignKey(Sex, on_delete=models.PROTECT)
    gender = models.ForeignKey(Gender, on_delete=models.PROTECT, null=True, blank=True)
    validation_status = models.CharField(
        max_length=16, choices=ValidationStatus.choices, default=ValidationStatus.PENDING
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    rejection_reason = EncryptedTextField(null=True, blank=True)
    notes = EncryptedTextField(null=True, blank=True)
    is_active = models.BooleanField(default=True)

    objects = EncryptedManager()

    class Meta:
        ordering = ["last_name", "first_name", "id"]
        permissions = [
            ("validate_patient", "Can validate or reject patients"),
            ("export_patient_data", "Can export a patient's data"),
            ("break_glass", "Can open a patient in an emergency (break the glass)"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["institution", "mrn"], name="clinical_patient_mrn_unique_per_institution"),
            models.CheckConstraint(
                condition=Q(date_of_birth__gte=EARLIEST_BIRTH_DATE), name="clinical_patient_dob_from_1890"
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        validation_status=ValidationStatus.PENDING,
                        reviewed_by__isnull=True,
                        reviewed_at__isnull=True,
                        rejection_reason__isnull=True,
                    )
                    | Q(
                        validation_status=ValidationStatus.VALIDATED,
                        reviewed_by__isnull=False,
                        reviewed_at__isnull=False,
                        rejection_reason__isnull=True,
                    )
                    | Q(
                        validation_status=ValidationStatus.REJECTED,
                        reviewed_by__isnull=False,
                        reviewed_at__isnull=False,
                        rejection_reason__isnull=False,
                    )
                ),
                name="clinical_patient_validation_consistent",
            ),
        ]
        indexes = [
            models.Index(fields=["doctor", "last_name", "first_name", "id"], name="clinical_patient_doctor_name"),
            models.Index(fields=["institution", "last_name", "first_name", "id"], name="clinical_patient_inst_name"),
            models.Index(
                fields=["institution"],
                condition=Q(validation_status="pending"),
                name="clinical_patient_pending",
            ),
            models.Index(fields=["created_at", "id"], name="clinical_patient_created"),
            # One ordered index per access route, so a page of the policy's
            # patient list reads at most a page from each (config.pagination).
            models.Index(fields=["doctor", "created_at", "id"], name="clinical_patient_doc_created"),
            models.Index(fields=["institution", "created_at", "id"], name="clinical_patient_inst_created"),
        ]

    def __str__(self) -> str:
        return f"{self.last_name}, {self.first_name} ({self.mrn})"

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"


class HealthProfile(TimestampedModel):
    """Current health facts about a patient (exactly one per patient)."""

    patient = models.OneToOneField(Patient, on_delete=models.PROTECT, related_name="health_profile")
    height_cm = models.DecimalField(
        max_digits=4,
        decimal_places=1,
        null=True,
        blank=True,
        validators=[MinValueValidator(20), MaxValueValidator(280)],
    )
    weight_kg = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0.2")), MaxValueValidator(700)],
    )
    blood_type = models.ForeignKey(BloodType, on_delete=models.PROTECT, null=True, blank=True)
    is_smoker = models.BooleanField(default=False)
    cigarettes_per_day = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MaxValueValidator(200)])
    consumes_alcohol = models.BooleanField(default=False)
    drinks_per_week = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MaxValueValidator(200)])
    physical_activity_minutes_per_week = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(10_080)]
    )
    emergency_contact_name = models.CharField(max_length=200, blank=True)
    emergency_contact_phone = models.CharField(max_length=16, blank=True, validators=[e164_validator])
    emergency_contact_relationship = models.CharField(max_length=60, blank=True)
    notes = EncryptedTextField(null=True, blank=True)

    objects = EncryptedManager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(height_cm__isnull=True) | Q(height_cm__gte=20, height_cm__lte=280),
                name="clinical_profile_height_range",
            ),
            models.CheckConstraint(
                condition=Q(weight_kg__isnull=True) | Q(weight_kg__gte=Decimal("0.2"), weight_kg__lte=700),
                name="clinical_profile_weight_range",
            ),
            models.CheckConstraint(
                condition=Q(is_smoker=False, cigarettes_per_day__isnull=True)
                | Q(
                    is_smoker=True,
                    cigarettes_per_day__isnull=False,
                    cigarettes_per_day__gte=0,
                    cigarettes_per_day__lte=200,
                ),
                name="clinical_profile_smoking_consistent",
            ),
            models.CheckConstraint(
                condition=Q(consumes_alcohol=False, drinks_per_week__isnull=True)
                | Q(
                    consumes_alcohol=True,
                    drinks_per_week__isnull=False,
                    drinks_per_week__gte=0,
                    drinks_per_week__lte=200,
                ),
                name="clinical_profile_alcohol_consistent",
            ),
            models.CheckConstraint(
                condition=Q(physical_activity_minutes_per_week__isnull=True)
                | Q(physical_activity_minutes_per_week__gte=0, physical_activity_minutes_per_week__lte=10_080),
                name="clinical_profile_activity_range",
            ),
            models.CheckConstraint(
                condition=Q(emergency_contact_name="", emergency_contact_phone="", emergency_contact_relationship="")
                | (
                    ~Q(emergency_contact_name="")
                    & ~Q(emergency_contact_phone="")
                    & ~Q(emergency_contact_relationship="")
                ),
                name="clinical_profile_emergency_contact_complete",
            ),
            models.CheckConstraint(
                condition=Q(emergency_contact_phone="") | Q(emergency_contact_phone__regex=E164_PATTERN),
                name="clinical_profile_emergency_phone_e164",
            ),
        ]

    def __str__(self) -> str:
        return f"Health profile of {self.patient}"

    @property
    def bmi(self) -> float | None:
        if not self.height_cm or not self.weight_kg:
            return None
        metres = float(self.height_cm) / 100
        return round(float(self.weight_kg) / (metres * metres), 1)
