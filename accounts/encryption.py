"""Authenticated encryption of PHI at rest.

Every value is sealed with AES-256-GCM under a random 96-bit nonce. The
associated data names the model, the field and the row's UUID, so a
ciphertext copied to another row or column fails to open. The token that the
database stores is ``ct1$<key id>$<base64url(nonce + ciphertext + tag)>``.

Keys come from ``FIELD_ENCRYPTION_KEYS`` (``id:base64key,...``): the first key
seals, every key opens, which is what key rotation needs.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

TOKEN_PREFIX = "ct1"  # noqa: S105 - a format marker, not a secret
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class DecryptionError(Exception):
    """A value could not be opened: wrong key, unknown key id or tampering."""


@dataclass(frozen=True)
class KeyRing:
    primary_id: str
    keys: dict[str, AESGCM]

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keys[self.primary_id].encrypt(nonce, plaintext, aad)
        body = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{TOKEN_PREFIX}${self.primary_id}${body}"

    def open(self, token: str, aad: bytes) -> bytes:
        prefix, key_id, body = _split(token)
        if prefix != TOKEN_PREFIX:
            raise DecryptionError("unknown ciphertext format")
        key = self.keys.get(key_id)
        if key is None:
            raise DecryptionError(f"no key with id {key_id!r} is configured")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            return key.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise DecryptionError("wrong key or tampered value") from exc

    def key_id_of(self, token: str) -> str:
        return _split(token)[1]


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split("$")
    if len(parts) != 3:
        raise DecryptionError("malformed ciphertext")
    return parts[0], parts[1], parts[2]


def parse_keys(spec: str) -> KeyRing:
    """Parse ``id:base64key,...``; refuse anything but 256-bit keys."""
    keys: dict[str, AESGCM] = {}
    primary = ""
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEYS entries must look like id:base64key (id of letters, digits, _ or -)."
            )
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ImproperlyConfigured(f"FIELD_ENCRYPTION_KEYS key {key_id!r} is not valid base64.") from exc
        if len(raw) != 32:
            raise ImproperlyConfigured(f"FIELD_ENCRYPTION_KEYS key {key_id!r} must be 32 bytes (AES-256).")
        if key_id in keys:
            raise ImproperlyConfigured(f"FIELD_ENCRYPTION_KEYS repeats key id {key_id!r}.")
        keys[key_id] = AESGCM(raw)
        primary = primary or key_id
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty.")
    return KeyRing(primary_id=primary, keys=keys)


@lru_cache(maxsize=4)
def _ring_for(spec: str) -> KeyRing:
    return parse_keys(spec)


def keyring() -> KeyRing:
    """The key ring of the current settings (cached per distinct setting)."""
    return _ring_for(settings.FIELD_ENCRYPTION_KEYS)


def associated_data(label: str, field: str, row_uuid: object) -> bytes:
    return f"{label}|{field}|{row_uuid}".encode()
