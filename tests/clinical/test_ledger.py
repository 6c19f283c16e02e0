"""The integrity ledger of medical records: a hash chain that every kind of raw-SQL tampering breaks.

Each tampering test starts from ``chart``, a database with records of every
type, amendments, an entered-in-error record and verified ones, on which
``verify_integrity`` passes. It then changes the database the way someone
with SQL access would, bypassing the application (and disabling the
triggers where they stand in the way), and asserts that the command exits 1
and that its first broken link names the entry or record that was touched.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import override_settings

from accounts.encryption import DecryptionError
from clinical import fhir, ledger, schema, services
from clinical.canonical import sha256_hex
from clinical.models import LedgerCheckpoint, LedgerEntry, LedgerEntryKind, MedicalRecord, RecordStatus
from clinical.tasks import ledger_head_publish_task
from config.embedded import new_field_key
from tests.db import rule_name
from tests.samples import SAMPLES_DIR

pytestmark = pytest.mark.django_db

WHEN = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=datetime.UTC)
NO_ENTRY = "written outside the application, or its entry was removed"


# Payloads ----------------------------------------------------------------------------------------


@functools.cache
def _load(name: str) -> Any:
    return json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))


def sample(name: str) -> dict[str, Any]:
    return copy.deepcopy(_load(name))


def from_bundles(resource_type: str, record_type: str) -> dict[str, Any]:
    """The first Synthea entry of ``resource_type`` that files under ``record_type``."""
    for path in sorted(SAMPLES_DIR.glob("*.json")):
        document = _load(path.name)
        if document["resourceType"] != "Bundle":
            continue
        for entry in document["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == resource_type and fhir.suggest_record_type(resource) == record_type:
                return copy.deepcopy(resource)
    raise AssertionError(f"no {resource_type} filed as {record_type} in {SAMPLES_DIR}")


def heart_rate(patient: Any, value: int = 72) -> dict[str, Any]:
    return fhir.build_vital_signs(
        kind="8867-4", value=value, effective=WHEN, patient_reference=f"Patient/{patient.uuid}"
    )


def hemoglobin(patient: Any, value: float = 14.1) -> dict[str, Any]:
    return fhir.build_lab_result(
        loinc_code="718-7",
        display="Hemoglobin",
        value=value,
        unit="g/dL",
        low=12,
        high=16,
        effective=WHEN,
        patient_reference=f"Patient/{patient.uuid}",
    )


# The database under test -------------------------------------------------------------------------


@pytest.fixture
def chart(make_patient: Any, doctor: Any) -> SimpleNamespace:
    """Two patients with records of every type, two amendments, an entered-in-error record and verified ones."""
    author = doctor.user
    records: list[MedicalRecord] = []

    def add(patient: Any, record_type: str, payload: dict[str, Any]) -> MedicalRecord:
        record = services.record_create(patient=patient, record_type=record_type, payload=payload, author=author)
        records.append(record)
        return record

    for patient in (make_patient(), make_patient()):
        ref = f"Patient/{patient.uuid}"
        add(patient, "vital_signs", heart_rate(patient))
        add(
            patient,
            "vital_signs",
            fhir.build_vital_signs(kind="85354-9", systolic=128, diastolic=84, effective=WHEN, patient_reference=ref),
        )
        add(patient, "lab_result", hemoglobin(patient))
        add(
            patient,
            "diagnosis",
            fhir.build_diagnosis(icd10_code="J45.909", display="Asthma", onset=WHEN.date(), patient_reference=ref),
        )
        add(
            patient,
            "vaccination",
            fhir.build_vaccination(cvx_code="140", display="Influenza", occurrence=WHEN.date(), patient_reference=ref),
        )
        add(patient, "prescription", sample("MedicationRequest-medrx0302.json"))
        add(patient, "medical_history", sample("AllergyIntolerance-example.json"))
        add(patient, "medical_history", sample("Procedure-example.json"))
        add(patient, "treatment_plan", from_bundles("CarePlan", "treatment_plan"))
        add(patient, "imaging", from_bundles("ImagingStudy", "imaging"))
        add(patient, "symptom", from_bundles("Observation", "symptom"))

    first, second = records[0], records[11]
    amended = services.record_amend(record=first, payload=heart_rate(first.patient, 80), author=author, reason="Typo")
    records.append(amended)
    twice = services.record_amend(record=amended, payload=heart_rate(first.patient, 81), author=author, reason="Again")
    records.append(twice)
    services.record_mark_entered_in_error(record=records[3], by=author, reason="Wrong patient")
    services.record_verify(record=records[2], by=author)
    services.record_verify(record=second, by=author)
    return SimpleNamespace(records=records, author=author, patients=(first.patient, second.patient))


def run_sql(sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def disable(trigger: str, table: str) -> None:
    # DDL is transactional in PostgreSQL: the test's rollback enables the trigger again. ALTER TABLE
    # refuses to run while deferred foreign-key checks of the fixtures' writes are pending: fire them first.
    run_sql("SET CONSTRAINTS ALL IMMEDIATE")
    run_sql(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")


def without_record_trigger() -> None:
    disable(schema.RECORD_IMMUTABLE, "clinical_medicalrecord")


def without_ledger_trigger() -> None:
    disable(schema.LEDGER_APPEND_ONLY, "clinical_ledgerentry")


def version_entry(record: MedicalRecord) -> LedgerEntry:
    return LedgerEntry.objects.get(record_uuid=record.uuid, version=record.version, kind=LedgerEntryKind.VERSION)


def sealed_for(record: MedicalRecord, payload: Any) -> str:
    """A genuine ciphertext of ``payload`` for ``record``'s row, sealed with the real key ring."""
    field = MedicalRecord._meta.get_field("payload")
    return field.seal_value(record, payload)  # type: ignore[attr-defined]


