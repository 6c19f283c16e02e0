"""Medical records: the immutable, FHIR R4 evidence of a patient's care, and their integrity ledger.

A record holds one FHIR resource, validated with ``fhir.resources.R4B`` and
stored encrypted exactly as submitted, plus ``record_metadata`` (plain JSONB)
with what is searched: coding system and code pairs, effective date,
categories. The payload never changes once written: an amendment is a new
version of the same series that supersedes the old one (which stays
readable), and a mistake is marked entered-in-error with a reason. A database
trigger refuses updates to the columns that define what a record says.

``data_hash`` is SHA-256 over the RFC 8785 canonical form of the plaintext
(``clinical.canonical``), so key rotation, which rewrites only ciphertext,
leaves it alone. Every write appends a :class:`LedgerEntry` in the same
transaction; entries are hash-chained (``prev_hash`` → ``entry_hash``) and
point to the record, never the reverse. See ``clinical.ledger``.
"""

from __future__ import annotations

import uuid as uuid_lib

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q

from accounts.fields import EncryptedJSONField, EncryptedManager, EncryptedQuerySet, EncryptedTextField
from accounts.models import TimestampedModel
from clinical.models.directory import MedicalInstitution, Patient


class RecordType(models.TextChoices):
    DIAGNOSIS = "diagnosis", "Diagnosis"
    LAB_RESULT = "lab_result", "Lab result"
    PRESCRIPTION = "prescription", "Prescription"
    TREATMENT_PLAN = "treatment_plan", "Treatment plan"
    MEDICAL_HISTORY = "medical_history", "Medical history"
    VITAL_SIGNS = "vital_signs", "Vital signs"
    IMAGING = "imaging", "Imaging"
    VACCINATION = "vaccination", "Vaccination"
    SYMPTOM = "symptom", "Symptom"


class RecordSource(models.TextChoices):
    MANUAL = "manual", "Entered by staff"
    PATIENT_INPUT = "patient_input", "Patient input"
    AI_ANALYSIS = "ai_analysis", "AI analysis"
    IMPORT = "import", "Import"


class RecordStatus(models.TextChoices):
    CURRENT = "current", "Current"
    SUPERSEDED = "superseded", "Superseded by an amendment"
    ENTERED_IN_ERROR = "entered_in_error", "Entered in error"


class Interpretation(models.TextChoices):
    LOW = "low", "Low"
    NORMAL = "normal", "Normal"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class MedicalRecordQuerySet(EncryptedQuerySet):
    def current(self) -> MedicalRecordQuerySet:
        return self.filter(status=RecordStatus.CURRENT)


