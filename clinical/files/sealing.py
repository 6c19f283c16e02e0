"""Encrypted files: AES-256-GCM in chunks, under the keys of the encrypted fields.

A stored file is the ``CTF1`` format. All integers are big-endian::

    header   "CTF1"                      4 bytes   magic and format version
             key id length n             1 byte    1..32
             key id                      n bytes   ASCII, a FIELD_ENCRYPTION_KEYS id
             file id                     16 bytes  random, new for every sealing
    records  sealed length m             4 bytes   16 <= m <= MAX_CHUNK_BYTES + 16
             nonce                       12 bytes  random, new for every record
             ciphertext and GCM tag      m bytes

Record ``i`` (from 0) holds the ``i``-th piece of plaintext, ``chunk_size``
bytes each but the last, which may be shorter (or empty, for an empty file).
There is always at least one record. Its associated data is::

    header bytes (all of them) || document UUID (16 bytes) || i (8 bytes) || final (1 byte: 1 on the last record)

so a record opens only in its own file (the random file id), for its own
document, at its own place, and the last record only as the last one:
reordering, dropping or repeating records, cutting the file short, adding to
it, splicing in a record of another file or presenting a file as another
document's all fail to open. Nonces are random 96-bit values, as in the
encrypted fields, so no counter state is needed and no two files share one.

The first key of ``FIELD_ENCRYPTION_KEYS`` seals; any configured key opens
(the header names it), which is what key rotation needs. Every failure to
open raises ``accounts.encryption.DecryptionError``; plaintext is released one
authenticated record at a time, so a reader of ``decrypt_stream`` learns of a
truncation only at the end and must not treat what it got as complete before
the iteration has finished.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from accounts.encryption import DecryptionError, KeyRing, keyring

MAGIC = b"CTF1"
FILE_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 1024 * 1024
MAX_HEADER_BYTES = len(MAGIC) + 1 + 32 + FILE_ID_BYTES
_KEY_ID = re.compile(rb"^[A-Za-z0-9_-]{1,32}$")
_LENGTH = struct.Struct(">I")
_POSITION = struct.Struct(">QB")


class Readable(Protocol):
    """Anything with ``read(size) -> bytes``: a file, a Django ``File``, a boto3 streaming body."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class Header:
    key_id: str
    raw: bytes  # the header bytes as stored; part of every record's associated data


def encrypt_stream(
    source: Readable,
    *,
    document_uuid: uuid.UUID | str,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    ring: KeyRing | None = None,
) -> Iterator[bytes]:
    """Yield the ``CTF1`` bytes of ``source``'s contents, sealed under the primary key.

    Holds at most two chunks of plaintext at a time (the one being sealed and
    the next, to know which is last).
    """
    if not 1 <= chunk_size <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_BYTES}.")
    return _seal(_pieces(source, chunk_size), document_uuid=document_uuid, ring=ring)


def decrypt_stream(stored: Readable, *, document_uuid: uuid.UUID | str, ring: KeyRing | None = None) -> Iterator[bytes]:
    """Yield the plaintext of a ``CTF1`` file, one record at a time.

    Raises ``DecryptionError``: at once for a file that is not ``CTF1`` or
    names a key that is not configured, and while iterating for any change to
    the records, truncation included.
    """
    ring = ring or keyring()
    header = read_header(stored)
    return open_records(stored, header, document_uuid=document_uuid, ring=ring)


def reseal(
    stored: Readable,
    *,
    document_uuid: uuid.UUID | str,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    ring: KeyRing | None = None,
) -> Iterator[bytes]:
    """Yield ``stored`` re-sealed under the primary key (for key rotation).

    Opens with whichever configured key the header names. The new file's last
    record is produced only after the old file has opened to its end, so a
    ``DecryptionError`` always comes before a complete new file does.
    """
    ring = ring or keyring()
    plaintext = decrypt_stream(stored, document_uuid=document_uuid, ring=ring)
    return encrypt_stream(_IteratorReader(plaintext), document_uuid=document_uuid, chunk_size=chunk_size, ring=ring)


def sealed_key_id(stored: Readable) -> str:
    """The id of the key that sealed ``stored``, from its header alone."""
    return read_header(stored).key_id


# Sealing ---------------------------------------------------------------------------------------


