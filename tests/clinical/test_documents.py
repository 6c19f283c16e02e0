"""Documents: uploads checked and stored encrypted, downloads through the access policy, audited.

The file layer itself (inspection, sealing, S3) is tested in ``test_files.py``;
here the model, the service, the API, the admin download and key rotation.
Every test stores its files in its own folder (the ``media`` fixture).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import IntegrityError
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from accounts.services import api_token_create
from clinical import appointments, fhir, services
from clinical.files import FileRejected, open_plaintext
from clinical.models import Document, MedicalRecord, Patient
from config.embedded import new_field_key
from tests.clinical.test_files import (
    MARKER,
    jpeg_bytes,
    pdf_bytes,
    pdf_with_zip_inside,
    png_bytes,
    png_claiming,
    text_bytes,
)
from tests.conftest import PASSWORD, login_with_mfa
from tests.db import rule_name

pytestmark = pytest.mark.django_db

FILE_SYSTEM_STORAGE = "django.core.files.storage.FileSystemStorage"


# Storage, keys, people ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    """The default storage in this test's own folder; changing STORAGES resets ``default_storage``."""
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": FILE_SYSTEM_STORAGE, "OPTIONS": {"location": str(root)}},
    }
    return root


def stored_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


@pytest.fixture
def clinician(doctor: Any, roles: None) -> Any:
    """The patients' primary doctor, in the Doctor role."""
    doctor.user.groups.add(Group.objects.get(name="Doctor"))
    return doctor.user


def token_client(user: Any) -> Client:
    _token, secret = api_token_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {secret}")


@pytest.fixture
def api(clinician: Any) -> Client:
    return token_client(clinician)


@pytest.fixture
def portal_patient(make_patient: Any) -> Patient:
    return make_patient(portal_email="own.documents@example.org", portal_password=PASSWORD)


def list_url(patient: Patient) -> str:
    return reverse("v1:document-list", args=[patient.uuid])


def download_url(document: Document | Any) -> str:
    return reverse("v1:document-download", args=[document.patient.uuid, document.uuid])


def upload_body(data: bytes, name: str, kind: str = "lab_report", **extra: Any) -> dict[str, Any]:
    return {"file": SimpleUploadedFile(name, data), "kind": kind, **extra}


def stored(patient: Patient, data: bytes = b"", name: str = "report.txt", **fields: Any) -> Document:
    result: Document = services.document_upload(
        patient=patient,
        upload=SimpleUploadedFile(name, data or text_bytes(500)),
        kind=fields.pop("kind", "lab_report"),
        uploaded_by=fields.pop("uploaded_by", None),
        **fields,
    )
    return result


def heart_rate_record(patient: Patient) -> MedicalRecord:
    payload = fhir.build_vital_signs(
        kind="8867-4", value=70, effective=timezone.now(), patient_reference=f"Patient/{patient.uuid}"
    )
    record: MedicalRecord = services.record_create(patient=patient, record_type="vital_signs", payload=payload)
    return record


# Upload and download through the API ------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name", "content_type"),
    [
        (pdf_bytes, "referral.pdf", "application/pdf"),
        (png_bytes, "rash.png", "image/png"),
        (jpeg_bytes, "x-ray.jpg", "image/jpeg"),
        (text_bytes, "notes.txt", "text/plain"),
    ],
)
def test_an_upload_comes_back_byte_for_byte_with_safe_download_headers(api, patient, media, make, name, content_type):
    data = make()

    created = api.post(list_url(patient), upload_body(data, name))

    assert created.status_code == 201, created.content
    body = created.json()
    assert body["content_type"] == content_type
    assert body["size"] == len(data)
    assert body["original_name"] == name
    assert body["patient"] == str(patient.uuid)
    assert "storage_key" not in body and "storage_key" not in created.content.decode()
    document = Document.objects.get(uuid=body["id"])
    response = api.get(download_url(document))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert response["Content-Type"].split(";")[0] == content_type
    assert response["Content-Disposition"] == f'attachment; filename="{name}"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cache-Control"] == "no-store"


def test_the_stored_bytes_are_not_the_plaintext_and_the_key_is_not_the_file_name(api, patient, media):
    data = text_bytes(5000)

    created = api.post(list_url(patient), upload_body(data, "grace-hopper-bloods.txt"))

    assert created.status_code == 201
    (path,) = stored_files(media)
    raw = path.read_bytes()
    assert MARKER not in raw and data not in raw
    assert "hopper" not in str(path.relative_to(media))
    assert Document.objects.get().storage_key == str(path.relative_to(media))