def stored_payload(record: MedicalRecord) -> str:
    return run_sql("SELECT payload FROM clinical_medicalrecord WHERE id = %s", [record.pk])[0][0]


def verify_passes() -> str:
    out = StringIO()
    call_command("verify_integrity", "--no-progress", stdout=out, stderr=StringIO())
    assert "Integrity verified" in out.getvalue()
    return out.getvalue()


def verify_fails() -> SimpleNamespace:
    """Run the command, which must exit 1; its first broken link, its whole output and its exception message."""
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("verify_integrity", "--no-progress", "--all", stdout=out, stderr=StringIO())
    assert caught.value.returncode == 1
    output = out.getvalue()
    [first] = [line.split("First broken link: ", 1)[1] for line in output.splitlines() if "First broken link" in line]
    assert f"first: {first}" in str(caught.value)
    return SimpleNamespace(first=first, output=output, message=str(caught.value))


def rewrite_entry(entry: LedgerEntry, **changes: Any) -> None:
    """Write ``changes`` into a ledger row with raw SQL (the append-only trigger must be off)."""
    assignments = ", ".join(f"{column} = %s" for column in changes)
    run_sql(f"UPDATE clinical_ledgerentry SET {assignments} WHERE id = %s", [*changes.values(), entry.pk])


def rehashed(entry: LedgerEntry) -> str:
    return ledger.entry_hash(
        seq=entry.seq,
        record_uuid=entry.record_uuid,
        version=entry.version,
        kind=entry.kind,
        data_hash=entry.data_hash,
        prev_hash=entry.prev_hash,
        created_at=entry.created_at,
    )


# A healthy database ------------------------------------------------------------------------------


def test_verify_integrity_passes_on_a_database_with_many_records(chart):
    output = verify_passes()

    entries = LedgerEntry.objects.count()
    assert entries == len(chart.records) + 3  # plus one entered-in-error and two verified entries
    assert f"{entries} ledger entries, {len(chart.records)} records, 0 checkpoints" in output
    assert set(MedicalRecord.objects.values_list("record_type", flat=True)) == set(fhir.RECORD_TYPES)
    assert set(MedicalRecord.objects.values_list("status", flat=True)) == set(RecordStatus.values)


def test_every_write_appends_one_linked_entry_in_order(chart):
    entries = list(LedgerEntry.objects.order_by("seq"))

    assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
    assert entries[0].prev_hash == ledger.GENESIS_HASH
    assert all(later.prev_hash == earlier.entry_hash for earlier, later in itertools.pairwise(entries))
    assert all(rehashed(entry) == entry.entry_hash for entry in entries)
    kinds = [entry.kind for entry in entries]
    assert kinds.count(LedgerEntryKind.VERIFIED) == 2
    assert kinds.count(LedgerEntryKind.ENTERED_IN_ERROR) == 1
    for record in chart.records:
        entry = version_entry(record)
        assert (entry.record_id, entry.data_hash) == (record.pk, record.data_hash)
        assert record.data_hash == sha256_hex(MedicalRecord.objects.get(pk=record.pk).payload)


