"""Medical records: encrypted FHIR payloads, versions that are never edited in place, and their API.

The ledger and ``verify_integrity`` have their own file (``test_ledger.py``).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
from types import SimpleNamespace
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.services import api_token_create
from clinical import fhir, schema, services
from clinical.canonical import sha256_hex
from clinical.models import (
    LedgerEntry,
    LedgerEntryKind,
    MedicalRecord,
    Patient,
    RecordStatus,
)
from clinical.services import PayloadInvalid
from tests.db import rule_name
from tests.samples import SAMPLES_DIR

pytestmark = pytest.mark.django_db

WHEN = datetime.datetime(2019, 3, 14, 8, 15, tzinfo=datetime.UTC)
SYNTHEA_TYPES = ("Observation", "Condition", "MedicationRequest", "Immunization", "AllergyIntolerance", "Procedure")


# Samples and payloads ----------------------------------------------------------------------------


@functools.cache
def _load(name: str) -> Any:
    return json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))


def sample(name: str) -> dict[str, Any]:
    return copy.deepcopy(_load(name))


def sample_names(bundles: bool) -> list[str]:
    """The sample files that are bundles, or the HL7 examples of a resource type some record stores.

    A missing directory gives one impossible name, so the tests fail on it instead of being skipped.
    """
    names = sorted(path.name for path in SAMPLES_DIR.glob("*.json"))
    if not names:
        return [f"missing: {SAMPLES_DIR}"]
    if bundles:
        return [name for name in names if _load(name)["resourceType"] == "Bundle"]
    return [name for name in names if fhir.suggest_record_type(_load(name)) is not None]


HL7_EXAMPLES = sample_names(bundles=False)
BUNDLES = sample_names(bundles=True)


def heart_rate(patient: Patient, value: float = 72, when: datetime.datetime = WHEN) -> dict[str, Any]:
    return fhir.build_vital_signs(
        kind="8867-4", value=value, effective=when, patient_reference=f"Patient/{patient.uuid}"
    )


def lab(patient: Patient, value: float, low: float = 12, high: float = 16, when: datetime.datetime = WHEN) -> Any:
    return fhir.build_lab_result(
        loinc_code="718-7",
        display="Hemoglobin [Mass/volume] in Blood",
        value=value,
        unit="g/dL",
        low=low,
        high=high,
        effective=when,
        patient_reference=f"Patient/{patient.uuid}",
    )


def diagnosis(patient: Patient, code: str = "J45.909", onset: datetime.date | None = None) -> dict[str, Any]:
    reference = f"Patient/{patient.uuid}"
    return fhir.build_diagnosis(
        icd10_code=code, display="Asthma", onset=onset or WHEN.date(), patient_reference=reference
    )


def create(patient: Patient, record_type: str, payload: Any, **options: Any) -> MedicalRecord:
    return services.record_create(patient=patient, record_type=record_type, payload=payload, **options)


def run_sql(sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def strings_in(value: Any) -> set[str]:
    """Every string and number in a JSON value, as text."""
    if isinstance(value, dict):
        return {text for item in value.values() for text in strings_in(item)}
    if isinstance(value, list):
        return {text for item in value for text in strings_in(item)}
    return {str(value)}


# People and clients ------------------------------------------------------------------------------


@pytest.fixture
def clinician(doctor: Any, roles: None) -> Any:
    """The patients' primary doctor, holding the Doctor role (doctor_register does not add it)."""
    doctor.user.groups.add(Group.objects.get(name="Doctor"))
    return doctor.user


def token_client(user: Any) -> Client:
    _token, secret = api_token_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {secret}")


@pytest.fixture
def api(clinician: Any) -> Client:
    return token_client(clinician)


def records_url(patient: Patient, **params: Any) -> str:
    url = reverse("v1:record-list", args=[patient.uuid])
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"{url}?{query}" if query else url


def record_url(record: MedicalRecord, action: str = "") -> str:
    name = f"v1:record-{action}" if action else "v1:record-detail"
    return reverse(name, args=[record.patient.uuid, record.uuid])


def post_json(client: Client, url: str, body: Any) -> Any:
    return client.post(url, data=json.dumps(body), content_type="application/json")