def test_a_file_name_that_needs_encoding_is_sent_with_an_rfc_6266_filename_star(api, patient):
    document = stored(patient, name='Befund "März" 2024.txt')

    response = api.get(download_url(document))

    disposition = response["Content-Disposition"]
    assert disposition.startswith("attachment; filename*=utf-8''")
    assert "M%C3%A4rz" in disposition and '"' not in disposition.removeprefix("attachment; ")


def test_the_list_is_newest_first_with_keyset_pages(api, patient):
    documents = [stored(patient) for _ in range(3)]

    first = api.get(list_url(patient), {"page_size": 2}).json()
    second = api.get(first["next"]).json()

    shown = [row["id"] for row in first["results"] + second["results"]]
    assert shown == [str(d.uuid) for d in reversed(documents)]


def test_an_upload_may_name_the_patients_record_but_not_another_patients(api, patient, make_patient):
    own, foreign = heart_rate_record(patient), heart_rate_record(make_patient())

    linked = api.post(list_url(patient), upload_body(text_bytes(), "a.txt", medical_record=str(own.uuid)))
    refused = api.post(list_url(patient), upload_body(text_bytes(), "b.txt", medical_record=str(foreign.uuid)))

    assert linked.status_code == 201 and linked.json()["medical_record"] == str(own.uuid)
    assert refused.status_code == 400 and "medical_record" in refused.json()
    assert Document.objects.count() == 1


# Bad files -------------------------------------------------------------------------------------------


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


BAD_FILES = [
    pytest.param(b"", "empty.txt", id="empty"),
    pytest.param(b"x" * 4096, "big.txt", id="oversized"),
    pytest.param(png_bytes(), "scan.pdf", id="extension-lies"),
    pytest.param(b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", "page.txt", id="html"),
    pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "logo.svg", id="svg"),
    pytest.param(_truncated(pdf_bytes()), "cut.pdf", id="truncated-pdf"),
    pytest.param(_truncated(png_bytes(noise=True)), "cut.png", id="truncated-png"),
    pytest.param(png_claiming(100_000, 100_000), "bomb.png", id="decompression-bomb"),
    pytest.param(pdf_with_zip_inside(), "both.pdf", id="polyglot"),
]


@pytest.mark.parametrize(("data", "name"), BAD_FILES)
def test_each_bad_file_is_refused_with_a_400_naming_file_and_nothing_is_left(api, patient, media, settings, data, name):
    settings.DOCUMENT_MAX_BYTES = 2048
    logged = LogEntry.objects.count()

    response = api.post(list_url(patient), upload_body(data, name))

    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == ["file"] and len(body["file"]) == 1 and body["file"][0]
    assert name not in body["file"][0]
    assert Document.objects.count() == 0
    assert stored_files(media) == []
    assert LogEntry.objects.count() == logged


def test_a_failed_insert_deletes_the_stored_file(patient, media, monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise IntegrityError("refused")

    monkeypatch.setattr(Document, "save", refuse)

    with pytest.raises(IntegrityError):
        stored(patient)

    assert stored_files(media) == []


def test_the_service_refuses_a_bad_file_as_a_validation_error_on_file(patient, media):
    with pytest.raises(ValidationError) as caught:
        stored(patient, data=b"\x00\x01binary", name="blob.bin")
    assert isinstance(caught.value, FileRejected)
    assert list(caught.value.message_dict) == ["file"]
    assert stored_files(media) == []


# Database rules ----------------------------------------------------------------------------------------


def test_the_database_refuses_a_document_linked_to_another_patients_record_or_appointment(
    patient, make_patient, doctor, make_user
):
    document = stored(patient)
    other = make_patient()
    record = heart_rate_record(other)
    start = (timezone.now() + datetime.timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    appointment = appointments.appointment_book(
        patient=other,
        doctor=doctor,
        institution=doctor.institution,
        starts_at=start,
        ends_at=start + datetime.timedelta(minutes=30),
        reason="Follow-up",
        booked_by=make_user(is_staff=True),
    )

    def link(**fields: Any) -> Any:
        return lambda: Document.objects.filter(pk=document.pk).update(**fields)

    assert rule_name(link(medical_record=record)) == "clinical_document_same_patient"
    assert rule_name(link(appointment=appointment)) == "clinical_document_same_patient"
    with pytest.raises(ValidationError) as caught:
        stored(patient, appointment=appointment)
    assert "appointment" in caught.value.message_dict


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"size": 0}, "clinical_document_size_positive"),
        ({"sha256": "not-a-hash"}, "clinical_document_hash_format"),
        ({"content_type": "text/html"}, "clinical_document_content_type_allowed"),
        ({"storage_key": "reports/grace-hopper.pdf"}, "clinical_document_storage_key_format"),
    ],
)
def test_the_database_checks_what_a_document_row_says(patient, fields, rule):
    document = stored(patient)
    assert rule_name(lambda: Document.objects.filter(pk=document.pk).update(**fields)) == rule


