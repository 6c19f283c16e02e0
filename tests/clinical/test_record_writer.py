"""The one-statement write of a record version: the same rows a save would write, all or nothing.

``record_writer.insert`` writes the record, its ledger entry and its audit entry
without ``Model.save()``. These tests hold it to what the ORM path writes: the
record twin saved with ``save()`` and ``ledger.append``, and the audit entry
auditlog's own signal handler writes for that save.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from auditlog.cid import correlation_id
from auditlog.context import disable_auditlog, set_actor
from auditlog.models import LogEntry
from auditlog.signals import post_log, pre_log
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction

from accounts.fields import encrypted_field_names
from clinical import ledger, record_writer, services
from clinical.models import LedgerEntry, LedgerHead, MedicalRecord, Patient
from tests.clinical.test_records import heart_rate

pytestmark = pytest.mark.django_db

# Differ between any two rows by design.
OWN_TO_EACH_ROW = {"id", "uuid", "series", "created_at", "updated_at"}
ADDRESS, PORT = "203.0.113.7", 51515


def new_record(patient: Patient, author: Any, value: float = 72) -> MedicalRecord:
    """A record version as ``record_create`` builds it, not yet stored."""
    return services._new_record(
        patient=patient,
        record_type="vital_signs",
        payload=heart_rate(patient, value),
        author=author,
        source="manual",
        severity=4,
        confidence="0.85",
        institution=None,
    )


def saved_the_orm_way(record: MedicalRecord) -> LedgerEntry:
    with transaction.atomic():
        record.save()
        return ledger.append(record)


def counts() -> tuple[int, int, int, tuple[int, str] | None]:
    head = LedgerHead.objects.filter(pk=1).values_list("seq", "entry_hash").first()
    return MedicalRecord.objects.count(), LedgerEntry.objects.count(), LogEntry.objects.count(), head


def columns(model: type[Any], row: Any, leave_out: set[str]) -> dict[str, Any]:
    return {
        field.attname: getattr(row, field.attname)
        for field in model._meta.concrete_fields
        if field.attname not in leave_out
    }


@pytest.fixture
def twins(patient: Patient, doctor: Any) -> tuple[MedicalRecord, MedicalRecord]:
    """The same record version written both ways, by the same actor from the same address, in one request."""
    author = doctor.user
    with set_actor(author, remote_addr=ADDRESS, remote_port=PORT):
        request_id = correlation_id.set("request-42")
        try:
            written = new_record(patient, author)
            record_writer.insert(written)
            saved = new_record(patient, author)
            saved_the_orm_way(saved)
        finally:
            correlation_id.reset(request_id)
    return written, saved


def test_the_record_row_is_the_row_a_save_writes(twins):
    written, _saved = twins
    stored_written, stored_saved = (MedicalRecord.objects.get(pk=twin.pk) for twin in twins)

    encrypted = set(encrypted_field_names(MedicalRecord))
    assert columns(MedicalRecord, stored_written, OWN_TO_EACH_ROW | encrypted) == columns(
        MedicalRecord, stored_saved, OWN_TO_EACH_ROW | encrypted
    )
    assert stored_written.payload == stored_saved.payload  # decrypted: sealed to its own row, readable
    assert (stored_written.uuid, stored_written.created_at) == (written.uuid, written.created_at)
    assert written.updated_at is not None and written._state.adding is False


def test_the_audit_entry_is_the_entry_auditlog_writes_for_a_save(twins):
    written, _saved = twins
    entry_written, entry_saved = (LogEntry.objects.get_for_object(twin).get() for twin in twins)

    assert (entry_written.actor, entry_written.cid) == (written.author, "request-42")  # the context reached it
    assert (entry_written.remote_addr, entry_written.remote_port) == (ADDRESS, PORT)
    assert (entry_written.object_pk, entry_written.object_id) == (str(written.pk), written.pk)
    different = {"id", "object_pk", "object_id", "timestamp", "changes", "changes_text"}
    assert columns(LogEntry, entry_written, different) == columns(LogEntry, entry_saved, different)
    assert entry_written.changes_text == entry_saved.changes_text

    changes_written, changes_saved = entry_written.changes, entry_saved.changes
    assert changes_written.keys() == changes_saved.keys()
    assert changes_written["id"] == ["None", str(written.pk)]
    assert changes_written["payload"] == changes_saved["payload"] == ["[encrypted]", "[encrypted]"]
    for name in changes_written.keys() - OWN_TO_EACH_ROW:
        assert changes_written[name] == changes_saved[name], name


def test_auditlog_signals_are_sent_and_can_veto_the_entry(patient, doctor):
    logged: list[Any] = []

    def keep(sender: Any, log_entry: Any = None, **kwargs: Any) -> None:
        logged.append(log_entry)

    post_log.connect(keep, sender=MedicalRecord, weak=False)
    try:
        record = new_record(patient, doctor.user)
        record_writer.insert(record)
    finally:
        post_log.disconnect(keep, sender=MedicalRecord)
    (entry,) = logged
    stored = LogEntry.objects.get(pk=entry.pk)
    assert (stored.object_id, stored.changes) == (record.pk, json.loads(json.dumps(entry.changes)))

    def veto(sender: Any, **kwargs: Any) -> bool:
        return False

    pre_log.connect(veto, sender=MedicalRecord, weak=False)
    try:
        vetoed = new_record(patient, doctor.user, 80)
        record_writer.insert(vetoed)
    finally:
        pre_log.disconnect(veto, sender=MedicalRecord)
    assert MedicalRecord.objects.filter(pk=vetoed.pk).exists()
    assert not LogEntry.objects.get_for_object(vetoed).exists()


def test_with_auditlog_disabled_the_record_and_its_entry_are_written_without_an_audit_entry(patient, doctor):
    before = LogEntry.objects.count()

    with disable_auditlog():
        record = services.record_create(
            patient=patient, record_type="vital_signs", payload=heart_rate(patient), author=doctor.user
        )

    assert LogEntry.objects.count() == before
    assert LedgerEntry.objects.get(record=record).data_hash == record.data_hash


def test_a_missing_head_row_is_rebuilt_from_the_last_entry_and_the_chain_goes_on(patient, doctor):
    first = services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient, 60))
    last = LedgerEntry.objects.get(record=first)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM clinical_ledgerhead")

    second = services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient, 61))

    entry = LedgerEntry.objects.get(record=second)
    assert (entry.seq, entry.prev_hash) == (last.seq + 1, last.entry_hash)
    assert LedgerHead.objects.get(pk=1).entry_hash == entry.entry_hash
    report = ledger.verify()
    assert report.ok, report.problems


def test_only_new_versions_are_inserted(patient, doctor):
    record = services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient))

    with pytest.raises(ValueError):
        record_writer.insert(record)


# In autocommit: the statement is its own transaction ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_write_that_fails_in_its_last_part_leaves_no_record_entry_or_head_move(patient, doctor):
    services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient, 60))
    before = counts()
    assert not connection.in_atomic_block

    # The audit entry is the statement's last INSERT: its actor, gone from the database, is refused (at the
    # end of the statement, the foreign key being deferred) after the record and the ledger entry were
    # inserted and the head was moved.
    gone = get_user_model()(pk=10**12, email="gone@example.org")
    with set_actor(gone), pytest.raises(IntegrityError):
        services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient, 61))
    # The record itself refused by the database, after the head was moved.
    refused = new_record(patient, doctor.user, 62)
    refused.severity = 11
    with pytest.raises(IntegrityError):
        record_writer.insert(refused)

    assert counts() == before
    assert ledger.verify().ok


@pytest.mark.django_db(transaction=True)
def test_a_write_inside_a_transaction_that_rolls_back_leaves_nothing(patient, doctor):
    before = counts()

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        services.record_create(patient=patient, record_type="vital_signs", payload=heart_rate(patient))
        assert counts() != before  # written, in this transaction
        1 / 0  # noqa: B018 - the caller fails after the write

    assert counts() == before
