"""Text extraction from generated PDFs, images and scans, against the real Tesseract binary.

No database: extraction is a pure function of bytes. The OCR tests need Tesseract installed
(``apt-get install tesseract-ocr tesseract-ocr-eng``); without it they fail, they do not skip.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from clinical import extraction
from clinical.extraction import Extraction, extract

SCANNED_WORDS = "HEMOGLOBIN 13 5"
MISSING_BINARY = "/nonexistent/caretrail/tesseract"


def normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def text_pdf(*lines: str) -> bytes:
    """A hand-written PDF with one page per line, drawn in Helvetica: a real text layer."""
    page_ids = [3 + 2 * index for index in range(len(lines))]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % n for n in page_ids), len(lines)),
    ]
    font_id = 3 + 2 * len(lines)
    for page_id, line in zip(page_ids, lines, strict=True):
        content = b"BT /F1 24 Tf 72 700 Td (%s) Tj ET" % line.encode("ascii")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font_id, page_id + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def text_image(words: str = SCANNED_WORDS) -> Image.Image:
    image = Image.new("RGB", (900, 220), "white")
    ImageDraw.Draw(image).text((60, 70), words, fill="black", font=ImageFont.load_default(size=48))
    return image


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def without_duration(result: Extraction) -> Extraction:
    return dataclasses.replace(result, duration_ms=0)


@pytest.fixture
def no_tesseract(settings: Any) -> None:
    settings.TESSERACT_CMD = MISSING_BINARY


@pytest.fixture
def fake_tesseract(settings: Any, tmp_path: Path) -> Any:
    """Point TESSERACT_CMD at a shell script with the given body."""

    def install(body: str) -> None:
        script = tmp_path / "tesseract"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
        settings.TESSERACT_CMD = str(script)

    return install


def test_tesseract_is_installed_and_reports_its_version() -> None:
    assert extraction.tesseract_available()
    version = extraction.tesseract_version()
    assert version is not None
    assert version[0].isdigit()


def test_it_reads_the_text_layer_of_a_pdf() -> None:
    result = extract(text_pdf("Caretrail lab report 4711"), "application/pdf")

    assert (result.engine, result.status, result.page_count) == ("pypdf", "done", 1)
    assert normalised(result.text) == "caretrail lab report 4711"
    assert result.confidence is None
    assert result.error == ""
    assert result.duration_ms >= 0


def test_it_reads_every_page_of_a_pdf_in_order() -> None:
    result = extract(text_pdf("First page of the report", "Second page of the report"), "application/pdf")

    assert result.page_count == 2
    assert normalised(result.text) == "first page of the report second page of the report"


def test_it_reads_at_most_max_pages_and_says_so() -> None:
    result = extract(
        text_pdf("Page one of three", "Page two of three", "Page three of three"), "application/pdf", max_pages=1
    )

    assert (result.status, result.page_count) == ("done", 3)
    assert normalised(result.text) == "page one of three"
    assert result.error == "read the first 1 of 3 pages"


def test_it_ocrs_a_png_with_text() -> None:
    result = extract(encoded(text_image(), "PNG"), "image/png")

    assert (result.engine, result.status, result.page_count) == ("tesseract", "done", 1)
    assert normalised(result.text) == normalised(SCANNED_WORDS)
    assert result.confidence is not None
    assert 0.5 < result.confidence <= 1


def test_it_ocrs_a_jpeg_with_text() -> None:
    result = extract(encoded(text_image(), "JPEG"), "image/jpeg")

    assert (result.engine, result.status) == ("tesseract", "done")
    assert normalised(result.text) == normalised(SCANNED_WORDS)


def test_it_ocrs_a_transparent_png_as_if_on_white_paper() -> None:
    image = Image.new("RGBA", (900, 220), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((60, 70), SCANNED_WORDS, fill=(0, 0, 0, 255), font=ImageFont.load_default(size=48))

    result = extract(encoded(image, "PNG"), "image/png")

    assert normalised(result.text) == normalised(SCANNED_WORDS)


def test_it_turns_a_sideways_phone_photo_upright_before_ocr() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90° clockwise to view
    sideways = text_image().rotate(90, expand=True)
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", exif=exif)

    result = extract(buffer.getvalue(), "image/jpeg")

    assert normalised(result.text) == normalised(SCANNED_WORDS)


def test_it_falls_back_to_ocr_for_a_scanned_pdf() -> None:
    result = extract(encoded(text_image(), "PDF"), "application/pdf")

    assert (result.engine, result.status, result.page_count) == ("tesseract", "done", 1)
    assert normalised(result.text) == normalised(SCANNED_WORDS)
    assert result.confidence is not None


def test_an_image_without_words_is_empty() -> None:
    result = extract(encoded(Image.new("RGB", (400, 300), "white"), "PNG"), "image/png")

    assert (result.engine, result.status, result.text) == ("tesseract", "empty", "")


def test_a_pdf_with_neither_text_nor_images_is_empty_without_ocr() -> None:
    blank_page = text_pdf("").replace(b"() Tj", b"")

    result = extract(blank_page, "application/pdf")

    assert (result.engine, result.status, result.page_count) == ("pypdf", "empty", 1)


def test_an_image_needs_the_engine(no_tesseract: None) -> None:
    result = extract(encoded(text_image(), "PNG"), "image/png")

    assert (result.engine, result.status, result.text) == ("tesseract", "engine_missing", "")
    assert not extraction.tesseract_available()
    assert extraction.tesseract_version() is None


def test_a_scanned_pdf_is_not_done_without_the_engine(no_tesseract: None) -> None:
    result = extract(encoded(text_image(), "PDF"), "application/pdf")

    assert (result.engine, result.status, result.page_count) == ("tesseract", "engine_missing", 1)


def test_a_text_pdf_needs_no_engine(no_tesseract: None) -> None:
    result = extract(text_pdf("Caretrail lab report 4711"), "application/pdf")

    assert (result.engine, result.status) == ("pypdf", "done")


def test_the_environment_names_the_binary_when_settings_do_not(settings: Any, monkeypatch: Any) -> None:
    del settings.TESSERACT_CMD
    monkeypatch.setenv("TESSERACT_CMD", MISSING_BINARY)

    assert not extraction.tesseract_available()


def test_it_works_without_django_settings() -> None:
    script = (
        "from clinical.extraction import extract, tesseract_available\n"
        "assert tesseract_available()\n"
        "print(extract(b'plain words', 'text/plain').status)\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}

    completed = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, check=False, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "done"


def test_a_corrupt_pdf_fails_without_raising() -> None:
    result = extract(b"%PDF-1.4\nthis is not a real PDF body\n", "application/pdf")

    assert (result.engine, result.status, result.text) == ("pypdf", "failed", "")
    assert result.error
    assert len(result.error) < 80


def test_a_truncated_pdf_fails_without_raising() -> None:
    whole = text_pdf("Caretrail lab report 4711")

    result = extract(whole[: len(whole) // 3], "application/pdf")

    assert (result.status, result.text) == ("failed", "")
    assert "4711" not in result.error


def test_a_corrupt_image_fails_without_raising() -> None:
    result = extract(b"\x89PNG\r\n\x1a\nnot really a png", "image/png")

    assert result.status == "failed"
    assert result.error in ("OSError", "UnidentifiedImageError")


def test_an_ocr_process_that_overruns_its_budget_fails_with_timeout(fake_tesseract: Any) -> None:
    fake_tesseract("sleep 10")

    result = extract(encoded(text_image(), "PNG"), "image/png", timeout_s=0.5)

    assert (result.engine, result.status, result.error) == ("tesseract", "failed", "timeout")
    assert result.duration_ms < 5000


def test_an_ocr_process_that_exits_with_an_error_fails_without_its_output(fake_tesseract: Any) -> None:
    fake_tesseract("echo 'cannot read /tmp/patient-jane-doe.png' >&2; exit 3")

    result = extract(encoded(text_image(), "PNG"), "image/png")

    assert (result.status, result.error) == ("failed", "tesseract exited with status 3")


def test_missing_language_data_is_named_as_such() -> None:
    result = extract(encoded(text_image(), "PNG"), "image/png", ocr_languages="xqz")

    assert (result.status, result.error) == ("failed", "language data missing")


def test_a_language_list_cannot_smuggle_arguments() -> None:
    result = extract(encoded(text_image(), "PNG"), "image/png", ocr_languages="eng --psm 0")

    assert (result.status, result.error) == ("failed", "invalid OCR language list")


def test_plain_text_is_decoded_as_utf8() -> None:
    result = extract("Hämoglobin 13,5 g/dl\n".encode(), "text/plain; charset=utf-8")

    assert (result.engine, result.status, result.page_count) == ("none", "done", None)
    assert result.text == "Hämoglobin 13,5 g/dl\n"


def test_plain_text_that_is_not_utf8_fails() -> None:
    result = extract(b"\xff\xfe\x00broken", "text/plain")

    assert (result.status, result.error) == ("failed", "UnicodeDecodeError")


def test_an_unsupported_type_is_refused() -> None:
    result = extract(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")

    assert (result.engine, result.status, result.text) == ("none", "unsupported", "")


def test_it_reads_paths_and_file_objects_and_leaves_the_file_where_it_was(tmp_path: Path) -> None:
    document = text_pdf("Caretrail lab report 4711")
    path = tmp_path / "report.pdf"
    path.write_bytes(document)
    stream = io.BytesIO(document)

    from_path = extract(path, "application/pdf")
    from_stream = extract(stream, "application/pdf")

    assert normalised(from_path.text) == normalised(from_stream.text) == "caretrail lab report 4711"
    assert stream.tell() == 0
    assert without_duration(extract(stream, "application/pdf")) == without_duration(from_stream)


def test_a_missing_path_fails_without_naming_it(tmp_path: Path) -> None:
    result = extract(tmp_path / "jane-doe-scan.png", "image/png")

    assert (result.status, result.error) == ("failed", "FileNotFoundError")


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        (text_pdf("Caretrail lab report 4711"), "application/pdf"),
        (encoded(text_image(), "PDF"), "application/pdf"),
        (encoded(text_image(), "PNG"), "image/png"),
    ],
    ids=["text-pdf", "scanned-pdf", "png"],
)
def test_running_it_again_gives_the_same_result(document: bytes, content_type: str) -> None:
    first = extract(document, content_type)
    second = extract(document, content_type)

    assert first.status == "done"
    assert without_duration(first) == without_duration(second)
