"""Encrypted documents in a django-storages backend (a private directory, or an S3 bucket).

``store`` checks an upload (``inspection``), seals it (``sealing``) into a
temporary file (in memory up to ``SPOOL_MEMORY_BYTES``, on disk beyond) and
saves that under a new random key, ``documents/<2 hex>/<32 hex>.ctf``: the
user's file name never reaches the storage. The key is checked to be unused
and the storage must not overwrite (``file_overwrite=False`` for S3, Django's
default for the file system). If anything fails, nothing is left in storage.

``open_plaintext`` streams a file back, decrypting one record at a time. On
S3 it reads the object's body as a stream: django-storages' ``S3File`` would
first download the whole object into memory (``max_memory_size`` is 0 unless
configured).

The caller keeps the key: when the database write that records it fails,
call ``discard(storage, key)``. ``stored_keys`` lists every key of that form,
for the sweep that removes files no document names (``services.document_orphans_sweep``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import tempfile
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage

from accounts.encryption import KeyRing, keyring
from clinical.files.inspection import FileRejected, Inspected, inspect_seekable, seekable, upload_name
from clinical.files.sealing import (
    DEFAULT_CHUNK_BYTES,
    MAX_HEADER_BYTES,
    Readable,
    encrypt_stream,
    open_records,
    read_header,
)

logger = logging.getLogger(__name__)

KEY_PREFIX = "documents"
SPOOL_MEMORY_BYTES = 1024 * 1024
MAX_NAME_LENGTH = 255
_NEW_KEY_ATTEMPTS = 5


@dataclass(frozen=True)
class StoredFile:
    """Where a document's file went and what it is; ``sha256`` and ``size`` are of the plaintext."""

    key: str
    size: int
    sha256: str
    content_type: str
    original_name: str


def store(
    storage: Storage,
    upload: Any,
    *,
    document_uuid: uuid.UUID | str,
    name: str | None = None,
    ring: KeyRing | None = None,
) -> StoredFile:
    """Check ``upload``, encrypt it for ``document_uuid`` and save it under a new random key.

    Raises ``FileRejected`` (a ``ValidationError`` on ``file``) for a file
    that is not accepted, before anything is written. ``name`` overrides
    ``upload.name`` as the original name (its extension must match the
    content). ``original_name`` in the result is that name without any path
    and without control or formatting characters.
    """
    given_name = upload_name(upload, name)
    with seekable(upload) as plaintext:
        inspected = inspect_seekable(plaintext, name=given_name)
        with _spool() as sealed:
            _seal_into(plaintext, sealed, inspected, document_uuid=document_uuid, ring=ring)
            key = save_new(storage, sealed)
    original_name = clean_original_name(given_name) or f"document.{inspected.extension}"
    return StoredFile(key, inspected.size, inspected.sha256, inspected.content_type, original_name)


def open_plaintext(
    storage: Storage, key: str, *, document_uuid: uuid.UUID | str, ring: KeyRing | None = None
) -> PlaintextStream:
    """The decrypted contents of ``key``, as an iterator of byte strings, for a streaming response.

    A missing object (``FileNotFoundError``), a file that is not ``CTF1`` or
    names an unknown key (``DecryptionError``) fail here, before any byte is
    sent; tampering with the records raises ``DecryptionError`` while
    iterating, at the latest at the end. Close the stream (a Django
    ``StreamingHttpResponse`` does) or use it as a context manager.
    """
    ring = ring or keyring()
    sealed = open_sealed(storage, key)
    try:
        header = read_header(sealed)
        records = open_records(sealed, header, document_uuid=document_uuid, ring=ring)
        # The first record is opened now, so a file damaged from its start fails before a
        # response (and its 200) exists; later damage still fails while streaming.
        first = next(records, None)
    except BaseException:
        sealed.close()
        raise
    return PlaintextStream(records if first is None else itertools.chain([first], records), sealed)


class PlaintextStream(Iterator[bytes]):
    """Decrypted records of one stored file; closing it closes the stored file."""

    def __init__(self, records: Iterator[bytes], sealed: IO[bytes] | Any) -> None:
        self._records = records
        self._sealed = sealed

    def __next__(self) -> bytes:
        try:
            return next(self._records)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close_records = getattr(self._records, "close", None)
        if close_records is not None:
            close_records()
        self._sealed.close()

    def __enter__(self) -> PlaintextStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


# What new_storage_key gives (and the document table's check constraint accepts).
STORED_KEY_REGEX = rf"^{KEY_PREFIX}/[0-9a-f]{{2}}/[0-9a-f]{{32}}\.ctf$"


def new_storage_key() -> str:
    """``documents/<2 hex>/<32 hex>.ctf`` from a random UUID; the two-character folder spreads the files."""
    name = uuid.uuid4().hex
    return f"{KEY_PREFIX}/{name[:2]}/{name}.ctf"


