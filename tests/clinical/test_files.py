"""Documents' files: checked by content, encrypted before storage, on disk and in an S3 bucket.

The S3 tests talk to a real S3-compatible server (moto in server mode) on
127.0.0.1 with dummy credentials; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, Storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from moto.server import ThreadedMotoServer
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pypdf import PdfWriter
from storages.backends.s3 import S3Storage

from accounts.encryption import DecryptionError, keyring
from accounts.rotation import Tally, register_rotators, rotate_keys, unregister_rotators
from clinical.files import (
    FileRejected,
    FileRotator,
    decrypt_stream,
    encrypt_stream,
    inspect,
    open_plaintext,
    reseal,
    sealed_key_id,
    store,
)
from clinical.files import inspection as inspection_module
from config.embedded import new_field_key

MARKER = b"CaretrailPhiMarker7f3a"  # stands for PHI: must never be readable in storage
MIB = 1024 * 1024
KEY_PATTERN = re.compile(r"documents/[0-9a-f]{2}/[0-9a-f]{32}\.ctf")


# Files made in code ----------------------------------------------------------------------------


def pdf_bytes(*, pages: int = 1, password: str | None = None) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    writer.add_metadata({"/Title": MARKER.decode()})
    if password:
        writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png_bytes(size: tuple[int, int] = (64, 48), *, noise: bool = False) -> bytes:
    if noise:
        image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, (200, 30, 30))
    info = PngInfo()
    info.add_text("Comment", MARKER.decode())
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def jpeg_bytes(size: tuple[int, int] = (320, 240)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(out, "JPEG", quality=90, comment=MARKER)
    return out.getvalue()


def text_bytes(approximate_size: int = 2000) -> bytes:
    line = MARKER + b" Blood pressure 120/80 mmHg, pulse 72/min; follow-up in 3 months (< 5 mg daily).\n"
    return line * max(1, approximate_size // len(line))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels; nothing that size is ever allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
        + png_chunk(b"IEND", b"")
    )


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("Main.class", b"\xca\xfe\xba\xbe payload")
    return out.getvalue()


def pdf_with_zip_inside() -> bytes:
    """A PDF that is also a valid ZIP (JAR): the archive sits just before the final %%EOF."""
    pdf = pdf_bytes()
    end = pdf.rindex(b"%%EOF")
    return pdf[:end] + zip_bytes() + b"\n%%EOF\n"


def upload(data: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


# Keys, storages and the S3 server ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def field_keys() -> Iterator[str]:
    spec = new_field_key()
    with override_settings(FIELD_ENCRYPTION_KEYS=spec):
        yield spec


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port), with dummy credentials and no way out."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@dataclass
class Backend:
    """A storage under test, and raw access to what it holds (bypassing the code under test)."""

    name: str
    storage: Storage
    list_keys: Callable[[], set[str]]
    read_raw: Callable[[str], bytes]
    write_raw: Callable[[str, bytes], None]


def filesystem_backend(root: Path) -> Backend:
    root.mkdir(parents=True, exist_ok=True)

    def list_keys() -> set[str]:
        return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}

    def write_raw(key: str, data: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    return Backend(
        "filesystem", FileSystemStorage(location=str(root)), list_keys, lambda key: (root / key).read_bytes(), write_raw
    )


def s3_backend(endpoint: str) -> Backend:
    bucket = f"caretrail-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    storage = S3Storage(
        bucket_name=bucket,
        endpoint_url=endpoint,
        access_key="testing",
        secret_key="testing",
        region_name="us-east-1",
        file_overwrite=False,
        default_acl=None,
        querystring_expire=60,
    )

    def list_keys() -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {entry["Key"] for page in pages for entry in page.get("Contents", [])}

    def read_raw(key: str) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def write_raw(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)

    return Backend("s3", storage, list_keys, read_raw, write_raw)


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "filesystem":
        return filesystem_backend(tmp_path / "media")
    return s3_backend(request.getfixturevalue("s3_endpoint"))


def plaintext_of(backend: Backend, key: str, document_uuid: uuid.UUID) -> bytes:
    with open_plaintext(backend.storage, key, document_uuid=document_uuid) as stream:
        return b"".join(stream)


# Inspection: what is accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name", "content_type", "extension"),
    [
        (pdf_bytes, "lab-report.pdf", "application/pdf", "pdf"),
        (png_bytes, "photo.PNG", "image/png", "png"),
        (jpeg_bytes, "scan.jpeg", "image/jpeg", "jpg"),
        (jpeg_bytes, "scan.jpg", "image/jpeg", "jpg"),
        (text_bytes, "notes.txt", "text/plain", "txt"),
        (pdf_bytes, "no-extension", "application/pdf", "pdf"),
        (text_bytes, "", "text/plain", "txt"),
    ],
)
def test_it_accepts_each_allowed_type_and_reports_what_the_bytes_are(make, name, content_type, extension):
    data = make()
    inspected = inspect(upload(data, name) if name else io.BytesIO(data))
    assert (inspected.content_type, inspected.extension) == (content_type, extension)
    assert inspected.size == len(data)
    assert inspected.sha256 == hashlib.sha256(data).hexdigest()


def test_it_accepts_utf8_text_with_a_byte_order_mark_and_non_ascii_letters():
    data = "\ufeffPatientin klagt über Schwindel; Blutdruck 120/80.\nरक्तचाप सामान्य है।\n".encode()
    assert inspect(upload(data, "notiz.txt")).content_type == "text/plain"


def test_it_accepts_a_jpeg_with_harmless_data_after_its_end():
    # Phones append a second picture or a video after EOI; only markup or another format there is refused.
    data = jpeg_bytes() + jpeg_bytes((16, 16))
    assert inspect(upload(data, "photo.jpg")).content_type == "image/jpeg"


def test_it_reads_a_non_seekable_stream():
    class OneWay(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._source = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            data = self._source.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)

    data = png_bytes()
    assert inspect(OneWay(data), name="x.png").sha256 == hashlib.sha256(data).hexdigest()


# Inspection: what is refused, and how it is said ---------------------------------------------------


def rejection(data: bytes, name: str) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        inspect(upload(data, name))
    return caught.value


def test_a_rejection_is_a_validation_error_on_the_file_field_without_the_file_name():
    error = rejection(png_bytes(), "Jane_Doe_HIV_result.pdf")
    assert isinstance(error, ValidationError)
    assert error.field == "file"
    assert error.code == "extension_mismatch"
    assert error.message_dict == {"file": [error.message]} == error.as_dict()
    assert error.message == "The file name ends in .pdf, but the file is a PNG image."
    assert "Jane" not in str(error.message) and "HIV" not in str(error.message)


def test_it_refuses_an_empty_file():
    assert rejection(b"", "empty.txt").code == "empty"


def test_it_refuses_a_file_over_the_configured_limit():
    with override_settings(DOCUMENT_MAX_BYTES=1000):
        error = rejection(text_bytes(2000), "notes.txt")
        assert inspect(upload(text_bytes(900), "notes.txt")).size <= 1000
    assert error.code == "too_large"
    assert "1000 bytes" in str(error.message)


def test_the_default_limit_is_20_mb_and_an_oversized_file_is_not_read_to_its_end(settings):
    if hasattr(settings, "DOCUMENT_MAX_BYTES"):
        del settings.DOCUMENT_MAX_BYTES  # the fallback is what this test is about

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, size: int | None = -1, /) -> bytes:
            data = super().read(size)
            Counting.read_bytes += len(data)
            return data

    data = Counting(b"a" * (20 * MIB + 1))
    data.name = "notes.txt"  # type: ignore[attr-defined]
    with pytest.raises(FileRejected) as caught:
        inspect(data)
    assert caught.value.code == "too_large"
    assert "20 MB" in str(caught.value.message)
    assert Counting.read_bytes <= 20 * MIB + 64 * 1024
    assert inspect(upload(b"a" * (20 * MIB), "notes.txt")).size == 20 * MIB


@pytest.mark.parametrize(
    ("make", "name", "shown", "actual"),
    [
        (png_bytes, "scan.pdf", ".pdf", "a PNG image"),
        (pdf_bytes, "report.txt", ".txt", "a PDF document"),
        (jpeg_bytes, "photo.png", ".png", "a JPEG image"),
        (text_bytes, "notes.pdf", ".pdf", "a plain text file"),
    ],
)
def test_it_refuses_a_file_whose_extension_lies_about_its_content(make, name, shown, actual):
    error = rejection(make(), name)
    assert error.code == "extension_mismatch"
    assert error.message == f"The file name ends in {shown}, but the file is {actual}."


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", "page.html"),
        (b"<html><body>results</body></html>", "results.txt"),
        (b"  \n<script>fetch('/api/v1/me')</script>", "notes.txt"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "a.svg"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "chart.png"),
        (b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg'></svg>", "chart.txt"),
    ],
)
def test_it_refuses_html_and_svg(data, name):
    error = rejection(data, name)
    assert error.code == "markup"
    assert "HTML, SVG" in str(error.message)


@pytest.mark.parametrize(
    "data",
    [
        b"Follow-up visit notes.\nAll fine.\n<script>document.location='https://evil.example/'</script>\n",
        b"Results attached.\n" * 500 + b"<iframe src=x></iframe>",
        b"Results attached.\n" * 5000 + b"<SVG onload=alert(1)>",  # past the first read, in another case
        b"Looks like text, but\n" * 100 + b"%PDF-1.4\n1 0 obj<<>>endobj\n",  # past the 1024 bytes a PDF reader scans
    ],
)
def test_it_refuses_plain_text_that_carries_markup_or_another_files_header(data):
    assert rejection(data, "notes.txt").code == "markup"


@pytest.mark.parametrize(
    ("make", "name"), [(pdf_bytes, "report.exe"), (text_bytes, "notes.csv"), (png_bytes, "x.p\u00e9g")]
)
def test_it_refuses_an_extension_outside_the_allow_list(make, name):
    error = rejection(make(), name)
    assert error.code == "unsupported_extension"
    assert str(error.message).startswith("Files ending in ")
    assert "\u00e9" not in str(error.message)


def test_it_accepts_text_that_mentions_angle_brackets_without_markup():
    data = b"Dose <5 mg if eGFR < 30; a<b and c>d.\n<patient refused>\n"
    assert inspect(upload(data, "notes.txt")).content_type == "text/plain"


@pytest.mark.parametrize(
    ("data", "name", "code"),
    [
        (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04", "anim.gif", "unsupported_type"),
        (zip_bytes(), "archive.zip", "unsupported_type"),
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff", "setup.exe", "unsupported_type"),
        ("Café au lait".encode("latin-1"), "notes.txt", "not_utf8"),
        (b"abc\x00def", "notes.txt", "binary_text"),
    ],
)
def test_it_refuses_other_types_and_text_that_is_not_clean_utf8(data, name, code):
    assert rejection(data, name).code == code


def test_it_refuses_a_password_protected_pdf():
    assert rejection(pdf_bytes(password="secret"), "locked.pdf").code == "encrypted_pdf"


@pytest.mark.parametrize(
    ("cut", "name"),
    [
        (lambda data: data[: len(data) // 2], "report.pdf"),
        (lambda data: data[: data.rindex(b"%%EOF")], "report.pdf"),
        (lambda data: data.replace(b"/Type /Pages", b"/Type /Broken"), "report.pdf"),
    ],
    ids=["half", "no-eof-marker", "broken-page-tree"],
)
def test_it_refuses_a_truncated_or_broken_pdf(cut, name):
    error = rejection(cut(pdf_bytes()), name)
    assert error.code == "damaged"
    assert error.message == "The PDF file is incomplete or damaged."


@pytest.mark.parametrize(
    ("make", "cut", "name", "kind"),
    [
        (png_bytes, lambda data: data[:-12], "photo.png", "PNG"),  # no IEND
        (png_bytes, lambda data: data[: len(data) // 2], "photo.png", "PNG"),
        (lambda: png_bytes(noise=True), lambda data: data[:-200] + data[-12:], "photo.png", "PNG"),  # IDAT cut
        (png_bytes, lambda data: data[:33] + data[-12:], "photo.png", "PNG"),  # no image data at all
        (jpeg_bytes, lambda data: data[:-2], "photo.jpg", "JPEG"),  # no EOI
        (jpeg_bytes, lambda data: data[: len(data) * 2 // 3], "photo.jpg", "JPEG"),
        (jpeg_bytes, lambda data: data[:40], "photo.jpg", "JPEG"),
    ],
)
def test_it_refuses_a_truncated_image(make, cut, name, kind):
    error = rejection(cut(make()), name)
    assert error.code == "damaged"
    assert error.message == f"The {kind} file is incomplete or damaged."


def test_it_refuses_a_decompression_bomb_from_its_header_alone():
    bomb = png_claiming(100_000, 100_000)  # 10 gigapixels claimed, 30 GB once decoded; the file is tiny
    assert len(bomb) < 1000
    error = rejection(bomb, "bomb.png")
    assert error.code == "too_many_pixels"
    assert error.message == "The image is too large: at most 50 megapixels are accepted."


def test_it_refuses_an_image_over_50_megapixels_that_pillow_alone_would_open():
    assert Image.MAX_IMAGE_PIXELS * 2 > 8000 * 7000  # below Pillow's own hard limit
    assert rejection(png_claiming(8000, 7000), "big.png").code == "too_many_pixels"


def test_pillows_decompression_bomb_warning_is_a_rejection(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 40 = 1600: a warning, not Pillow's error
    assert rejection(png_bytes((40, 40)), "photo.png").code == "too_many_pixels"


def test_it_decodes_a_large_image_only_after_the_header_check(monkeypatch):
    decoded: list[str] = []
    real = inspection_module._decode_image
    monkeypatch.setattr(inspection_module, "_decode_image", lambda *args: decoded.append("x") or real(*args))
    rejection(png_claiming(100_000, 100_000), "bomb.png")
    assert decoded == []


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (pdf_with_zip_inside(), "report.pdf"),
        (pdf_bytes() + zip_bytes(), "report.pdf"),
        (pdf_bytes() + b"<html><script>alert(1)</script></html>", "report.pdf"),
        (b"GARBAGE HEADER\n" + pdf_bytes(), "report.pdf"),
        (b"<html><body>hi</body></html>\n" + pdf_bytes(), "report.pdf"),
        (png_bytes() + pdf_bytes(), "photo.png"),
        (png_bytes() + b"<script>alert(1)</script>", "photo.png"),
        (png_bytes() + zip_bytes(), "photo.png"),
        (jpeg_bytes() + b"<script>alert(1)</script>", "photo.jpg"),
        (jpeg_bytes() + b"\x00" * 70_000 + b"<ScRiPt>alert(1)</script>", "photo.jpg"),
        (jpeg_bytes() + pdf_bytes(), "photo.jpg"),
        (jpeg_bytes() + zip_bytes(), "photo.jpg"),
    ],
    ids=[
        "pdf-that-is-a-jar",
        "pdf-then-zip",
        "pdf-then-html",
        "junk-before-pdf-header",
        "html-before-pdf-header",
        "png-then-pdf",
        "png-then-script",
        "png-then-zip",
        "jpeg-then-script",
        "jpeg-then-script-further-on",
        "jpeg-then-pdf",
        "jpeg-then-zip",
    ],
)
def test_it_refuses_a_polyglot(data, name):
    error = rejection(data, name)
    assert error.code == "polyglot"
    assert "not accepted" in str(error.message)


# The CTF1 format ----------------------------------------------------------------------------------


def seal(data: bytes, document: uuid.UUID, chunk_size: int = 16) -> bytes:
    return b"".join(encrypt_stream(io.BytesIO(data), document_uuid=document, chunk_size=chunk_size))


def unseal(sealed: bytes, document: uuid.UUID) -> bytes:
    return b"".join(decrypt_stream(io.BytesIO(sealed), document_uuid=document))


def split(sealed: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the records (length, nonce and ciphertext each) of a CTF1 file."""
    header_length = 4 + 1 + sealed[4] + 16
    records, position = [], header_length
    while position < len(sealed):
        (length,) = struct.unpack(">I", sealed[position : position + 4])
        end = position + 4 + 12 + length
        records.append(sealed[position:end])
        position = end
    return sealed[:header_length], records


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 48, 1000])
def test_sealed_bytes_open_to_the_same_plaintext_at_every_size(size):
    document = uuid.uuid4()
    data = os.urandom(size)
    sealed = seal(data, document)
    assert unseal(sealed, document) == data
    header, records = split(sealed)
    assert header.startswith(b"CTF1")
    assert len(records) == max(1, -(-size // 16))  # always one record, the last possibly short or empty


def test_the_header_names_the_primary_key_and_each_sealing_is_different(field_keys):
    document = uuid.uuid4()
    first, second = seal(MARKER, document), seal(MARKER, document)
    assert sealed_key_id(io.BytesIO(first)) == field_keys.split(":")[0] == keyring().primary_id
    assert first != second
    assert MARKER not in first


def tampered_variants(document: uuid.UUID) -> dict[str, tuple[bytes, uuid.UUID]]:
    data = bytes(range(256)) * 4  # 1024 bytes: 64 records of 16
    sealed = seal(data, document)
    header, records = split(sealed)
    other_header, other_records = split(seal(data, document))  # same document, same plaintext, another sealing
    flipped = bytearray(sealed)
    flipped[len(header) + 4 + 12 + 3] ^= 0x01
    swapped = [records[1], records[0], *records[2:]]
    key_id_changed = bytearray(sealed)
    key_id_changed[5] ^= 0x01
    return {
        "flip-a-byte": (bytes(flipped), document),
        "flip-the-file-id": (header[:-1] + bytes([header[-1] ^ 1]) + b"".join(records), document),
        "drop-the-last-chunk": (header + b"".join(records[:-1]), document),
        "drop-a-middle-chunk": (header + b"".join(records[:10] + records[11:]), document),
        "swap-two-chunks": (header + b"".join(swapped), document),
        "repeat-a-chunk": (header + b"".join([*records[:5], records[4], *records[5:]]), document),
        "splice-a-chunk-from-another-file": (
            header + b"".join([*records[:3], other_records[3], *records[4:]]),
            document,
        ),
        "another-files-header": (other_header + b"".join(records), document),
        "append-a-chunk": (sealed + other_records[-1], document),
        "cut-inside-a-chunk": (sealed[:-5], document),
        "cut-inside-the-header": (sealed[:7], document),
        "only-the-header": (header, document),
        "key-id-changed": (bytes(key_id_changed), document),
        "another-document": (sealed, uuid.uuid4()),
        "not-ctf": (b"%PDF-1.7 plain file", document),
    }


@pytest.mark.parametrize(
    "variant",
    [
        "flip-a-byte",
        "flip-the-file-id",
        "drop-the-last-chunk",
        "drop-a-middle-chunk",
        "swap-two-chunks",
        "repeat-a-chunk",
        "splice-a-chunk-from-another-file",
        "another-files-header",
        "append-a-chunk",
        "cut-inside-a-chunk",
        "cut-inside-the-header",
        "only-the-header",
        "key-id-changed",
        "another-document",
        "not-ctf",
    ],
)
def test_any_change_to_the_sealed_bytes_fails_to_open(variant):
    document = uuid.uuid4()
    sealed, opened_as = tampered_variants(document)[variant]
    with pytest.raises(DecryptionError):
        unseal(sealed, opened_as)


def test_a_file_sealed_under_a_key_that_is_no_longer_configured_does_not_open():
    document = uuid.uuid4()
    sealed = seal(MARKER, document)
    with override_settings(FIELD_ENCRYPTION_KEYS=new_field_key()), pytest.raises(DecryptionError, match="no key"):
        unseal(sealed, document)


def test_reseal_moves_a_file_to_the_new_primary_key(field_keys):
    document = uuid.uuid4()
    data = os.urandom(100_000)
    old = seal(data, document, chunk_size=4096)
    new_key = new_field_key()
    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new_key},{field_keys}"):
        resealed = b"".join(reseal(io.BytesIO(old), document_uuid=document))
    assert sealed_key_id(io.BytesIO(resealed)) == new_key.split(":")[0]
    with override_settings(FIELD_ENCRYPTION_KEYS=new_key):
        assert unseal(resealed, document) == data


def test_reseal_of_a_tampered_file_fails_before_producing_a_complete_file():
    document = uuid.uuid4()
    sealed = seal(os.urandom(1000), document)
    header, records = split(sealed)
    produced: list[bytes] = []
    with pytest.raises(DecryptionError):
        produced.extend(reseal(io.BytesIO(header + b"".join(records[:-1])), document_uuid=document))
    # Whatever was produced lacks its final record, so it does not open either.
    with pytest.raises(DecryptionError):
        unseal(b"".join(produced), document)


# Storage: the filesystem directory and the S3 bucket ------------------------------------------------


def test_a_stored_file_comes_back_as_it_was_and_is_not_readable_in_storage(backend):
    document = uuid.uuid4()
    data = pdf_bytes(pages=3)
    assert MARKER in data
    stored = store(backend.storage, upload(data, "Jane Doe lab report.pdf"), document_uuid=document)

    assert (stored.size, stored.sha256, stored.content_type) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
        "application/pdf",
    )
    assert stored.original_name == "Jane Doe lab report.pdf"
    assert backend.list_keys() == {stored.key}
    raw = backend.read_raw(stored.key)
    assert raw.startswith(b"CTF1")
    assert MARKER not in raw and b"%PDF" not in raw
    assert plaintext_of(backend, stored.key, document) == data


