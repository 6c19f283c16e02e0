"""Documents: every stored file (photos, prescription files, lab reports, imaging, chat attachments).

The row says what the file is; the bytes live encrypted in the default
storage under ``storage_key`` (random, never the user's file name), sealed
for the row's UUID (``clinical.files``). ``sha256`` and ``size`` are of the
plaintext, so key rotation, which rewrites only the stored object, leaves
them alone. Rows are written by ``services.document_upload`` only.

A document belongs to one patient and, optionally, to one of that patient's
clinical objects (a record, an appointment, a prescription). That the object is the same
patient's is checked by the service and enforced by a trigger
(``clinical_document_same_patient``, migrations 0008 and 0010).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.fields import EncryptedManager, EncryptedTextField
from accounts.models import TimestampedModel
from clinical.files.inspection import EXTENSIONS
from clinical.files.storage import STORED_KEY_REGEX
from clinical.models.care import Appointment
from clinical.models.directory import Patient
from clinical.models.records import MedicalRecord

# The file layer's allow-list; a row can only name a type that layer accepts.
DOCUMENT_CONTENT_TYPES = tuple(sorted(EXTENSIONS))


class DocumentKind(models.TextChoices):
    PATIENT_PHOTO = "patient_photo", "Patient photo"
    PRESCRIPTION_FILE = "prescription_file", "Prescription file"
    LAB_REPORT = "lab_report", "Lab report"
    IMAGING = "imaging", "Imaging"
    CHAT_ATTACHMENT = "chat_attachment", "Chat attachment"
    OTHER = "other", "Other"


class Document(TimestampedModel):
    # Leads the (patient, created_at, id) index below, which also serves the foreign key.
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="documents", db_index=False)
    kind = models.CharField(max_length=20, choices=DocumentKind.choices)
    # What the file belongs to, when it belongs to more than the patient (at most one of them
    # in practice; the trigger checks each is the same patient's). Chat attachments are
    # pointed to from the chat app.
    medical_record = models.ForeignKey(
        MedicalRecord, on_delete=models.PROTECT, null=True, blank=True, related_name="documents"
    )
    appointment = models.ForeignKey(
        Appointment, on_delete=models.PROTECT, null=True, blank=True, related_name="documents"
    )
    # The printable PDF and signed copies of a prescription.
    prescription = models.ForeignKey(
        "clinical.Prescription", on_delete=models.PROTECT, null=True, blank=True, related_name="documents"
    )
    # The sanitised name the user gave (for the download's file name); it can say who the patient is.
    original_name = EncryptedTextField()
    storage_key = models.CharField(max_length=255, unique=True, editable=False)
    content_type = models.CharField(max_length=100, editable=False)
    size = models.PositiveBigIntegerField(editable=False, help_text="Bytes of the plaintext.")
    sha256 = models.CharField(max_length=64, editable=False, help_text="SHA-256 of the plaintext, in hex.")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = EncryptedManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(size__gt=0), name="clinical_document_size_positive"),
            models.CheckConstraint(condition=Q(sha256__regex=r"^[0-9a-f]{64}$"), name="clinical_document_hash_format"),
            models.CheckConstraint(
                condition=Q(content_type__in=DOCUMENT_CONTENT_TYPES), name="clinical_document_content_type_allowed"
            ),
            models.CheckConstraint(
                condition=Q(storage_key__regex=STORED_KEY_REGEX),
                name="clinical_document_storage_key_format",
            ),
            models.CheckConstraint(condition=Q(kind__in=DocumentKind.values), name="clinical_document_kind_valid"),
        ]
        indexes = [models.Index(fields=["patient", "created_at", "id"], name="clinical_document_patient")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.uuid} ({self.content_type})"


class ExtractionStatus(models.TextChoices):
    PENDING = "pending", "Waiting for the extraction task"
    DONE = "done", "Text extracted"
    EMPTY = "empty", "No text found"
    ENGINE_MISSING = "engine_missing", "Extraction engine not installed"
    FAILED = "failed", "Extraction failed"
    UNSUPPORTED = "unsupported", "Type not supported"


class DocumentExtraction(TimestampedModel):
    """The text of a document (``clinical.extraction``), one row per document, rewritten on each run.

    The text is PHI and stored encrypted; ``error`` never holds document text.
    """

    document = models.OneToOneField(Document, on_delete=models.PROTECT, related_name="extraction")
    status = models.CharField(max_length=20, choices=ExtractionStatus.choices, default=ExtractionStatus.PENDING)
    engine = models.CharField(max_length=20, blank=True, default="")
    text = EncryptedTextField(null=True, blank=True)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    confidence = models.DecimalField(max_digits=4, decimal_places=3, null=True, blank=True)
    error = models.CharField(max_length=200, blank=True, default="")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    runs = models.PositiveIntegerField(default=0)

    objects = EncryptedManager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | Q(confidence__gte=0, confidence__lte=1),
                name="clinical_extraction_confidence_range",
            ),
        ]

    def __str__(self) -> str:
        return f"extraction of {self.document_id}: {self.status}"
