"""Writes for the directory and medical records. Each service is one transaction: validate, write, done.

Services raise ``django.core.exceptions.ValidationError`` with a dict naming
the field at fault; the API and the admin turn that into a 400 or a form
error. A failure anywhere rolls the whole service back.
"""

from __future__ import annotations

import datetime
import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Model
from django.utils import timezone

from accounts.fields import encrypted_field_names
from accounts.services import user_sessions_revoke
from clinical import fhir, ledger, record_writer
from clinical.canonical import sha256_hex
from clinical.fhir import FhirValidationError, ValidatedResource
from clinical.models import (
    Address,
    BreakGlassReview,
    Doctor,
    Email,
    Gender,
    HealthProfile,
    InstitutionMembership,
    LedgerEntryKind,
    MedicalInstitution,
    MedicalRecord,
    MembershipRole,
    Patient,
    PatientUserObjectPermission,
    Phone,
    RecordSource,
    RecordStatus,
    RecordType,
    ReviewOutcome,
    Sex,
    Specialty,
    ValidationStatus,
)

logger = logging.getLogger(__name__)


def _reason_given(reason: str | None, ask: str) -> str:
    """``reason`` without surrounding blanks; a blank one is refused with ``ask`` on the reason field."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": ask})
    return reason


User = get_user_model()
MRN_DIGITS = 8


def validate(instance: Model, *, exclude: Iterable[str] = ()) -> None:
    """``full_clean`` that leaves encrypted fields' constraints to the database.

    Python-side constraint checks would have to send the value to the
    database; the database checks them again on write anyway.
    """
    instance.full_clean(exclude=[*exclude, *encrypted_field_names(type(instance))])


def normalise_phone(raw: str) -> str:
    """Strip formatting from an international number: ``+1 (415) 555-0123`` → ``+14155550123``."""
    digits = "".join(ch for ch in raw if ch.isdigit())
    if not raw.strip().startswith("+") and not raw.strip().startswith("00"):
        raise ValidationError(
            {"number": "Give the number in international form, starting with + and the country code."}
        )
    if raw.strip().startswith("00"):
        digits = digits[2:]
    return f"+{digits}"


# Institutions and memberships ----------------------------------------------------


@transaction.atomic
def institution_create(
    *,
    name: str,
    code: str,
    institution_type: Any,
    country: Any,
    time_zone: str = "UTC",
    region: Any = None,
    license_number: str = "",
    website: str = "",
) -> MedicalInstitution:
    institution = MedicalInstitution(
        name=name,
        code=code,
        institution_type=institution_type,
        country=country,
        region=region,
        time_zone=time_zone,
        license_number=license_number,
        website=website,
    )
    if region is not None and region.country_id != country.pk:
        raise ValidationError({"region": "The region is not in the institution's country."})
    validate(institution)
    institution.save()
    return institution


@transaction.atomic
def membership_start(
    *,
    user: Any,
    institution: MedicalInstitution,
    role: str,
    valid_from: datetime.datetime | None = None,
    valid_until: datetime.datetime | None = None,
) -> InstitutionMembership:
    if InstitutionMembership.objects.filter(
        user=user, institution=institution, role=role, valid_until__isnull=True
    ).exists():
        raise ValidationError({"role": "This user already has an open membership in this role here."})
    membership = InstitutionMembership(
        user=user,
        institution=institution,
        role=role,
        valid_from=valid_from or timezone.now(),
        valid_until=valid_until,
    )
    validate(membership)
    membership.save()
    return membership


@transaction.atomic
def membership_end(*, membership: InstitutionMembership, at: datetime.datetime | None = None) -> InstitutionMembership:
    """End a membership, and with it the user's sessions and API tokens.

    A doctor cannot leave their primary institution this way.
    """
    at = at or timezone.now()
    if membership.valid_until is not None and membership.valid_until <= at:
        return membership
    if (
        membership.role == MembershipRole.DOCTOR
        and Doctor.objects.filter(user_id=membership.user_id, institution_id=membership.institution_id).exists()
    ):
        raise ValidationError({"valid_until": "This is the doctor's primary institution: move the doctor first."})
    membership.valid_until = max(at, membership.valid_from + datetime.timedelta(microseconds=1))
    validate(membership)
    membership.save(update_fields=["valid_until", "updated_at"])
    # The policy stops counting the membership at once; ending the user's sessions
    # and tokens too makes them sign in again under what they still hold.
    user_sessions_revoke(user=membership.user)
    return membership


# Doctors -----------------------------------------------------------------------------


@transaction.atomic
def doctor_register(
    *,
    institution: MedicalInstitution,
    specialty: Specialty,
    license_number: str,
    user: Any = None,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
    password: str | None = None,
    phones: Iterable[Mapping[str, Any]] = (),
) -> Doctor:
    """Register a doctor: the user account (unless ``user`` is given), a doctor
    membership at ``institution`` (unless one is open) and the doctor, in one go."""
    if user is None:
        if not email.strip():
            raise ValidationError({"email": "An e-mail address is required."})
        if User.objects.filter(email__iexact=email.strip()).exists():
            raise ValidationError({"email": "A user with this e-mail address already exists."})
        user = User(email=email.strip(), first_name=first_name, last_name=last_name, is_staff=True)
        user.set_password(password)
        validate(user, exclude=["password"])
        user.save()
    elif Doctor.objects.filter(user=user).exists():
        raise ValidationError({"user": "This user is already registered as a doctor."})
    if (
        not InstitutionMembership.objects.active()
        .filter(user=user, institution=institution, role=MembershipRole.DOCTOR)
        .exists()
    ):
        membership_start(user=user, institution=institution, role=MembershipRole.DOCTOR)
    doctor = Doctor(user=user, institution=institution, specialty=specialty, license_number=license_number.strip())
    validate(doctor)
    doctor.save()
    for phone in phones:
        _add_contact(Phone, {"doctor": doctor}, phone)
    return doctor


# Patients ----------------------------------------------------------------------------


def _allocate_mrn(institution: MedicalInstitution) -> str:
    """Next MRN of the institution; the row lock makes concurrent registrations safe."""
    locked = MedicalInstitution.objects.select_for_update().only("next_mrn").get(pk=institution.pk)
    number = locked.next_mrn
    MedicalInstitution.objects.filter(pk=institution.pk).update(next_mrn=number + 1)
    return f"{number:0{MRN_DIGITS}d}"


def _add_contact(model: type[Model], owner: Mapping[str, Any], data: Mapping[str, Any]) -> Model:
    values = dict(data)
    if model is Phone and "number" in values:
        values["number"] = normalise_phone(values["number"])
    contact = model(**owner, **values)
    validate(contact)
    contact.save()
    return contact


@transaction.atomic
def patient_register(
    *,
    doctor: Doctor,
    first_name: str,
    last_name: str,
    date_of_birth: datetime.date,
    sex: Sex,
    gender: Gender | None = None,
    mrn: str | None = None,
    notes: str | None = None,
    profile: Mapping[str, Any] | None = None,
    portal_email: str | None = None,
    portal_password: str | None = None,
    emails: Iterable[Mapping[str, Any]] = (),
    phones: Iterable[Mapping[str, Any]] = (),
    addresses: Iterable[Mapping[str, Any]] = (),
) -> Patient:
    """Register a patient with health profile and contacts, all or nothing.

    The institution is the doctor's. With ``portal_email`` a portal user is
    created for the patient. Caretrail's version of the seed's
    ``sp_create_patient_with_profile``.
    """
    if date_of_birth > timezone.localdate():
        raise ValidationError({"date_of_birth": "The date of birth cannot be in the future."})
    user = None
    if portal_email:
        if User.objects.filter(email__iexact=portal_email.strip()).exists():
            raise ValidationError({"portal_email": "A user with this e-mail address already exists."})
        user = User(email=portal_email.strip(), first_name=first_name, last_name=last_name)
        user.set_password(portal_password)
        validate(user, exclude=["password"])
        user.save()
    institution = doctor.institution
    patient = Patient(
        user=user,
        institution=institution,
        doctor=doctor,
        mrn=mrn or _allocate_mrn(institution),
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        date_of_birth=date_of_birth,
        sex=sex,
        gender=gender,
        notes=notes or None,
    )
    validate(patient)
    patient.save()
    health_profile = HealthProfile(patient=patient, **(profile or {}))
    validate(health_profile, exclude=["patient"])
    health_profile.save()
    for email in emails:
        _add_contact(Email, {"patient": patient}, email)
    for phone in phones:
        _add_contact(Phone, {"patient": patient}, phone)
    for address in addresses:
        _add_contact(Address, {"patient": patient}, address)
    return patient


def _locked(patient: Patient) -> Patient:
    return Patient.objects.select_for_update().get(pk=patient.pk)


@transaction.atomic
def patient_validate(*, patient: Patient, actor: Any) -> Patient:
    patient = _locked(patient)
    if patient.validation_status == ValidationStatus.VALIDATED:
        return patient
    patient.validation_status = ValidationStatus.VALIDATED
    patient.reviewed_by = actor
    patient.reviewed_at = timezone.now()
    patient.rejection_reason = None
    validate(patient)
    patient.save()
    return patient


@transaction.atomic
def patient_reject(*, patient: Patient, actor: Any, reason: str) -> Patient:
    reason = _reason_given(reason, "Say why the patient is rejected.")
    patient = _locked(patient)
    patient.validation_status = ValidationStatus.REJECTED
    patient.reviewed_by = actor
    patient.reviewed_at = timezone.now()
    patient.rejection_reason = reason
    validate(patient)
    patient.save()
    return patient


@transaction.atomic
def patient_transfer(*, patient: Patient, doctor: Doctor) -> Patient:
    """Move a patient to another doctor, and with them to the doctor's institution.

    A move to another institution takes a new MRN there.
    """
    patient = _locked(patient)
    if not doctor.is_active:
        raise ValidationError({"doctor": "This doctor is not active."})
    if patient.doctor_id == doctor.pk:
        return patient
    if patient.institution_id != doctor.institution_id:
        patient.mrn = _allocate_mrn(doctor.institution)
    patient.doctor = doctor
    patient.institution = doctor.institution
    validate(patient)
    patient.save()
    return patient


# Grants and break-the-glass ------------------------------------------------------------

BREAK_GLASS_HOURS = 4


def _patient_permission(kind: str) -> Permission:
    if kind not in ("view", "change"):
        raise ValidationError({"permission": "Grant 'view' or 'change'."})
    return Permission.objects.get(content_type__app_label="clinical", codename=f"{kind}_patient")


@transaction.atomic
def grant_create(
    *,
    patient: Patient,
    user: Any,
    kind: str,
    granted_by: Any,
    reason: str,
    expires_at: datetime.datetime | None = None,
) -> PatientUserObjectPermission:
    """Add ``user`` to ``patient``'s care team. An open grant of the same kind is superseded."""
    reason = _reason_given(reason, "Say why this access is needed.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    if not user.is_active:
        raise ValidationError({"user": "This user is deactivated."})
    return _grant_open(
        patient=patient, user=user, kind=kind, granted_by=granted_by, reason=reason, expires_at=expires_at
    )


def _grant_open(
    *,
    patient: Patient,
    user: Any,
    kind: str,
    granted_by: Any,
    reason: str,
    expires_at: datetime.datetime | None = None,
    lifetime: datetime.timedelta | None = None,
    break_glass: bool = False,
) -> PatientUserObjectPermission:
    """Write a grant, closing the open one of the same kind first (one open grant at a time).

    ``lifetime`` counts from the grant's own creation time.
    """
    permission = _patient_permission(kind)
    now = timezone.now()
    if lifetime is not None:
        expires_at = now + lifetime
    PatientUserObjectPermission.objects.filter(
        user=user, permission=permission, content_object=patient, revoked_at__isnull=True
    ).update(revoked_at=now, revoked_by=granted_by)
    grant = PatientUserObjectPermission(
        user=user,
        permission=permission,
        content_object=patient,
        granted_by=granted_by,
        reason=reason,
        created_at=now,
        expires_at=expires_at,
        is_break_glass=break_glass,
    )
    validate(grant)
    grant.save()
    return grant


@transaction.atomic
def grant_revoke(*, grant: PatientUserObjectPermission, revoked_by: Any) -> PatientUserObjectPermission:
    if grant.revoked_at is None:
        grant.revoked_at = timezone.now()
        grant.revoked_by = revoked_by
        grant.save(update_fields=["revoked_at", "revoked_by"])
    return grant


@transaction.atomic
def break_glass_open(
    *, user: Any, patient: Patient, reason: str, hours: int = BREAK_GLASS_HOURS
) -> PatientUserObjectPermission:
    """Open ``patient`` to ``user`` in an emergency: a time-boxed view grant, flagged,
    audited, and queued for review by the patient's institution admins."""
    from clinical import access
    from clinical.audit import EMERGENCY_TREATMENT, patient_access_record

    reason = (reason or "").strip()
    if not access.can_break_glass(user):
        raise PermissionDenied("Your role does not allow break-the-glass access.")
    if not reason:
        raise ValidationError({"reason": "Say why you need emergency access."})
    if not 1 <= hours <= 24:
        raise ValidationError({"hours": "Emergency access lasts between 1 and 24 hours."})
    if access.can_view_patient(user, patient):
        raise ValidationError({"patient": "You can already see this patient; no emergency access is needed."})
    # Any open view grant of this user here has expired (an active one would have
    # given access above); _grant_open closes it.
    grant = _grant_open(
        patient=patient,
        user=user,
        kind="view",
        granted_by=user,
        reason=reason,
        lifetime=datetime.timedelta(hours=hours),
        break_glass=True,
    )
    BreakGlassReview.objects.create(grant=grant, institution_id=patient.institution_id)
    patient_access_record(user=user, patient=patient, purpose=EMERGENCY_TREATMENT)
    return grant


@transaction.atomic
def break_glass_review(*, review: BreakGlassReview, reviewer: Any, outcome: str, notes: str = "") -> BreakGlassReview:
    if outcome not in (ReviewOutcome.APPROPRIATE, ReviewOutcome.INAPPROPRIATE):
        raise ValidationError({"outcome": "Choose appropriate or inappropriate."})
    review.outcome = outcome
    review.reviewed_by = reviewer
    review.reviewed_at = timezone.now()
    review.notes = notes
    review.save()
    return review


@transaction.atomic
def patient_update(*, patient: Patient, **fields: Any) -> Patient:
    """Change a patient's own fields. Doctor, institution and validation have their own services."""
    editable = {"first_name", "last_name", "date_of_birth", "sex", "gender", "notes", "is_active"}
    unknown = set(fields) - editable
    if unknown:
        raise ValidationError(dict.fromkeys(sorted(unknown), "This field cannot be changed here."))
    if "date_of_birth" in fields and fields["date_of_birth"] > timezone.localdate():
        raise ValidationError({"date_of_birth": "The date of birth cannot be in the future."})
    patient = _locked(patient)
    for name, value in fields.items():
        setattr(patient, name, value)
    validate(patient)
    patient.save()
    return patient


# Medical records -----------------------------------------------------------------------
# Every write appends to the integrity ledger in the same transaction
# (clinical.ledger); a record's payload is validated as FHIR R4 and never
# changes after it is written.


class PayloadInvalid(ValidationError):
    """A payload that is not valid FHIR R4 for its record type.

    A form shows the messages under ``payload``; the API answers
    ``{"payload": [{"path": ..., "message": ...}]}`` from ``fhir_errors``.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__({"payload": [f"{error['path']}: {error['message']}" for error in errors]})
        self.fhir_errors = errors


# The choices as sets: a TextChoices' ``values`` builds its list anew at every call.
_RECORD_TYPES = frozenset(RecordType.values)
_RECORD_SOURCES = frozenset(RecordSource.values)


def _validated(record_type: str, payload: Any) -> ValidatedResource:
    if record_type not in _RECORD_TYPES:
        raise ValidationError({"record_type": f"Must be one of: {', '.join(RecordType.values)}."})
    try:
        return fhir.validate(record_type, payload)
    except FhirValidationError as exc:
        raise PayloadInvalid(exc.errors) from exc


# What a record keeps in plain, indexed JSONB: what it is searched by. Measured
# values and ranges (fhir metadata's "quantity") stay in the encrypted payload;
# the interpretation has its own column.
SEARCHED_METADATA = ("resource_type", "codings", "systems", "categories", "effective")


def record_searched_metadata(validated: ValidatedResource) -> tuple[dict[str, Any], str | None]:
    """The metadata a record stores in the clear, and its interpretation (lab results and vital signs)."""
    metadata = validated.metadata
    return {key: metadata.get(key) for key in SEARCHED_METADATA}, metadata.get("interpretation")


def _effective_date(metadata: Mapping[str, Any]) -> datetime.date | None:
    effective = metadata.get("effective")
    if not effective:
        return None
    try:
        return datetime.date.fromisoformat(str(effective)[:10])
    except ValueError:
        return None


def _check_scales(severity: int | None, confidence: Any) -> None:
    errors = {}
    if severity is not None and not 1 <= int(severity) <= 10:
        errors["severity"] = "Severity runs from 1 (mild) to 10 (critical)."
    if confidence is not None and not 0 <= float(confidence) <= 1:
        errors["confidence"] = "Confidence runs from 0 to 1."
    if errors:
        raise ValidationError(errors)


def _new_record(
    *,
    patient: Patient,
    record_type: str,
    payload: Any,
    author: Any,
    source: str,
    severity: int | None,
    confidence: Any,
    institution: MedicalInstitution | None,
) -> MedicalRecord:
    validated = _validated(record_type, payload)
    _check_scales(severity, confidence)
    if source not in _RECORD_SOURCES:
        raise ValidationError({"source": f"Must be one of: {', '.join(RecordSource.values)}."})
    metadata, interpretation = record_searched_metadata(validated)
    return MedicalRecord(
        patient=patient,
        record_type=record_type,
        resource_type=validated.resource_type,
        payload=payload,
        record_metadata=metadata,
        effective_date=_effective_date(metadata),
        data_hash=sha256_hex(payload),
        source=source,
        severity=severity,
        confidence=confidence,
        interpretation=interpretation,
        author=author,
        institution_id=institution.pk if institution is not None else patient.institution_id,
    )


def record_create(
    *,
    patient: Patient,
    record_type: str,
    payload: Any,
    author: Any = None,
    source: str = RecordSource.MANUAL,
    severity: int | None = None,
    confidence: Any = None,
    institution: MedicalInstitution | None = None,
) -> MedicalRecord:
    """Validate ``payload`` as FHIR R4 for ``record_type``, store it encrypted, append it to the ledger.

    The payload is kept exactly as given; ``data_hash`` is SHA-256 of its
    canonical form. ``institution`` defaults to the patient's. The record, its
    ledger entry and its audit entry are one statement (``record_writer.insert``),
    atomic by itself, so no transaction of its own is needed.
    """
    record = _new_record(
        patient=patient,
        record_type=record_type,
        payload=payload,
        author=author,
        source=source,
        severity=severity,
        confidence=confidence,
        institution=institution,
    )
    record_writer.insert(record)
    return record


def _lock_current(record: MedicalRecord) -> MedicalRecord:
    locked = MedicalRecord.objects.select_for_update().get(pk=record.pk)
    if locked.status != RecordStatus.CURRENT:
        raise ValidationError(
            {"status": f"Only the current version can be changed; this one is {locked.get_status_display().lower()}."}
        )
    return locked


@transaction.atomic
def record_amend(
    *,
    record: MedicalRecord,
    payload: Any,
    author: Any,
    reason: str,
    severity: int | None = None,
    confidence: Any = None,
) -> MedicalRecord:
    """Write a new version of ``record`` that supersedes it; the old version stays readable.

    Severity and confidence carry over unless given.
    """
    reason = _reason_given(reason, "Say why the record is amended.")
    old = _lock_current(record)
    amended = _new_record(
        patient=old.patient,
        record_type=old.record_type,
        payload=payload,
        author=author,
        source=old.source,
        severity=old.severity if severity is None else severity,
        confidence=old.confidence if confidence is None else confidence,
        institution=old.institution,
    )
    amended.series = old.series
    amended.version = old.version + 1
    amended.supersedes = old
    amended.amendment_reason = reason
    old.status = RecordStatus.SUPERSEDED
    old.save(update_fields=["status", "updated_at"])
    record_writer.insert(amended)
    return amended


@transaction.atomic
def record_mark_entered_in_error(*, record: MedicalRecord, by: Any, reason: str) -> MedicalRecord:
    """Withdraw the current version of a record written by mistake. It stays readable, flagged."""
    reason = _reason_given(reason, "Say what was wrong with the record.")
    locked = _lock_current(record)
    locked.status = RecordStatus.ENTERED_IN_ERROR
    locked.error_reason = reason
    locked.marked_in_error_by = by
    locked.marked_in_error_at = timezone.now()
    locked.save(update_fields=["status", "error_reason", "marked_in_error_by", "marked_in_error_at", "updated_at"])
    ledger.append(locked, LedgerEntryKind.ENTERED_IN_ERROR)
    return locked


@transaction.atomic
def record_verify(*, record: MedicalRecord, by: Any) -> MedicalRecord:
    """Confirm a record (typically one from patient input, AI analysis or an import)."""
    locked = _lock_current(record)
    if locked.verified_at is not None:
        raise ValidationError({"verified_at": "This record is already verified."})
    locked.verified_by = by
    locked.verified_at = timezone.now()
    locked.save(update_fields=["verified_by", "verified_at", "updated_at"])
    ledger.append(locked, LedgerEntryKind.VERIFIED)
    return locked


@transaction.atomic
def record_series_delete(*, record: MedicalRecord, reason: str) -> int:
    """Delete every version of ``record`` as retention or erasure allows; each gets a ledger tombstone first.

    ``reason`` is a policy code (for example ``retention`` or ``erasure``), kept
    in the audit entry of each deletion; it must not contain PHI.
    """
    _reason_given(reason, "Name the policy that allows the deletion.")
    versions = list(MedicalRecord.objects.select_for_update().filter(series=record.series).order_by("-version"))
    for version in versions:
        ledger.append(version, LedgerEntryKind.TOMBSTONE)
    for version in versions:  # newest first: each version protects the one it supersedes
        version.delete()
    return len(versions)


# Documents ------------------------------------------------------------------------------
# Imported here, not at the top, so this section stays self-contained at the end of the module.


def _document_links_check(
    *, patient: Patient, medical_record: MedicalRecord | None, appointment: Any, prescription: Any
) -> None:
    """A document's record, appointment and prescription are the patient's (the trigger says so again)."""
    errors: dict[str, str] = {}
    if medical_record is not None and medical_record.patient_id != patient.pk:
        errors["medical_record"] = "This record belongs to another patient."
    if appointment is not None and appointment.patient_id != patient.pk:
        errors["appointment"] = "This appointment belongs to another patient."
    if prescription is not None and prescription.patient_id != patient.pk:
        errors["prescription"] = "This prescription belongs to another patient."
    if errors:
        raise ValidationError(errors)


def document_upload(
    *,
    patient: Patient,
    upload: Any,
    kind: str,
    uploaded_by: Any,
    medical_record: MedicalRecord | None = None,
    appointment: Any = None,
    prescription: Any = None,
    expires_at: datetime.datetime | None = None,
    storage: Any = None,
) -> Any:
    """Check ``upload``, store it encrypted and record it as a document of ``patient``.

    A file the allow-list refuses raises ``FileRejected`` (a ``ValidationError``
    on ``file``) before anything is written. The file is stored first, under a
    random key and sealed for the new row's UUID; when the INSERT then fails,
    the stored object is deleted, so nothing is left behind. (Called inside a
    caller's transaction that later rolls back, the object stays until
    ``document_orphans_sweep`` removes it.) ``storage`` defaults to the default storage.
    """
    from django.core.files.storage import default_storage

    from clinical import files
    from clinical.models import Document, DocumentKind

    if kind not in DocumentKind.values:
        raise ValidationError({"kind": f"Must be one of: {', '.join(DocumentKind.values)}."})
    _document_links_check(
        patient=patient, medical_record=medical_record, appointment=appointment, prescription=prescription
    )
    storage = storage if storage is not None else default_storage
    document = Document(
        patient=patient,
        kind=kind,
        medical_record=medical_record,
        appointment=appointment,
        prescription=prescription,
        uploaded_by=uploaded_by,
        expires_at=expires_at,
    )
    stored = files.store(storage, upload, document_uuid=document.uuid)
    try:
        with transaction.atomic():
            document.original_name = stored.original_name
            document.storage_key = stored.key
            document.content_type = stored.content_type
            document.size = stored.size
            document.sha256 = stored.sha256
            document.save(force_insert=True)
    except BaseException:
        files.discard(storage, stored.key)
        raise
    document_extraction_queue(document=document)
    return document


# A stored file younger than this may belong to an upload whose row is not yet committed.
ORPHAN_GRACE = datetime.timedelta(hours=24)
# More orphans than this (and more than ORPHAN_MAX_SHARE of all files) means the database is not
# the one the storage belongs to (a staging copy pointed at production's bucket, a restore to an
# earlier time): the sweep then deletes nothing.
ORPHAN_ALWAYS_ALLOWED = 20
ORPHAN_MAX_SHARE = 0.05


class OrphanSweepRefused(RuntimeError):
    """Too many stored files have no document: the sweep deleted nothing."""


def document_orphans_sweep(
    *, storage: Any = None, older_than: datetime.timedelta = ORPHAN_GRACE, batch: int = 500
) -> int:
    """Delete stored document files that no document names, once older than ``older_than``; return how many.

    Such files are left by an upload inside a caller's transaction that rolled
    back, a process killed between storing a file and recording it, or a
    cleanup that failed (key rotation's old files). The scheduled task runs this
    daily. Raises ``OrphanSweepRefused``, deleting nothing, when orphans are more
    than ``ORPHAN_ALWAYS_ALLOWED`` and more than ``ORPHAN_MAX_SHARE`` of the files.
    """
    from django.core.files.storage import default_storage

    from clinical import files
    from clinical.models import Document

    storage = storage if storage is not None else default_storage
    cutoff = timezone.now() - older_than
    total, orphans = 0, []
    keys = files.stored_keys(storage)
    while chunk := list(itertools.islice(keys, batch)):
        total += len(chunk)
        named = set(Document.objects.filter(storage_key__in=chunk).values_list("storage_key", flat=True))
        orphans += [key for key in chunk if key not in named and storage.get_modified_time(key) <= cutoff]
    if len(orphans) > max(ORPHAN_ALWAYS_ALLOWED, ORPHAN_MAX_SHARE * total):
        logger.error("Document orphan sweep refused: %d of %d stored files have no document", len(orphans), total)
        raise OrphanSweepRefused(f"{len(orphans)} of {total} stored files have no document; nothing was deleted")
    removed = sum(1 for key in orphans if files.discard(storage, key))
    logger.info("Document orphan sweep removed %d of %d orphaned stored file(s)", removed, len(orphans))
    return removed


def document_extraction_queue(*, document: Any) -> None:
    """Mark the document's text as pending and extract it in a Celery task after commit (the task takes the id)."""
    from clinical.models import DocumentExtraction, ExtractionStatus
    from clinical.tasks import document_extract_task

    DocumentExtraction.objects.update_or_create(
        document=document, defaults={"status": ExtractionStatus.PENDING, "error": ""}
    )
    transaction.on_commit(lambda: document_extract_task.delay(document.pk))


def document_extract(*, document: Any, storage: Any = None) -> Any:
    """Extract ``document``'s text now and keep it (encrypted) in its extraction row. Safe to re-run.

    The file is decrypted completely before the text is trusted (truncation shows only at
    the end); a file that fails to decrypt is recorded as failed, not raised.
    """
    import io
    import time

    from django.core.files.storage import default_storage

    from accounts.encryption import DecryptionError
    from clinical import extraction, files
    from clinical.models import DocumentExtraction

    storage = storage if storage is not None else default_storage
    started = time.perf_counter()
    try:
        with files.open_plaintext(storage, document.storage_key, document_uuid=document.uuid) as stream:
            plaintext = b"".join(stream)
    except Exception as exc:  # noqa: BLE001 - recorded as failed (class name only), never left pending
        if not isinstance(exc, (DecryptionError, OSError)):
            logger.warning("document %s: reading the stored file failed (%s)", document.pk, type(exc).__name__)
        result = extraction.Extraction(
            engine="none",
            status="failed",
            text="",
            page_count=None,
            confidence=None,
            error=f"the stored file could not be read ({type(exc).__name__})",
            duration_ms=(time.perf_counter() - started) * 1000,
        )
    else:
        result = extraction.extract(io.BytesIO(plaintext), document.content_type)
    with transaction.atomic():
        row, _ = DocumentExtraction.objects.select_for_update().get_or_create(document=document)
        row.status = result.status
        row.engine = result.engine
        row.text = result.text or None
        row.page_count = result.page_count
        row.confidence = None if result.confidence is None else round(result.confidence, 3)
        row.error = result.error[:200]
        row.duration_ms = round(result.duration_ms)
        row.runs += 1
        row.save()
    return row


def document_relink(document_uuid: Any, old_key: str, new_key: str) -> bool:
    """Point a document to its re-sealed file, only if it still points to ``old_key`` (key rotation).

    Runs inside the rotator's transaction; like the column rotation, it leaves ``updated_at`` alone.
    """
    from django.db import connection

    from accounts.schema import KEY_ROTATION_SETTING
    from clinical.models import Document

    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, 'on', true)", [KEY_ROTATION_SETTING])
    try:
        return Document.objects.filter(uuid=document_uuid, storage_key=old_key).update(storage_key=new_key) == 1
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config(%s, '', true)", [KEY_ROTATION_SETTING])


def document_file_rotators() -> list[Any]:
    """The documents' files, for ``manage.py rotate_keys`` (registered in ``ClinicalConfig.ready``)."""
    from django.core.files.storage import default_storage

    from clinical.files import FileRotator
    from clinical.models import Document

    def stored_files() -> list[tuple[str, Any]]:
        return list(Document.objects.order_by("pk").values_list("storage_key", "uuid"))

    return [FileRotator(storage=default_storage, files=stored_files, relink=document_relink)]