def listed(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


# Encryption at rest ------------------------------------------------------------------------------

NOTE = "Drawn after the patient fainted in the waiting room"
PERFORMER = "Quillon Verity"


@pytest.fixture
def lab_record(patient: Patient, clinician: Any) -> SimpleNamespace:
    payload = lab(patient, 13.37, low=11.9, high=17.3)
    payload["note"] = [{"text": NOTE}]
    payload["performer"] = [{"display": PERFORMER}]
    record = create(patient, "lab_result", payload, author=clinician)
    return SimpleNamespace(record=record, payload=payload)


def test_the_payload_column_holds_only_a_ciphertext(lab_record):
    [(stored,)] = run_sql("SELECT payload FROM clinical_medicalrecord WHERE id = %s", [lab_record.record.pk])

    assert stored.startswith("ct1$")
    for text in strings_in(lab_record.payload):
        assert text not in stored
    assert MedicalRecord.objects.get(pk=lab_record.record.pk).payload == lab_record.payload


def test_a_raw_select_of_the_row_shows_no_display_text_reference_or_note(lab_record):
    record, payload = lab_record.record, lab_record.payload
    [(row,)] = run_sql("SELECT r::text FROM clinical_medicalrecord r WHERE id = %s", [record.pk])

    for text in ("Hemoglobin", "Mass/volume", NOTE, "fainted", PERFORMER, str(record.patient.uuid)):
        assert text not in row
    assert payload["subject"]["reference"] not in row


def test_a_raw_select_shows_codes_only_in_the_searchable_metadata(lab_record):
    record = lab_record.record
    # record_metadata is plain JSONB by design (issue 4: searched by coding system and code, with a GIN index).
    [(row,)] = run_sql(
        "SELECT (to_jsonb(r) - 'record_metadata')::text FROM clinical_medicalrecord r WHERE id = %s", [record.pk]
    )

    assert "718-7" not in row
    assert "loinc" not in row
    assert {"system": fhir.LOINC, "code": "718-7"} in MedicalRecord.objects.get(pk=record.pk).record_metadata["codings"]


def test_a_raw_select_of_the_row_shows_no_measured_value(lab_record):
    [(row,)] = run_sql("SELECT r::text FROM clinical_medicalrecord r WHERE id = %s", [lab_record.record.pk])

    for value in ("13.37", "11.9", "17.3", "g/dL"):
        assert value not in row


def audit_rows_of(record: MedicalRecord) -> list[str]:
    ids = [str(pk) for pk in MedicalRecord.objects.filter(series=record.series).values_list("pk", flat=True)]
    return [
        row
        for (row,) in run_sql(
            "SELECT l::text FROM auditlog_logentry l WHERE content_type_id = "
            "(SELECT id FROM django_content_type WHERE app_label = 'clinical' AND model = 'medicalrecord') "
            "AND object_pk = ANY(%s) AND action <> %s",
            [ids, LogEntry.Action.ACCESS],
        )
    ]


@pytest.fixture
def audited_writes(lab_record, clinician) -> SimpleNamespace:
    """Every kind of record write: create, amend, verify, entered-in-error."""
    record = lab_record.record
    amended_payload = copy.deepcopy(lab_record.payload)
    amended_payload["valueQuantity"]["value"] = 13.38
    amended = services.record_amend(record=record, payload=amended_payload, author=clinician, reason="Recalibrated")
    services.record_verify(record=amended, by=clinician)
    services.record_mark_entered_in_error(record=amended, by=clinician, reason="Sample was haemolysed")
    return SimpleNamespace(rows=audit_rows_of(record))


def test_audit_entries_of_record_writes_hold_no_payload_or_metadata(audited_writes):
    assert len(audited_writes.rows) == 5  # two creates, the superseded update, verify, entered-in-error
    for row in audited_writes.rows:
        for text in ("Hemoglobin", NOTE, PERFORMER, "g/dL", "718-7", "loinc", "13.37", "13.38", "11.9", "17.3"):
            assert text not in row
        for text in ("Recalibrated", "haemolysed"):  # the encrypted reasons are masked too
            assert text not in row
    # The payloads are there as masks: the log says they were written, not what they said.
    assert sum('""payload"": [""[encrypted]""' in row for row in audited_writes.rows) == 2


def test_audit_entries_of_record_writes_hold_no_effective_date(audited_writes):
    for row in audited_writes.rows:
        assert "2019-03-14" not in row


# One record write ---------------------------------------------------------------------------------


def test_one_record_write_is_one_statement(patient, clinician, django_assert_num_queries):
    # The patient as the API passes it (visible_patient selects the institution with it).
    patient = Patient.objects.select_related("institution").get(pk=patient.pk)
    payload = heart_rate(patient)
    ContentType.objects.get_for_model(MedicalRecord)  # read once per process, then cached

    with django_assert_num_queries(1) as captured:
        # The record, its ledger entry and its audit entry, moving the ledger head: one statement, atomic by
        # itself, so no SAVEPOINT or BEGIN and COMMIT around it.
        record = services.record_create(patient=patient, record_type="vital_signs", payload=payload, author=clinician)

    (statement,) = [query["sql"] for query in captured.captured_queries]
    assert statement.startswith("WITH head AS (")
    for table in ("clinical_ledgerhead", "clinical_medicalrecord", "clinical_ledgerentry", "auditlog_logentry"):
        assert table in statement
    assert LedgerEntry.objects.get(record=record).data_hash == record.data_hash
    assert LogEntry.objects.get_for_object(record).get().action == LogEntry.Action.CREATE


def test_a_write_stores_the_hash_of_the_canonical_plaintext_and_the_searchable_metadata(patient):
    payload = heart_rate(patient)
    reordered = dict(reversed(list(payload.items())))

    record = create(patient, "vital_signs", reordered)

    stored = MedicalRecord.objects.get(pk=record.pk)
    assert stored.data_hash == sha256_hex(payload)
    assert list(stored.payload) == list(reordered)  # kept exactly as submitted, member order included
    assert stored.resource_type == "Observation"
    assert stored.effective_date == WHEN.date()
    assert stored.record_metadata["codings"] == [{"system": fhir.LOINC, "code": "8867-4"}]
    assert stored.record_metadata["categories"] == ["vital-signs"]
    assert stored.institution == patient.institution


def test_a_failed_write_leaves_nothing_behind(patient):
    payload = heart_rate(patient)
    del payload["status"]
    records, entries, logs = MedicalRecord.objects.count(), LedgerEntry.objects.count(), LogEntry.objects.count()

    with pytest.raises(PayloadInvalid):
        create(patient, "vital_signs", payload)
    with pytest.raises(ValidationError) as caught:
        create(patient, "vital_signs", heart_rate(patient), severity=11)

    assert "severity" in caught.value.message_dict
    assert (MedicalRecord.objects.count(), LedgerEntry.objects.count(), LogEntry.objects.count()) == (
        records,
        entries,
        logs,
    )


# Versions: amendments and entered-in-error -------------------------------------------------------


def test_an_amendment_supersedes_the_old_version_which_stays_readable(patient, clinician):
    first = create(patient, "vital_signs", heart_rate(patient, 72), author=clinician, severity=3)

    amended = services.record_amend(record=first, payload=heart_rate(patient, 74), author=clinician, reason="Misread")

    old = MedicalRecord.objects.get(pk=first.pk)
    new = MedicalRecord.objects.get(pk=amended.pk)
    assert old.status == RecordStatus.SUPERSEDED
    assert old.payload == heart_rate(patient, 72)
    assert (new.status, new.version, new.series, new.supersedes_id) == (RecordStatus.CURRENT, 2, old.series, old.pk)
    assert new.payload == heart_rate(patient, 74)
    assert new.amendment_reason == "Misread"
    assert new.severity == 3  # carried over
    assert list(MedicalRecord.objects.filter(series=old.series).current()) == [new]
    entry = LedgerEntry.objects.get(record=new)
    assert (entry.kind, entry.version, entry.data_hash) == (LedgerEntryKind.VERSION, 2, new.data_hash)


def test_amending_a_superseded_version_is_refused(patient, clinician):
    first = create(patient, "vital_signs", heart_rate(patient, 72))
    services.record_amend(record=first, payload=heart_rate(patient, 74), author=clinician, reason="Misread")

    with pytest.raises(ValidationError) as caught:
        services.record_amend(record=first, payload=heart_rate(patient, 75), author=clinician, reason="Again")

    assert "status" in caught.value.message_dict
    assert MedicalRecord.objects.filter(series=first.series).count() == 2


def test_an_amendment_needs_a_reason_and_a_valid_payload(patient, clinician):
    first = create(patient, "vital_signs", heart_rate(patient, 72))
    with pytest.raises(ValidationError) as no_reason:
        services.record_amend(record=first, payload=heart_rate(patient, 74), author=clinician, reason=" ")
    broken = heart_rate(patient, 74)
    broken["valueQuantity"]["code"] = "kg"
    with pytest.raises(PayloadInvalid):
        services.record_amend(record=first, payload=broken, author=clinician, reason="Misread")

    assert "reason" in no_reason.value.message_dict
    assert MedicalRecord.objects.get(pk=first.pk).status == RecordStatus.CURRENT
    assert MedicalRecord.objects.filter(series=first.series).count() == 1


def test_entered_in_error_needs_a_reason_and_keeps_the_record_readable(patient, clinician):
    record = create(patient, "vital_signs", heart_rate(patient))

    with pytest.raises(ValidationError) as caught:
        services.record_mark_entered_in_error(record=record, by=clinician, reason="  ")
    assert "reason" in caught.value.message_dict
    assert MedicalRecord.objects.get(pk=record.pk).status == RecordStatus.CURRENT

    services.record_mark_entered_in_error(record=record, by=clinician, reason="Another patient's reading")

    marked = MedicalRecord.objects.get(pk=record.pk)
    assert marked.status == RecordStatus.ENTERED_IN_ERROR
    assert (marked.error_reason, marked.marked_in_error_by) == ("Another patient's reading", clinician)
    assert marked.payload == heart_rate(patient)
    assert LedgerEntry.objects.filter(record=record, kind=LedgerEntryKind.ENTERED_IN_ERROR).count() == 1


def test_the_database_refuses_entered_in_error_without_a_reason(patient):
    record = create(patient, "vital_signs", heart_rate(patient))

    name = rule_name(
        lambda: run_sql(
            "UPDATE clinical_medicalrecord SET status = 'entered_in_error', marked_in_error_at = now() WHERE id = %s",
            [record.pk],
        )
    )

    assert name == "clinical_record_error_has_reason"


def test_verifying_a_record_records_who_and_when_once(patient, clinician):
    record = create(patient, "symptom", diagnosis(patient), source="ai_analysis", confidence="0.87")

    services.record_verify(record=record, by=clinician)
    with pytest.raises(ValidationError) as caught:
        services.record_verify(record=record, by=clinician)

    verified = MedicalRecord.objects.get(pk=record.pk)
    assert verified.verified_by == clinician and verified.verified_at is not None
    assert str(verified.confidence) == "0.87"
    assert "verified_at" in caught.value.message_dict
    assert LedgerEntry.objects.filter(record=record, kind=LedgerEntryKind.VERIFIED).count() == 1


IMMUTABLE_EDITS = {
    "data_hash": "data_hash = repeat('e', 64)",
    "record_type": "record_type = 'diagnosis'",
    "resource_type": "resource_type = 'Condition'",
    "patient": "patient_id = %(other_patient)s",
    "version": "version = 7",
    "series": "series = gen_random_uuid()",
    "author": "author_id = NULL",
    "created_at": "created_at = created_at - interval '1 day'",
}


@pytest.mark.parametrize("column", list(IMMUTABLE_EDITS))
def test_the_database_refuses_to_edit_what_a_record_says_in_place(patient, make_patient, clinician, column):
    record = create(patient, "vital_signs", heart_rate(patient), author=clinician)
    other = make_patient()
    assignment = IMMUTABLE_EDITS[column].replace("%(other_patient)s", str(other.pk))

    name = rule_name(lambda: run_sql(f"UPDATE clinical_medicalrecord SET {assignment} WHERE id = %s", [record.pk]))

    assert name == schema.RECORD_IMMUTABLE


def test_the_database_refuses_an_orm_update_of_the_hash(patient):
    record = create(patient, "vital_signs", heart_rate(patient))

    assert rule_name(lambda: MedicalRecord.objects.filter(pk=record.pk).update(data_hash="d" * 64)) == (
        schema.RECORD_IMMUTABLE
    )
    assert MedicalRecord.objects.get(pk=record.pk).data_hash == record.data_hash


@pytest.mark.parametrize("status", [RecordStatus.SUPERSEDED, RecordStatus.ENTERED_IN_ERROR])
def test_the_database_refuses_a_status_going_back_to_current(patient, clinician, status):
    record = create(patient, "vital_signs", heart_rate(patient))
    if status == RecordStatus.SUPERSEDED:
        services.record_amend(record=record, payload=heart_rate(patient, 75), author=clinician, reason="Misread")
        # Make room for a second current version, so only the status rule can refuse.
        run_sql("SET CONSTRAINTS ALL IMMEDIATE")
        run_sql("ALTER TABLE clinical_medicalrecord DISABLE TRIGGER " + schema.RECORD_IMMUTABLE)
        run_sql("UPDATE clinical_medicalrecord SET series = gen_random_uuid() WHERE version = 2")
        run_sql("ALTER TABLE clinical_medicalrecord ENABLE TRIGGER " + schema.RECORD_IMMUTABLE)
    else:
        services.record_mark_entered_in_error(record=record, by=clinician, reason="Wrong patient")

    name = rule_name(lambda: MedicalRecord.objects.filter(pk=record.pk).update(status=RecordStatus.CURRENT))

    assert name == schema.RECORD_IMMUTABLE
    assert MedicalRecord.objects.get(pk=record.pk).status == status


# Lab results and vital signs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "interpretation"),
    [
        (11.0, "low"),
        (12, "normal"),
        (14.1, "normal"),
        (16, "normal"),
        (17.5, "high"),
        (7.9, "critical"),
        (20.5, "critical"),
    ],
)
def test_a_lab_result_is_interpreted_against_its_reference_range_on_write(patient, value, interpretation):
    record = create(patient, "lab_result", lab(patient, value, low=12, high=16))

    assert MedicalRecord.objects.values_list("interpretation", flat=True).get(pk=record.pk) == interpretation


