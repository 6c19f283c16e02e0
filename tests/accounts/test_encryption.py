"""Field encryption at rest: what the database holds, what the ORM returns, and what is refused."""

import base64
import secrets
import uuid
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.core import serializers
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.test import override_settings

from accounts.encryption import DecryptionError, associated_data, keyring, parse_keys
from accounts.fields import EncryptedJSONField, Sealed
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

# Every encrypted column: (model, table, column).
ENCRYPTED_COLUMNS = [
    (Patient, "clinical_patient", "notes"),
    (Patient, "clinical_patient", "rejection_reason"),
    (HealthProfile, "clinical_healthprofile", "notes"),
    (PatientCondition, "clinical_patientcondition", "notes"),
    (PatientMedication, "clinical_patientmedication", "notes"),
    (PatientAllergy, "clinical_patientallergy", "reaction"),
]


def stored(table: str, column: str, pk: int) -> str | None:
    """The column's value exactly as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT "{column}" FROM "{table}" WHERE id = %s', [pk])
        return cursor.fetchone()[0]


def store(table: str, column: str, pk: int, value: str | None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f'UPDATE "{table}" SET "{column}" = %s WHERE id = %s', [value, pk])


def key_id(spec_entry: str) -> str:
    return spec_entry.split(":", 1)[0]


def b64key(size: int = 32) -> str:
    return base64.b64encode(secrets.token_bytes(size)).decode()


def plaintext_for(column: str) -> str:
    # Distinctive, multi-byte and long enough that any leak would show.
    return f"PHI {column}: penicillin anaphylaxis, HIV+ — São Paulo ✓ {secrets.token_hex(4)}"


@pytest.fixture
def phi_rows(ref, make_patient, superuser):
    """One row per encrypted column, each holding a distinct plaintext.

    Returns ``{(table, column): (model, pk, plaintext)}``.
    """
    texts = {(table, column): plaintext_for(f"{table}.{column}") for _, table, column in ENCRYPTED_COLUMNS}
    patient = make_patient(
        notes=texts[("clinical_patient", "notes")],
        profile={"notes": texts[("clinical_healthprofile", "notes")]},
    )
    services.patient_reject(patient=patient, actor=superuser, reason=texts[("clinical_patient", "rejection_reason")])
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
    pks = {
        "clinical_patient": patient.pk,
        "clinical_healthprofile": profile.pk,
        "clinical_patientcondition": condition.pk,
        "clinical_patientmedication": medication.pk,
        "clinical_patientallergy": allergy.pk,
    }
    return {(table, column): (model, pks[table], texts[(table, column)]) for model, table, column in ENCRYPTED_COLUMNS}


# What the database holds ------------------------------------------------------------


@pytest.mark.parametrize(("model", "table", "column"), ENCRYPTED_COLUMNS)
def test_the_database_holds_only_a_token_and_the_orm_reads_the_plaintext(phi_rows, model, table, column):
    _, pk, plaintext = phi_rows[(table, column)]
    raw = stored(table, column, pk)
    assert raw.startswith("ct1$")
    assert plaintext not in raw
    assert "penicillin" not in raw.lower()
    assert "São Paulo" not in raw
    assert getattr(model.objects.get(pk=pk), column) == plaintext


@pytest.mark.parametrize(("model", "table", "column"), ENCRYPTED_COLUMNS)
def test_the_token_names_the_current_primary_key(phi_rows, model, table, column):
    _, pk, _ = phi_rows[(table, column)]
    prefix, token_key_id, body = stored(table, column, pk).split("$")
    assert prefix == "ct1"
    assert token_key_id == keyring().primary_id
    assert len(base64.urlsafe_b64decode(body)) > 12 + 16  # nonce + ciphertext + tag


def test_no_plaintext_anywhere_in_the_patient_row(phi_rows):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    _, _, reason = phi_rows[("clinical_patient", "rejection_reason")]
    with connection.cursor() as cursor:
        cursor.execute("SELECT p::text FROM clinical_patient p WHERE id = %s", [pk])
        row_text = cursor.fetchone()[0]
    assert notes not in row_text
    assert reason not in row_text
    assert "penicillin" not in row_text.lower()


def test_a_null_stays_null(patient):
    assert stored("clinical_patient", "notes", patient.pk) is None
    assert Patient.objects.get(pk=patient.pk).notes is None


def test_an_empty_string_is_encrypted_too(patient):
    patient.notes = ""
    patient.save()
    assert stored("clinical_patient", "notes", patient.pk).startswith("ct1$")
    assert Patient.objects.get(pk=patient.pk).notes == ""


def test_a_deferred_encrypted_field_is_opened_on_access(phi_rows):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    assert Patient.objects.only("id").get(pk=pk).notes == notes


def test_values_list_gives_the_token_never_the_plaintext(phi_rows):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    [value] = Patient.objects.filter(pk=pk).values_list("notes", flat=True)
    assert value.startswith("ct1$")
    assert notes not in value


def test_bulk_create_encrypts_each_row(patient):
    reactions = ["Hives after peanuts", "Hives after peanuts"]
    created = PatientAllergy.objects.bulk_create(
        PatientAllergy(patient=patient, substance=f"Peanut {i}", category=AllergyCategory.FOOD, reaction=r)
        for i, r in enumerate(reactions)
    )
    for allergy in PatientAllergy.objects.filter(patient=patient):
        raw = stored("clinical_patientallergy", "reaction", allergy.pk)
        assert raw.startswith("ct1$")
        assert "peanut" not in raw.lower()
        assert allergy.reaction == "Hives after peanuts"
    assert len(created) == 2


# Binding to model, field and row -------------------------------------------------------


def test_a_token_copied_to_another_row_does_not_open(make_patient):
    a = make_patient(notes="Patient A: alcohol use disorder")
    b = make_patient(notes="Patient B: nothing remarkable")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE clinical_patient SET notes = (SELECT notes FROM clinical_patient WHERE id = %s) WHERE id = %s",
            [a.pk, b.pk],
        )
    assert stored("clinical_patient", "notes", b.pk) == stored("clinical_patient", "notes", a.pk)
    moved = Patient.objects.get(pk=b.pk)
    with pytest.raises(DecryptionError) as caught:
        _ = moved.notes
    assert "alcohol" not in str(caught.value)
    # The original still opens where it belongs.
    assert Patient.objects.get(pk=a.pk).notes == "Patient A: alcohol use disorder"


def test_a_token_copied_to_another_column_of_the_same_row_does_not_open(patient, superuser):
    patient = services.patient_reject(patient=patient, actor=superuser, reason="Duplicate record")
    patient.notes = "Depression, on sertraline"
    patient.save()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE clinical_patient SET rejection_reason = notes WHERE id = %s", [patient.pk])
    fresh = Patient.objects.get(pk=patient.pk)
    assert fresh.notes == "Depression, on sertraline"
    with pytest.raises(DecryptionError):
        _ = fresh.rejection_reason


def test_a_token_copied_to_the_same_field_of_another_model_does_not_open(ref, make_patient):
    patient = make_patient(notes="Bipolar disorder", profile={"notes": "Profile note"})
    profile = HealthProfile.objects.get(patient=patient)
    store("clinical_healthprofile", "notes", profile.pk, stored("clinical_patient", "notes", patient.pk))
    with pytest.raises(DecryptionError):
        _ = HealthProfile.objects.get(pk=profile.pk).notes


def test_associated_data_names_model_field_and_row():
    row = uuid.uuid4()
    assert associated_data("clinical.patient", "notes", row) == f"clinical.patient|notes|{row}".encode()


# Tampering ----------------------------------------------------------------------------


def _flip(char: str) -> str:
    return "B" if char != "B" else "C"


@pytest.mark.parametrize("position", ["first", "middle", "tag"])
def test_a_tampered_token_raises_and_never_returns_the_ciphertext(patient, position):
    patient.notes = "HbA1c 9.1%, insulin started"
    patient.save()
    token = stored("clinical_patient", "notes", patient.pk)
    prefix, kid, body = token.split("$")
    # Stay inside the base64 alphabet so it is the authentication tag that fails.
    index = {"first": 0, "middle": len(body) // 2, "tag": len(body) - 6}[position]
    body = body[:index] + _flip(body[index]) + body[index + 1 :]
    store("clinical_patient", "notes", patient.pk, f"{prefix}${kid}${body}")
    fresh = Patient.objects.get(pk=patient.pk)
    with pytest.raises(DecryptionError):
        _ = fresh.notes
    # The failed read left nothing usable behind either.
    with pytest.raises(DecryptionError):
        _ = fresh.notes


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t.replace("ct1$", "ct2$", 1), id="unknown-format"),
        pytest.param(lambda t: t.rsplit("$", 1)[0], id="missing-body"),
        pytest.param(lambda t: t + "$extra", id="extra-part"),
        pytest.param(lambda t: t[: len(t) // 2], id="truncated"),
        pytest.param(lambda t: t[:-4] + "!!!!", id="not-base64"),
        pytest.param(lambda t: "plain text that was never encrypted", id="plaintext"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
def test_a_malformed_token_raises(patient, mangle):
    patient.notes = "HIV positive"
    patient.save()
    store("clinical_patient", "notes", patient.pk, mangle(stored("clinical_patient", "notes", patient.pk)))
    with pytest.raises(DecryptionError):
        _ = Patient.objects.get(pk=patient.pk).notes


def test_a_token_with_its_key_id_changed_raises(patient):
    patient.notes = "HIV positive"
    patient.save()
    prefix, _, body = stored("clinical_patient", "notes", patient.pk).split("$")
    store("clinical_patient", "notes", patient.pk, f"{prefix}$nosuchkey${body}")
    with pytest.raises(DecryptionError) as caught:
        _ = Patient.objects.get(pk=patient.pk).notes
    assert "nosuchkey" in str(caught.value)


# Keys: wrong key, rotation --------------------------------------------------------------


def test_an_unknown_key_raises_without_naming_the_plaintext(patient):
    patient.notes = "Schizophrenia, clozapine"
    patient.save()
    with override_settings(FIELD_ENCRYPTION_KEYS=new_field_key()):
        fresh = Patient.objects.get(pk=patient.pk)
        with pytest.raises(DecryptionError) as caught:
            _ = fresh.notes
    message = str(caught.value)
    assert "Schizophrenia" not in message
    assert "clozapine" not in message


def test_a_wrong_key_under_the_same_id_raises_without_naming_the_plaintext(patient):
    patient.notes = "Schizophrenia, clozapine"
    patient.save()
    same_id = keyring().primary_id
    with override_settings(FIELD_ENCRYPTION_KEYS=f"{same_id}:{b64key()}"):
        fresh = Patient.objects.get(pk=patient.pk)
        with pytest.raises(DecryptionError) as caught:
            _ = fresh.notes
    assert "Schizophrenia" not in str(caught.value)
    assert "clozapine" not in str(caught.value)


def test_key_rotation_on_the_key_ring():
    key_a, key_b = new_field_key(), new_field_key()
    aad = associated_data("clinical.patient", "notes", uuid.uuid4())
    ring_a = parse_keys(key_a)
    token_a = ring_a.seal(b"written under A", aad)
    assert ring_a.key_id_of(token_a) == key_id(key_a)

    ring_ba = parse_keys(f"{key_b},{key_a}")
    assert ring_ba.primary_id == key_id(key_b)
    assert ring_ba.open(token_a, aad) == b"written under A"
    token_b = ring_ba.seal(b"written under B", aad)
    assert ring_ba.key_id_of(token_b) == key_id(key_b)
    assert ring_ba.open(token_b, aad) == b"written under B"

    # A ring that only has A cannot open what B sealed.
    with pytest.raises(DecryptionError):
        ring_a.open(token_b, aad)
    # And the ring that holds only B no longer opens A's tokens.
    with pytest.raises(DecryptionError):
        parse_keys(key_b).open(token_a, aad)


def test_key_rotation_through_the_setting(make_patient):
    key_a, key_b = new_field_key(), new_field_key()
    with override_settings(FIELD_ENCRYPTION_KEYS=key_a):
        old = make_patient(notes="Written under A")
        untouched = make_patient(notes="Also written under A")
    assert stored("clinical_patient", "notes", old.pk).split("$")[1] == key_id(key_a)

    with override_settings(FIELD_ENCRYPTION_KEYS=f"{key_b},{key_a}"):
        fresh = Patient.objects.get(pk=old.pk)
        assert fresh.notes == "Written under A"
        assert Patient.objects.get(pk=untouched.pk).notes == "Also written under A"
        fresh.notes = "Written under B"
        fresh.save()
        assert stored("clinical_patient", "notes", old.pk).split("$")[1] == key_id(key_b)
        assert Patient.objects.get(pk=old.pk).notes == "Written under B"
        # Saving the other row without touching the value keeps A's token.
        other = Patient.objects.get(pk=untouched.pk)
        other.first_name = "Renamed"
        other.save()
        assert stored("clinical_patient", "notes", untouched.pk).split("$")[1] == key_id(key_a)

    # With A alone, B's token cannot be opened; A's still can.
    with override_settings(FIELD_ENCRYPTION_KEYS=key_a):
        with pytest.raises(DecryptionError):
            _ = Patient.objects.get(pk=old.pk).notes
        assert Patient.objects.get(pk=untouched.pk).notes == "Also written under A"


# parse_keys ----------------------------------------------------------------------------


def test_parse_keys_accepts_a_list_and_makes_the_first_key_primary():
    first, second = f"k1:{b64key()}", f"k-2_b:{b64key()}"
    ring = parse_keys(f" {first} , {second} ,")
    assert ring.primary_id == "k1"
    assert set(ring.keys) == {"k1", "k-2_b"}


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("  ,  , ", "empty", id="only-separators"),
        pytest.param("k1:not*base64!", "base64", id="bad-base64"),
        pytest.param("k1:" + b64key()[:-2], "base64", id="bad-padding"),
        pytest.param("k1:" + b64key(16), "32 bytes", id="16-byte-key"),
        pytest.param("k1:" + b64key(64), "32 bytes", id="64-byte-key"),
        pytest.param(f"k1:{b64key()},k1:{b64key()}", "repeats", id="duplicate-id"),
        pytest.param(b64key(), "id:base64key", id="no-id"),
        pytest.param(f":{b64key()}", "id:base64key", id="empty-id"),
        pytest.param(f"bad id!:{b64key()}", "id:base64key", id="bad-id-characters"),
        pytest.param(f"{'k' * 33}:{b64key()}", "id:base64key", id="id-too-long"),
        pytest.param(f"k1:{b64key()},k2", "id:base64key", id="malformed-second-entry"),
    ],
)
def test_parse_keys_refuses(spec, complaint):
    with pytest.raises(ImproperlyConfigured) as caught:
        parse_keys(spec)
    assert complaint in str(caught.value)


def test_parse_keys_never_echoes_the_key_material():
    material = b64key(16)
    with pytest.raises(ImproperlyConfigured) as caught:
        parse_keys(f"k1:{material}")
    assert material not in str(caught.value)


def test_the_configured_keys_are_valid():
    assert parse_keys(settings.FIELD_ENCRYPTION_KEYS).primary_id == keyring().primary_id


# Writing: only when the value changes, never plaintext through update() -----------------


def test_saving_an_untouched_row_does_not_reencrypt(phi_rows):
    _, pk, _ = phi_rows[("clinical_patient", "notes")]
    before = stored("clinical_patient", "notes", pk)
    patient = Patient.objects.get(pk=pk)
    patient.first_name = "Other"
    patient.save()
    assert stored("clinical_patient", "notes", pk) == before


def test_saving_a_row_whose_value_was_read_but_not_changed_does_not_reencrypt(phi_rows):
    for (table, column), (model, pk, plaintext) in phi_rows.items():
        before = stored(table, column, pk)
        instance = model.objects.get(pk=pk)
        assert getattr(instance, column) == plaintext
        instance.save()
        assert stored(table, column, pk) == before, (table, column)


def test_assigning_the_same_value_again_does_not_reencrypt(phi_rows):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    before = stored("clinical_patient", "notes", pk)
    patient = Patient.objects.get(pk=pk)
    assert patient.notes == notes  # read first: only a value that was opened is remembered
    patient.notes = "".join(notes)  # an equal but distinct string
    patient.save()
    assert stored("clinical_patient", "notes", pk) == before


def test_changing_the_value_writes_a_new_token(phi_rows):
    _, pk, _ = phi_rows[("clinical_patient", "notes")]
    before = stored("clinical_patient", "notes", pk)
    patient = Patient.objects.get(pk=pk)
    patient.notes = "Changed note"
    patient.save()
    after = stored("clinical_patient", "notes", pk)
    assert after != before
    assert after.startswith("ct1$")
    assert "Changed" not in after
    assert Patient.objects.get(pk=pk).notes == "Changed note"


def test_changing_a_value_and_back_in_one_instance_stays_readable(patient):
    patient.notes = "first"
    patient.save()
    patient.notes = "second"
    patient.save()
    patient.notes = "first"
    patient.save()
    assert Patient.objects.get(pk=patient.pk).notes == "first"


def test_queryset_update_with_plaintext_is_refused_and_writes_nothing(phi_rows):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    before = stored("clinical_patient", "notes", pk)
    # update() runs without its own savepoint: give it one so the refusal leaves the test usable.
    with pytest.raises(TypeError), transaction.atomic():
        Patient.objects.filter(pk=pk).update(notes="plain")
    assert stored("clinical_patient", "notes", pk) == before
    assert Patient.objects.get(pk=pk).notes == notes


@pytest.mark.parametrize(
    ("expression", "leak"),
    [
        pytest.param(lambda: Value("plain"), "plain", id="Value"),
        pytest.param(lambda: F("first_name"), "Grace", id="F-of-a-plain-column"),
        pytest.param(lambda: Concat(Value("plain "), F("last_name")), "plain", id="Concat"),
    ],
)
def test_queryset_update_with_an_expression_never_writes_plaintext(phi_rows, expression, leak):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    before = stored("clinical_patient", "notes", pk)
    refused = False
    try:
        with transaction.atomic():
            Patient.objects.filter(pk=pk).update(notes=expression())
    except TypeError:
        refused = True
    after = stored("clinical_patient", "notes", pk)
    assert leak not in after, f"plaintext reached the encrypted column: {after!r}"
    assert after == before
    assert refused
    assert Patient.objects.get(pk=pk).notes == notes


def test_queryset_update_to_null_works(phi_rows):
    _, pk, _ = phi_rows[("clinical_patient", "notes")]
    assert Patient.objects.filter(pk=pk).update(notes=None) == 1
    assert stored("clinical_patient", "notes", pk) is None
    assert Patient.objects.get(pk=pk).notes is None


def test_bulk_update_with_plaintext_is_refused_and_writes_nothing(phi_rows):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    before = stored("clinical_patient", "notes", pk)
    patient = Patient.objects.get(pk=pk)
    patient.notes = "bulk plain"
    with pytest.raises(TypeError), transaction.atomic():
        Patient.objects.bulk_update([patient], ["notes"])
    assert stored("clinical_patient", "notes", pk) == before
    assert Patient.objects.get(pk=pk).notes == notes


@pytest.mark.parametrize("read_first", [True, False], ids=["read-first", "never-read"])
def test_a_row_copied_to_a_new_uuid_is_sealed_for_its_new_row(patient, read_first):
    """Django's documented copy (pk=None, new uuid) must not carry a token bound to the old row."""
    patient.notes = "Copied note"
    patient.save()
    copy = Patient.objects.get(pk=patient.pk)
    if read_first:
        assert copy.notes == "Copied note"
    copy.pk = None
    copy.uuid = uuid.uuid4()
    copy.mrn = "COPY-1"
    copy._state.adding = True
    with transaction.atomic():
        copy.save()
    assert Patient.objects.get(pk=copy.pk).notes == "Copied note"
    assert Patient.objects.get(pk=patient.pk).notes == "Copied note"


