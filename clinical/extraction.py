"""Text extraction from a document's bytes: a PDF text layer, or OCR of images and scans.

``extract(data, content_type)`` returns an :class:`Extraction` and never raises. It is a
pure function of its input and of the installed engines, so re-running it is safe.

Engines
    ``pypdf``      reads the text layer of a PDF.
    ``tesseract``  OCRs PNG and JPEG images, and the page images of PDF pages whose text
                   layer is empty or near-empty (scanned pages). No poppler is needed: the
                   images embedded in the page are taken out with pypdf and OCRed one by one.
    ``none``       plain text, decoded as UTF-8; also the engine of an unsupported type.

Statuses
    ``done``            text was found.
    ``empty``           the engine ran and found no text (a blank page, a photo without words).
    ``engine_missing``  OCR was needed and the Tesseract binary is not installed. Nothing is
                        silently skipped: a scanned PDF never comes back ``done`` with no text.
    ``failed``          a parser or the OCR process failed, or the time budget ran out. The
                        ``error`` is short and names no file and no extracted text: an exception
                        class name, ``timeout``, or the engine's exit status.
    ``unsupported``     a content type other than PDF, PNG, JPEG and plain text.

    A PDF longer than ``max_pages`` is read up to that page; the result is ``done`` and its
    ``error`` says how many pages were read.

Configuration
    The binary is ``settings.TESSERACT_CMD`` when Django settings are configured, else the
    ``TESSERACT_CMD`` environment variable, else ``tesseract``; a bare name is looked up on
    ``PATH``. The module works without Django settings (scripts, one-off shells).
    ``ocr_languages`` takes Tesseract's language codes joined by ``+`` (``"eng+deu"``); each
    language needs its data package (Debian: ``tesseract-ocr-deu``), and a missing one gives
    ``failed`` with ``language data missing``. Tesseract runs single-threaded
    (``OMP_THREAD_LIMIT=1``) unless the environment says otherwise, because several
    OpenMP threads per worker make parallel Celery workers slower, not faster.
    ``timeout_s`` bounds the whole OCR of one document, ``max_pages`` the pages read.

Installing Tesseract
    Debian/Ubuntu: ``apt-get install tesseract-ocr tesseract-ocr-eng``.
    macOS: ``brew install tesseract`` (English included; ``brew install tesseract-lang`` for more).
    Check with ``tesseract --version`` and ``tesseract --list-langs``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from PIL import Image, ImageOps
from pypdf import PageObject, PdfReader

PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
TEXT = "text/plain"
IMAGE_TYPES = frozenset({PNG, JPEG, "image/jpg"})

ENGINE_PYPDF = "pypdf"
ENGINE_TESSERACT = "tesseract"
ENGINE_NONE = "none"

DONE = "done"
EMPTY = "empty"
ENGINE_MISSING = "engine_missing"
FAILED = "failed"
UNSUPPORTED = "unsupported"

# The engine a type starts with; a PDF turns to Tesseract when a page has no text layer.
FIRST_ENGINE = {PDF: ENGINE_PYPDF, TEXT: ENGINE_NONE} | dict.fromkeys(IMAGE_TYPES, ENGINE_TESSERACT)

# Fewer word characters than this on a page means no real text layer: a scan, maybe with a stamp.
MIN_TEXT_CHARS_PER_PAGE = 16
# Smaller embedded images are icons, rules and logos, not scanned text; OCRing them costs time.
MIN_OCR_IMAGE_SIDE = 32
MAX_OCR_PIXELS = 50_000_000  # the upload limit of clinical.files.inspection
VERSION_TIMEOUT_S = 10
LANGUAGES = re.compile(r"[A-Za-z0-9_]+(?:\+[A-Za-z0-9_]+)*")
WORD_CHARACTER = re.compile(r"\w")

Source = bytes | bytearray | memoryview | IO[bytes] | str | os.PathLike[str]


@dataclass(frozen=True)
class Extraction:
    """The outcome of one extraction; ``confidence`` (0–1) only when Tesseract read words."""

    engine: str
    status: str
    text: str
    page_count: int | None
    confidence: float | None
    error: str
    duration_ms: float


class _Failure(Exception):
    """A failure whose message is safe to store: no extracted text, no file names."""


class _EngineMissing(Exception):
    pass


@dataclass
class _Progress:
    """What is known so far, so that a failure or a missing engine is recorded with it."""

    engine: str
    text: str = ""
    page_count: int | None = None
    confidences: list[float] = field(default_factory=list)
    note: str = ""


def extract(
    data: Source,
    content_type: str,
    *,
    ocr_languages: str = "eng",
    timeout_s: float = 60,
    max_pages: int = 50,
) -> Extraction:
    """Extract the text of ``data`` (bytes, a binary file object or a path) of ``content_type``.

    Never raises: every problem is a status (see the module docstring). A file object is
    read whole and put back where it was, so the same object can be extracted again.
    """
    started = time.perf_counter()
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in FIRST_ENGINE:
        return _finish(started, _Progress(ENGINE_NONE), UNSUPPORTED, "unsupported content type")
    progress = _Progress(FIRST_ENGINE[kind])
    deadline = started + timeout_s
    try:
        raw = _read(data)
        if kind == PDF:
            _extract_pdf(raw, progress, ocr_languages, deadline, max_pages)
        elif kind in IMAGE_TYPES:
            _extract_image(raw, progress, ocr_languages, deadline)
        else:
            progress.text = raw.decode("utf-8-sig")
    except _EngineMissing:
        return _finish(started, progress, ENGINE_MISSING, "tesseract binary not found")
    except subprocess.TimeoutExpired:
        return _finish(started, progress, FAILED, "timeout")
    except _Failure as exc:
        return _finish(started, progress, FAILED, str(exc))
    except Exception as exc:  # noqa: BLE001 - a parser's error is a stored status, never raised to the task
        return _finish(started, progress, FAILED, type(exc).__name__)
    return _finish(started, progress, DONE if progress.text.strip() else EMPTY, progress.note)


def tesseract_available() -> bool:
    return _tesseract_path() is not None


def tesseract_version() -> str | None:
    """The installed Tesseract's version (``"5.3.0"``), or None when it is missing or will not say."""
    path = _tesseract_path()
    if path is None:
        return None
    try:
        completed = subprocess.run(  # noqa: S603 - a resolved binary, fixed arguments
            [path, "--version"], capture_output=True, timeout=VERSION_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # Tesseract 3 printed its version on stderr, later ones on stdout.
    output = (completed.stdout or completed.stderr).decode("utf-8", "replace")
    match = re.match(r"\s*tesseract\s+v?(\S+)", output)
    return match.group(1) if match else None


def _finish(started: float, progress: _Progress, status: str, error: str) -> Extraction:
    confidences = progress.confidences
    return Extraction(
        engine=progress.engine,
        status=status,
        text="" if status == FAILED else progress.text,  # half a document would read as the whole one
        page_count=progress.page_count,
        confidence=round(sum(confidences) / len(confidences) / 100, 4) if confidences else None,
        error=error,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _read(data: Source) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str | os.PathLike):
        return Path(data).read_bytes()
    position = data.tell() if data.seekable() else None
    content = data.read()
    if position is not None:
        data.seek(position)
    return content


# --- PDF ---------------------------------------------------------------------------------------


def _extract_pdf(raw: bytes, progress: _Progress, languages: str, deadline: float, max_pages: int) -> None:
    reader = PdfReader(io.BytesIO(raw))
    if reader.is_encrypted:
        reader.decrypt("")  # many PDFs are encrypted with an empty user password; others fail below
    progress.page_count = len(reader.pages)
    pages = [reader.pages[index] for index in range(min(progress.page_count, max_pages))]
    if progress.page_count > len(pages):
        progress.note = f"read the first {len(pages)} of {progress.page_count} pages"
    layers = [(page.extract_text() or "").strip() for page in pages]
    scanned = {index for index, page in enumerate(pages) if _needs_ocr(layers[index], page)}
    progress.text = _join_pages(layers)
    if not scanned:
        return
    progress.engine = ENGINE_TESSERACT
    command = _require_tesseract()
    texts = list(layers)
    for index in sorted(scanned):
        images = [_ocr_image(image, command, languages, deadline, progress) for image in _page_images(pages[index])]
        texts[index] = _join_pages(images) or layers[index]
    progress.text = _join_pages(texts)


def _needs_ocr(layer: str, page: PageObject) -> bool:
    return len(WORD_CHARACTER.findall(layer)) < MIN_TEXT_CHARS_PER_PAGE and len(page.images) > 0


def _page_images(page: PageObject) -> list[Image.Image]:
    images = [embedded.image for embedded in page.images]
    return [image for image in images if image is not None and min(image.size) >= MIN_OCR_IMAGE_SIDE]


def _join_pages(texts: list[str]) -> str:
    return "\n\n".join(text for text in texts if text)


# --- Images and Tesseract ----------------------------------------------------------------------


def _extract_image(raw: bytes, progress: _Progress, languages: str, deadline: float) -> None:
    progress.page_count = 1
    command = _require_tesseract()
    with Image.open(io.BytesIO(raw)) as image:
        _check_size(image)
        # Phone photos of paper are stored sideways with an EXIF rotation; Tesseract ignores EXIF.
        upright = ImageOps.exif_transpose(image)
        progress.text = _ocr_image(upright, command, languages, deadline, progress)


def _ocr_image(image: Image.Image, command: str, languages: str, deadline: float, progress: _Progress) -> str:
    """OCR one image; its word confidences are added to ``progress``."""
    if not LANGUAGES.fullmatch(languages):
        raise _Failure("invalid OCR language list")
    _check_size(image)
    with tempfile.TemporaryDirectory(prefix="caretrail-ocr-") as workdir:
        source, output = Path(workdir) / "page.png", Path(workdir) / "out"
        _flatten(image).save(source, "PNG")
        completed = subprocess.run(  # noqa: S603 - a resolved binary; the only input is a checked language list
            [command, str(source), str(output), "-l", languages, "txt", "tsv"],
            capture_output=True,
            timeout=_remaining(deadline),
            check=False,
            env={"OMP_THREAD_LIMIT": "1", **os.environ},
        )
        if completed.returncode != 0:
            raise _Failure(_tesseract_error(completed))
        text = output.with_suffix(".txt").read_text("utf-8", "replace").strip()
        progress.confidences.extend(_word_confidences(output.with_suffix(".tsv").read_text("utf-8", "replace")))
    return text


def _check_size(image: Image.Image) -> None:
    if image.width * image.height > MAX_OCR_PIXELS:
        raise _Failure("image too large for OCR")


def _flatten(image: Image.Image) -> Image.Image:
    """An image Tesseract reads well: no transparency (transparent pixels are black to it), no CMYK."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode in ("1", "L", "RGB") else image.convert("RGB")


def _word_confidences(tsv: str) -> list[float]:
    """Confidences (0–100) of recognised words; Tesseract gives -1 to layout rows."""
    confidences = []
    for row in tsv.splitlines()[1:]:
        columns = row.split("\t")
        if len(columns) == 12 and columns[0] == "5" and columns[11].strip():
            confidence = float(columns[10])
            if confidence >= 0:
                confidences.append(confidence)
    return confidences


def _tesseract_error(completed: subprocess.CompletedProcess[bytes]) -> str:
    # stderr may quote paths; only its kind of problem is kept.
    if b"Failed loading language" in completed.stderr:
        return "language data missing"
    return f"tesseract exited with status {completed.returncode}"


def _remaining(deadline: float) -> float:
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise subprocess.TimeoutExpired("tesseract", 0)
    return remaining


def _require_tesseract() -> str:
    path = _tesseract_path()
    if path is None:
        raise _EngineMissing
    return path


def _tesseract_path() -> str | None:
    return shutil.which(_configured_command())


def _configured_command() -> str:
    configured = None
    if settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE"):
        try:
            configured = getattr(settings, "TESSERACT_CMD", None)
        except (ImproperlyConfigured, ImportError):
            configured = None  # settings named but unusable: behave as a script without Django
    return str(configured or os.environ.get("TESSERACT_CMD") or "tesseract")