def save_new(storage: Storage, sealed: IO[bytes]) -> str:
    """Save ``sealed`` (from its start) under a new unused key; return the key. Nothing remains on failure."""
    key = _unused_key(storage)
    sealed.seek(0)
    try:
        saved = storage.save(key, File(sealed, name=key))
    except BaseException:
        # FileSystemStorage leaves a partly written file behind; S3 aborts its upload, deleting is harmless.
        discard(storage, key)
        raise
    return str(saved)


def stored_keys(storage: Storage) -> Iterator[str]:
    """Every key in ``storage`` of the form ``store`` gives; anything else there is not ours and is skipped."""
    try:
        directories, _ = storage.listdir(KEY_PREFIX)
    except FileNotFoundError:  # the file system before the first upload
        return
    for directory in sorted(directories):
        _, names = storage.listdir(f"{KEY_PREFIX}/{directory}")
        for name in sorted(names):
            key = f"{KEY_PREFIX}/{directory}/{name}"
            if re.match(STORED_KEY_REGEX, key):
                yield key


def discard(storage: Storage, key: str) -> bool:
    """Delete ``key`` if it exists; log (the key only) instead of raising, since this runs while cleaning up.

    Returns whether the delete went through (a missing key counts as deleted).
    """
    try:
        storage.delete(key)
    except Exception:  # noqa: BLE001 - cleanup must not hide the error that caused it
        logger.warning("Could not delete stored file %s", key, exc_info=True)
        return False
    return True


def clean_original_name(name: str) -> str:
    """The last path component, NFC, without control or formatting characters (bidi overrides), at most 255."""
    base = re.split(r"[\\/]", name)[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if not unicodedata.category(ch).startswith("C")).strip()
    if len(base) <= MAX_NAME_LENGTH:
        return base
    stem, dot, extension = base.rpartition(".")
    if dot and stem and len(extension) < 16:
        return stem[: MAX_NAME_LENGTH - len(extension) - 1] + "." + extension
    return base[:MAX_NAME_LENGTH]


def _unused_key(storage: Storage) -> str:
    for _ in range(_NEW_KEY_ATTEMPTS):
        key = new_storage_key()
        if not storage.exists(key):
            return key
    raise RuntimeError("Could not find an unused storage key; is the storage's exists() always true?")


def _spool() -> tempfile.SpooledTemporaryFile[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, dir=settings.FILE_UPLOAD_TEMP_DIR)


def _seal_into(
    plaintext: IO[bytes],
    sealed: IO[bytes],
    inspected: Inspected,
    *,
    document_uuid: uuid.UUID | str,
    ring: KeyRing | None,
) -> None:
    plaintext.seek(0)
    source = _HashingReader(plaintext)
    for piece in encrypt_stream(source, document_uuid=document_uuid, chunk_size=DEFAULT_CHUNK_BYTES, ring=ring):
        sealed.write(piece)
    # What was sealed must be what was checked: the second read sees the same bytes, or nothing is stored.
    if (source.size, source.digest.hexdigest()) != (inspected.size, inspected.sha256):
        raise FileRejected("The file changed while it was being stored; upload it again.", code="changed")


class _HashingReader:
    def __init__(self, readable: Readable) -> None:
        self._readable = readable
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int, /) -> bytes:
        data = self._readable.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


# Reading from the storage ----------------------------------------------------------------------


def open_sealed(storage: Storage, key: str) -> Any:
    """A readable, closable stream of the stored bytes: S3 streams the object body, other storages ``open``."""
    s3_object = _s3_object(storage, key)
    if s3_object is None:
        return storage.open(key, "rb")
    return _s3_get(storage, s3_object, key)["Body"]


def read_sealed_head(storage: Storage, key: str) -> bytes:
    """The first bytes of a stored file, enough for its header (one ranged GET on S3)."""
    s3_object = _s3_object(storage, key)
    if s3_object is None:
        with storage.open(key, "rb") as stored:
            return bytes(stored.read(MAX_HEADER_BYTES))
    body = _s3_get(storage, s3_object, key, Range=f"bytes=0-{MAX_HEADER_BYTES - 1}")["Body"]
    try:
        return bytes(body.read())
    finally:
        body.close()


def _s3_object(storage: Storage, key: str) -> Any:
    try:
        from storages.backends.s3 import S3Storage
        from storages.utils import clean_name
    except ImportError:  # boto3 is not installed: the storage cannot be S3
        return None
    if not isinstance(storage, S3Storage):
        return None
    # The name S3Storage itself uses for the key (its location prefix, cleaned), as in S3Storage._open.
    return storage.bucket.Object(storage._normalize_name(clean_name(key)))


def _s3_get(storage: Storage, s3_object: Any, key: str, **extra: str) -> Any:
    from botocore.exceptions import ClientError
    from storages.backends.s3 import _filter_download_params

    params = _filter_download_params(storage.get_object_parameters(key))  # type: ignore[attr-defined]
    try:
        return s3_object.get(**params, **extra)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            raise FileNotFoundError(f"No stored file {key}") from None
        raise