def test_equal_plaintexts_give_different_tokens(make_patient):
    a = make_patient(notes="Same words in two rows")
    b = make_patient(notes="Same words in two rows")
    token_a = stored("clinical_patient", "notes", a.pk)
    token_b = stored("clinical_patient", "notes", b.pk)
    assert token_a != token_b
    assert token_a.split("$")[2][:16] != token_b.split("$")[2][:16]  # different nonces


def test_rewriting_the_same_row_uses_a_fresh_nonce(patient):
    tokens = set()
    for text in ("one", "two", "one"):
        patient.notes = text
        patient.save()
        tokens.add(stored("clinical_patient", "notes", patient.pk))
    assert len(tokens) == 3


def test_a_sealed_value_never_shows_in_repr():
    assert repr(Sealed("ct1$k$abc")) == "<sealed value>"


def test_serialization_masks_encrypted_fields(phi_rows):
    _, pk, notes = phi_rows[("clinical_patient", "notes")]
    text = serializers.serialize("json", Patient.objects.filter(pk=pk))
    assert notes not in text
    assert '"notes": "[encrypted]"' in text


# EncryptedJSONField, without a model ----------------------------------------------------


@pytest.fixture
def json_field():
    field = EncryptedJSONField(null=True)
    field.set_attributes_from_name("document")
    # Stand-in for the model: the field only needs its label for the associated data.
    field.model = SimpleNamespace(_meta=SimpleNamespace(label="tests.Thing", label_lower="tests.thing"))
    return field