def _seal(pieces: Iterable[bytes], *, document_uuid: uuid.UUID | str, ring: KeyRing | None) -> Iterator[bytes]:
    ring = ring or keyring()
    key_id = ring.primary_id
    aead = ring.keys[key_id]
    header = MAGIC + bytes([len(key_id)]) + key_id.encode("ascii") + os.urandom(FILE_ID_BYTES)
    prefix = header + _uuid_bytes(document_uuid)
    yield header
    pieces = iter(pieces)
    current = next(pieces, b"")
    index = 0
    while True:
        following = next(pieces, None)
        final = following is None
        nonce = os.urandom(NONCE_BYTES)
        sealed = aead.encrypt(nonce, current, prefix + _POSITION.pack(index, final))
        yield _LENGTH.pack(len(sealed)) + nonce + sealed
        if following is None:
            return
        current = following
        index += 1


def _pieces(source: Readable, chunk_size: int) -> Iterator[bytes]:
    """Full ``chunk_size`` pieces of ``source`` and a last shorter one; nothing for an empty source."""
    while piece := read_exactly(source, chunk_size):
        yield piece
        if len(piece) < chunk_size:
            return


# Opening ---------------------------------------------------------------------------------------


def read_header(stored: Readable) -> Header:
    start = read_exactly(stored, len(MAGIC) + 1)
    if len(start) < len(MAGIC) + 1 or start[: len(MAGIC)] != MAGIC:
        raise DecryptionError("not an encrypted Caretrail file")
    key_id_length = start[len(MAGIC)]
    rest = read_exactly(stored, key_id_length + FILE_ID_BYTES)
    key_id = rest[:key_id_length]
    if len(rest) < key_id_length + FILE_ID_BYTES or not _KEY_ID.match(key_id):
        raise DecryptionError("malformed encrypted file header")
    return Header(key_id=key_id.decode("ascii"), raw=start + rest)


def open_records(stored: Readable, header: Header, *, document_uuid: uuid.UUID | str, ring: KeyRing) -> Iterator[bytes]:
    aead = ring.keys.get(header.key_id)
    if aead is None:
        raise DecryptionError(f"no key with id {header.key_id!r} is configured")
    return _open_records(stored, header, _uuid_bytes(document_uuid), aead)


def _open_records(stored: Readable, header: Header, document: bytes, aead: AESGCM) -> Iterator[bytes]:
    prefix = header.raw + document
    record = _read_record(stored)
    if record is None:
        raise DecryptionError("the encrypted file has no content (truncated)")
    index = 0
    while record is not None:
        following = _read_record(stored)  # the last record is known by what comes after it: nothing
        nonce, sealed = record
        try:
            yield aead.decrypt(nonce, sealed, prefix + _POSITION.pack(index, following is None))
        except InvalidTag:
            raise DecryptionError("wrong key or tampered file") from None
        record = following
        index += 1


def _read_record(stored: Readable) -> tuple[bytes, bytes] | None:
    length_bytes = read_exactly(stored, _LENGTH.size)
    if not length_bytes:
        return None
    if len(length_bytes) < _LENGTH.size:
        raise DecryptionError("the encrypted file is truncated")
    (length,) = _LENGTH.unpack(length_bytes)
    if not TAG_BYTES <= length <= MAX_CHUNK_BYTES + TAG_BYTES:
        raise DecryptionError("malformed encrypted file record")
    body = read_exactly(stored, NONCE_BYTES + length)
    if len(body) < NONCE_BYTES + length:
        raise DecryptionError("the encrypted file is truncated")
    return body[:NONCE_BYTES], body[NONCE_BYTES:]


# Helpers -----------------------------------------------------------------------------------------


def read_exactly(source: Readable, count: int) -> bytes:
    """``count`` bytes, or fewer only at the end: streams (sockets, S3 bodies) may return short reads."""
    parts: list[bytes] = []
    wanted = count
    while wanted > 0:
        piece = source.read(wanted)
        if not piece:
            break
        parts.append(piece)
        wanted -= len(piece)
    return b"".join(parts)


def _uuid_bytes(document_uuid: uuid.UUID | str) -> bytes:
    value = document_uuid if isinstance(document_uuid, uuid.UUID) else uuid.UUID(str(document_uuid))
    return value.bytes


class _IteratorReader:
    """``read(size)`` over an iterator of byte strings."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = b""

    def read(self, size: int, /) -> bytes:
        while len(self._buffer) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buffer += piece
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