# Access -------------------------------------------------------------------------------------------------


def test_a_patient_cannot_fetch_another_patients_document_by_guessing_ids(make_patient, patient):
    other = make_patient(portal_email="other.portal@example.org", portal_password=PASSWORD)
    theirs = stored(patient)
    mine = stored(other, data=b"My own notes.\n")
    client = token_client(other.user)

    assert client.get(reverse("v1:my-document-download", args=[theirs.uuid])).status_code == 404
    assert client.get(download_url(theirs)).status_code == 404
    assert client.get(list_url(patient)).status_code == 404
    listed = client.get(reverse("v1:my-document-list")).json()["results"]
    assert [row["id"] for row in listed] == [str(mine.uuid)]
    own = client.get(reverse("v1:my-document-download", args=[mine.uuid]))
    assert own.status_code == 200 and b"".join(own.streaming_content) == b"My own notes.\n"


def test_a_patient_uploads_to_their_own_record_only_through_the_portal(portal_patient):
    client = token_client(portal_patient.user)

    own = client.post(reverse("v1:my-document-list"), upload_body(b"Home reading 120/80.\n", "bp.txt", "other"))
    staff_route = client.post(list_url(portal_patient), upload_body(b"Home reading.\n", "bp.txt", "other"))

    assert own.status_code == 201, own.content
    document = Document.objects.get(uuid=own.json()["id"])
    assert document.patient == portal_patient and document.uploaded_by == portal_patient.user
    assert staff_route.status_code == 403
    assert Document.objects.count() == 1


def test_staff_outside_the_policy_get_404_for_the_list_the_upload_and_the_file(
    patient, make_staff, make_institution, media
):
    document = stored(patient)
    files_before = stored_files(media)
    outsider = token_client(make_staff("Doctor", make_institution()))

    assert outsider.get(list_url(patient)).status_code == 404
    assert outsider.get(download_url(document)).status_code == 404
    assert outsider.post(list_url(patient), upload_body(text_bytes(), "x.txt")).status_code == 404
    assert stored_files(media) == files_before and Document.objects.count() == 1


def test_a_visible_patient_without_change_access_gives_403_on_upload(patient, make_staff, superuser, media):
    nurse = make_staff("Nurse")
    services.grant_create(patient=patient, user=nurse, kind="view", granted_by=superuser, reason="Covers nights")
    client = token_client(nurse)

    assert client.get(list_url(patient)).status_code == 200
    response = client.post(list_url(patient), upload_body(text_bytes(), "x.txt"))

    assert response.status_code == 403
    assert Document.objects.count() == 0 and stored_files(media) == []


def test_an_institution_admin_sees_documents_but_may_not_upload(patient, make_staff, doctor, media):
    admin_user = make_staff("Institution Admin", doctor.institution)
    client = token_client(admin_user)

    assert client.get(list_url(patient)).status_code == 200
    assert client.post(list_url(patient), upload_body(text_bytes(), "x.txt")).status_code == 403
    assert stored_files(media) == []


# Auditing ------------------------------------------------------------------------------------------------


def accesses() -> Any:
    return LogEntry.objects.filter(action=LogEntry.Action.ACCESS)


def test_a_download_writes_one_access_entry_with_purpose_and_break_glass_flag(api, clinician, patient):
    document = stored(patient)
    before = set(accesses().values_list("pk", flat=True))

    response = api.get(download_url(document), HTTP_X_PURPOSE_OF_USE="HOPERAT")

    assert response.status_code == 200
    (entry,) = accesses().exclude(pk__in=before)
    assert entry.content_type.model_class() is Document
    assert entry.object_pk == str(document.uuid)
    assert entry.actor_id == clinician.pk
    assert entry.additional_data["purpose_of_use"] == "HOPERAT"
    assert entry.additional_data["break_glass"] is False
    assert entry.additional_data["documents"] == [str(document.uuid)]
    assert entry.additional_data["patient"] == str(patient.uuid)