def test_ledger_append_refuses_to_run_outside_a_transaction(monkeypatch, chart):
    monkeypatch.setattr(connection, "in_atomic_block", False)
    with pytest.raises(RuntimeError):
        ledger.append(chart.records[0])


# Append-only ledger ------------------------------------------------------------------------------


def test_the_database_refuses_to_update_a_ledger_entry(chart):
    entry = LedgerEntry.objects.order_by("seq").first()

    assert rule_name(lambda: LedgerEntry.objects.filter(pk=entry.pk).update(kind=LedgerEntryKind.TOMBSTONE)) == (
        schema.LEDGER_APPEND_ONLY
    )
    assert rule_name(lambda: run_sql("UPDATE clinical_ledgerentry SET data_hash = repeat('0', 64)")) == (
        schema.LEDGER_APPEND_ONLY
    )
    assert LedgerEntry.objects.get(pk=entry.pk).kind == entry.kind


def test_the_database_refuses_to_delete_a_ledger_entry(chart):
    count = LedgerEntry.objects.count()

    assert rule_name(lambda: LedgerEntry.objects.filter(seq=count).delete()) == schema.LEDGER_APPEND_ONLY
    assert rule_name(lambda: run_sql("DELETE FROM clinical_ledgerentry")) == schema.LEDGER_APPEND_ONLY
    assert LedgerEntry.objects.count() == count


# Ciphertexts -------------------------------------------------------------------------------------


def test_ciphertexts_swapped_between_rows_fail_to_decrypt_and_verify_names_both_records(chart):
    one, other = chart.records[4], chart.records[5]
    token_one, token_other = stored_payload(one), stored_payload(other)
    # The row trigger allows payload writes (key rotation needs them); the binding to the row does not.
    run_sql("UPDATE clinical_medicalrecord SET payload = %s WHERE id = %s", [token_other, one.pk])
    run_sql("UPDATE clinical_medicalrecord SET payload = %s WHERE id = %s", [token_one, other.pk])

    for record in (one, other):
        with pytest.raises(DecryptionError):
            _ = MedicalRecord.objects.get(pk=record.pk).payload

    failed = verify_fails()
    assert failed.first == f"record {one.uuid} v1: payload does not decrypt (ciphertext altered or moved)"
    assert f"record {other.uuid} v1: payload does not decrypt" in failed.output


# Tampering with records --------------------------------------------------------------------------


def test_a_payload_replaced_by_a_valid_ciphertext_of_other_content_is_named(chart):
    record = chart.records[2]  # a hemoglobin of 14.1
    forged = hemoglobin(record.patient, 9.0)
    run_sql("UPDATE clinical_medicalrecord SET payload = %s WHERE id = %s", [sealed_for(record, forged), record.pk])
    assert MedicalRecord.objects.get(pk=record.pk).payload == forged  # it opens: only the hash tells

    failed = verify_fails()

    assert failed.first == f"record {record.uuid} v1: payload does not match its data_hash (payload altered)"


def test_a_payload_replaced_together_with_its_data_hash_is_caught_by_the_ledger(chart):
    record = chart.records[6]
    forged = sample("AllergyIntolerance-nkda.json")
    without_record_trigger()
    run_sql(
        "UPDATE clinical_medicalrecord SET payload = %s, data_hash = %s WHERE id = %s",
        [sealed_for(record, forged), sha256_hex(forged), record.pk],
    )

    failed = verify_fails()

    seq = version_entry(record).seq
    assert failed.first == f"record {record.uuid} v1: data_hash differs from ledger #{seq} (hash altered)"


def test_a_changed_data_hash_on_the_record_is_named(chart):
    record = chart.records[7]
    without_record_trigger()
    run_sql("UPDATE clinical_medicalrecord SET data_hash = repeat('f', 64) WHERE id = %s", [record.pk])

    failed = verify_fails()

    assert failed.first == f"record {record.uuid} v1: payload does not match its data_hash (payload altered)"
    seq = version_entry(record).seq
    assert f"record {record.uuid} v1: data_hash differs from ledger #{seq} (hash altered)" in failed.output


