"""The audit log: encrypted fields are masked, plain ones are visible, the actor is recorded."""

import datetime
import json

import pytest
from auditlog.models import LogEntry
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.audit import MASK
from accounts.models import ApiToken
from accounts.services import api_token_create, api_token_revoke
from clinical import services
from clinical.models import (
    AllergyCategory,
    HealthProfile,
    MedicalInstitution,
    Patient,
    PatientAllergy,
)

pytestmark = pytest.mark.django_db

NOTES = "Confidential: HIV positive, on antiretrovirals"
NEW_NOTES = "Confidential: disclosed opioid dependence"
REASON = "Duplicate of MRN 0042 after psychiatric admission"
PROFILE_NOTES = "History of self-harm"
NEW_PROFILE_NOTES = "Self-harm: in remission since 2019"
REACTION = "Anaphylaxis within minutes"
NEW_REACTION = "Angioedema of the tongue"
SECRETS = [NOTES, NEW_NOTES, REASON, PROFILE_NOTES, NEW_PROFILE_NOTES, REACTION, NEW_REACTION]
# Words that appear only in the encrypted values, so a partial leak shows too.
FRAGMENTS = [
    "HIV positive",
    "antiretroviral",
    "opioid",
    "psychiatric",
    "self-harm",
    "remission",
    "anaphylaxis",
    "angioedema",
]