def test_a_download_through_broken_glass_is_flagged_as_emergency(patient, make_staff, make_institution):
    document = stored(patient)
    emergency = make_staff("Doctor", make_institution())
    services.break_glass_open(user=emergency, patient=patient, reason="Unconscious in the emergency room")
    before = set(accesses().values_list("pk", flat=True))

    assert token_client(emergency).get(download_url(document)).status_code == 200

    (entry,) = accesses().exclude(pk__in=before)
    assert entry.additional_data["purpose_of_use"] == "ETREAT"
    assert entry.additional_data["break_glass"] is True


def test_a_refused_download_writes_no_access_entry(patient, make_staff, make_institution):
    document = stored(patient)
    outsider = token_client(make_staff("Doctor", make_institution()))
    before = accesses().count()

    assert outsider.get(download_url(document)).status_code == 404
    assert accesses().count() == before


def test_a_head_request_on_a_download_is_refused_and_logs_nothing(api, patient, portal_patient, superuser):
    document = stored(patient)
    own = stored(portal_patient)
    admin_url = reverse("admin:clinical_document_download", args=[document.pk])
    before = accesses().count()

    assert api.head(download_url(document)).status_code == 405
    assert login_with_mfa(Client(), superuser).head(admin_url).status_code == 405
    portal = token_client(portal_patient.user)
    assert portal.head(reverse("v1:my-document-download", args=[own.uuid])).status_code == 405
    assert accesses().count() == before


def test_a_list_page_costs_a_fixed_number_of_queries(api, patient, django_assert_max_num_queries):
    for _ in range(3):
        stored(patient)
    api.get(list_url(patient))  # warm-up: the token's last-used stamp

    with django_assert_max_num_queries(12):
        assert len(api.get(list_url(patient)).json()["results"]) == 3
    for _ in range(7):
        stored(patient)
    with django_assert_max_num_queries(12):
        assert len(api.get(list_url(patient)).json()["results"]) == 10


# Admin ------------------------------------------------------------------------------------------------------


def test_the_admin_download_applies_the_policy_and_records_the_access(
    patient, superuser, make_staff, make_institution, staff_client_factory
):
    document = stored(patient, data=b"Admin copy.\n")
    url = reverse("admin:clinical_document_download", args=[document.pk])
    before = accesses().count()

    response = login_with_mfa(Client(), superuser).get(url)

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"Admin copy.\n"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert accesses().count() == before + 1
    outsider = make_staff("Doctor", make_institution())
    assert staff_client_factory(outsider).get(url).status_code == 404
    assert accesses().count() == before + 1


def test_the_admin_change_page_is_read_only_and_links_the_download(patient, superuser):
    document = stored(patient)
    client = login_with_mfa(Client(), superuser)

    page = client.get(reverse("admin:clinical_document_change", args=[document.pk]))
    patient_page = client.get(reverse("admin:clinical_patient_change", args=[patient.pk]))

    download = reverse("admin:clinical_document_download", args=[document.pk])
    assert page.status_code == 200 and not page.context["has_change_permission"]
    assert download in page.content.decode()
    assert download in patient_page.content.decode()
    assert document.storage_key not in page.content.decode()


# Key rotation -----------------------------------------------------------------------------------------------


def test_rotate_keys_reseals_document_files_so_they_open_with_only_the_new_key(
    api, patient, media, settings, django_capture_on_commit_callbacks
):
    old_keys = settings.FIELD_ENCRYPTION_KEYS
    data = pdf_bytes()
    document = Document.objects.get(uuid=api.post(list_url(patient), upload_body(data, "scan.pdf")).json()["id"])
    old_key = document.storage_key
    new_key = new_field_key()

    with (
        override_settings(FIELD_ENCRYPTION_KEYS=f"{new_key},{old_keys}"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        call_command("rotate_keys", batch_size=10)

    with override_settings(FIELD_ENCRYPTION_KEYS=new_key):  # the old key is gone
        document = Document.objects.get(pk=document.pk)
        assert document.storage_key != old_key
        assert [path.relative_to(media).as_posix() for path in stored_files(media)] == [document.storage_key]
        with open_plaintext(default_storage, document.storage_key, document_uuid=document.uuid) as stream:
            assert b"".join(stream) == data
        response = api.get(download_url(document))
        assert response.status_code == 200 and b"".join(response.streaming_content) == data