def test_a_record_row_deleted_by_raw_sql_is_named_by_its_ledger_entry(chart):
    record = chart.records[8]  # a current version nothing supersedes
    seq = version_entry(record).seq
    run_sql("DELETE FROM clinical_medicalrecord WHERE id = %s", [record.pk])

    failed = verify_fails()

    assert failed.first == f"ledger #{seq}: record {record.uuid} v1 is gone without a tombstone (deleted)"


def test_a_record_inserted_by_raw_sql_without_a_ledger_entry_is_named(chart):
    source = MedicalRecord.objects.get(pk=chart.records[9].pk)
    forged = MedicalRecord(uuid=uuid.uuid4())
    token = sealed_for(forged, source.payload)
    copied = [
        field.column
        for field in MedicalRecord._meta.concrete_fields
        if field.column not in {"id", "uuid", "series", "payload"}
    ]
    columns = ", ".join(copied)
    run_sql(
        f"INSERT INTO clinical_medicalrecord (uuid, series, payload, {columns}) "
        f"SELECT %s, %s, %s, {columns} FROM clinical_medicalrecord WHERE id = %s",
        [forged.uuid, uuid.uuid4(), token, source.pk],
    )
    assert MedicalRecord.objects.get(uuid=forged.uuid).payload == source.payload  # a well-formed record

    failed = verify_fails()

    assert failed.first == f"record {forged.uuid} v1: has no ledger entry ({NO_ENTRY})"
    assert len(failed.output.splitlines()) == 3  # summary, first link, the one problem


# Tampering with the ledger -----------------------------------------------------------------------

LEDGER_EDITS = {
    "data_hash": lambda entry, chart: {"data_hash": "a" * 64},
    "kind": lambda entry, chart: {"kind": LedgerEntryKind.VERIFIED},
    "version": lambda entry, chart: {"version": entry.version + 1},
    "record": lambda entry, chart: {"record_uuid": chart.records[0].uuid},
    "created_at": lambda entry, chart: {"created_at": entry.created_at + datetime.timedelta(seconds=1)},
    "prev_hash": lambda entry, chart: {"prev_hash": "b" * 64},
}


@pytest.mark.parametrize("field", list(LEDGER_EDITS))
def test_a_changed_ledger_entry_is_named(chart, field):
    record = chart.records[10]
    entry = version_entry(record)
    without_ledger_trigger()
    rewrite_entry(entry, **LEDGER_EDITS[field](entry, chart))

    failed = verify_fails()

    assert failed.first.startswith(f"ledger #{entry.seq}: ")
    assert f"ledger #{entry.seq}: its contents do not match its hash (entry altered)" in failed.output


def test_a_changed_ledger_entry_whose_hash_was_recomputed_breaks_the_next_link(chart):
    record = chart.records[10]
    entry = version_entry(record)
    entry.data_hash = "c" * 64
    without_ledger_trigger()
    rewrite_entry(entry, data_hash=entry.data_hash, entry_hash=rehashed(entry))

    failed = verify_fails()

    # The entry is consistent in itself; the record disagrees with it, and the next entry no longer links.
    assert failed.first == f"record {record.uuid} v1: data_hash differs from ledger #{entry.seq} (hash altered)"
    assert f"ledger #{entry.seq + 1}: does not link to the entry before it" in failed.output


def test_a_deleted_ledger_entry_is_named(chart):
    record = chart.records[5]
    seq = version_entry(record).seq
    without_ledger_trigger()
    run_sql("DELETE FROM clinical_ledgerentry WHERE seq = %s", [seq])

    failed = verify_fails()

    assert failed.first == f"ledger #{seq + 1}: out of sequence: expected #{seq} here (entry deleted or moved)"
    assert f"ledger #{seq + 1}: does not link to the entry before it" in failed.output
    assert f"record {record.uuid} v1: has no ledger entry" in failed.output


def test_a_deleted_last_entry_is_named_by_its_record(chart):
    patient = chart.patients[0]
    fresh = services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient, 99))
    head = version_entry(fresh)
    assert head.seq == LedgerEntry.objects.count()
    without_ledger_trigger()
    run_sql("DELETE FROM clinical_ledgerentry WHERE seq = %s", [head.seq])

    failed = verify_fails()

    # Nothing follows the head to miss it; the record it wrote is left without an entry.
    assert failed.first == f"record {fresh.uuid} v1: has no ledger entry ({NO_ENTRY})"


