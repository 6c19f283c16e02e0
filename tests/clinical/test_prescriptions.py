"""Prescriptions: issuing through ``clinical.prescriptions``, the database rules, the printable PDF."""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Callable
from typing import Any

import pypdf
import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.utils import timezone

from clinical import appointments, extraction, fhir, ledger, pdf, prescriptions, services
from clinical.files import open_plaintext
from clinical.models import (
    Appointment,
    AppointmentStatus,
    Document,
    DocumentKind,
    Frequency,
    MedicalRecord,
    Prescription,
    PrescriptionItem,
    RecordType,
    Route,
)
from clinical.models.prescriptions import (
    APPOINTMENT_KEEPS_PRESCRIPTION,
    PRESCRIPTION_MATCHES_APPOINTMENT,
    PRESCRIPTION_VISIT,
)
from tests.clinical.care import medication, visit
from tests.db import raw, rule_name, violated

pytestmark = pytest.mark.django_db

UTC = datetime.UTC
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def item(**overrides: Any) -> dict[str, Any]:
    return {
        "medication": medication(),
        "dose": "1 capsule",
        "route": Route.ORAL,
        "frequency": Frequency.THREE_TIMES_DAILY,
        "duration_days": 7,
        "quantity": 21,
        "instructions": "After meals, with water",
        **overrides,
    }


@pytest.fixture
def appointment(patient: Any, doctor: Any) -> Appointment:
    return visit(patient, doctor)


@pytest.fixture
def issue(appointment: Appointment, doctor: Any) -> Callable[..., Prescription]:
    def run(items: list[dict[str, Any]] | None = None, **overrides: Any) -> Prescription:
        values = {"appointment": appointment, "items": [item()] if items is None else items, "issued_by": doctor.user}
        return prescriptions.prescription_issue(**{**values, **overrides})

    return run


def errors_of(caught: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return caught.value.message_dict


# Issuing ----------------------------------------------------------------------------------


def test_issuing_writes_the_prescription_its_items_and_one_prescription_record_per_item(
    issue, appointment, patient, doctor
):
    second = item(medication=medication("ibuprofen"), dose="400 mg", frequency=Frequency.AS_NEEDED, quantity=20)
    prescription = issue([item(), second], notes="Come back if the fever lasts.")

    assert (prescription.patient_id, prescription.doctor_id) == (appointment.patient_id, appointment.doctor_id)
    assert prescription.issued_by == doctor.user
    rows = list(prescription.items.order_by("position"))
    assert [row.position for row in rows] == [1, 2]
    assert [row.dose for row in rows] == ["1 capsule", "400 mg"]
    records = [MedicalRecord.objects.get(pk=row.medical_record_id) for row in rows]
    assert {record.record_type for record in records} == {RecordType.PRESCRIPTION}
    assert {record.patient_id for record in records} == {patient.pk}
    assert {record.institution_id for record in records} == {appointment.institution_id}
    assert {record.author_id for record in records} == {doctor.user_id}
    first = records[0].payload
    assert first["resourceType"] == "MedicationRequest"
    assert first["groupIdentifier"]["value"] == f"urn:uuid:{prescription.uuid}"
    assert first["subject"]["reference"] == f"Patient/{patient.uuid}"
    assert first["dosageInstruction"][0]["timing"]["repeat"]["frequency"] == 3
    assert first["dosageInstruction"][0]["patientInstruction"] == "After meals, with water"
    assert first["dispenseRequest"]["quantity"]["value"] == 21
    assert records[1].payload["dosageInstruction"][0]["asNeededBoolean"] is True
    # Each payload is valid FHIR R4 and the searched codings carry the catalog's codes.
    for record in records:
        fhir.validate(RecordType.PRESCRIPTION, record.payload)
    codes = {(c["system"], c["code"]) for c in records[0].record_metadata["codings"]}
    if medication().rxnorm_code:
        assert (fhir.RXNORM, medication().rxnorm_code) in codes
    # In the ledger like any record.
    assert ledger.verify().ok


def test_the_notes_and_instructions_are_encrypted_in_the_database(issue):
    prescription = issue(notes="Secret note about the patient")
    with connection.cursor() as cursor:
        cursor.execute("SELECT notes::text FROM clinical_prescription WHERE id = %s", [prescription.pk])
        (stored_notes,) = cursor.fetchone()
        cursor.execute(
            "SELECT instructions::text FROM clinical_prescriptionitem WHERE prescription_id = %s", [prescription.pk]
        )
        (stored_instructions,) = cursor.fetchone()
    assert "Secret" not in stored_notes
    assert "After meals" not in stored_instructions
    assert Prescription.objects.get(pk=prescription.pk).notes == "Secret note about the patient"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"medication": None}, "medication"),
        ({"dose": "  "}, "dose"),
        ({"dose": "x" * 61}, "dose"),
        ({"route": "by teleport"}, "route"),
        ({"frequency": "sometimes"}, "frequency"),
        ({"duration_days": 0}, "duration days"),
        ({"duration_days": 366}, "duration days"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": "ten"}, "quantity"),
        ({"colour": "blue"}, "fields"),
    ],
)
def test_an_incomplete_item_is_refused_naming_the_item_and_field_and_nothing_is_written(issue, overrides, field):
    before = (Prescription.objects.count(), MedicalRecord.objects.count())
    with pytest.raises(ValidationError) as caught:
        issue([item(), item(**overrides)])
    (message,) = errors_of(caught)["items"]
    assert message.startswith(f"Item 2, {field}:")
    assert (Prescription.objects.count(), MedicalRecord.objects.count()) == before


