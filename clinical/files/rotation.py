"""Key rotation for encrypted files, as a ``Rotator`` for ``accounts.rotation.register_rotators``.

A file is never rewritten in place: Django's storage API cannot replace an
object atomically, and our storages refuse to overwrite. Instead, per batch:

1. each file's header is read; a file already under the primary key is skipped
   (which is what lets an interrupted run resume);
2. the others are re-sealed (opened with any configured key, sealed with the
   primary) and saved under a new random key; a file that does not open is
   reported as a ``Failure`` and nothing is written for it;
3. in one transaction, ``relink(document_uuid, old_key, new_key)`` moves each
   document to its new key. It is the caller's guarded update (``UPDATE ...
   SET storage_key = new WHERE uuid = ... AND storage_key = old``) and says
   whether it changed a row;
4. once that transaction commits, the old objects are deleted; a document
   that was not relinked (changed or removed meanwhile) is counted as
   ``changed`` and its new object deleted at once.

A crash leaves at worst an orphaned object (a new one not yet linked, or an
old one not yet deleted), never a document without its file.

Registering, once the Document model exists (in ``ClinicalConfig.ready()``)::

    register_rotators(lambda: [FileRotator(storage=default_storage, files=..., relink=...)])
"""

from __future__ import annotations

import io
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import Storage
from django.db import DEFAULT_DB_ALIAS, transaction

from accounts.encryption import DecryptionError, KeyRing
from accounts.rotation import Failure, Rotator, Tally, TargetReport
from clinical.files.sealing import read_header, reseal
from clinical.files.storage import SPOOL_MEMORY_BYTES, discard, open_sealed, read_sealed_head, save_new

DocumentUuid = uuid.UUID | str
StoredFiles = Callable[[], Iterable[tuple[str, DocumentUuid]]]
Relink = Callable[[DocumentUuid, str, str], bool]


def _storage_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, DecryptionError)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return errors
    return (*errors, BotoCoreError, ClientError)


@dataclass(frozen=True)
class FileRotator:
    """Re-seals the files that ``files()`` lists, ``(storage key, document UUID)`` pairs, in ``storage``.

    ``files`` is called once per ``tally`` and once per ``rotate``; it should
    list every stored file in a stable order (by primary key, say).
    ``relink(document_uuid, old_key, new_key)`` points the document to its new
    file, only if it still points to the old one, and returns whether it did.
    ``table`` and ``column`` name the target in reports; failures name the
    document's UUID as their ``pk``.
    """

    storage: Storage
    files: StoredFiles
    relink: Relink
    table: str = "clinical_document"
    column: str = "storage_key"
    using: str = DEFAULT_DB_ALIAS

    def tally(self, ring: KeyRing) -> Tally:
        current = outdated = 0
        for key, _ in self.files():
            if self._key_id(key) == ring.primary_id:
                current += 1
            else:
                outdated += 1  # including files that cannot be read: rotate() reports them
        return Tally(self.table, self.column, current, outdated)

    def rotate(self, ring: KeyRing, *, batch_size: int, advance: Callable[[int], object]) -> TargetReport:
        report = TargetReport(self.table, self.column)
        batch: list[tuple[str, DocumentUuid]] = []
        for pair in self.files():
            batch.append(pair)
            if len(batch) == batch_size:
                self._rotate_batch(ring, batch, report)
                advance(len(batch))
                batch = []
        if batch:
            self._rotate_batch(ring, batch, report)
            advance(len(batch))
        return report

    def _key_id(self, key: str) -> str | None:
        try:
            return read_header(io.BytesIO(read_sealed_head(self.storage, key))).key_id
        except _storage_errors():
            return None

    def _rotate_batch(self, ring: KeyRing, batch: Sequence[tuple[str, DocumentUuid]], report: TargetReport) -> None:
        moves: list[tuple[DocumentUuid, str, str]] = []
        try:
            for old_key, document in batch:
                if self._key_id(old_key) == ring.primary_id:
                    continue
                try:
                    new_key = self._reseal(ring, old_key, document)
                except _storage_errors() as exc:
                    report.failures.append(Failure(self.table, self.column, str(document), _reason(exc)))
                    continue
                moves.append((document, old_key, new_key))
            with transaction.atomic(using=self.using):
                relinked = [move for move in moves if self.relink(*move)]
                old_keys = [old_key for _, old_key, _ in relinked]
                transaction.on_commit(lambda: self._discard_all(old_keys), using=self.using, robust=True)
        except BaseException:
            self._discard_all([new_key for _, _, new_key in moves])
            raise
        for move in moves:
            document, _, new_key = move
            if move in relinked:
                report.resealed += 1
            else:
                report.changed.append(str(document))
                discard(self.storage, new_key)

    def _reseal(self, ring: KeyRing, old_key: str, document: DocumentUuid) -> str:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, dir=settings.FILE_UPLOAD_TEMP_DIR) as sealed:
            stored = open_sealed(self.storage, old_key)
            try:
                for piece in reseal(stored, document_uuid=document, ring=ring):
                    sealed.write(piece)
            finally:
                stored.close()
            return save_new(self.storage, sealed)

    def _discard_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            discard(self.storage, key)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DecryptionError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "the stored file is missing"
    return f"the stored file could not be read ({type(exc).__name__})"


def _conforms(rotator: FileRotator) -> Rotator:
    return rotator  # mypy checks here that FileRotator is a Rotator