def test_a_lab_result_without_a_range_or_with_a_comparator_has_no_interpretation(patient):
    no_range = lab(patient, 14)
    del no_range["referenceRange"]
    comparator = lab(patient, 5)
    comparator["valueQuantity"]["comparator"] = "<"

    assert create(patient, "lab_result", no_range).interpretation is None
    assert create(patient, "lab_result", comparator).interpretation is None


def test_a_vital_sign_in_the_wrong_ucum_unit_is_refused(patient):
    payload = heart_rate(patient)
    payload["valueQuantity"].update(unit="kg", code="kg")

    with pytest.raises(PayloadInvalid) as caught:
        create(patient, "vital_signs", payload)

    assert [error["path"] for error in caught.value.fhir_errors] == ["Observation.valueQuantity.code"]
    assert "/min" in caught.value.fhir_errors[0]["message"]
    assert not MedicalRecord.objects.exists()


def test_a_blood_pressure_needs_both_components(patient):
    payload = fhir.build_vital_signs(
        kind="85354-9", systolic=120, diastolic=80, effective=WHEN, patient_reference=f"Patient/{patient.uuid}"
    )
    payload["component"] = payload["component"][:1]

    with pytest.raises(PayloadInvalid) as caught:
        create(patient, "vital_signs", payload)

    assert [error["path"] for error in caught.value.fhir_errors] == ["Observation.component"]