def test_a_prescription_needs_one_to_twenty_items(issue):
    with pytest.raises(ValidationError) as caught:
        issue([])
    assert "at least one" in errors_of(caught)["items"][0]
    with pytest.raises(ValidationError) as caught:
        issue([item() for _ in range(21)])
    assert "at most 20" in errors_of(caught)["items"][0]


@pytest.mark.parametrize("status", [AppointmentStatus.CANCELLED, AppointmentStatus.NO_SHOW])
def test_a_cancelled_or_missed_appointment_has_no_prescription(patient, doctor, status):
    with pytest.raises(ValidationError) as caught:
        prescriptions.prescription_issue(
            appointment=visit(patient, doctor, status=status), items=[item()], issued_by=doctor.user
        )
    assert "appointment" in errors_of(caught)


def test_a_prescription_waits_for_the_appointment_to_begin_and_may_be_written_during_it(patient, doctor):
    later = visit(patient, doctor, status=AppointmentStatus.SCHEDULED, hours_ago=-30)
    with pytest.raises(ValidationError) as caught:
        prescriptions.prescription_issue(appointment=later, items=[item()], issued_by=doctor.user)
    assert errors_of(caught) == {"appointment": ["A prescription is written once the appointment has begun."]}
    ongoing = visit(patient, doctor, status=AppointmentStatus.SCHEDULED, hours_ago=0.1)
    assert prescriptions.prescription_issue(appointment=ongoing, items=[item()], issued_by=doctor.user).pk


def test_an_appointment_holds_one_prescription(issue):
    issue()
    records = MedicalRecord.objects.count()
    with pytest.raises(ValidationError) as caught:
        issue()
    assert errors_of(caught) == {"appointment": ["This appointment already has a prescription."]}
    assert MedicalRecord.objects.count() == records


# Database rules ---------------------------------------------------------------------------


def test_the_database_holds_one_prescription_per_appointment(issue, appointment, doctor):
    issue()
    duplicate = Prescription(
        appointment=appointment, patient_id=appointment.patient_id, doctor=doctor, issued_by=doctor.user
    )
    assert rule_name(lambda: Prescription.objects.bulk_create([duplicate])) == prescriptions.ONE_PER_APPOINTMENT


def test_the_database_refuses_a_prescription_for_another_doctor_or_patient(
    appointment, doctor, make_doctor, make_patient
):
    other_doctor, other_patient = make_doctor(), make_patient()
    for parties in (
        {"doctor": other_doctor, "patient_id": appointment.patient_id},
        {"doctor": doctor, "patient": other_patient},
    ):
        wrong = Prescription(appointment=appointment, issued_by=doctor.user, **parties)
        assert (
            rule_name(lambda wrong=wrong: Prescription.objects.bulk_create([wrong])) == PRESCRIPTION_MATCHES_APPOINTMENT
        )


def test_a_written_prescription_cannot_be_moved_to_another_doctor(issue, make_doctor):
    prescription = issue()
    other = make_doctor()
    assert (
        rule_name(lambda: Prescription.objects.filter(pk=prescription.pk).update(doctor=other))
        == PRESCRIPTION_MATCHES_APPOINTMENT
    )