class MedicalRecord(TimestampedModel):
    # Indexed by the (patient, ...) indexes below; a column of its own would only cost writes.
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="records", db_index=False)
    record_type = models.CharField(max_length=20, choices=RecordType.choices)
    resource_type = models.CharField(max_length=40, editable=False)
    payload = EncryptedJSONField()
    record_metadata = models.JSONField(default=dict, blank=True, editable=False)
    effective_date = models.DateField(null=True, blank=True, editable=False)
    data_hash = models.CharField(max_length=64, editable=False)

    # Versions: every version of one record shares ``series``; the newest is current.
    series = models.UUIDField(default=uuid_lib.uuid4, editable=False)
    version = models.PositiveIntegerField(default=1, editable=False)
    supersedes = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="superseded_by", editable=False
    )
    status = models.CharField(max_length=20, choices=RecordStatus.choices, default=RecordStatus.CURRENT)
    amendment_reason = EncryptedTextField(null=True, blank=True)
    error_reason = EncryptedTextField(null=True, blank=True)
    marked_in_error_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    marked_in_error_at = models.DateTimeField(null=True, blank=True)

    source = models.CharField(max_length=16, choices=RecordSource.choices, default=RecordSource.MANUAL)
    severity = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1 (mild) to 10 (critical).")
    confidence = models.DecimalField(
        max_digits=3, decimal_places=2, null=True, blank=True, help_text="0.00 to 1.00, for AI and imports."
    )
    interpretation = models.CharField(max_length=10, choices=Interpretation.choices, null=True, blank=True)
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    institution = models.ForeignKey(
        MedicalInstitution, on_delete=models.PROTECT, null=True, blank=True, related_name="records"
    )

    objects = EncryptedManager.from_queryset(MedicalRecordQuerySet)()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["series", "version"], name="clinical_record_series_version"),
            models.UniqueConstraint(
                fields=["series"], condition=Q(status=RecordStatus.CURRENT), name="clinical_record_one_current"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="clinical_record_version_positive"),
            models.CheckConstraint(
                condition=Q(severity__isnull=True) | Q(severity__gte=1, severity__lte=10),
                name="clinical_record_severity_range",
            ),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | Q(confidence__gte=0, confidence__lte=1),
                name="clinical_record_confidence_range",
            ),
            models.CheckConstraint(
                condition=Q(verified_by__isnull=True, verified_at__isnull=True)
                | Q(verified_by__isnull=False, verified_at__isnull=False),
                name="clinical_record_verified_together",
            ),
            models.CheckConstraint(
                condition=~Q(status=RecordStatus.ENTERED_IN_ERROR)
                | Q(error_reason__isnull=False, marked_in_error_at__isnull=False),
                name="clinical_record_error_has_reason",
            ),
            models.CheckConstraint(condition=Q(data_hash__regex=r"^[0-9a-f]{64}$"), name="clinical_record_hash_format"),
            models.CheckConstraint(
                condition=Q(version=1, supersedes__isnull=True) | Q(version__gt=1, supersedes__isnull=False),
                name="clinical_record_version_chain",
            ),
        ]
        indexes = [
            models.Index(fields=["patient", "created_at", "id"], name="clinical_record_patient"),
            models.Index(fields=["patient", "effective_date"], name="clinical_record_effective"),
            GinIndex(fields=["record_metadata"], name="clinical_record_metadata"),
            # For the PROTECT check when a user is deleted. Partial: a new record has neither
            # (NULL), so its INSERT does not touch these indexes.
            models.Index(
                fields=["verified_by"], condition=Q(verified_by__isnull=False), name="clinical_record_verified_by"
            ),
            models.Index(
                fields=["marked_in_error_by"],
                condition=Q(marked_in_error_by__isnull=False),
                name="clinical_record_error_by",
            ),
        ]
        permissions = [("verify_medicalrecord", "Can verify medical records")]

    def __str__(self) -> str:
        return f"{self.get_record_type_display()} v{self.version} ({self.resource_type})"

    @property
    def is_current(self) -> bool:
        return self.status == RecordStatus.CURRENT


class LedgerEntryKind(models.TextChoices):
    VERSION = "version", "Version written"
    VERIFIED = "verified", "Verified"
    ENTERED_IN_ERROR = "entered_in_error", "Marked entered in error"
    TOMBSTONE = "tombstone", "Deleted by policy"


class LedgerEntry(models.Model):
    """One link of the integrity chain. Append-only: a trigger refuses UPDATE and DELETE.

    ``record`` is a plain reference without a database constraint: the entry
    outlives a record deleted by policy, whose tombstone is a later entry.
    """

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(default=uuid_lib.uuid4, unique=True, editable=False)
    seq = models.BigIntegerField(unique=True)
    record = models.ForeignKey(  # indexed by (record, seq) below
        MedicalRecord, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="ledger_entries"
    )
    record_uuid = models.UUIDField()
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, choices=LedgerEntryKind.choices)
    data_hash = models.CharField(max_length=64)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["seq"]
        verbose_name_plural = "ledger entries"
        indexes = [models.Index(fields=["record", "seq"], name="clinical_ledger_record")]
        constraints = [
            models.CheckConstraint(condition=Q(seq__gte=1), name="clinical_ledger_seq_positive"),
            # A constraint rather than unique=True, which adds a LIKE index no one searches hashes with.
            models.UniqueConstraint(fields=["entry_hash"], name="clinical_ledger_entry_hash_unique"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.entry_hash[:12]}"


class LedgerHead(models.Model):
    """The chain's last link, in one row (``id`` 1). Writers extend the chain by updating it.

    Not the source of truth: the entries are, and ``verify_integrity`` checks
    the head against the last one. The row is what serialises writers: an
    UPDATE waits for the row lock and then sees the committed head.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    entry_hash = models.CharField(max_length=64)
    prev_hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="clinical_ledgerhead_single_row")]

    def __str__(self) -> str:
        return f"head #{self.seq}"


class LedgerCheckpoint(models.Model):
    """The chain head as published at a moment (by the scheduled task or a custom publisher)."""

    id = models.BigAutoField(primary_key=True)
    seq = models.BigIntegerField()
    entry_hash = models.CharField(max_length=64)
    published_to = models.CharField(max_length=200, default="database")
    receipt = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"head #{self.seq} {self.entry_hash[:12]}"