# API: writing ------------------------------------------------------------------------------------


def test_a_post_with_an_invalid_fhir_payload_answers_400_naming_each_failing_path(api, patient):
    payload = heart_rate(patient)
    payload["valueQuantity"]["value"] = "seventy"
    payload["effectiveDateTime"] = "yesterday"
    payload["colour"] = "red"

    response = post_json(api, records_url(patient), {"record_type": "vital_signs", "payload": payload})

    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["payload"]
    assert all(set(error) == {"path", "message"} and error["message"] for error in body["payload"])
    assert sorted(error["path"] for error in body["payload"]) == [
        "Observation.colour",
        "Observation.effectiveDateTime",
        "Observation.valueQuantity.value",
    ]
    assert {"path": "Observation.colour", "message": "unknown element"} in body["payload"]
    assert "seventy" not in response.content.decode()  # messages do not quote the submitted text back
    assert not MedicalRecord.objects.exists()
    assert not LedgerEntry.objects.exists()


def test_a_post_missing_a_required_element_answers_400_naming_it(api, patient):
    payload = heart_rate(patient)
    del payload["status"]

    response = post_json(api, records_url(patient), {"record_type": "vital_signs", "payload": payload})

    assert response.status_code == 400
    assert response.json() == {"payload": [{"path": "Observation.status", "message": "required element is missing"}]}