def test_an_entry_inserted_in_the_middle_is_named(chart):
    target = chart.records[4]
    at = version_entry(target).seq + 1
    before = LedgerEntry.objects.get(seq=at - 1)
    without_ledger_trigger()
    # Make room, then insert a well-formed entry that links to the one before it: a forged verification.
    run_sql("UPDATE clinical_ledgerentry SET seq = seq + 1000000 WHERE seq >= %s", [at])
    run_sql("UPDATE clinical_ledgerentry SET seq = seq - 999999 WHERE seq >= 1000000")
    forged = LedgerEntry(
        seq=at,
        record_id=target.pk,
        record_uuid=target.uuid,
        version=1,
        kind=LedgerEntryKind.VERIFIED,
        data_hash=target.data_hash,
        prev_hash=before.entry_hash,
        created_at=before.created_at,
    )
    forged.entry_hash = rehashed(forged)
    forged.save(force_insert=True)
    assert LedgerEntry.objects.filter(seq=at + 1).exists()

    failed = verify_fails()

    assert failed.first == f"ledger #{at + 1}: does not link to the entry before it (inserted, deleted or reordered)"
    assert f"ledger #{at + 1}: its contents do not match its hash (entry altered)" in failed.output
    assert f"ledger #{at}:" not in failed.output  # the forgery itself is well-formed; what follows it breaks


def test_two_reordered_entries_are_named(chart):
    seq = version_entry(chart.records[6]).seq
    without_ledger_trigger()
    run_sql("UPDATE clinical_ledgerentry SET seq = 1000000 WHERE seq = %s", [seq])
    run_sql("UPDATE clinical_ledgerentry SET seq = %s WHERE seq = %s", [seq, seq + 1])
    run_sql("UPDATE clinical_ledgerentry SET seq = %s WHERE seq = 1000000", [seq + 1])

    failed = verify_fails()

    assert failed.first.startswith(f"ledger #{seq}: ")
    assert f"ledger #{seq}: does not link to the entry before it" in failed.output
    assert f"ledger #{seq + 1}: does not link to the entry before it" in failed.output


def test_a_chain_rewritten_after_a_published_checkpoint_is_named(chart):
    checkpoint = ledger.publish_head()
    assert checkpoint is not None
    verify_passes()
    # Forge a record's content and rewrite every ledger entry from its version on, consistently.
    record = chart.records[9]
    forged = from_bundles("ImagingStudy", "imaging")
    forged["id"] = "forged"
    without_record_trigger()
    without_ledger_trigger()
    run_sql(
        "UPDATE clinical_medicalrecord SET payload = %s, data_hash = %s WHERE id = %s",
        [sealed_for(record, forged), sha256_hex(forged), record.pk],
    )
    start = version_entry(record).seq
    prev = LedgerEntry.objects.get(seq=start - 1).entry_hash
    for entry in LedgerEntry.objects.filter(seq__gte=start).order_by("seq"):
        if entry.record_uuid == record.uuid:
            entry.data_hash = sha256_hex(forged)
        entry.prev_hash = prev
        entry.entry_hash = rehashed(entry)
        rewrite_entry(entry, data_hash=entry.data_hash, prev_hash=entry.prev_hash, entry_hash=entry.entry_hash)
        prev = entry.entry_hash

    report = ledger.verify()
    failed = verify_fails()

    # The rewritten chain is consistent in itself: only the published head and the head row give it away.
    assert [problem.where for problem in report.problems] == [f"ledger #{checkpoint.seq}"] * 2
    assert "head row" in report.problems[1].what
    assert failed.first.startswith(f"ledger #{checkpoint.seq}: differs from the head published to database at ")
    assert failed.first.endswith("(chain rewritten)")


# Deletion allowed by policy ----------------------------------------------------------------------


def test_a_tombstoned_deletion_passes_verification(chart):
    amended = chart.records[-1]  # version 3 of a series of three
    before = LedgerEntry.objects.count()

    deleted = services.record_series_delete(record=amended, reason="erasure")

    assert deleted == 3
    assert not MedicalRecord.objects.filter(series=amended.series).exists()
    tombstones = LedgerEntry.objects.filter(kind=LedgerEntryKind.TOMBSTONE)
    series = (chart.records[0], *chart.records[-2:])
    assert set(tombstones.values_list("record_uuid", flat=True)) == {record.uuid for record in series}
    assert LedgerEntry.objects.count() == before + 3
    verify_passes()