def test_encrypted_json_round_trips_exactly(json_field):
    row = SimpleNamespace(uuid=uuid.uuid4())
    document = {"allergies": ["penicillin", "latex"], "score": 3.5, "ok": True, "none": None, "ü": "ß"}
    token = json_field.seal_value(row, document)
    assert token.startswith("ct1$")
    assert "penicillin" not in token
    assert json_field.open_token(row, token) == document


def test_encrypted_json_is_bound_to_the_row(json_field):
    token = json_field.seal_value(SimpleNamespace(uuid=uuid.uuid4()), {"a": 1})
    with pytest.raises(DecryptionError):
        json_field.open_token(SimpleNamespace(uuid=uuid.uuid4()), token)


def test_encrypted_json_needs_the_row_uuid(json_field):
    with pytest.raises(ValueError, match="uuid"):
        json_field.seal_value(SimpleNamespace(uuid=None), {"a": 1})


def test_encrypted_json_refuses_plaintext_writes_and_masks_lookups(json_field):
    with pytest.raises(TypeError):
        json_field.get_db_prep_save({"a": 1}, connection)
    assert json_field.get_db_prep_save(None, connection) is None
    assert json_field.get_db_prep_save(Sealed("ct1$k$x"), connection) == "ct1$k$x"
    assert json_field.get_db_prep_value({"secret": 1}, connection) == "[encrypted]"
    assert isinstance(json_field.from_db_value("ct1$k$x", None, connection), Sealed)
    assert json_field.from_db_value(None, None, connection) is None


def test_encrypted_json_to_python(json_field):
    assert json_field.to_python('{"a": [1, 2]}') == {"a": [1, 2]}
    assert json_field.to_python({"a": 1}) == {"a": 1}
    with pytest.raises(ValidationError):
        json_field.to_python("{not json")
    sealed = Sealed("ct1$k$x")
    assert json_field.to_python(sealed) is sealed


def test_encrypted_json_pre_save_seals_and_reuses_an_unchanged_token(json_field):
    row = SimpleNamespace(uuid=uuid.uuid4())
    row.__dict__["document"] = {"b": 2}
    first = json_field.pre_save(row, add=True)
    assert isinstance(first, Sealed)
    assert json_field.pre_save(row, add=False) == first
    row.__dict__["document"] = {"b": 3}
    assert json_field.pre_save(row, add=False) != first