def test_a_post_with_a_missing_and_a_malformed_element_names_both(api, patient):
    payload = heart_rate(patient)
    del payload["status"]
    payload["effectiveDateTime"] = "yesterday"

    response = post_json(api, records_url(patient), {"record_type": "vital_signs", "payload": payload})

    assert sorted(error["path"] for error in response.json()["payload"]) == [
        "Observation.effectiveDateTime",
        "Observation.status",
    ]


def test_a_post_with_a_resource_the_record_type_does_not_take_answers_400(api, patient):
    response = post_json(api, records_url(patient), {"record_type": "vaccination", "payload": diagnosis(patient)})

    assert response.status_code == 400
    assert response.json() == {
        "payload": [{"path": "resourceType", "message": "a vaccination record takes Immunization, not 'Condition'"}]
    }


def test_a_post_with_a_contradicting_category_answers_400_naming_the_category(api, patient):
    response = post_json(api, records_url(patient), {"record_type": "lab_result", "payload": heart_rate(patient)})

    assert response.status_code == 400
    assert [error["path"] for error in response.json()["payload"]] == ["Observation.category"]


def test_a_post_with_an_unknown_record_type_answers_400_naming_it(api, patient):
    response = post_json(api, records_url(patient), {"record_type": "gossip", "payload": heart_rate(patient)})

    assert response.status_code == 400
    assert list(response.json()) == ["record_type"]


def test_a_post_writes_the_record_with_its_author_and_answers_201(api, patient, clinician):
    body = {"record_type": "lab_result", "payload": lab(patient, 17.5), "severity": 4, "confidence": "0.90"}

    response = post_json(api, records_url(patient), body)

    assert response.status_code == 201, response.content
    data = response.json()
    record = MedicalRecord.objects.get(uuid=data["id"])
    assert (record.author, record.patient, record.severity) == (clinician, patient, 4)
    assert data["payload"] == body["payload"]
    assert (data["interpretation"], data["status"], data["version"], data["confidence"]) == (
        "high",
        "current",
        1,
        "0.90",
    )
    assert data["ledger_entry"] == str(LedgerEntry.objects.get(record=record).uuid)
    assert data["data_hash"] == sha256_hex(body["payload"])


