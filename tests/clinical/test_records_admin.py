"""Medical records in the admin: forms that build FHIR, the summary, the actions, the audit of reads."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.urls import reverse

from clinical import fhir, services
from clinical.models import LedgerEntry, MedicalRecord, RecordStatus

pytestmark = pytest.mark.django_db

WHEN = "2026-11-20 09:30"


@pytest.fixture
def clinic(make_institution, make_doctor, make_patient, make_staff, staff_client_factory) -> dict[str, Any]:
    home = make_institution()
    doctor = make_doctor(institution=home)
    from django.contrib.auth.models import Group

    doctor.user.is_staff = True
    doctor.user.save(update_fields=["is_staff"])
    doctor.user.groups.add(Group.objects.get(name="Doctor"))
    patient = make_patient(doctor=doctor)
    nurse = make_staff("Nurse", institution=home)
    return {
        "doctor": doctor,
        "patient": patient,
        "nurse": nurse,
        "doctor_client": staff_client_factory(doctor.user),
        "nurse_client": staff_client_factory(nurse),
    }


def _add(client, form_kind: str, patient, **fields: Any):
    url = reverse("admin:clinical_medicalrecord_add_kind", args=[form_kind])
    return client.post(url, {"patient": patient.pk, **fields})


def _record(patient) -> MedicalRecord:
    return MedicalRecord.objects.filter(patient=patient).latest("id")


@pytest.mark.parametrize(
    ("kind", "fields", "record_type", "summary"),
    [
        ("vital-signs", {"kind": "8867-4", "value": "88", "effective": WHEN}, "vital_signs", "88 /min"),
        (
            "vital-signs",
            {"kind": "85354-9", "systolic": "150", "diastolic": "95", "effective": WHEN},
            "vital_signs",
            "150 mm[Hg]",
        ),
        (
            "lab-result",
            {
                "loinc_code": "2345-7",
                "display": "Glucose",
                "value": "180",
                "unit": "mg/dL",
                "low": "70",
                "high": "99",
                "effective": WHEN,
            },
            "lab_result",
            "180 mg/dL",
        ),
        (
            "diagnosis",
            {"icd10_code": "e11.9", "display": "Type 2 diabetes", "onset": "2026-01-05", "clinical_status": "active"},
            "diagnosis",
            "Type 2 diabetes",
        ),
        (
            "vaccination",
            {"cvx_code": "140", "display": "Influenza, seasonal", "occurrence": "2026-10-01", "lot_number": "A1"},
            "vaccination",
            "Influenza, seasonal",
        ),
    ],
)
def test_each_form_builds_valid_fhir_and_the_page_shows_a_summary_not_json(
    clinic, kind, fields, record_type, summary
) -> None:
    response = _add(clinic["doctor_client"], kind, clinic["patient"], **fields)
    assert response.status_code == 302, response.context and response.context["form"].errors
    record = _record(clinic["patient"])
    assert record.record_type == record_type
    fhir.validate(record_type, record.payload)  # what was stored is valid FHIR R4
    assert record.author == clinic["doctor"].user
    assert LedgerEntry.objects.filter(record=record).count() == 1
    page = clinic["doctor_client"].get(response["Location"]).content.decode()
    assert summary in page
    assert '"resourceType"' not in page


def test_a_lab_result_gets_its_interpretation_on_write(clinic) -> None:
    _add(
        clinic["doctor_client"],
        "lab-result",
        clinic["patient"],
        loinc_code="2345-7",
        display="Glucose",
        value="50",
        unit="mg/dL",
        low="70",
        high="99",
        effective=WHEN,
    )
    assert _record(clinic["patient"]).interpretation == "low"


def test_form_errors_name_the_field_and_write_nothing(clinic) -> None:
    bad_icd = _add(
        clinic["doctor_client"],
        "diagnosis",
        clinic["patient"],
        icd10_code="XYZ",
        display="?",
        onset="2026-01-01",
        clinical_status="active",
    )
    assert bad_icd.status_code == 200
    assert "icd10_code" in bad_icd.context["form"].errors
    wrong_unit = _add(
        clinic["doctor_client"], "vital-signs", clinic["patient"], kind="8867-4", value="80", unit="kg", effective=WHEN
    )
    assert wrong_unit.status_code == 200
    assert wrong_unit.context["form"].non_field_errors()
    bad_json = _add(
        clinic["doctor_client"],
        "fhir",
        clinic["patient"],
        type="diagnosis",
        fhir_json='{"resourceType": "Observation", "status": "final"}',
    )
    assert bad_json.status_code == 200
    assert bad_json.context["form"].errors
    assert not MedicalRecord.objects.filter(patient=clinic["patient"]).exists()
    assert not LedgerEntry.objects.exists()


def test_a_hidden_patient_cannot_be_chosen(clinic, make_institution, make_doctor, make_patient) -> None:
    stranger = make_patient(doctor=make_doctor(institution=make_institution()))
    response = _add(clinic["doctor_client"], "vital-signs", stranger, kind="8867-4", value="80", effective=WHEN)
    assert response.status_code == 200
    assert "patient" in response.context["form"].errors
    assert not MedicalRecord.objects.exists()


def _heart_rate_record(clinic) -> MedicalRecord:
    patient = clinic["patient"]
    return services.record_create(
        patient=patient,
        record_type="vital_signs",
        payload=fhir.build_vital_signs(
            kind="8867-4",
            value=70,
            effective=datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC),
            patient_reference=f"Patient/{patient.uuid}",
        ),
        author=clinic["doctor"].user,
    )


def test_verify_amend_and_entered_in_error_from_the_record_page(clinic) -> None:
    record, client = _heart_rate_record(clinic), clinic["doctor_client"]
    page = client.get(reverse("admin:clinical_medicalrecord_change", args=[record.pk])).content.decode()
    for action in ("Verify", "Amend", "Mark entered in error"):
        assert action in page

    assert client.post(reverse("admin:clinical_medicalrecord_verify", args=[record.pk])).status_code == 302
    record.refresh_from_db()
    assert record.verified_by == clinic["doctor"].user

    amended_payload = {**record.payload, "valueQuantity": {**record.payload["valueQuantity"], "value": 66}}
    import json

    response = client.post(
        reverse("admin:clinical_medicalrecord_amend", args=[record.pk]),
        {"fhir_json": json.dumps(amended_payload), "reason": "Transcription error"},
    )
    assert response.status_code == 302
    record.refresh_from_db()
    new = MedicalRecord.objects.get(series=record.series, version=2)
    assert (record.status, new.status, new.payload["valueQuantity"]["value"]) == ("superseded", "current", 66)

    no_reason = client.post(reverse("admin:clinical_medicalrecord_entered_in_error", args=[new.pk]), {"reason": ""})
    assert no_reason.status_code == 200
    assert (
        client.post(
            reverse("admin:clinical_medicalrecord_entered_in_error", args=[new.pk]), {"reason": "Wrong patient"}
        ).status_code
        == 302
    )
    new.refresh_from_db()
    assert new.status == RecordStatus.ENTERED_IN_ERROR
    assert new.error_reason == "Wrong patient"
    # The old version's page offers no actions: only the current version changes.
    old_page = client.get(reverse("admin:clinical_medicalrecord_change", args=[record.pk])).content.decode()
    assert "Mark entered in error" not in old_page


def test_a_nurse_adds_records_but_cannot_amend_or_verify(clinic) -> None:
    record, client = _heart_rate_record(clinic), clinic["nurse_client"]
    page = client.get(reverse("admin:clinical_medicalrecord_change", args=[record.pk]))
    assert page.status_code == 200
    assert reverse("admin:clinical_medicalrecord_amend", args=[record.pk]) not in page.content.decode()
    assert client.post(reverse("admin:clinical_medicalrecord_verify", args=[record.pk])).status_code == 403
    amend = client.post(
        reverse("admin:clinical_medicalrecord_amend", args=[record.pk]), {"fhir_json": "{}", "reason": "x"}
    )
    assert amend.status_code == 403
    added = _add(client, "vital-signs", clinic["patient"], kind="8867-4", value="91", effective=WHEN)
    assert added.status_code == 302


def test_reads_of_record_pages_are_audited(clinic) -> None:
    record, client = _heart_rate_record(clinic), clinic["doctor_client"]
    before = LogEntry.objects.filter(action=LogEntry.Action.ACCESS).count()
    client.get(reverse("admin:clinical_medicalrecord_change", args=[record.pk]))
    client.get(reverse("admin:clinical_medicalrecord_changelist"))
    entries = list(LogEntry.objects.filter(action=LogEntry.Action.ACCESS).order_by("id")[before:])
    assert [entry.additional_data["view"] for entry in entries] == ["admin record", "admin record list"]
    assert all(entry.actor == clinic["doctor"].user for entry in entries)
    assert all(str(record.uuid) in entry.additional_data["records"] for entry in entries)


def test_records_cannot_be_edited_or_deleted_in_the_admin(clinic, superuser_client) -> None:
    record = _heart_rate_record(clinic)
    url = reverse("admin:clinical_medicalrecord_change", args=[record.pk])
    superuser_client.post(url, {"record_type": "diagnosis"})
    record.refresh_from_db()
    assert record.record_type == "vital_signs"
    assert superuser_client.get(reverse("admin:clinical_medicalrecord_delete", args=[record.pk])).status_code == 403