def test_a_series_delete_needs_a_policy_reason(chart):
    with pytest.raises(ValidationError) as caught:
        services.record_series_delete(record=chart.records[4], reason=" ")

    assert "reason" in caught.value.message_dict
    assert MedicalRecord.objects.filter(pk=chart.records[4].pk).exists()
    assert not LedgerEntry.objects.filter(kind=LedgerEntryKind.TOMBSTONE).exists()


# Publishing the head -----------------------------------------------------------------------------

published: list[tuple[int, str]] = []


def publish_to_notary(seq: int, head: str) -> tuple[str, str]:
    """A custom LEDGER_HEAD_PUBLISHER, as a deployment would configure it."""
    published.append((seq, head))
    return "notary.example.org", f"receipt-{seq}"


@pytest.fixture
def notary() -> Iterator[list[tuple[int, str]]]:
    published.clear()
    yield published
    published.clear()


def test_the_scheduled_task_records_the_head_as_a_checkpoint(chart):
    head = LedgerEntry.objects.order_by("-seq").first()

    result = ledger_head_publish_task.delay().get()

    checkpoint = LedgerCheckpoint.objects.get()
    assert result == head.seq
    assert (checkpoint.seq, checkpoint.entry_hash) == (head.seq, head.entry_hash)
    assert (checkpoint.published_to, checkpoint.receipt) == ("database", "")
    verify_passes()


def test_the_task_on_an_empty_ledger_publishes_nothing(db):
    assert ledger_head_publish_task() is None
    assert not LedgerCheckpoint.objects.exists()


@override_settings(LEDGER_HEAD_PUBLISHER=f"{__name__}.publish_to_notary")
def test_a_custom_publisher_is_called_with_the_head_and_its_receipt_is_kept(chart, notary):
    head = LedgerEntry.objects.order_by("-seq").first()

    ledger_head_publish_task()

    assert notary == [(head.seq, head.entry_hash)]
    checkpoint = LedgerCheckpoint.objects.get()
    assert (checkpoint.seq, checkpoint.entry_hash) == (head.seq, head.entry_hash)
    assert (checkpoint.published_to, checkpoint.receipt) == ("notary.example.org", f"receipt-{head.seq}")


# Concurrent writers ------------------------------------------------------------------------------

WRITERS = 4
RECORDS_PER_WRITER = 10