def test_amending_through_the_api_and_then_amending_the_old_version_again(api, patient):
    record = create(patient, "vital_signs", heart_rate(patient, 72))

    first = post_json(api, record_url(record, "amend"), {"payload": heart_rate(patient, 74), "reason": "Misread"})
    again = post_json(api, record_url(record, "amend"), {"payload": heart_rate(patient, 75), "reason": "Again"})

    assert first.status_code == 201, first.content
    assert (first.json()["version"], first.json()["supersedes"]) == (2, str(record.uuid))
    assert again.status_code == 400
    assert list(again.json()) == ["status"]
    assert "current version" in again.json()["status"][0]
    assert MedicalRecord.objects.filter(series=record.series).count() == 2


def test_entered_in_error_through_the_api_needs_a_reason(api, patient):
    record = create(patient, "vital_signs", heart_rate(patient))

    missing = post_json(api, record_url(record, "entered-in-error"), {})
    marked = post_json(api, record_url(record, "entered-in-error"), {"reason": "Wrong patient"})

    assert missing.status_code == 400
    assert list(missing.json()) == ["reason"]
    assert marked.status_code == 200, marked.content
    assert marked.json()["status"] == RecordStatus.ENTERED_IN_ERROR


# API: reading ------------------------------------------------------------------------------------


def test_the_list_shows_current_versions_unless_asked_for_all(api, patient, clinician):
    record = create(patient, "vital_signs", heart_rate(patient, 72))
    amended = services.record_amend(record=record, payload=heart_rate(patient, 74), author=clinician, reason="Typo")
    withdrawn = create(patient, "diagnosis", diagnosis(patient))
    services.record_mark_entered_in_error(record=withdrawn, by=clinician, reason="Wrong patient")

    assert listed(api.get(records_url(patient))) == [str(amended.uuid)]
    assert set(listed(api.get(records_url(patient, status="all")))) == {
        str(record.uuid),
        str(amended.uuid),
        str(withdrawn.uuid),
    }
    assert listed(api.get(records_url(patient, status="superseded"))) == [str(record.uuid)]
    assert listed(api.get(records_url(patient, status="entered_in_error"))) == [str(withdrawn.uuid)]
    # The old version stays readable on its own.
    detail = api.get(record_url(record))
    assert detail.status_code == 200
    assert (detail.json()["status"], detail.json()["payload"]) == ("superseded", heart_rate(patient, 72))


@pytest.fixture
def varied(patient: Patient) -> SimpleNamespace:
    """Records of several types, dates and code systems."""
    day = datetime.timedelta(days=1)
    return SimpleNamespace(
        pulse=create(patient, "vital_signs", heart_rate(patient, 70, WHEN)),
        hb=create(patient, "lab_result", lab(patient, 14, when=WHEN + 10 * day)),
        asthma=create(patient, "diagnosis", diagnosis(patient, "J45.909", (WHEN + 20 * day).date())),
        flu=create(
            patient,
            "vaccination",
            fhir.build_vaccination(
                cvx_code="140", display="Influenza", occurrence=(WHEN + 30 * day).date(), patient_reference="Patient/x"
            ),
        ),
        allergy=create(patient, "medical_history", sample("AllergyIntolerance-example.json")),  # SNOMED, 2014
    )


def uuids(*records: MedicalRecord) -> set[str]:
    return {str(record.uuid) for record in records}


def test_the_list_filters_by_record_type(api, patient, varied):
    assert set(listed(api.get(records_url(patient, type="lab_result")))) == uuids(varied.hb)
    assert set(listed(api.get(records_url(patient, type="vital_signs")))) == uuids(varied.pulse)
    assert listed(api.get(records_url(patient, type="imaging"))) == []


def test_the_list_filters_by_effective_date_range(api, patient, varied):
    assert set(listed(api.get(records_url(patient, effective_from="2019-03-20")))) == uuids(
        varied.hb, varied.asthma, varied.flu
    )
    assert set(listed(api.get(records_url(patient, effective_to="2019-03-23")))) == uuids(varied.pulse, varied.allergy)
    between = api.get(records_url(patient, effective_from="2019-03-24", effective_to="2019-04-03"))
    assert set(listed(between)) == uuids(varied.hb, varied.asthma)  # both bounds inclusive


@pytest.mark.parametrize("system", ["loinc", "LOINC", fhir.LOINC])
def test_the_list_filters_by_coding_system_and_code(api, patient, varied, system):
    assert set(listed(api.get(records_url(patient, system=system, code="718-7")))) == uuids(varied.hb)
    assert set(listed(api.get(records_url(patient, system=system)))) == uuids(varied.pulse, varied.hb)
    assert listed(api.get(records_url(patient, system=system, code="J45.909"))) == []


