"""Writes for prescriptions: issue one at an appointment, print it, attach a signed copy.

Like ``clinical.services``, each service is one transaction and raises
``django.core.exceptions.ValidationError`` with a dict naming the field at
fault; who may call them is the caller's question (``clinical.access``).

Issuing a prescription writes, in the same transaction, the prescription,
its items, and one PRESCRIPTION medical record (FHIR R4 MedicationRequest)
per item through ``services.record_create`` (validated, encrypted, in the
ledger). After commit, the ``clinical.prescription_pdf`` task renders the
printable PDF and stores it as a document of the patient.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from clinical import fhir, pdf, services
from clinical.models import (
    FREQUENCY_TIMING,
    ROUTE_CODES,
    Appointment,
    AppointmentStatus,
    DocumentKind,
    Frequency,
    Medication,
    Prescription,
    PrescriptionItem,
    RecordType,
    Route,
)
from clinical.models.prescriptions import PRESCRIPTION_MATCHES_APPOINTMENT

MAX_ITEMS = 20
ITEM_FIELDS = ("medication", "dose", "route", "frequency", "duration_days", "quantity", "instructions")
# The unique key Django gives the one-to-one appointment column.
ONE_PER_APPOINTMENT = "clinical_prescription_appointment_id_key"
GROUP_SYSTEM = "urn:ietf:rfc:3986"


def _item_errors(item: Mapping[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    unknown = set(item) - set(ITEM_FIELDS)
    if unknown:
        errors["fields"] = f"Unknown: {', '.join(sorted(unknown))}."
    if not isinstance(item.get("medication"), Medication):
        errors["medication"] = "Choose a medication from the catalog."
    dose = item.get("dose")
    if not isinstance(dose, str) or not dose.strip():
        errors["dose"] = "Give the dose, e.g. '1 tablet'."
    elif len(dose.strip()) > 60:
        errors["dose"] = "At most 60 characters."
    if item.get("route", Route.ORAL) not in Route.values:
        errors["route"] = f"Must be one of: {', '.join(Route.values)}."
    if item.get("frequency") not in Frequency.values:
        errors["frequency"] = f"Must be one of: {', '.join(Frequency.values)}."
    for name, low, high in (("duration_days", 1, 365), ("quantity", 1, 10000)):
        value = item.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            errors[name] = f"A whole number from {low} to {high}."
    instructions = item.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        errors["instructions"] = "Give text."
    return errors


def _checked_items(items: Sequence[Mapping[str, Any]]) -> None:
    """At least one item, at most ``MAX_ITEMS``, each complete; errors name the item (from 1) and field."""
    if not items:
        raise ValidationError({"items": "A prescription has at least one item."})
    if len(items) > MAX_ITEMS:
        raise ValidationError({"items": f"A prescription has at most {MAX_ITEMS} items."})
    errors = []
    for number, item in enumerate(items, start=1):
        for field, message in _item_errors(item).items():
            errors.append(f"Item {number}, {field.replace('_', ' ')}: {message}")
    if errors:
        raise ValidationError({"items": errors})


def medication_request(
    *, prescription: Prescription, item: Mapping[str, Any], position: int, authored: datetime.datetime
) -> dict[str, Any]:
    """The FHIR R4 MedicationRequest for one item of ``prescription``."""
    medication: Medication = item["medication"]
    codings = []
    if medication.rxnorm_code:
        codings.append({"system": fhir.RXNORM, "code": medication.rxnorm_code})
    if medication.atc_code:
        codings.append({"system": fhir.ATC, "code": medication.atc_code})
    frequency = item["frequency"]
    duration = {"value": item["duration_days"], "unit": "days", "system": fhir.UCUM, "code": "d"}
    repeat: dict[str, Any] = {**FREQUENCY_TIMING[frequency]}
    if frequency != Frequency.ONCE:
        repeat["boundsDuration"] = duration
    route = item.get("route") or Route.ORAL
    instructions = (item.get("instructions") or "").strip()
    text = f"{item['dose'].strip()}, {Route(route).label.lower()}, {Frequency(frequency).label.lower()}"
    if frequency != Frequency.ONCE:
        text += f", for {item['duration_days']} days"
    dosage: dict[str, Any] = {
        "sequence": position,
        "text": text,
        "timing": {"repeat": repeat},
        "route": {"coding": [{"system": fhir.SNOMED_CT, "code": ROUTE_CODES[route], "display": Route(route).label}]},
    }
    if frequency == Frequency.AS_NEEDED:
        dosage["asNeededBoolean"] = True
    if instructions:
        dosage["patientInstruction"] = instructions
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "groupIdentifier": {"system": GROUP_SYSTEM, "value": f"urn:uuid:{prescription.uuid}"},
        "medicationCodeableConcept": {"coding": codings, "text": str(medication)}
        if codings
        else {"text": str(medication)},
        "subject": {"reference": f"Patient/{prescription.patient.uuid}"},
        "authoredOn": fhir.date_time_text(authored),
        "requester": {"reference": f"Practitioner/{prescription.doctor.uuid}", "display": str(prescription.doctor)},
        "dosageInstruction": [dosage],
        "dispenseRequest": {
            "quantity": {"value": item["quantity"], "unit": medication.form},
            "expectedSupplyDuration": duration,
        },
    }
    return resource


def _locked_appointment(appointment: Appointment) -> Appointment:
    locked = (
        Appointment.objects.select_for_update(of=("self",))
        .select_related("patient", "doctor__user", "institution")
        .get(pk=appointment.pk)
    )
    if locked.status in (AppointmentStatus.CANCELLED, AppointmentStatus.NO_SHOW):
        raise ValidationError(
            {"appointment": f"A {locked.get_status_display().lower()} appointment has no prescription."}
        )
    if locked.starts_at > timezone.now():
        raise ValidationError({"appointment": "A prescription is written once the appointment has begun."})
    if Prescription.objects.filter(appointment=locked).exists():
        raise ValidationError({"appointment": "This appointment already has a prescription."})
    return locked


@transaction.atomic
def prescription_issue(
    *, appointment: Appointment, items: Sequence[Mapping[str, Any]], issued_by: Any, notes: str | None = None
) -> Prescription:
    """Write the prescription of ``appointment``: its items and one PRESCRIPTION record per item.

    ``items`` are mappings of ``ITEM_FIELDS`` (``medication`` a catalog
    ``Medication``; ``route`` defaults to oral). The appointment must have
    begun and not be cancelled or missed, and may hold one prescription only.
    The prescription's doctor and patient are the appointment's. The PDF is
    made after commit by a Celery task (``prescription_pdf``).
    """
    _checked_items(items)
    appointment = _locked_appointment(appointment)
    prescription = Prescription(
        appointment=appointment,
        patient=appointment.patient,
        doctor=appointment.doctor,
        issued_by=issued_by,
        notes=(notes or "").strip() or None,
    )
    services.validate(prescription, exclude=["appointment"])  # the one-per-appointment check is below, locked
    try:
        with transaction.atomic():
            prescription.save(force_insert=True)
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
        if constraint == ONE_PER_APPOINTMENT:
            raise ValidationError({"appointment": "This appointment already has a prescription."}) from exc
        if constraint == PRESCRIPTION_MATCHES_APPOINTMENT:
            raise ValidationError(
                {"appointment": "The prescription's doctor and patient are the appointment's."}
            ) from exc
        raise
    authored = prescription.created_at
    for position, item in enumerate(items, start=1):
        record = services.record_create(
            patient=appointment.patient,
            record_type=RecordType.PRESCRIPTION,
            payload=medication_request(prescription=prescription, item=item, position=position, authored=authored),
            author=issued_by,
            institution=appointment.institution,
        )
        row = PrescriptionItem(
            prescription=prescription,
            position=position,
            medication=item["medication"],
            dose=item["dose"].strip(),
            route=item.get("route") or Route.ORAL,
            frequency=item["frequency"],
            duration_days=item["duration_days"],
            quantity=item["quantity"],
            instructions=(item.get("instructions") or "").strip() or None,
            medical_record=record,
        )
        services.validate(row)
        row.save(force_insert=True)
    transaction.on_commit(lambda: _queue_pdf(prescription.pk))
    return prescription


def _queue_pdf(prescription_id: int) -> None:
    from clinical.tasks import prescription_pdf_task

    prescription_pdf_task.delay(prescription_id)


def printable_lines(prescription: Prescription) -> list[pdf.Line]:
    """What the printed prescription says."""
    appointment = prescription.appointment
    institution = appointment.institution
    patient = prescription.patient
    doctor = prescription.doctor
    issued = timezone.localtime(prescription.created_at, appointment.time_zone)
    lines = [
        pdf.Line(institution.name, size=15, bold=True),
        pdf.Line("Prescription", size=13, bold=True),
        pdf.Line(""),
        pdf.Line(f"Patient: {patient.first_name} {patient.last_name}", bold=True),
        pdf.Line(f"Date of birth: {patient.date_of_birth.isoformat()}    MRN: {patient.mrn}"),
        pdf.Line(f"Prescriber: {doctor}    Licence: {doctor.license_number}"),
        pdf.Line(f"Issued: {issued:%Y-%m-%d %H:%M} ({institution.time_zone})"),
        pdf.Line(""),
    ]
    for item in prescription.items.select_related("medication").order_by("position"):
        lines.append(pdf.Line(f"{item.position}. {item.medication}", bold=True))
        how = f"{item.dose}, {item.get_route_display().lower()}, {item.get_frequency_display().lower()}"
        if item.frequency != Frequency.ONCE:
            how += f", for {item.duration_days} days"
        lines.append(pdf.Line(how, indent=14))
        lines.append(pdf.Line(f"Quantity: {item.quantity} ({item.medication.form})", indent=14))
        if item.instructions:
            lines.append(pdf.Line(f"Instructions: {item.instructions}", indent=14))
        lines.append(pdf.Line("", size=6))
    if prescription.notes:
        lines += [pdf.Line("Notes", bold=True), pdf.Line(prescription.notes), pdf.Line("")]
    lines += [
        pdf.Line(""),
        pdf.Line("Signature: ______________________________"),
        pdf.Line(""),
        pdf.Line(f"Prescription {prescription.uuid}", size=8),
    ]
    return lines


def prescription_pdf(*, prescription: Prescription, storage: Any = None) -> Any:
    """Render the printable PDF of ``prescription`` and keep it as its document. Safe to re-run: once is enough.

    Returns the document. Runs of the same prescription queue on an advisory
    lock, so two at once (a redelivered task) make one file. The upload is its
    own transaction (``document_upload``: a failed insert removes the stored
    file), not nested in a longer one that could roll back after the file is
    stored.
    """
    from clinical.models import Document

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_lock(hashtextextended('caretrail.prescription_pdf.' || %s, 0))", [prescription.pk]
        )
    try:
        current = (
            Prescription.objects.select_related("appointment__institution", "patient", "doctor__user")
            .filter(pk=prescription.pk)
            .first()
        )
        if current is None:
            raise Prescription.DoesNotExist(f"prescription {prescription.pk} is gone")
        if current.printable_id is not None:
            return Document.objects.get(pk=current.printable_id)
        issued = timezone.localtime(current.created_at, current.appointment.time_zone)
        content = pdf.render(printable_lines(current), title=f"Prescription {issued:%Y-%m-%d}")
        document = services.document_upload(
            patient=current.patient,
            upload=ContentFile(content, name=f"prescription-{issued:%Y-%m-%d}.pdf"),
            kind=DocumentKind.PRESCRIPTION_FILE,
            uploaded_by=None,
            prescription=current,
            storage=storage,
        )
        Prescription.objects.filter(pk=current.pk, printable__isnull=True).update(printable=document)
        return document
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_unlock(hashtextextended('caretrail.prescription_pdf.' || %s, 0))", [prescription.pk]
            )


def prescription_signed_copy_upload(*, prescription: Prescription, upload: Any, uploaded_by: Any) -> Any:
    """Keep a signed (scanned or photographed) copy of ``prescription`` as a document of its patient."""
    return services.document_upload(
        patient=prescription.patient,
        upload=upload,
        kind=DocumentKind.PRESCRIPTION_FILE,
        uploaded_by=uploaded_by,
        prescription=prescription,
    )