def assert_no_plaintext(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    for fragment in FRAGMENTS:
        assert fragment.lower() not in text.lower(), fragment


def assert_entry_hides_plaintext(entry: LogEntry) -> None:
    """Every view of a log entry: the JSON, the legacy text, the readable forms and the stored row."""
    assert_no_plaintext(json.dumps(entry.changes, ensure_ascii=False))
    assert_no_plaintext(entry.changes_text or "")
    assert_no_plaintext(entry.changes_str)
    assert_no_plaintext(json.dumps(entry.changes_display_dict, ensure_ascii=False, default=str))
    assert_no_plaintext(json.dumps(entry.serialized_data, ensure_ascii=False, default=str))
    assert_no_plaintext(json.dumps(entry.additional_data, ensure_ascii=False, default=str))
    assert_no_plaintext(entry.object_repr)
    with connection.cursor() as cursor:
        cursor.execute("SELECT l::text FROM auditlog_logentry l WHERE id = %s", [entry.pk])
        assert_no_plaintext(cursor.fetchone()[0])


def assert_whole_log_hides_plaintext() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT l::text FROM auditlog_logentry l")
        rows = [row[0] for row in cursor.fetchall()]
    assert rows
    for row in rows:
        assert_no_plaintext(row)


def entries(obj, action=None):
    found = LogEntry.objects.get_for_object(obj)
    if action is not None:
        found = found.filter(action=action)
    return list(found.order_by("timestamp", "id"))


@pytest.fixture
def registered(ref, doctor):
    return services.patient_register(
        doctor=doctor,
        first_name="Grace",
        last_name="Hopper",
        date_of_birth=datetime.date(1970, 1, 2),
        sex=ref.female,
        notes=NOTES,
        profile={"height_cm": 170, "notes": PROFILE_NOTES},
    )


# Masking ---------------------------------------------------------------------------------


def test_registering_a_patient_logs_the_encrypted_notes_masked(registered):
    [created] = entries(registered, LogEntry.Action.CREATE)
    assert created.changes["notes"] == [MASK, MASK]
    assert created.changes["first_name"] == ["None", "Grace"]
    assert created.changes["last_name"] == ["None", "Hopper"]
    # A field with no value at creation is not in the diff at all.
    assert "rejection_reason" not in created.changes
    assert_entry_hides_plaintext(created)


def test_a_diff_holds_only_the_rows_own_columns_not_the_relations_to_it(registered):
    [created] = entries(registered, LogEntry.Action.CREATE)
    columns = {field.name for field in Patient._meta.concrete_fields}
    assert set(created.changes) <= columns
    # The reverse relations of a patient that a create's diff used to name as "<app>.<Model>.None".
    assert not {"records", "appointments", "documents", "health_profile"} & set(created.changes)
    assert not any(".None" in str(values) for values in created.changes.values())


def test_changing_notes_and_rejecting_logs_them_masked_while_plain_fields_show(registered, superuser):
    patient = Patient.objects.get(pk=registered.pk)
    patient.first_name = "Gracie"
    patient.notes = NEW_NOTES
    patient.save()
    services.patient_reject(patient=patient, actor=superuser, reason=REASON)

    [_, edit, rejection] = entries(registered)
    assert edit.action == LogEntry.Action.UPDATE
    assert edit.changes["first_name"] == ["Grace", "Gracie"]
    assert edit.changes["notes"] == [MASK, MASK]
    assert "rejection_reason" not in edit.changes

    assert rejection.action == LogEntry.Action.UPDATE
    assert rejection.changes["validation_status"] == ["pending", "rejected"]
    assert rejection.changes["rejection_reason"] == [MASK, MASK]
    assert "notes" not in rejection.changes  # untouched: not logged as a change

    for entry in entries(registered):
        assert_entry_hides_plaintext(entry)
    assert "Gracie" in edit.changes_str
    assert_whole_log_hides_plaintext()


def test_clearing_an_encrypted_field_is_logged_masked(registered):
    patient = Patient.objects.get(pk=registered.pk)
    patient.notes = None
    patient.save()
    last = entries(registered, LogEntry.Action.UPDATE)[-1]
    assert last.changes["notes"] == [MASK, MASK]
    assert_entry_hides_plaintext(last)


def test_saving_without_changing_the_encrypted_value_logs_no_change_to_it(registered):
    patient = Patient.objects.get(pk=registered.pk)
    assert patient.notes == NOTES
    patient.last_name = "Murray Hopper"
    patient.save()
    last = entries(registered, LogEntry.Action.UPDATE)[-1]
    assert last.changes["last_name"] == ["Hopper", "Murray Hopper"]
    assert "notes" not in last.changes


def test_health_profile_notes_are_logged_masked(registered):
    profile = HealthProfile.objects.get(patient=registered)
    [created] = entries(profile, LogEntry.Action.CREATE)
    assert created.changes["notes"] == [MASK, MASK]

    profile = HealthProfile.objects.get(pk=profile.pk)
    profile.notes = NEW_PROFILE_NOTES
    profile.height_cm = 171
    profile.save()
    [updated] = entries(profile, LogEntry.Action.UPDATE)
    assert updated.changes["notes"] == [MASK, MASK]
    assert updated.changes["height_cm"] == ["170.0", "171"]
    for entry in entries(profile):
        assert_entry_hides_plaintext(entry)


def test_allergy_reaction_is_logged_masked(registered):
    allergy = PatientAllergy.objects.create(
        patient=registered, substance="Amoxicillin", category=AllergyCategory.MEDICATION, reaction=REACTION
    )
    [created] = entries(allergy, LogEntry.Action.CREATE)
    assert created.changes["reaction"] == [MASK, MASK]
    assert created.changes["substance"] == ["None", "Amoxicillin"]

    allergy = PatientAllergy.objects.get(pk=allergy.pk)
    allergy.reaction = NEW_REACTION
    allergy.severity = "severe"
    allergy.save()
    [updated] = entries(allergy, LogEntry.Action.UPDATE)
    assert updated.changes["reaction"] == [MASK, MASK]
    assert updated.changes["severity"] == ["", "severe"]
    for entry in entries(allergy):
        assert_entry_hides_plaintext(entry)
    assert_whole_log_hides_plaintext()


def test_deleting_a_row_logs_its_encrypted_fields_masked(registered):
    allergy = PatientAllergy.objects.create(
        patient=registered, substance="Amoxicillin", category=AllergyCategory.MEDICATION, reaction=REACTION
    )
    PatientAllergy.objects.get(pk=allergy.pk).delete()
    [deleted] = LogEntry.objects.filter(
        action=LogEntry.Action.DELETE, object_pk=str(allergy.pk), content_type__model="patientallergy"
    )
    assert deleted.changes["reaction"] == [MASK, MASK]
    assert_entry_hides_plaintext(deleted)


# The actor -------------------------------------------------------------------------------


def _admin_form_data(response) -> dict:
    """The POST a browser would send back for an unchanged admin change form."""
    form = response.context["adminform"].form
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is None:
            data[name] = ""
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        else:
            data[name] = value
    return data


def test_an_admin_change_records_the_signed_in_user_as_actor(superuser_client, superuser, institution):
    url = f"/admin/clinical/medicalinstitution/{institution.pk}/change/"
    page = superuser_client.get(url)
    assert page.status_code == 200
    data = _admin_form_data(page)
    old_name = data["name"]
    data["name"] = "Renamed Clinic"
    data["_save"] = "Save"

    response = superuser_client.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    assert MedicalInstitution.objects.get(pk=institution.pk).name == "Renamed Clinic"
    [change] = entries(institution, LogEntry.Action.UPDATE)
    assert change.changes["name"] == [old_name, "Renamed Clinic"]
    assert change.actor == superuser
    assert change.actor_email == superuser.email
    assert change.remote_addr == "127.0.0.1"


def test_a_service_call_outside_a_request_has_no_actor(registered):
    [created] = entries(registered, LogEntry.Action.CREATE)
    assert created.actor is None


def _patch_me(client: Client, secret: str, **body):
    return client.patch(
        "/api/v1/me/",
        data=body or {"first_name": "New"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {secret}",
    )


def test_a_token_authenticated_api_change_records_the_token_user_as_actor(make_user):
    user = make_user(first_name="Old")
    _, secret = api_token_create(user=user)

    response = _patch_me(Client(), secret)

    assert response.status_code == 200, response.content
    assert response.json()["first_name"] == "New"
    [change] = entries(user, LogEntry.Action.UPDATE)
    assert change.changes["first_name"] == ["Old", "New"]
    assert change.actor == user
    assert "password" not in change.changes


def test_the_bearer_keyword_works_too(make_user):
    user = make_user()
    _, secret = api_token_create(user=user)
    response = Client().patch(
        "/api/v1/me/",
        data={"last_name": "Bearer"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200
    assert entries(user, LogEntry.Action.UPDATE)[-1].actor == user


def test_an_expired_token_is_refused(make_user):
    user = make_user(first_name="Old")
    token, secret = api_token_create(user=user)
    now = timezone.now()
    # expires_at must stay after created_at (a CHECK constraint): move both into the past.
    ApiToken.objects.filter(pk=token.pk).update(
        created_at=now - datetime.timedelta(days=2), expires_at=now - datetime.timedelta(days=1)
    )

    response = _patch_me(Client(), secret)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    user.refresh_from_db()
    assert user.first_name == "Old"
    assert entries(user, LogEntry.Action.UPDATE) == []


def test_a_revoked_token_is_refused(make_user):
    user = make_user(first_name="Old")
    token, secret = api_token_create(user=user)
    assert _patch_me(Client(), secret, first_name="Before").status_code == 200
    api_token_revoke(token=token)

    response = _patch_me(Client(), secret)

    assert response.status_code == 401
    user.refresh_from_db()
    assert user.first_name == "Before"


def test_an_unknown_token_is_refused(make_user):
    user = make_user()
    api_token_create(user=user)
    assert _patch_me(Client(), "not-a-real-token").status_code == 401


def test_a_token_of_an_inactive_user_is_refused(make_user):
    user = make_user()
    _, secret = api_token_create(user=user)
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert _patch_me(Client(), secret).status_code == 401


# The history in the admin ----------------------------------------------------------------


def test_the_patient_history_page_lists_the_entries_without_plaintext(superuser_client, registered, superuser):
    patient = Patient.objects.get(pk=registered.pk)
    patient.first_name = "Gracie"
    patient.notes = NEW_NOTES
    patient.save()
    services.patient_reject(patient=patient, actor=superuser, reason=REASON)

    response = superuser_client.get(f"/admin/clinical/patient/{registered.pk}/auditlog/")

    assert response.status_code == 200
    actions = [entry.action for entry in response.context["log_entries"]]
    # the three writes, and the read of this very page (reads of PHI are audited too)
    assert sorted(actions) == sorted(
        [LogEntry.Action.CREATE, LogEntry.Action.UPDATE, LogEntry.Action.UPDATE, LogEntry.Action.ACCESS]
    )
    html = response.content.decode()
    assert "Gracie" in html
    assert MASK in html
    assert "pending" in html and "rejected" in html  # the validation status change
    assert "Rejection reason" in html  # the field is named, its value is not
    assert_no_plaintext(html)


def test_the_institution_history_page_shows_the_admin_change_and_its_actor(superuser_client, superuser, institution):
    url = f"/admin/clinical/medicalinstitution/{institution.pk}/change/"
    data = _admin_form_data(superuser_client.get(url))
    data["name"] = "History Clinic"
    assert superuser_client.post(url, data).status_code == 302

    response = superuser_client.get(f"/admin/clinical/medicalinstitution/{institution.pk}/auditlog/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "History Clinic" in html
    assert superuser.email in html


def test_the_history_page_needs_a_staff_user(client, make_user, registered):
    user = make_user()
    client.force_login(user)
    response = client.get(f"/admin/clinical/patient/{registered.pk}/auditlog/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
