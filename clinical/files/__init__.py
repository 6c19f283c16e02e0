"""Documents' files: checked by content, encrypted before storage, streamed back decrypted.

- ``inspection``: the allow-list (PDF, PNG, JPEG, UTF-8 text), checked on the
  bytes and by a real parse; ``FileRejected`` says why a file is refused.
- ``sealing``: the ``CTF1`` format, AES-256-GCM in chunks under the keys of the
  encrypted fields.
- ``storage``: ``store`` and ``open_plaintext`` over a django-storages backend.
- ``rotation``: ``FileRotator``, the files' part of ``manage.py rotate_keys``.
"""

from clinical.files.inspection import FileRejected, Inspected, inspect
from clinical.files.rotation import FileRotator
from clinical.files.sealing import decrypt_stream, encrypt_stream, reseal, sealed_key_id
from clinical.files.storage import PlaintextStream, StoredFile, discard, open_plaintext, store, stored_keys

__all__ = [
    "FileRejected",
    "FileRotator",
    "Inspected",
    "PlaintextStream",
    "StoredFile",
    "decrypt_stream",
    "discard",
    "encrypt_stream",
    "inspect",
    "open_plaintext",
    "reseal",
    "sealed_key_id",
    "store",
    "stored_keys",
]