def test_an_appointment_with_a_prescription_keeps_its_patient_and_doctor(issue, appointment, make_patient, make_doctor):
    issue()
    other_patient, other_doctor = make_patient(), make_doctor()
    for column, value in (("patient_id", other_patient.pk), ("doctor_id", other_doctor.pk)):
        diag = violated(
            lambda column=column, value=value: raw(
                f"UPDATE clinical_appointment SET {column} = %s WHERE id = %s",
                [value, appointment.pk],
            )
        )
        assert diag.constraint_name in (PRESCRIPTION_MATCHES_APPOINTMENT, "clinical_appointment_closed_is_final")
    # The patient of a visit that has not closed yet is held by the prescription's key alone.
    ongoing = visit(appointment.patient, appointment.doctor, status=AppointmentStatus.SCHEDULED, hours_ago=0.2)
    prescriptions.prescription_issue(appointment=ongoing, items=[item()], issued_by=appointment.doctor.user)
    assert (
        rule_name(
            lambda: raw("UPDATE clinical_appointment SET patient_id = %s WHERE id = %s", [other_patient.pk, ongoing.pk])
        )
        == PRESCRIPTION_MATCHES_APPOINTMENT
    )


@pytest.mark.parametrize("action", ["cancel", "no_show", "reschedule"])
def test_a_visit_with_a_prescription_cannot_be_cancelled_missed_or_moved(patient, doctor, action):
    ongoing = visit(patient, doctor, status=AppointmentStatus.SCHEDULED, hours_ago=0.5)
    prescriptions.prescription_issue(appointment=ongoing, items=[item()], issued_by=doctor.user)
    later = timezone.now() + datetime.timedelta(days=2)
    calls = {
        "cancel": lambda: appointments.appointment_cancel(appointment=ongoing, by=doctor.user, reason="Ill"),
        "no_show": lambda: appointments.appointment_mark_no_show(appointment=ongoing, by=doctor.user),
        "reschedule": lambda: appointments.appointment_reschedule(
            appointment=ongoing, starts_at=later, ends_at=later + datetime.timedelta(minutes=30), by=doctor.user
        ),
    }
    with pytest.raises(ValidationError) as caught:
        calls[action]()
    assert "has a prescription" in errors_of(caught)["status"][0]
    assert Appointment.objects.get(pk=ongoing.pk).status == AppointmentStatus.SCHEDULED
    # Completing it is still right.
    appointments.appointment_complete(appointment=ongoing, by=doctor.user)


@pytest.mark.parametrize(
    "change",
    [
        "status = 'no_show', outcome_recorded_by_id = booked_by_id, outcome_recorded_at = now()",
        "starts_at = starts_at - interval '1 hour', ends_at = ends_at - interval '1 hour'",
    ],
)
def test_the_database_keeps_a_prescribed_visit_from_being_missed_or_moved(patient, doctor, change):
    ongoing = visit(patient, doctor, status=AppointmentStatus.SCHEDULED, hours_ago=0.5)
    Appointment.objects.filter(pk=ongoing.pk).update(booked_by=doctor.user)
    prescriptions.prescription_issue(appointment=ongoing, items=[item()], issued_by=doctor.user)
    assert (
        rule_name(lambda: raw(f"UPDATE clinical_appointment SET {change} WHERE id = %s", [ongoing.pk]))
        == APPOINTMENT_KEEPS_PRESCRIPTION
    )


@pytest.mark.parametrize(
    ("status", "hours_ago"),
    [(AppointmentStatus.CANCELLED, 2), (AppointmentStatus.NO_SHOW, 2), (AppointmentStatus.SCHEDULED, -5)],
)
def test_the_database_refuses_a_prescription_for_a_missed_cancelled_or_future_visit(patient, doctor, status, hours_ago):
    wrong = visit(patient, doctor, status=status, hours_ago=hours_ago)
    row = Prescription(appointment=wrong, patient=patient, doctor=doctor, issued_by=doctor.user)
    assert rule_name(lambda: Prescription.objects.bulk_create([row])) == PRESCRIPTION_VISIT


def test_a_document_cannot_point_to_another_patients_prescription(issue, make_patient):
    prescription = issue()
    stranger = make_patient()
    with pytest.raises(ValidationError) as caught:
        services.document_upload(
            patient=stranger,
            upload=ContentFile(PNG_1X1, name="scan.png"),
            kind=DocumentKind.PRESCRIPTION_FILE,
            uploaded_by=None,
            prescription=prescription,
        )
    assert "prescription" in errors_of(caught)
    signed = prescriptions.prescription_signed_copy_upload(
        prescription=prescription, upload=ContentFile(PNG_1X1, name="signed.png"), uploaded_by=None
    )
    assert (
        rule_name(lambda: Document.objects.filter(pk=signed.pk).update(patient=stranger))
        == "clinical_document_same_patient"
    )


# The printable PDF ------------------------------------------------------------------------