@pytest.mark.parametrize(
    ("make", "name"),
    [(lambda: text_bytes(3 * MIB), "notes.txt"), (lambda: png_bytes((1024, 1024), noise=True), "scan.png")],
)
def test_a_large_file_is_stored_and_streamed_back_in_many_chunks(backend, make, name):
    document = uuid.uuid4()
    data = make()
    assert len(data) > 2 * MIB
    stored = store(backend.storage, upload(data, name), document_uuid=document)

    raw = backend.read_raw(stored.key)
    assert len(split(raw)[1]) == -(-len(data) // (64 * 1024))
    assert MARKER not in raw
    with open_plaintext(backend.storage, stored.key, document_uuid=document) as stream:
        pieces = list(stream)
    assert len(pieces) > 30 and max(len(piece) for piece in pieces) == 64 * 1024
    assert b"".join(pieces) == data


def test_the_storage_key_is_random_and_never_the_users_file_name(backend):
    document = uuid.uuid4()
    data = png_bytes()
    first = store(backend.storage, upload(data, "jane-doe-rash.png"), document_uuid=document)
    second = store(backend.storage, upload(data, "jane-doe-rash.png"), document_uuid=document)

    for stored in (first, second):
        assert KEY_PATTERN.fullmatch(stored.key)
        assert "jane" not in stored.key and "rash" not in stored.key
    assert first.key != second.key
    assert backend.read_raw(first.key) != backend.read_raw(second.key)
    assert backend.list_keys() == {first.key, second.key}


def test_the_original_name_loses_paths_and_control_characters(backend):
    stored = store(
        backend.storage,
        upload(png_bytes(), "x.png"),
        name="C:\\Users\\jd\\photo\u202egnp.png",
        document_uuid=uuid.uuid4(),
    )
    assert stored.original_name == "photognp.png"


BAD_FILES = {
    "empty": (b"", "empty.txt", "empty"),
    "too-large": (text_bytes(5000), "notes.txt", "too_large"),
    "extension-lies": (png_bytes(), "report.pdf", "extension_mismatch"),
    "html": (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "page.html", "markup"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image.svg", "markup"),
    "truncated-pdf": (pdf_bytes()[:-200], "report.pdf", "damaged"),
    "truncated-png": (png_bytes()[:-12], "photo.png", "damaged"),
    "truncated-jpeg": (jpeg_bytes()[:-500], "photo.jpg", "damaged"),
    "decompression-bomb": (png_claiming(100_000, 100_000), "bomb.png", "too_many_pixels"),
    "polyglot-pdf-jar": (pdf_with_zip_inside(), "report.pdf", "polyglot"),
    "polyglot-png-pdf": (png_bytes() + pdf_bytes(), "photo.png", "polyglot"),
    "polyglot-jpeg-script": (jpeg_bytes() + b"<script>alert(1)</script>", "photo.jpg", "polyglot"),
}


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_each_bad_file_is_refused_with_nothing_left_in_storage(backend, bad):
    data, name, code = BAD_FILES[bad]
    before = backend.list_keys()
    limit = 4096 if bad == "too-large" else 20 * MIB
    with override_settings(DOCUMENT_MAX_BYTES=limit), pytest.raises(FileRejected) as caught:
        store(backend.storage, upload(data, name), document_uuid=uuid.uuid4())
    assert caught.value.code == code
    assert caught.value.message_dict == {"file": [caught.value.message]}
    assert backend.list_keys() == before == set()


class BreaksWhileWriting(File):
    """Hands the storage its first piece, then fails like a full disk or a dropped connection."""

    def __init__(self, wrapped: File) -> None:
        super().__init__(wrapped.file, wrapped.name)
        self.reads = 0

    def read(self, *args: Any) -> Any:
        self.reads += 1
        if self.reads > 1:
            raise OSError("No space left on device")
        return super().read(*args)


def test_a_failure_while_writing_leaves_nothing_in_storage(backend, monkeypatch):
    real_save = backend.storage._save  # type: ignore[attr-defined]
    monkeypatch.setattr(backend.storage, "_save", lambda name, content: real_save(name, BreaksWhileWriting(content)))
    with pytest.raises(OSError, match="No space"):
        store(backend.storage, upload(text_bytes(3 * MIB), "notes.txt"), document_uuid=uuid.uuid4())
    assert backend.list_keys() == set()


def test_tampering_in_storage_is_detected_while_streaming(backend):
    document = uuid.uuid4()
    data = text_bytes(300_000)
    stored = store(backend.storage, upload(data, "notes.txt"), document_uuid=document)
    raw = bytearray(backend.read_raw(stored.key))
    raw[len(raw) // 2] ^= 0x40
    backend.write_raw(stored.key, bytes(raw))

    with pytest.raises(DecryptionError), open_plaintext(backend.storage, stored.key, document_uuid=document) as stream:
        b"".join(stream)


def test_dropping_the_last_chunk_in_storage_is_detected(backend):
    document = uuid.uuid4()
    stored = store(backend.storage, upload(text_bytes(300_000), "notes.txt"), document_uuid=document)
    header, records = split(backend.read_raw(stored.key))
    backend.write_raw(stored.key, header + b"".join(records[:-1]))
    with pytest.raises(DecryptionError):
        plaintext_of(backend, stored.key, document)


def test_a_file_cannot_be_opened_as_another_documents_file(backend):
    stored = store(backend.storage, upload(png_bytes(), "photo.png"), document_uuid=uuid.uuid4())
    with pytest.raises(DecryptionError):
        plaintext_of(backend, stored.key, uuid.uuid4())


def test_s3_downloads_stream_the_object_instead_of_loading_it_whole(s3_endpoint, monkeypatch):
    # django-storages' S3File downloads the whole object into memory before the first read.
    backend = s3_backend(s3_endpoint)
    document = uuid.uuid4()
    data = text_bytes(MIB)
    stored = store(backend.storage, upload(data, "notes.txt"), document_uuid=document)
    monkeypatch.setattr(backend.storage, "open", lambda *args, **kwargs: pytest.fail("S3File was used"))
    assert plaintext_of(backend, stored.key, document) == data


def test_opening_a_missing_file_fails_before_streaming(backend):
    with pytest.raises(FileNotFoundError):
        open_plaintext(backend.storage, "documents/00/" + "0" * 32 + ".ctf", document_uuid=uuid.uuid4())


def test_a_plain_object_in_storage_is_refused_at_open(backend):
    backend.write_raw("documents/ab/" + "a" * 32 + ".ctf", pdf_bytes())
    with pytest.raises(DecryptionError, match="not an encrypted"):
        open_plaintext(backend.storage, "documents/ab/" + "a" * 32 + ".ctf", document_uuid=uuid.uuid4())


# Key rotation -------------------------------------------------------------------------------------


@dataclass
class DocumentTable:
    """Stands in for clinical.Document's (uuid, storage_key) column until the model exists."""

    keys: dict[uuid.UUID, str]
    refuse: set[uuid.UUID]

    def files(self) -> list[tuple[str, uuid.UUID]]:
        return [(key, document) for document, key in self.keys.items()]

    def relink(self, document: uuid.UUID | str, old_key: str, new_key: str) -> bool:
        document = uuid.UUID(str(document))
        if document in self.refuse or self.keys.get(document) != old_key:
            return False
        self.keys[document] = new_key
        return True


@pytest.fixture
def stored_under_old_key(backend: Backend, field_keys: str) -> tuple[DocumentTable, dict[uuid.UUID, bytes]]:
    contents = {uuid.uuid4(): pdf_bytes(), uuid.uuid4(): png_bytes(), uuid.uuid4(): text_bytes(200_000)}
    names = ["report.pdf", "photo.png", "notes.txt"]
    table = DocumentTable({}, set())
    for (document, data), name in zip(contents.items(), names, strict=True):
        table.keys[document] = store(backend.storage, upload(data, name), document_uuid=document).key
    return table, contents


def rotator_for(backend: Backend, table: DocumentTable) -> FileRotator:
    return FileRotator(storage=backend.storage, files=table.files, relink=table.relink)


@pytest.mark.django_db
def test_rotation_reseals_every_file_under_the_new_key(
    backend, stored_under_old_key, field_keys, django_capture_on_commit_callbacks
):
    table, contents = stored_under_old_key
    old_keys = set(table.keys.values())
    new_key = new_field_key()
    rotator = rotator_for(backend, table)
    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new_key},{field_keys}"):
        assert rotator.tally(keyring()) == Tally("clinical_document", "storage_key", current=0, outdated=3)
        advanced: list[int] = []
        with django_capture_on_commit_callbacks(execute=True):
            report = rotator.rotate(keyring(), batch_size=2, advance=advanced.append)
        assert (report.resealed, report.failures, report.changed, advanced) == (3, [], [], [2, 1])
        assert rotator.tally(keyring()).current == 3
        with django_capture_on_commit_callbacks(execute=True):
            again = rotator.rotate(keyring(), batch_size=2, advance=advanced.append)
        assert again.resealed == 0  # a second run finds nothing to do

    assert backend.list_keys() == set(table.keys.values())
    assert not old_keys & backend.list_keys()
    with override_settings(FIELD_ENCRYPTION_KEYS=new_key):  # the old key is gone
        for document, data in contents.items():
            raw = backend.read_raw(table.keys[document])
            assert raw.startswith(b"CTF1") and MARKER not in raw
            assert plaintext_of(backend, table.keys[document], document) == data


@pytest.mark.django_db
def test_rotation_runs_in_rotate_keys_once_registered(
    backend, stored_under_old_key, field_keys, django_capture_on_commit_callbacks
):
    table, contents = stored_under_old_key
    new_key = new_field_key()

    def factory() -> list[FileRotator]:
        # Named apart from the project's own document rotator, which is registered too.
        return [FileRotator(storage=backend.storage, files=table.files, relink=table.relink, table="test_documents")]

    register_rotators(factory)
    try:
        with (
            override_settings(FIELD_ENCRYPTION_KEYS=f"{new_key},{field_keys}"),
            django_capture_on_commit_callbacks(execute=True),
        ):
            report = rotate_keys(batch_size=2)
    finally:
        unregister_rotators(factory)
    files = [target for target in report.targets if target.table == "test_documents"]
    assert len(files) == 1 and files[0].resealed == 3
    with override_settings(FIELD_ENCRYPTION_KEYS=new_key):
        for document, data in contents.items():
            assert plaintext_of(backend, table.keys[document], document) == data


@pytest.mark.django_db
def test_rotation_reports_a_tampered_file_and_leaves_a_changed_document_alone(
    backend, stored_under_old_key, field_keys, django_capture_on_commit_callbacks
):
    table, contents = stored_under_old_key
    tampered, changed, fine = list(contents)
    raw = bytearray(backend.read_raw(table.keys[tampered]))
    raw[-3] ^= 0x01
    backend.write_raw(table.keys[tampered], bytes(raw))
    table.refuse.add(changed)  # the application moved this document meanwhile
    before = dict(table.keys)

    with (
        override_settings(FIELD_ENCRYPTION_KEYS=f"{new_field_key()},{field_keys}"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        report = rotator_for(backend, table).rotate(keyring(), batch_size=10, advance=lambda n: None)

    assert [(failure.pk, failure.reason) for failure in report.failures] == [
        (str(tampered), "wrong key or tampered file")
    ]
    assert report.changed == [str(changed)]
    assert report.resealed == 1
    assert table.keys[tampered] == before[tampered] and table.keys[changed] == before[changed]
    assert table.keys[fine] != before[fine]
    # No object is left over: the two untouched originals and the one new file.
    assert backend.list_keys() == set(table.keys.values())


@pytest.mark.django_db
def test_rotation_keeps_old_files_when_the_database_step_fails(backend, stored_under_old_key, field_keys):
    table, _ = stored_under_old_key
    before = set(backend.list_keys())

    def broken_relink(document: uuid.UUID | str, old_key: str, new_key: str) -> bool:
        raise RuntimeError("database went away")

    rotator = FileRotator(storage=backend.storage, files=table.files, relink=broken_relink)
    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new_field_key()},{field_keys}"), pytest.raises(RuntimeError):
        rotator.rotate(keyring(), batch_size=10, advance=lambda n: None)
    assert backend.list_keys() == before


def test_content_file_uploads_work_too(backend):
    document = uuid.uuid4()
    data = jpeg_bytes()
    stored = store(backend.storage, ContentFile(data, name="photo.jpg"), document_uuid=document)
    assert plaintext_of(backend, stored.key, document) == data


# The whole path on S3: API upload, the prescription PDF task, API download ----------------------


@pytest.mark.django_db
def test_documents_and_prescription_pdfs_go_through_an_s3_bucket_end_to_end(
    s3_endpoint, roles, doctor, patient, django_capture_on_commit_callbacks
):
    """With the default storage on S3, the API's upload and download and the PDF task use the bucket;
    the bucket holds only sealed objects."""
    from django.test import Client
    from django.urls import reverse

    from accounts.services import api_token_create
    from clinical import prescriptions
    from clinical.models import AppointmentStatus, Document
    from tests.clinical.care import medication, visit

    s3 = s3_backend(s3_endpoint)
    options = {
        "bucket_name": s3.storage.bucket_name,
        "endpoint_url": s3_endpoint,
        "access_key": "testing",
        "secret_key": "testing",
        "region_name": "us-east-1",
        "file_overwrite": False,
        "default_acl": None,
    }
    storages = {
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    from django.contrib.auth.models import Group

    doctor_user = doctor.user
    doctor_user.groups.add(Group.objects.get(name="Doctor"))
    _token, secret = api_token_create(user=doctor_user)
    client = Client(HTTP_AUTHORIZATION=f"Token {secret}")
    report = b"Haemoglobin 13.9 g/dL, within range.\n"
    with override_settings(STORAGES=storages):
        with django_capture_on_commit_callbacks(execute=True):
            uploaded = client.post(
                reverse("v1:document-list", args=[patient.uuid]),
                {"file": SimpleUploadedFile("report.txt", report), "kind": "lab_report"},
            )
        assert uploaded.status_code == 201, uploaded.content
        document = Document.objects.get(uuid=uploaded.json()["id"])
        assert s3.list_keys() == {document.storage_key}
        assert report not in s3.read_raw(document.storage_key)
        downloaded = client.get(reverse("v1:document-download", args=[patient.uuid, document.uuid]))
        assert downloaded.status_code == 200
        assert b"".join(downloaded.streaming_content) == report

        appointment = visit(patient, doctor, status=AppointmentStatus.SCHEDULED, hours_ago=1)
        with django_capture_on_commit_callbacks(execute=True):
            prescription = prescriptions.prescription_issue(
                appointment=appointment,
                items=[
                    {
                        "medication": medication(),
                        "dose": "1 tablet",
                        "frequency": "once_daily",
                        "duration_days": 10,
                        "quantity": 10,
                    }
                ],
                issued_by=doctor_user,
            )
        prescription.refresh_from_db()
        pdf_key = prescription.printable.storage_key
        assert s3.list_keys() == {document.storage_key, pdf_key}
        assert b"%PDF" not in s3.read_raw(pdf_key)
        pdf_download = client.get(reverse("v1:document-download", args=[patient.uuid, prescription.printable.uuid]))
        assert b"".join(pdf_download.streaming_content).startswith(b"%PDF-1.4")


# Sweeping files no document names -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sweep_removes_a_file_a_rolled_back_upload_left_and_keeps_every_other(backend, patient):
    import datetime

    from django.db import transaction

    from clinical import services
    from clinical.models import Document, DocumentKind

    def upload(text: bytes) -> Document:
        document: Document = services.document_upload(
            patient=patient,
            upload=SimpleUploadedFile("note.txt", text, content_type="text/plain"),
            kind=DocumentKind.OTHER,
            uploaded_by=None,
            storage=backend.storage,
        )
        return document

    kept = upload(b"Kept.\n")
    with pytest.raises(RuntimeError), transaction.atomic():
        upload(b"Rolled back.\n")
        raise RuntimeError("the caller's transaction fails after the upload")
    backend.write_raw("documents/notes.txt", b"not a document key: not ours to delete")
    assert Document.objects.count() == 1
    assert len(backend.list_keys()) == 3  # the rolled-back upload's file is still there

    # Within the grace period the file may belong to an upload still committing: it stays.
    assert services.document_orphans_sweep(storage=backend.storage) == 0
    assert len(backend.list_keys()) == 3

    assert services.document_orphans_sweep(storage=backend.storage, older_than=datetime.timedelta(0)) == 1
    assert backend.list_keys() == {kept.storage_key, "documents/notes.txt"}
    assert plaintext_of(backend, kept.storage_key, kept.uuid) == b"Kept.\n"


def test_the_sweep_deletes_nothing_when_most_files_have_no_document(backend, db):
    """As when a staging database is pointed at production's bucket: every file looks orphaned."""
    import datetime

    from clinical import services

    keys = {f"documents/{n:02x}/{uuid.uuid4().hex}.ctf" for n in range(services.ORPHAN_ALWAYS_ALLOWED + 1)}
    for key in keys:
        backend.write_raw(key, b"CTF1 sealed bytes of some other database's document")

    with pytest.raises(services.OrphanSweepRefused):
        services.document_orphans_sweep(storage=backend.storage, older_than=datetime.timedelta(0))
    assert backend.list_keys() == keys


def test_the_sweep_of_an_empty_storage_removes_nothing(backend, db):
    import datetime

    from clinical import services

    assert services.document_orphans_sweep(storage=backend.storage, older_than=datetime.timedelta(0)) == 0


def test_the_sweep_is_scheduled_daily():
    from django.conf import settings

    [entry] = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "clinical.document_orphans_sweep"]
    assert entry["schedule"] == 24 * 60 * 60