def test_the_list_filters_by_other_systems_and_by_code_alone(api, patient, varied):
    assert set(listed(api.get(records_url(patient, system="icd-10-cm", code="J45.909")))) == uuids(varied.asthma)
    assert set(listed(api.get(records_url(patient, system="cvx", code="140")))) == uuids(varied.flu)
    assert set(listed(api.get(records_url(patient, system=fhir.SNOMED_CT)))) == uuids(varied.allergy)
    assert set(listed(api.get(records_url(patient, code="J45.909")))) == uuids(varied.asthma)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("type", "nope"),
        ("effective_from", "notadate"),
        ("effective_to", "2019-13-45"),
        ("system", "nope"),
        ("status", "deleted"),
        ("cursor", "garbage"),
        ("page_size", "0"),
    ],
)
def test_a_bad_filter_value_answers_400_naming_the_parameter(api, patient, varied, parameter, value):
    response = api.get(records_url(patient, **{parameter: value}))

    assert response.status_code == 400
    assert list(response.json()) == [parameter]


def test_cursor_pagination_walks_every_record_newest_first_without_duplicates(api, patient):
    records = [create(patient, "vital_signs", heart_rate(patient, 60 + n)) for n in range(7)]
    newest_first = [str(record.uuid) for record in reversed(records)]

    seen, url, pages = [], records_url(patient, page_size=3), 0
    while url:
        response = api.get(url)
        assert response.status_code == 200
        seen += [row["id"] for row in response.json()["results"]]
        url, pages = response.json()["next"], pages + 1

    assert seen == newest_first
    assert pages == 3
    # And back: the previous link of the last page leads to the page before it.
    last = api.get(records_url(patient, page_size=3))
    for _ in range(2):
        last = api.get(last.json()["next"])
    back = api.get(last.json()["previous"])
    assert [row["id"] for row in back.json()["results"]] == newest_first[3:6]


def list_page_queries(api: Client, patient: Patient) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = api.get(records_url(patient, status="all"))
    assert response.status_code == 200
    return len(captured.captured_queries)


def fill(patient: Patient, clinician: Any, count: int) -> None:
    for n in range(count):
        record = create(patient, "lab_result", lab(patient, 10 + n % 8), author=clinician)
        if n % 5 == 0:
            record = services.record_amend(record=record, payload=lab(patient, 15), author=clinician, reason="Retest")
        if n % 7 == 0:
            services.record_verify(record=record, by=clinician)


def test_the_list_page_costs_the_same_queries_for_5_and_30_records(
    api, make_patient, clinician, django_assert_max_num_queries
):
    few, many = make_patient(), make_patient()
    fill(few, clinician, 5)
    fill(many, clinician, 30)
    list_page_queries(api, few)  # warm the per-process caches (content types, permissions)

    with django_assert_max_num_queries(list_page_queries(api, few)):
        response = api.get(records_url(many, status="all"))

    assert len(response.json()["results"]) == 36  # 30 records and 6 superseded versions
    assert list_page_queries(api, many) == list_page_queries(api, few)


def test_ledger_entry_is_the_uuid_of_the_records_version_entry(api, patient, clinician):
    record = create(patient, "vital_signs", heart_rate(patient))
    services.record_verify(record=record, by=clinician)
    services.record_mark_entered_in_error(record=record, by=clinician, reason="Wrong device")
    amended_from = create(patient, "vital_signs", heart_rate(patient, 80))
    amended = services.record_amend(record=amended_from, payload=heart_rate(patient, 81), author=clinician, reason="x")

    for each in (record, amended_from, amended):
        entry = LedgerEntry.objects.get(record=each, kind=LedgerEntryKind.VERSION)
        assert api.get(record_url(each)).json()["ledger_entry"] == str(entry.uuid)
    rows = {row["id"]: row["ledger_entry"] for row in api.get(records_url(patient, status="all")).json()["results"]}
    assert rows[str(record.uuid)] == str(LedgerEntry.objects.get(record=record, kind=LedgerEntryKind.VERSION).uuid)
    assert LedgerEntry.objects.filter(record=record).count() == 3


def access_entries() -> Any:
    return LogEntry.objects.filter(action=LogEntry.Action.ACCESS, content_type__model="medicalrecord").order_by("pk")


def test_each_list_request_writes_one_access_entry_naming_the_records_shown(api, patient, clinician):
    records = [create(patient, "vital_signs", heart_rate(patient, 60 + n)) for n in range(4)]

    api.get(records_url(patient, page_size=3))
    api.get(records_url(patient, type="diagnosis"))

    first, second = access_entries()
    assert first.actor == clinician
    assert first.additional_data["records"] == [str(record.uuid) for record in reversed(records[1:])]
    assert first.additional_data["patient"] == str(patient.uuid)
    assert first.additional_data["purpose_of_use"] == "TREAT"
    assert second.additional_data["records"] == []
    assert second.actor == clinician


