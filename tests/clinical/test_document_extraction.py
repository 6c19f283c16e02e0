"""A document's text: extracted by a Celery task after upload, stored encrypted, safe to re-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from clinical import services
from clinical.models import DocumentExtraction, ExtractionStatus
from tests.clinical.test_extraction import SCANNED_WORDS, encoded, normalised, text_image, text_pdf

pytestmark = pytest.mark.django_db

PDF_LINE = "Caretrail lab report 4711"


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(root)}},
    }
    return root


def upload(patient: Any, name: str, data: bytes, content_type: str) -> Any:
    return services.document_upload(
        patient=patient,
        upload=SimpleUploadedFile(name, data, content_type=content_type),
        kind="lab_report",
        uploaded_by=None,
    )


def test_an_upload_queues_extraction_after_commit_and_the_task_stores_the_text_encrypted(
    patient, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        document = upload(patient, "report.pdf", text_pdf(PDF_LINE), "application/pdf")
        assert DocumentExtraction.objects.get(document=document).status == ExtractionStatus.PENDING
    assert len(callbacks) == 1
    extraction = DocumentExtraction.objects.get(document=document)
    assert (extraction.status, extraction.engine, extraction.page_count) == ("done", "pypdf", 1)
    assert PDF_LINE in extraction.text
    with connection.cursor() as cursor:
        cursor.execute("SELECT e::text FROM clinical_documentextraction e WHERE id = %s", [extraction.pk])
        assert "4711" not in cursor.fetchone()[0]


def test_an_image_is_read_by_tesseract(patient) -> None:
    document = upload(patient, "scan.png", encoded(text_image(), "PNG"), "image/png")
    extraction = services.document_extract(document=document)
    assert (extraction.status, extraction.engine) == ("done", "tesseract")
    assert normalised(SCANNED_WORDS) in normalised(extraction.text)
    assert 0 < extraction.confidence <= 1


def test_without_tesseract_the_extraction_says_so(patient, monkeypatch) -> None:
    monkeypatch.setenv("TESSERACT_CMD", "/nonexistent/tesseract")
    document = upload(patient, "scan.png", encoded(text_image(), "PNG"), "image/png")
    extraction = services.document_extract(document=document)
    assert (extraction.status, extraction.engine, extraction.text) == ("engine_missing", "tesseract", None)


def test_re_running_keeps_one_row_with_the_same_text(patient) -> None:
    document = upload(patient, "report.pdf", text_pdf(PDF_LINE), "application/pdf")
    first = services.document_extract(document=document)
    second = services.document_extract(document=document)
    assert first.pk == second.pk
    assert (second.runs, second.text) == (2, first.text)
    assert DocumentExtraction.objects.filter(document=document).count() == 1


def test_a_file_that_no_longer_decrypts_is_recorded_as_failed_not_raised(patient, media) -> None:
    document = upload(patient, "report.pdf", text_pdf(PDF_LINE), "application/pdf")
    stored = media / document.storage_key
    data = bytearray(stored.read_bytes())
    data[-5] ^= 0x01
    stored.write_bytes(bytes(data))
    extraction = services.document_extract(document=document)
    assert extraction.status == "failed"
    assert extraction.text is None
    assert "4711" not in extraction.error