def test_the_pdf_is_made_after_commit_and_stored_as_a_prescription_document(
    appointment, doctor, django_capture_on_commit_callbacks
):
    amoxicillin = medication()
    with django_capture_on_commit_callbacks(execute=True):
        prescription = prescriptions.prescription_issue(
            appointment=appointment, items=[item()], issued_by=doctor.user, notes="Rest at home"
        )
    prescription.refresh_from_db()
    document = prescription.printable
    assert document is not None
    assert (document.kind, document.content_type, document.prescription_id) == (
        DocumentKind.PRESCRIPTION_FILE,
        "application/pdf",
        prescription.pk,
    )
    assert document.uploaded_by is None
    with open_plaintext(default_storage, document.storage_key, document_uuid=document.uuid) as stream:
        content = b"".join(stream)
    text = extraction.extract(io.BytesIO(content), "application/pdf").text
    assert str(amoxicillin) in text
    assert "After meals, with water" in text
    assert "Rest at home" in text
    assert appointment.patient.last_name in text
    assert doctor.license_number in text
    # The stored object is sealed, not the PDF.
    with default_storage.open(document.storage_key, "rb") as stored:
        assert b"%PDF" not in stored.read()
    # Running the task again keeps the one file.
    assert prescriptions.prescription_pdf(prescription=prescription).pk == document.pk
    assert Document.objects.filter(prescription=prescription).count() == 1


def test_the_pdf_task_takes_the_id_and_reports_a_missing_prescription():
    from clinical.tasks import prescription_pdf_task

    assert prescription_pdf_task.run(10**9) == "missing"


def test_a_signed_copy_is_kept_as_a_document_of_the_prescription(issue, doctor):
    prescription = issue()
    signed = prescriptions.prescription_signed_copy_upload(
        prescription=prescription, upload=ContentFile(PNG_1X1, name="signed.png"), uploaded_by=doctor.user
    )
    assert list(prescription.documents.all()) == [signed]
    assert (signed.kind, signed.patient_id, signed.content_type) == (
        DocumentKind.PRESCRIPTION_FILE,
        prescription.patient_id,
        "image/png",
    )


def test_the_pdf_writer_escapes_text_and_breaks_pages():
    lines = [pdf.Line("Title (draft) \\ 100% — café €", size=14, bold=True)]
    lines += [pdf.Line(f"Line {n} " + "word " * 30) for n in range(120)]
    content = pdf.render(lines, title="Test (1)")
    reader = pypdf.PdfReader(io.BytesIO(content), strict=True)
    assert len(reader.pages) > 2
    first = reader.pages[0].extract_text()
    assert "Title (draft) \\ 100% — café €" in first
    assert reader.metadata.title == "Test (1)"
    everything = "".join(page.extract_text() for page in reader.pages)
    assert "Line 119" in everything
    # Characters outside Windows-1252 print as "?" instead of breaking the file.
    assert "?" in pypdf.PdfReader(io.BytesIO(pdf.render([pdf.Line("名前")], title="x"))).pages[0].extract_text()


def test_the_item_rows_keep_each_record(issue):
    prescription = issue([item(), item(route=Route.TOPICAL, frequency=Frequency.ONCE, dose="thin layer")])
    once = PrescriptionItem.objects.get(prescription=prescription, position=2)
    payload = MedicalRecord.objects.get(pk=once.medical_record_id).payload
    assert payload["dosageInstruction"][0]["timing"]["repeat"] == {"count": 1}
    assert payload["dosageInstruction"][0]["route"]["coding"][0]["code"] == "6064005"


@pytest.mark.django_db(transaction=True)
def test_two_pdf_runs_at_once_make_one_document(patient, doctor):
    """A redelivered task running beside the first: the advisory lock makes the second find the first's PDF."""
    import threading

    from django.db import connection as default_connection

    prescription = prescriptions.prescription_issue(
        appointment=visit(patient, doctor), items=[item()], issued_by=doctor.user
    )
    start = threading.Barrier(2, timeout=30)
    made: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            made.append(prescriptions.prescription_pdf(prescription=prescription).pk)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            default_connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(made) == 2 and made[0] == made[1]
    assert Document.objects.filter(prescription=prescription).count() == 1
    assert Prescription.objects.get(pk=prescription.pk).printable_id == made[0]


def test_the_audit_log_does_not_say_what_was_prescribed(issue):
    from auditlog.models import LogEntry

    prescription = issue([item()])
    row = prescription.items.get()
    entry = LogEntry.objects.get_for_object(row).get()
    text = f"{entry.object_repr} {entry.changes}"
    for secret in (str(medication()), "1 capsule", "three_times_daily", "After meals"):
        assert secret not in text, secret
    changes = entry.changes if isinstance(entry.changes, dict) else json.loads(entry.changes or "{}")
    assert not {"medication", "dose", "route", "frequency", "duration_days", "quantity"} & set(changes)
    assert entry.object_repr == f"Prescription item {row.uuid}"
