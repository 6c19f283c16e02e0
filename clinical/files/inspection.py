"""What an uploaded file really is, decided from its bytes before anything is stored.

The allow-list is PDF, PNG, JPEG and UTF-8 plain text. A file is accepted
only when its leading bytes name one of these types, its name (if it has an
extension) agrees, its structure is complete (PNG chunks up to ``IEND``,
JPEG markers up to ``EOI``, a PDF ending in ``%%EOF``) and a real parser
reads it (Pillow decodes the image, pypdf loads every page). Anything that is
also another kind of file is refused: a ZIP archive inside or around it, data
after the image's end, content before ``%PDF``, markup in a text file.

Images are sized from their header first and refused above
``MAX_IMAGE_PIXELS`` before a single pixel is decoded; Pillow's own
decompression-bomb warning counts as a refusal too.

The file is read in chunks to hash it and find its size, which stops as soon
as the size limit is passed; only the parse reads more, and the limit bounds
that. Messages name no file name and no content, at most the extension.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels: more than any phone camera; at most 200 MB once decoded
READ_CHUNK = 64 * 1024
HEAD_BYTES = 8 * 1024  # what the type detection looks at
PDF_TAIL_BYTES = 1024  # readers look for %%EOF in the last 1024 bytes

PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
TEXT = "text/plain"

# The extension a stored file gets, and the ones a name may carry, per accepted type.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    PDF: ("pdf",),
    PNG: ("png",),
    JPEG: ("jpg", "jpeg"),
    TEXT: ("txt", "text"),
}
DESCRIPTIONS = {PDF: "a PDF document", PNG: "a PNG image", JPEG: "a JPEG image", TEXT: "a plain text file"}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
PDF_SIGNATURE = b"%PDF-"

# Markup a browser would render, and other formats' headers, that must never appear in a text
# file or after the end of an image. Searched case-insensitively.
_EMBEDDED = re.compile(
    rb"<(?:!doctype|html|head|body|script|svg|iframe|frame|object|embed|\?xml|xml|math|meta|style|link|base)\b"
    rb"|%pdf-|<\?php",
    re.IGNORECASE,
)
_EMBEDDED_OVERLAP = 16  # longer than any pattern above, so a match split across two reads is found
# What browsers' content sniffing (WHATWG MIME Sniffing, "HTML" and "XML") takes for markup when a
# file starts with it after white space; plus SVG, which is XML but often written without a prolog.
_LEADING_MARKUP = re.compile(
    rb"<(?:!--|\?xml|(?:!doctype html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p|svg)[\s>/])",
    re.IGNORECASE,
)
# Control characters have no place in plain text; they are how binary formats start.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class FileRejected(ValidationError):
    """An upload that is not accepted; ``message`` says why, without naming the file.

    It is a Django ``ValidationError`` keyed by ``field``, so the API's exception
    handler answers 400 ``{"file": [message]}`` and a form shows it on the field.
    """

    def __init__(self, message: str, *, code: str, field: str = "file") -> None:
        super().__init__({field: [ValidationError(message, code=code)]})
        self.message = message
        self.code = code
        self.field = field

    def as_dict(self) -> dict[str, list[str]]:
        return {self.field: [str(self.message)]}


@dataclass(frozen=True)
class Inspected:
    """What the bytes are: type (from the allow-list), its usual extension (no dot), size, SHA-256 (hex)."""

    content_type: str
    extension: str
    size: int
    sha256: str


def max_bytes() -> int:
    return int(getattr(settings, "DOCUMENT_MAX_BYTES", DEFAULT_MAX_BYTES))


def inspect(upload: Any, *, name: str | None = None) -> Inspected:
    """Check an upload against the allow-list; raise ``FileRejected`` when it is not accepted.

    ``upload`` is a Django ``UploadedFile`` or any binary file-like object; its
    ``name`` (or ``name=``) supplies the extension to compare with the content.
    A seekable upload is read in place and left where it was read to; another
    is copied to a temporary file first (bounded by the size limit).
    """
    with seekable(upload) as readable:
        return inspect_seekable(readable, name=upload_name(upload, name))


def upload_name(upload: Any, name: str | None = None) -> str:
    return name if name is not None else str(getattr(upload, "name", "") or "")


@contextmanager
def seekable(upload: Any) -> Iterator[IO[bytes]]:
    """``upload`` itself when it can seek, else a temporary copy of at most the size limit plus one byte."""
    if _can_seek(upload):
        yield upload
        return
    limit = max_bytes()
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024, dir=settings.FILE_UPLOAD_TEMP_DIR) as copy:
        copied = 0
        while copied <= limit:
            piece = upload.read(min(READ_CHUNK, limit + 1 - copied))
            if not piece:
                break
            copy.write(piece)
            copied += len(piece)
        copy.seek(0)
        yield copy


def _can_seek(upload: Any) -> bool:
    try:
        return bool(upload.seekable())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def inspect_seekable(readable: IO[bytes], *, name: str) -> Inspected:
    size, sha256, head = _measure(readable)
    content_type = _detect(head, name)
    _check_extension(name, content_type)
    if content_type == TEXT:
        _check_text(readable)
    else:
        _check_not_zip(readable)
        {PDF: _check_pdf, PNG: _check_png, JPEG: _check_jpeg}[content_type](readable, size)
    return Inspected(content_type, EXTENSIONS[content_type][0], size, sha256)


# Size and hash ---------------------------------------------------------------------------------


def _measure(readable: IO[bytes]) -> tuple[int, str, bytes]:
    """Size, SHA-256 and the first ``HEAD_BYTES``; refuses an empty or oversized file as soon as it can."""
    limit = max_bytes()
    digest = hashlib.sha256()
    head = b""
    size = 0
    readable.seek(0)
    while piece := readable.read(READ_CHUNK):
        size += len(piece)
        if size > limit:
            raise FileRejected(f"The file is larger than the {_megabytes(limit)} limit.", code="too_large")
        digest.update(piece)
        if len(head) < HEAD_BYTES:
            head += piece[: HEAD_BYTES - len(head)]
    if size == 0:
        raise FileRejected("The file is empty.", code="empty")
    return size, digest.hexdigest(), head


def _megabytes(limit: int) -> str:
    return f"{limit / (1024 * 1024):g} MB" if limit >= 1024 * 1024 else f"{limit} bytes"


# Type --------------------------------------------------------------------------------------------


def _detect(head: bytes, name: str) -> str:
    if head.startswith(PDF_SIGNATURE):
        return PDF
    if head.startswith(PNG_SIGNATURE):
        return PNG
    if head.startswith(JPEG_SIGNATURE):
        return JPEG
    if PDF_SIGNATURE in head[:PDF_TAIL_BYTES]:
        # PDF readers accept a header up to 1024 bytes in: whatever comes before it is another file.
        raise FileRejected("The file has other content before its PDF header and is not accepted.", code="polyglot")
    if _LEADING_MARKUP.match(head.removeprefix(codecs.BOM_UTF8).lstrip()):
        raise FileRejected("HTML, SVG and other web page files are not accepted.", code="markup")
    if _extension(name) in EXTENSIONS[TEXT] or _looks_like_text(head):
        return TEXT
    raise FileRejected(
        "This type of file is not accepted. Upload a PDF, a PNG or JPEG image, or a plain text file.",
        code="unsupported_type",
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # may end inside a character
    except UnicodeDecodeError:
        return False
    return not _CONTROL.search(text)


def _extension(name: str) -> str:
    base = re.split(r"[\\/]", name)[-1]
    stem, dot, extension = base.rpartition(".")
    return extension.lower() if dot and stem else ""


def _check_extension(name: str, content_type: str) -> None:
    extension = _extension(name)
    if not extension or extension in EXTENSIONS[content_type]:
        return
    shown = f".{extension}" if re.fullmatch(r"[a-z0-9]{1,10}", extension) else "an unusual extension"
    if any(extension in others for others in EXTENSIONS.values()):
        raise FileRejected(
            f"The file name ends in {shown}, but the file is {DESCRIPTIONS[content_type]}.",
            code="extension_mismatch",
        )
    raise FileRejected(
        f"Files ending in {shown} are not accepted. Upload a PDF (.pdf), PNG (.png), JPEG (.jpg) or text (.txt) file.",
        code="unsupported_extension",
    )


def _check_not_zip(readable: IO[bytes]) -> None:
    # A ZIP (or JAR, DOCX) reader finds its directory at the end of the file, whatever comes first.
    readable.seek(0)
    if zipfile.is_zipfile(readable):
        raise FileRejected("The file is also a ZIP archive and is not accepted.", code="polyglot")


# Text --------------------------------------------------------------------------------------------


def _check_text(readable: IO[bytes]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    readable.seek(0)
    tail = b""
    while True:
        piece = readable.read(READ_CHUNK)
        try:
            text = decoder.decode(piece, final=not piece)
        except UnicodeDecodeError:
            raise FileRejected("A text file must be encoded as UTF-8.", code="not_utf8") from None
        if _CONTROL.search(text):
            raise FileRejected("The text file contains binary data and is not accepted.", code="binary_text")
        window = tail + piece
        if _EMBEDDED.search(window):
            raise FileRejected(
                "The text file contains web page markup or another file's header and is not accepted.",
                code="markup",
            )
        tail = window[-_EMBEDDED_OVERLAP:]
        if not piece:
            return


# PDF ---------------------------------------------------------------------------------------------


def _check_pdf(readable: IO[bytes], size: int) -> None:
    readable.seek(max(0, size - PDF_TAIL_BYTES))
    tail = readable.read(PDF_TAIL_BYTES)
    end = tail.rfind(b"%%EOF")
    if end < 0 or b"startxref" not in tail:
        raise _damaged("PDF")
    if tail[end + len(b"%%EOF") :].strip(b" \t\r\n\f\x00"):
        raise FileRejected("The file has data after the end of the PDF and is not accepted.", code="polyglot")
    _parse_pdf(readable)


def _parse_pdf(readable: IO[bytes]) -> None:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    readable.seek(0)
    try:
        reader = PdfReader(readable, strict=False)
        if reader.is_encrypted:
            raise FileRejected("Password-protected PDFs are not accepted.", code="encrypted_pdf")
        pages = reader.pages
        if len(pages) == 0:
            raise _damaged("PDF")
        for page in pages:
            page.mediabox  # noqa: B018 - resolves the page object and its inherited attributes
    except FileRejected:
        raise
    except FileNotDecryptedError:
        raise FileRejected("Password-protected PDFs are not accepted.", code="encrypted_pdf") from None
    except Exception:  # noqa: BLE001 - pypdf raises many kinds of error on malformed input; each means "damaged"
        raise _damaged("PDF") from None


def _damaged(kind: str) -> FileRejected:
    return FileRejected(f"The {kind} file is incomplete or damaged.", code="damaged")


def _too_many_pixels() -> FileRejected:
    return FileRejected(
        f"The image is too large: at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels are accepted.",
        code="too_many_pixels",
    )


# PNG ---------------------------------------------------------------------------------------------


# Encoders write image data in chunks of 8 KB or more: 20 MB makes a few thousand. A file of
# nothing but empty chunks would otherwise cost seconds of CPU to walk.
MAX_PNG_CHUNKS = 100_000


def _check_png(readable: IO[bytes], size: int) -> None:
    width, height, end = _walk_png(readable)
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_many_pixels()
    if end != size:
        raise FileRejected("The file has data after the end of the PNG image and is not accepted.", code="polyglot")
    _decode_image(readable, "PNG")


def _walk_png(readable: IO[bytes]) -> tuple[int, int, int]:
    """Width and height from IHDR, and where IEND ends; only chunk headers are read, nothing is decoded."""
    readable.seek(len(PNG_SIGNATURE))
    position = len(PNG_SIGNATURE)
    width = height = -1
    image_data = False
    for _ in range(MAX_PNG_CHUNKS):
        header = readable.read(8)
        if len(header) < 8:
            raise _damaged("PNG")
        length, kind = struct.unpack(">I4s", header)
        if width < 0:
            if kind != b"IHDR" or length != 13:
                raise _damaged("PNG")
            width, height = struct.unpack(">II", readable.read(8))
            readable.seek(position + 8)
        position += 12 + length  # length, type, data, CRC
        image_data = image_data or kind == b"IDAT"
        if kind == b"IEND":
            if not image_data:
                raise _damaged("PNG")
            return width, height, position
        readable.seek(position)
    raise _damaged("PNG")


# JPEG --------------------------------------------------------------------------------------------

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # in scan data: 0xFF00 is a stuffed byte, 0xFFD0-D7 restarts
# Real files have a few dozen markers (a progressive JPEG, a few hundred at most); a file made of
# nothing but markers or fill bytes would otherwise cost seconds of CPU to walk.
MAX_JPEG_MARKERS = 10_000


def _check_jpeg(readable: IO[bytes], size: int) -> None:
    width, height, end = _walk_jpeg(readable)
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_many_pixels()
    if end != size:
        # Cameras append data after EOI (a second picture, a video); markup or a PDF there makes a polyglot.
        readable.seek(end)
        if _stream_contains_embedded(readable):
            raise FileRejected(
                "The file has web page markup or another file after the end of the JPEG image and is not accepted.",
                code="polyglot",
            )
    _decode_image(readable, "JPEG")


def _walk_jpeg(readable: IO[bytes]) -> tuple[int, int, int]:
    """Size from the frame header, and where EOI ends; entropy-coded data is skipped, not decoded."""
    cursor = _JpegCursor(readable, start=len(b"\xff\xd8"))
    width = height = -1
    for _ in range(MAX_JPEG_MARKERS):
        if cursor.read(1) != b"\xff":
            raise _damaged("JPEG")
        marker = cursor.read(1)[0]
        if marker == 0xFF:  # fill bytes may precede a marker
            marker = cursor.skip_fill()
        if marker == 0xD9:  # EOI
            if width < 0:
                raise _damaged("JPEG")
            return width, height, cursor.position
        if marker in _STANDALONE_MARKERS:
            continue
        length = struct.unpack(">H", cursor.read(2))[0]
        if length < 2:
            raise _damaged("JPEG")
        segment = cursor.read(length - 2)
        if marker in _SOF_MARKERS and width < 0:
            if len(segment) < 5:
                raise _damaged("JPEG")
            height, width = struct.unpack(">HH", segment[1:5])
        if marker == 0xDA:  # start of scan: entropy-coded data follows, up to the next marker
            cursor.skip_entropy_coded()
    raise _damaged("JPEG")


class _JpegCursor:
    """Reads a JPEG forward through a buffer of about ``READ_CHUNK`` bytes, in constant time per read."""

    def __init__(self, readable: IO[bytes], *, start: int) -> None:
        readable.seek(start)
        self._readable = readable
        self._buffer = b""
        self._offset = 0  # into the buffer
        self.position = start  # in the file, of the first byte not yet consumed

    def _more(self) -> None:
        piece = self._readable.read(READ_CHUNK)
        if not piece:
            raise _damaged("JPEG")
        self._buffer = self._buffer[self._offset :] + piece
        self._offset = 0

    def _consume(self, count: int) -> bytes:
        data = self._buffer[self._offset : self._offset + count]
        self._offset += count
        self.position += count
        return data

    def read(self, count: int) -> bytes:
        while len(self._buffer) - self._offset < count:
            self._more()
        return self._consume(count)

    def skip_fill(self) -> int:
        """Consume a run of 0xFF fill bytes; return the marker byte after it."""
        while True:
            rest = self._buffer[self._offset :].lstrip(b"\xff")
            self._consume(len(self._buffer) - self._offset - len(rest))
            if rest:
                return self.read(1)[0]
            self._more()

    def skip_entropy_coded(self) -> None:
        """Consume up to the 0xFF that starts the next marker (not a stuffed 0xFF00 or a restart marker)."""
        while True:
            found = _NEXT_MARKER.search(self._buffer, self._offset)
            if found:
                self._consume(found.start() - self._offset)
                return
            # No marker here; keep a trailing 0xFF, whose meaning depends on the next byte.
            keep = 1 if self._buffer.endswith(b"\xff") else 0
            self._consume(len(self._buffer) - keep - self._offset)
            self._more()


def _stream_contains_embedded(readable: IO[bytes]) -> bool:
    tail = b""
    while piece := readable.read(READ_CHUNK):
        window = tail + piece
        if _EMBEDDED.search(window):
            return True
        tail = window[-_EMBEDDED_OVERLAP:]
    return False


# Decoding (Pillow) -------------------------------------------------------------------------------


def _decode_image(readable: IO[bytes], kind: str) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            readable.seek(0)
            with Image.open(readable, formats=[kind]) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise _too_many_pixels()
                image.verify()  # PNG: every chunk's CRC
            readable.seek(0)
            with Image.open(readable, formats=[kind]) as image:
                if kind == "JPEG":
                    # Decoding at 1/8 scale still reads every byte of the scan data, in 1/64 of the memory.
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels() from None
    except FileRejected:
        raise
    except Exception:  # noqa: BLE001 - Pillow raises many kinds of error on malformed input; each means "damaged"
        raise _damaged(kind) from None