def writers_waiting_on_a_lock() -> int:
    """How many other backends of this database wait for a row lock in a statement that moves the ledger head."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # a transaction otherwise sees its first snapshot
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%UPDATE clinical_ledgerhead%%'"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "inside-a-transaction"])
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_on_separate_connections_leave_one_unbroken_chain(make_patient, doctor, in_transaction):
    patients = [make_patient() for _ in range(WRITERS)]
    author = doctor.user
    # Every round, all writers issue their write at the same moment; in the first round the main thread holds
    # the ledger head's row lock until all of them wait for it, so they really meet at the ledger.
    together = threading.Barrier(WRITERS, timeout=30)
    errors: list[BaseException] = []

    def write(patient: Any) -> None:
        try:
            for value in range(RECORDS_PER_WRITER):
                together.wait()
                with transaction.atomic() if in_transaction else contextlib.nullcontext():
                    payload = heart_rate(patient, 60 + value)
                    services.record_create(patient=patient, record_type="vital_signs", payload=payload, author=author)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            together.abort()
        finally:
            connection.close()

    ledger.ensure_head()
    threads = [threading.Thread(target=write, args=(patient,)) for patient in patients]
    with transaction.atomic():
        run_sql("SELECT 1 FROM clinical_ledgerhead WHERE id = 1 FOR UPDATE")
        for thread in threads:
            thread.start()
        waiting, deadline = 0, time.monotonic() + 30
        while waiting < WRITERS and not errors and time.monotonic() < deadline:
            time.sleep(0.02)
            waiting = writers_waiting_on_a_lock()
    for thread in threads:
        thread.join(timeout=120)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert waiting == WRITERS  # all of them waited for the same head
    total = WRITERS * RECORDS_PER_WRITER
    assert list(LedgerEntry.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, total + 1))
    assert LedgerEntry.objects.values("prev_hash").distinct().count() == total  # no entry was extended twice
    assert MedicalRecord.objects.count() == total
    report = ledger.verify()
    assert report.ok, report.problems
    assert (report.entries, report.records) == (total, total)


# Key rotation ------------------------------------------------------------------------------------


def key_id(spec: str) -> str:
    return spec.split(":", 1)[0]


def test_key_rotation_keeps_records_readable_and_every_hash_and_ledger_entry_unchanged(make_patient, doctor):
    old, new = new_field_key(), new_field_key()
    with override_settings(FIELD_ENCRYPTION_KEYS=old):
        patient = make_patient()
        author = doctor.user
        records = [
            services.record_create(
                patient=patient, record_type="vital_signs", payload=heart_rate(patient, v), author=author
            )
            for v in (60, 70, 80)
        ]
        services.record_create(patient=patient, record_type="lab_result", payload=hemoglobin(patient), author=author)
        services.record_amend(record=records[0], payload=heart_rate(patient, 61), author=author, reason="Misread")
        services.record_mark_entered_in_error(record=records[1], by=author, reason="Other patient's reading")
        payloads = {r.pk: r.payload for r in MedicalRecord.objects.all()}
        hashes = dict(MedicalRecord.objects.values_list("pk", "data_hash"))
        chain = list(LedgerEntry.objects.order_by("seq").values_list())
        tokens = dict(run_sql("SELECT id, payload FROM clinical_medicalrecord"))
    assert all(token.startswith(f"ct1${key_id(old)}$") for token in tokens.values())

    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new},{old}"):
        out = StringIO()
        call_command("rotate_keys", batch_size=2, stdout=out, stderr=StringIO())
        assert "Failures: 0" in out.getvalue()

    rows = run_sql("SELECT id, payload, amendment_reason, error_reason FROM clinical_medicalrecord")
    sealed = [value for row in rows for value in row[1:] if value is not None]
    assert len(sealed) == len(payloads) + 2  # every payload, one amendment reason, one error reason
    assert all(value.startswith(f"ct1${key_id(new)}$") for value in sealed)
    assert not any(f"${key_id(old)}$" in value for value in sealed)
    assert all(tokens[pk] != payload for pk, payload, *_ in rows)
    assert dict(MedicalRecord.objects.values_list("pk", "data_hash")) == hashes
    assert list(LedgerEntry.objects.order_by("seq").values_list()) == chain
    # The old key is no longer needed to read any record.
    with override_settings(FIELD_ENCRYPTION_KEYS=new):
        assert {r.pk: r.payload for r in MedicalRecord.objects.all()} == payloads
        assert MedicalRecord.objects.get(pk=records[1].pk).error_reason == "Other patient's reading"
        report = ledger.verify()
    assert report.ok, report.problems


# Verifying a live database -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_record_committed_while_verify_runs_is_not_reported_as_tampering(make_patient, doctor):
    patient = make_patient()
    for value in (60, 61, 62):
        services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient, value))
    entries = LedgerEntry.objects.count()
    seen = 0

    def write_elsewhere() -> None:
        try:
            services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient, 99))
        finally:
            connection.close()

    def progress(stage: str, step: int) -> None:
        # Between the walk of the ledger and the walk of the records, another connection commits a record.
        nonlocal seen
        seen += step if stage == "ledger" else 0
        if stage == "ledger" and seen == entries:
            writer = threading.Thread(target=write_elsewhere)
            writer.start()
            writer.join()

    report = ledger.verify(progress=progress)

    assert MedicalRecord.objects.count() == 4  # the concurrent write did happen
    assert report.ok, report.problems
    assert (report.entries, report.records) == (3, 3)  # one consistent snapshot
    assert ledger.verify().ok
    assert "4 ledger entries, 4 records" in verify_passes()  # the command, outside any transaction


# The head row -----------------------------------------------------------------------------------


def test_a_lost_head_row_is_rebuilt_from_the_last_entry_and_the_chain_goes_on(chart, patient, doctor):
    before = LedgerEntry.objects.order_by("-seq").first()
    run_sql("DELETE FROM clinical_ledgerhead")
    record = services.record_create(
        patient=patient, record_type="vital_signs", payload=heart_rate(patient, 99), author=doctor.user
    )
    entry = LedgerEntry.objects.get(record=record)
    assert (entry.seq, entry.prev_hash) == (before.seq + 1, before.entry_hash)
    verify_passes()


def test_a_head_row_that_is_not_the_last_entry_is_named(chart):
    last = LedgerEntry.objects.order_by("-seq").first()
    run_sql("UPDATE clinical_ledgerhead SET seq = seq - 1")
    failed = verify_fails()
    assert failed.first.startswith(f"ledger #{last.seq - 1}: the head row")