def test_a_detail_read_writes_one_access_entry_for_that_record(api, patient, clinician):
    record = create(patient, "vital_signs", heart_rate(patient))

    response = api.get(record_url(record), HTTP_X_PURPOSE_OF_USE="HOPERAT")

    assert response.status_code == 200
    [entry] = access_entries()
    assert (entry.actor, entry.object_pk) == (clinician, str(record.uuid))
    assert entry.additional_data["records"] == [str(record.uuid)]
    assert entry.additional_data["purpose_of_use"] == "HOPERAT"
    assert "Observation" not in json.dumps(entry.additional_data) + entry.object_repr


def test_a_patient_sees_their_own_records_and_nothing_of_anyone_else(make_patient, clinician):
    mine = make_patient(portal_email="own.records@example.org", portal_password="correct-horse-battery-staple")
    theirs = make_patient()
    own = create(mine, "vital_signs", heart_rate(mine))
    services.record_amend(record=own, payload=heart_rate(mine, 73), author=clinician, reason="Misread")
    other = create(theirs, "vital_signs", heart_rate(theirs, 99))
    client = token_client(mine.user)

    response = client.get(reverse("v1:my-record-list"))
    everything = client.get(reverse("v1:my-record-list") + "?status=all")

    assert response.status_code == 200
    [row] = response.json()["results"]
    assert (row["version"], row["payload"], row["patient"]) == (2, heart_rate(mine, 73), str(mine.uuid))
    assert len(everything.json()["results"]) == 2
    assert str(other.uuid) not in everything.content.decode()
    assert client.get(reverse("v1:my-record-detail", args=[own.uuid])).status_code == 200
    assert client.get(reverse("v1:my-record-detail", args=[other.uuid])).status_code == 404
    assert client.get(records_url(theirs)).status_code == 404
    assert client.get(record_url(other)).status_code == 404
    assert client.get(records_url(mine)).status_code == 200
    own_reads = access_entries().filter(actor=mine.user)
    assert own_reads.count() == 4
    assert {entry.additional_data["purpose_of_use"] for entry in own_reads} == {"PATRQT"}


def test_a_user_outside_the_policy_gets_404_and_anonymous_401(make_user, patient):
    record = create(patient, "vital_signs", heart_rate(patient))
    outsider = token_client(make_user())

    assert outsider.get(records_url(patient)).status_code == 404
    assert outsider.get(record_url(record)).status_code == 404
    assert post_json(outsider, records_url(patient), {"record_type": "vital_signs", "payload": {}}).status_code == 404
    assert Client().get(records_url(patient)).status_code == 401
    assert not access_entries().exists()


# Round trips of the shared samples ----------------------------------------------------------------


@pytest.mark.parametrize("name", HL7_EXAMPLES)
def test_every_supported_hl7_example_round_trips_through_the_api(api, patient, name):
    submitted = (SAMPLES_DIR / name).read_text(encoding="utf-8")
    record_type = fhir.suggest_record_type(json.loads(submitted))

    created = api.post(
        records_url(patient),
        data=f'{{"record_type": "{record_type}", "payload": {submitted}}}',
        content_type="application/json",
    )

    assert created.status_code == 201, created.content
    read = api.get(reverse("v1:record-detail", args=[patient.uuid, created.json()["id"]]))
    assert read.status_code == 200
    assert read.json()["payload"] == json.loads(submitted)
    assert read.json()["data_hash"] == sha256_hex(json.loads(submitted))


def test_the_hl7_examples_cover_the_resource_types_records_store():
    assert len(HL7_EXAMPLES) == 18
    assert {_load(name)["resourceType"] for name in HL7_EXAMPLES} == {
        "AllergyIntolerance",
        "Condition",
        "Immunization",
        "MedicationRequest",
        "Observation",
        "Procedure",
    }


def test_every_synthea_entry_of_the_stored_kinds_is_accepted(make_patient):
    assert len(BUNDLES) == 8
    patient = make_patient()
    written, refused = 0, []

    for name in BUNDLES:
        for entry in _load(name)["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] not in SYNTHEA_TYPES:
                continue
            record_type = fhir.suggest_record_type(resource)
            try:
                services.record_create(patient=patient, record_type=record_type, payload=resource, source="import")
            except ValidationError as exc:
                refused.append((name, resource["id"], record_type, exc.messages))
                continue
            written += 1

    assert refused == []
    assert written == 1521
    assert MedicalRecord.objects.filter(patient=patient).count() == written
    assert LedgerEntry.objects.count() == written
    assert set(MedicalRecord.objects.values_list("resource_type", flat=True)) == set(SYNTHEA_TYPES)
