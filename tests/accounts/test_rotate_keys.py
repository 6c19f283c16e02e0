"""Key rotation: every encrypted value moves to the new primary key, and nothing else changes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from io import StringIO
from types import SimpleNamespace
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings

from accounts.encryption import KeyRing
from accounts.rotation import (
    ColumnRotator,
    Failure,
    Tally,
    TargetReport,
    count_outdated,
    encrypted_columns,
    register_rotators,
    rotate_keys,
    unregister_rotators,
)
from clinical import services
from clinical.models import (
    AllergyCategory,
    HealthProfile,
    MedicalCondition,
    Medication,
    Patient,
    PatientAllergy,
    PatientCondition,
    PatientMedication,
)
from config.embedded import new_field_key

pytestmark = pytest.mark.django_db

# The encrypted columns as of this writing; rotation must find them (and any added later) on its own.
KNOWN_COLUMNS = {
    ("clinical_patient", "notes"),
    ("clinical_patient", "rejection_reason"),
    ("clinical_healthprofile", "notes"),
    ("clinical_patientcondition", "notes"),
    ("clinical_patientmedication", "notes"),
    ("clinical_patientallergy", "reaction"),
}

# SAVEPOINT, read, rotation setting on, UPDATE, setting off, RELEASE (tests run inside a transaction).
QUERIES_PER_BATCH = 6


def key_id(spec_entry: str) -> str:
    return spec_entry.split(":", 1)[0]


def raw(sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def stored(table: str, column: str, pk: int) -> str:
    return raw(f'SELECT "{column}" FROM "{table}" WHERE id = %s', [pk])[0][0]


def store(table: str, column: str, pk: int, value: str) -> None:
    raw(f'UPDATE "{table}" SET "{column}" = %s WHERE id = %s', [value, pk])


def updated_at(table: str, pk: int) -> Any:
    return raw(f'SELECT updated_at FROM "{table}" WHERE id = %s', [pk])[0][0]


def tokens_by_key_id() -> dict[str, int]:
    """Every sealed token in every text column of the database, counted by key id.

    Read from the catalog, not from ``encrypted_columns()``, so a column that
    rotation failed to discover would show up here with its old key.
    """
    columns = raw(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND data_type = 'text'"
    )
    counts: dict[str, int] = {}
    for table, column in columns:
        rows = raw(
            f'SELECT split_part("{column}", \'$\', 2), count(*) FROM "{table}" '
            f"WHERE starts_with(\"{column}\", 'ct1$') GROUP BY 1"
        )
        for kid, count in rows:
            counts[kid] = counts.get(kid, 0) + count
    return counts


@pytest.fixture
def keys() -> SimpleNamespace:
    """The key everything was written under, and the new one that becomes primary."""
    return SimpleNamespace(old=new_field_key(), new=new_field_key())


@pytest.fixture
def phi_rows(keys: SimpleNamespace, ref: Any, make_patient: Any, superuser: Any) -> dict[tuple[str, str], Any]:
    """One value in every encrypted column, written under the old key: ``{(table, column): (model, pk, text)}``."""
    texts = {label: f"PHI {label[0]}.{label[1]}: penicillin anaphylaxis — São Paulo ✓" for label in KNOWN_COLUMNS}
    with override_settings(FIELD_ENCRYPTION_KEYS=keys.old):
        patient = make_patient(
            notes=texts[("clinical_patient", "notes")],
            profile={"notes": texts[("clinical_healthprofile", "notes")]},
        )
        services.patient_reject(
            patient=patient, actor=superuser, reason=texts[("clinical_patient", "rejection_reason")]
        )
        profile = HealthProfile.objects.get(patient=patient)
        condition = PatientCondition.objects.create(
            patient=patient,
            condition=MedicalCondition.objects.order_by("id").first(),
            notes=texts[("clinical_patientcondition", "notes")],
        )
        medication = PatientMedication.objects.create(
            patient=patient,
            medication=Medication.objects.order_by("id").first(),
            notes=texts[("clinical_patientmedication", "notes")],
        )
        allergy = PatientAllergy.objects.create(
            patient=patient,
            substance="Penicillin",
            category=AllergyCategory.MEDICATION,
            reaction=texts[("clinical_patientallergy", "reaction")],
        )
    rows = {
        ("clinical_patient", "notes"): (Patient, patient.pk),
        ("clinical_patient", "rejection_reason"): (Patient, patient.pk),
        ("clinical_healthprofile", "notes"): (HealthProfile, profile.pk),
        ("clinical_patientcondition", "notes"): (PatientCondition, condition.pk),
        ("clinical_patientmedication", "notes"): (PatientMedication, medication.pk),
        ("clinical_patientallergy", "reaction"): (PatientAllergy, allergy.pk),
    }
    return {label: (model, pk, texts[label]) for label, (model, pk) in rows.items()}


@pytest.fixture
def new_primary(keys: SimpleNamespace) -> Iterator[str]:
    """The new key first, the old one still in the ring: the state a rotation starts from."""
    with override_settings(FIELD_ENCRYPTION_KEYS=f"{keys.new},{keys.old}"):
        yield key_id(keys.new)


@pytest.fixture
def noted_patients(keys: SimpleNamespace, make_patient: Any) -> Any:
    """``noted_patients(n)``: n patients whose notes are sealed under the old key, by ascending pk."""

    def make(n: int) -> list[Patient]:
        with override_settings(FIELD_ENCRYPTION_KEYS=keys.old):
            return sorted((make_patient(notes=f"Note {i}") for i in range(n)), key=lambda p: p.pk)

    return make


def interrupt_on_batch(monkeypatch: pytest.MonkeyPatch, number: int, exception: BaseException) -> None:
    """Make the ``number``-th write of a run raise ``exception``."""
    original = ColumnRotator.write_batch
    calls = 0

    def write_batch(self: ColumnRotator, updates: Any) -> set[Any]:
        nonlocal calls
        calls += 1
        if calls == number:
            raise exception
        return original(self, updates)

    monkeypatch.setattr(ColumnRotator, "write_batch", write_batch)


# Discovery ----------------------------------------------------------------------------------


def test_it_finds_every_encrypted_column_without_a_list():
    found = {(model._meta.db_table, field.column) for model, field in encrypted_columns()}
    assert found >= KNOWN_COLUMNS
    assert all(not model._meta.proxy for model, _ in encrypted_columns())


def test_it_limits_itself_to_the_models_it_is_given():
    found = {(model._meta.db_table, field.column) for model, field in encrypted_columns([Patient, PatientAllergy])}
    assert found == {
        ("clinical_patient", "notes"),
        ("clinical_patient", "rejection_reason"),
        ("clinical_patientallergy", "reaction"),
    }


# A complete rotation --------------------------------------------------------------------------


def test_rotation_reseals_every_value_under_the_new_primary_key(phi_rows, keys, new_primary):
    before = {label: stored(label[0], label[1], pk) for label, (_, pk, _) in phi_rows.items()}
    assert all(token.startswith(f"ct1${key_id(keys.old)}$") for token in before.values())

    report = rotate_keys()

    assert report.ok
    assert report.primary_key_id == new_primary
    assert report.resealed == len(KNOWN_COLUMNS)
    assert report.current == 0
    assert report.changed == 0
    for (table, column), (model, pk, text) in phi_rows.items():
        token = stored(table, column, pk)
        assert token.startswith(f"ct1${new_primary}$")
        assert text not in token
        assert getattr(model.objects.get(pk=pk), column) == text
    assert tokens_by_key_id() == {new_primary: len(KNOWN_COLUMNS)}
    # The old key is no longer needed.
    with override_settings(FIELD_ENCRYPTION_KEYS=keys.new):
        for (_, column), (model, pk, text) in phi_rows.items():
            assert getattr(model.objects.get(pk=pk), column) == text


def test_rotation_leaves_updated_at_and_the_audit_log_alone(phi_rows, new_primary):
    stamps = {(table, pk): updated_at(table, pk) for (table, _), (_, pk, _) in phi_rows.items()}
    entries = LogEntry.objects.count()

    assert rotate_keys().resealed == len(KNOWN_COLUMNS)

    assert {(table, pk): updated_at(table, pk) for (table, pk) in stamps} == stamps
    assert LogEntry.objects.count() == entries


def test_the_updated_at_trigger_still_moves_for_every_other_write_after_a_rotation(phi_rows, new_primary):
    _, pk, _ = phi_rows[("clinical_patient", "notes")]
    rotate_keys()
    before = updated_at("clinical_patient", pk)
    # Same connection, same (test) transaction: the rotation's setting must not linger.
    raw("UPDATE clinical_patient SET first_name = 'Renamed' WHERE id = %s", [pk])
    assert updated_at("clinical_patient", pk) > before


def test_a_second_run_changes_nothing_and_only_counts(phi_rows, new_primary, django_assert_num_queries):
    rotate_keys()
    after_first = {label: stored(label[0], label[1], pk) for label, (_, pk, _) in phi_rows.items()}

    # One count per column and one per registered extra rotator (the document files); no batch.
    with django_assert_num_queries(len(encrypted_columns()) + len(extra_targets())):
        report = rotate_keys()

    assert report.ok
    assert report.resealed == 0
    assert report.current == len(KNOWN_COLUMNS)
    assert {label: stored(label[0], label[1], pk) for label, (_, pk, _) in phi_rows.items()} == after_first


def test_a_dry_run_counts_and_changes_nothing(phi_rows, new_primary):
    before = {label: stored(label[0], label[1], pk) for label, (_, pk, _) in phi_rows.items()}
    tallies = {(t.table, t.column): t for t in count_outdated()}
    assert {label: (tallies[label].outdated, tallies[label].current) for label in KNOWN_COLUMNS} == dict.fromkeys(
        KNOWN_COLUMNS, (1, 0)
    )

    out = StringIO()
    call_command("rotate_keys", dry_run=True, stdout=out)

    assert "clinical_patient.notes: 1 outdated, 0 current" in out.getvalue()
    assert f"Rows to re-seal: {len(KNOWN_COLUMNS)}" in out.getvalue()
    assert {label: stored(label[0], label[1], pk) for label, (_, pk, _) in phi_rows.items()} == before


def test_the_command_reports_progress_on_stderr_and_a_summary_on_stdout(phi_rows, new_primary):
    out, err = StringIO(), StringIO()
    call_command("rotate_keys", batch_size=2, stdout=out, stderr=err)

    assert f"Rows re-sealed: {len(KNOWN_COLUMNS)}" in out.getvalue()
    assert "Rows already current: 0" in out.getvalue()
    assert "Failures: 0" in out.getvalue()
    assert f"Columns: {len(encrypted_columns()) + len(extra_targets())}" in out.getvalue()
    assert "clinical_patientallergy.reaction" in err.getvalue()
    assert "penicillin" not in out.getvalue() + err.getvalue()


def test_progress_is_reported_per_column_up_to_its_total(new_primary, noted_patients):
    noted_patients(7)
    bars: dict[str, list[int]] = {}

    class Bar:
        def __init__(self, label: str, total: int) -> None:
            self.steps = bars.setdefault(label, [total])

        def update(self, n: int) -> None:
            self.steps.append(n)

        def close(self) -> None:
            self.steps.append(-1)

    rotate_keys(batch_size=3, models=[Patient], progress=Bar)

    assert bars == {"clinical_patient.notes": [7, 3, 3, 1, -1], "clinical_patient.rejection_reason": [0, -1]}


# Interruption and resumption -------------------------------------------------------------------


def test_an_interrupted_run_keeps_its_finished_batches_and_the_next_run_resumes(
    monkeypatch, new_primary, noted_patients
):
    patients = noted_patients(12)
    interrupt_on_batch(monkeypatch, 2, RuntimeError("connection lost"))

    with pytest.raises(RuntimeError):
        rotate_keys(batch_size=5, models=[Patient])

    key_ids = [stored("clinical_patient", "notes", p.pk).split("$")[1] for p in patients]
    assert key_ids.count(new_primary) == 5
    assert key_ids[:5] == [new_primary] * 5  # by ascending pk, the batch in flight rolled back

    monkeypatch.undo()
    report = rotate_keys(batch_size=5, models=[Patient])

    assert report.ok
    assert report.resealed == 7
    assert report.current == 5
    assert all(stored("clinical_patient", "notes", p.pk).startswith(f"ct1${new_primary}$") for p in patients)
    assert [Patient.objects.get(pk=p.pk).notes for p in patients] == [f"Note {i}" for i in range(12)]


@pytest.mark.django_db(transaction=True)
def test_ctrl_c_leaves_the_finished_batches_committed_and_the_command_resumes(monkeypatch, new_primary, noted_patients):
    patients = noted_patients(12)
    interrupt_on_batch(monkeypatch, 2, KeyboardInterrupt())

    with pytest.raises(CommandError) as caught:
        call_command("rotate_keys", batch_size=5, stdout=StringIO(), stderr=StringIO())

    assert caught.value.returncode == 130
    assert "run rotate_keys again" in str(caught.value)
    # Autocommit again: what is stored now is what a new connection would see.
    assert not connection.in_atomic_block
    key_ids = [stored("clinical_patient", "notes", p.pk).split("$")[1] for p in patients]
    assert key_ids == [new_primary] * 5 + [key_ids[-1]] * 7
    assert key_ids[-1] != new_primary

    monkeypatch.undo()
    out = StringIO()
    call_command("rotate_keys", batch_size=5, stdout=out, stderr=StringIO())

    assert "Rows re-sealed: 7" in out.getvalue()
    assert "Rows already current: 5" in out.getvalue()
    assert [Patient.objects.get(pk=p.pk).notes for p in patients] == [f"Note {i}" for i in range(12)]


# Values that cannot be opened ------------------------------------------------------------------


def tampered(token: str) -> str:
    prefix, kid, body = token.split("$")
    flipped = "A" if body[20] != "A" else "B"
    return f"{prefix}${kid}${body[:20]}{flipped}{body[21:]}"


def unknown_key(token: str) -> str:
    prefix, _, body = token.split("$")
    return f"{prefix}$nosuchkey${body}"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param(tampered, "wrong key or tampered value", id="tampered"),
        pytest.param(unknown_key, "no key with id 'nosuchkey'", id="unknown-key-id"),
        pytest.param(lambda token: "plain text that escaped encryption", "malformed", id="not-a-token"),
    ],
)
def test_a_value_that_cannot_be_opened_is_reported_and_the_command_fails(phi_rows, new_primary, damage, reason):
    _, pk, _ = phi_rows[("clinical_patientallergy", "reaction")]
    damaged = damage(stored("clinical_patientallergy", "reaction", pk))
    store("clinical_patientallergy", "reaction", pk, damaged)

    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("rotate_keys", stdout=out, stderr=StringIO())

    assert caught.value.returncode == 1
    assert "1 value(s) could not be opened" in str(caught.value)
    assert f"clinical_patientallergy.reaction pk={pk}: {reason}" in out.getvalue()
    assert "Failures: 1" in out.getvalue()
    assert f"Rows re-sealed: {len(KNOWN_COLUMNS) - 1}" in out.getvalue()
    assert damaged not in out.getvalue()
    # The damaged value is left for a person to look at; every other one is rotated.
    assert stored("clinical_patientallergy", "reaction", pk) == damaged
    for (table, column), (model, other_pk, text) in phi_rows.items():
        if table != "clinical_patientallergy":
            assert stored(table, column, other_pk).startswith(f"ct1${new_primary}$")
            assert getattr(model.objects.get(pk=other_pk), column) == text


def test_a_failure_does_not_stop_the_batches_after_it(monkeypatch, new_primary, noted_patients):
    patients = noted_patients(7)
    store("clinical_patient", "notes", patients[1].pk, unknown_key(stored("clinical_patient", "notes", patients[1].pk)))

    report = rotate_keys(batch_size=2, models=[Patient])

    assert report.failures == [
        Failure("clinical_patient", "notes", patients[1].pk, "no key with id 'nosuchkey' is configured")
    ]
    assert report.resealed == 6
    # A second run reports it again, and only it.
    again = rotate_keys(batch_size=2, models=[Patient])
    assert [f.pk for f in again.failures] == [patients[1].pk]
    assert again.resealed == 0


def test_removing_the_old_key_before_rotating_fails_every_value_and_destroys_none(phi_rows, keys):
    before = {label: stored(label[0], label[1], pk) for label, (_, pk, _) in phi_rows.items()}
    with override_settings(FIELD_ENCRYPTION_KEYS=keys.new):
        report = rotate_keys()
    assert len(report.failures) == len(KNOWN_COLUMNS)
    assert report.resealed == 0
    assert {label: stored(label[0], label[1], pk) for label, (_, pk, _) in phi_rows.items()} == before


# Concurrent application writes -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_value_the_application_rewrites_during_a_batch_is_not_overwritten(monkeypatch, new_primary, noted_patients):
    patients = noted_patients(4)
    target = patients[2]
    original = ColumnRotator.write_batch

    def application_write() -> None:
        try:
            fresh = Patient.objects.get(pk=target.pk)
            fresh.notes = "Rewritten by a doctor meanwhile"
            fresh.save()
        finally:
            connection.close()

    def write_batch(self: ColumnRotator, updates: Any) -> set[Any]:
        # Between the rotation's read and its write, another connection commits a change.
        if any(pk == target.pk for pk, _, _ in updates):
            writer = threading.Thread(target=application_write)
            writer.start()
            writer.join()
        return original(self, updates)

    monkeypatch.setattr(ColumnRotator, "write_batch", write_batch)
    report = rotate_keys(batch_size=10, models=[Patient])

    assert report.ok
    assert report.resealed == 3
    assert report.changed == 1
    assert report.targets[0].changed == [target.pk]
    assert Patient.objects.get(pk=target.pk).notes == "Rewritten by a doctor meanwhile"
    assert [Patient.objects.get(pk=p.pk).notes for p in patients if p != target] == ["Note 0", "Note 1", "Note 3"]


# Cost ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [5, 50])
def test_the_query_count_is_per_batch_not_per_row(new_primary, noted_patients, django_assert_num_queries, batch_size):
    noted_patients(2 * batch_size + 1)  # three batches of notes; no rejection reasons
    columns = len(encrypted_columns([Patient]))

    with django_assert_num_queries(columns + 3 * QUERIES_PER_BATCH):
        report = rotate_keys(batch_size=batch_size, models=[Patient])

    assert report.resealed == 2 * batch_size + 1


# Extension point -------------------------------------------------------------------------------


class FakeFileRotator:
    """Stands in for encrypted files: two sealed objects, one under an old key, one broken."""

    table = "files_storedfile"
    column = "content"

    def tally(self, ring: KeyRing) -> Tally:
        return Tally(self.table, self.column, current=3, outdated=2)

    def rotate(self, ring: KeyRing, *, batch_size: int, advance: Any) -> TargetReport:
        advance(2)
        failure = Failure(self.table, self.column, 99, "wrong key or tampered value")
        return TargetReport(self.table, self.column, resealed=1, failures=[failure])


def fake_files() -> list[FakeFileRotator]:
    return [FakeFileRotator()]


@pytest.fixture
def registered_files() -> Iterator[None]:
    register_rotators(fake_files)
    try:
        yield
    finally:
        unregister_rotators(fake_files)


def test_registered_rotators_take_part_in_a_full_run(phi_rows, new_primary, registered_files):
    report = rotate_keys()

    files = [t for t in report.targets if t.table == "files_storedfile"]
    assert len(files) == 1
    assert (files[0].resealed, files[0].current) == (1, 3)
    assert report.resealed == len(KNOWN_COLUMNS) + 1
    assert [f.pk for f in report.failures] == [99]
    assert "files_storedfile.content" in {f"{t.table}.{t.column}" for t in count_outdated()}


def test_registered_rotators_stay_out_of_a_run_limited_to_models(new_primary, registered_files):
    report = rotate_keys(models=[Patient])
    assert {t.table for t in report.targets} == {"clinical_patient"}


def test_the_command_fails_on_a_registered_rotators_failure(phi_rows, new_primary, registered_files):
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("rotate_keys", stdout=out, stderr=StringIO())
    assert "files_storedfile.content pk=99: wrong key or tampered value" in out.getvalue()


def extra_targets() -> list[Any]:
    """What registered extra rotators (the document files) add to a full run."""
    from accounts.rotation import _rotator_factories

    return [rotator for factory in _rotator_factories for rotator in factory()]
