"""The integrity ledger of medical records: an append-only hash chain, and its verification.

Each record write appends one :class:`~clinical.models.LedgerEntry` in the
writer's transaction (a new version in the very statement that inserts it,
``clinical.record_writer``; verification, entered-in-error and tombstones by
:func:`append`)::

    entry_hash = SHA-256(canonical JSON of {seq, record, version, kind, data_hash, prev_hash, created_at})

where ``prev_hash`` is the previous entry's ``entry_hash`` (64 zeros for the
first). One statement moves the head row (:class:`~clinical.models.LedgerHead`)
and inserts the entry; the head's row lock serialises writers until they
commit, so two concurrent writers can never both extend the same head: the
chain never forks, and ``seq`` has no gaps.

:func:`verify` recomputes everything: each entry's hash and link, each
record's plaintext hash against its own ``data_hash`` and the ledger's, records
missing from the ledger (inserted behind the application's back), ledger
versions whose record is gone without a tombstone (deleted outside policy),
and the published checkpoints. Problems come in chain order, so the first one
is the first broken link; a record with no entry at all has no place in the
chain and is reported after it. The whole check reads one snapshot, so a
record committed while it runs is not taken for one written behind the
application's back.

Publishing the head elsewhere is pluggable: ``LEDGER_HEAD_PUBLISHER`` names a
callable ``(seq, entry_hash) -> (published_to, receipt)``; the default records
the head in :class:`~clinical.models.LedgerCheckpoint` only. The scheduled task
``clinical.tasks.ledger_head_publish`` calls :func:`publish_head`.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from accounts.encryption import DecryptionError
from clinical import schema
from clinical.canonical import sha256_hex
from clinical.models import LedgerCheckpoint, LedgerEntry, LedgerEntryKind, LedgerHead, MedicalRecord

GENESIS_HASH = schema.LEDGER_GENESIS_HASH
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Where a problem with no place in the chain (a record without any ledger entry) sorts: after every entry.
AFTER_CHAIN = 2**63 - 1


def entry_hash(
    *,
    seq: int,
    record_uuid: Any,
    version: int,
    kind: str,
    data_hash: str,
    prev_hash: str,
    created_at: datetime.datetime,
) -> str:
    return sha256_hex(
        {
            "seq": seq,
            "record": str(record_uuid),
            "version": version,
            "kind": kind,
            "data_hash": data_hash,
            "prev_hash": prev_hash,
            "created_at": created_at.astimezone(datetime.UTC).isoformat(),
        }
    )


def _hash_of(entry: LedgerEntry) -> str:
    return entry_hash(
        seq=entry.seq,
        record_uuid=entry.record_uuid,
        version=entry.version,
        kind=entry.kind,
        data_hash=entry.data_hash,
        prev_hash=entry.prev_hash,
        created_at=entry.created_at,
    )


# Move the head: the UPDATE waits for a concurrent writer's row lock and then
# works on the head that writer committed (READ COMMITTED re-reads an updated
# row), so no two entries extend the same head. The entry hash is computed in SQL
# from the head it extends; the text hashed is the RFC 8785 form of the entry
# (sorted keys, no spaces, these values need no escaping), byte for byte what
# ``entry_hash`` hashes in Python. No head row (a new or flushed database): no row.
HEAD_ADVANCE_SQL = """
    UPDATE clinical_ledgerhead
    SET seq = seq + 1,
        prev_hash = entry_hash,
        entry_hash = encode(sha256(convert_to(
            '{"created_at":"' || %(created)s || '","data_hash":"' || %(data_hash)s
            || '","kind":"' || %(kind)s || '","prev_hash":"' || entry_hash
            || '","record":"' || %(record)s || '","seq":' || (seq + 1)
            || ',"version":' || %(version)s || '}', 'UTF8')), 'hex')
    WHERE id = 1
    RETURNING seq, prev_hash, entry_hash
"""


def entry_insert_sql(record_id: str, sources: str = "head") -> str:
    """The INSERT of the entry that extends ``head``; ``record_id`` is the SQL that names the record's id.

    ``sources`` is the FROM list: ``head`` and whatever else ``record_id`` reads.
    """
    return f"""
INSERT INTO clinical_ledgerentry
    (uuid, seq, record_id, record_uuid, version, kind, data_hash, prev_hash, entry_hash, created_at)
SELECT %(uuid)s, head.seq, {record_id}, %(record_uuid)s, %(version)s, %(kind)s, %(data_hash)s,
       head.prev_hash, head.entry_hash, %(created_at)s
FROM {sources}
"""  # noqa: S608 - record_id is SQL written here, values are parameters


# One statement, one round trip: move the head and insert the entry.
APPEND_SQL = f"""
WITH head AS ({HEAD_ADVANCE_SQL})
{entry_insert_sql("%(record_id)s")}
RETURNING id, seq, prev_hash, entry_hash
"""


def _utc_text(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat()


def ensure_head() -> None:
    """Create the head row from the last entry if it is missing."""
    with connection.cursor() as cursor:
        cursor.execute(schema.ENSURE_LEDGER_HEAD)


def new_entry(record: MedicalRecord, kind: str) -> tuple[LedgerEntry, dict[str, Any]]:
    """The entry that will record ``record`` (not saved) and the parameters of the SQL above."""
    # The SQL writes these into the hashed JSON unescaped: they must need no escaping.
    if kind not in LedgerEntryKind.values or not _HEX64.match(record.data_hash or ""):
        raise ValueError("a ledger entry needs a known kind and a hex SHA-256 data hash")
    created_at = timezone.now()
    entry = LedgerEntry(
        uuid=uuid.uuid4(),
        record_id=record.pk,
        record_uuid=record.uuid,
        version=record.version,
        kind=str(kind),
        data_hash=record.data_hash,
        created_at=created_at,
    )
    params: dict[str, Any] = {
        "uuid": entry.uuid,
        "record_id": record.pk,
        "record_uuid": record.uuid,
        "record": str(record.uuid),
        "version": int(record.version),
        "kind": str(kind),
        "data_hash": record.data_hash,
        "created_at": created_at,
        "created": _utc_text(created_at),
    }
    return entry, params


def execute_on_head(sql: str, params: dict[str, Any]) -> tuple[Any, ...]:
    """Run ``sql``, which moves the head (``HEAD_ADVANCE_SQL``), and return its row.

    Without a head row the statement writes nothing and returns no row: the head
    is created from the last entry and the statement runs once more.
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None:
            ensure_head()
            cursor.execute(sql, params)
            row = cursor.fetchone()
    return tuple(row)


def entry_written(entry: LedgerEntry, row: tuple[Any, ...]) -> LedgerEntry:
    """``entry`` as the database wrote it, from the row (id, seq, prev_hash, entry_hash) it returned."""
    entry.id, entry.seq, entry.prev_hash, entry.entry_hash = row
    entry._state.adding = False
    entry._state.db = connection.alias
    return entry


def append(record: MedicalRecord, kind: str = LedgerEntryKind.VERSION) -> LedgerEntry:
    """Append one entry for a stored ``record``; call inside the transaction that changes the record.

    One statement (two the first time, when the head row is created). A new
    version is not appended here: ``clinical.record_writer.insert`` writes it
    with its entry in one statement.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("ledger.append must run inside the record's transaction")
    entry, params = new_entry(record, kind)
    return entry_written(entry, execute_on_head(APPEND_SQL, params))


def append_many(records: list[MedicalRecord], kind: str = LedgerEntryKind.VERSION) -> list[LedgerEntry]:
    """Append an entry for each of ``records`` in order: lock the head once, one bulk INSERT (seeding, imports)."""
    if not connection.in_atomic_block:
        raise RuntimeError("ledger.append_many must run inside the records' transaction")
    if not records:
        return []
    ensure_head()
    head = LedgerHead.objects.select_for_update().get(pk=1)
    seq, prev = head.seq, head.entry_hash
    entries = []
    for record in records:
        seq += 1
        entry = LedgerEntry(
            seq=seq,
            record_id=record.pk,
            record_uuid=record.uuid,
            version=record.version,
            kind=kind,
            data_hash=record.data_hash,
            prev_hash=prev,
            created_at=timezone.now(),
        )
        entry.entry_hash = _hash_of(entry)
        prev = entry.entry_hash
        entries.append(entry)
    LedgerEntry.objects.bulk_create(entries, batch_size=2000)
    LedgerHead.objects.filter(pk=1).update(seq=seq, entry_hash=prev, prev_hash=entries[-1].prev_hash)
    return entries


# Publishing the head ------------------------------------------------------------------


def record_in_database(seq: int, head: str) -> tuple[str, str]:
    """The default publisher: the checkpoint row itself is the publication."""
    return "database", ""


def publish_head() -> LedgerCheckpoint | None:
    """Publish the current head through ``LEDGER_HEAD_PUBLISHER`` and keep a checkpoint; None for an empty chain."""
    head = LedgerEntry.objects.order_by("-seq").values_list("seq", "entry_hash").first()
    if head is None:
        return None
    publisher: Callable[[int, str], tuple[str, str]] = import_string(
        getattr(settings, "LEDGER_HEAD_PUBLISHER", "clinical.ledger.record_in_database")
    )
    published_to, receipt = publisher(*head)
    return LedgerCheckpoint.objects.create(seq=head[0], entry_hash=head[1], published_to=published_to, receipt=receipt)


# Verification --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One broken link. ``where`` names the entry (``ledger #12``) or the record (``record <uuid> v2``)."""

    where: str
    what: str
    seq: int  # the chain position it is reported at, for ordering (AFTER_CHAIN: no position)

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Report:
    entries: int = 0
    records: int = 0
    checkpoints: int = 0
    problems: list[Problem] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _chunked(queryset: Any, size: int) -> Iterator[Any]:
    return queryset.iterator(chunk_size=size)


def verify(*, chunk_size: int = 2000, progress: Callable[[str, int], None] | None = None) -> Report:
    """Recompute the chain and every record's hash. Reads only; safe on a live database.

    The ledger and the records are read in two passes. Outside a transaction
    each pass would see the database as of its own start, and a record
    committed between them would look like one inserted without a ledger
    entry; so the check runs in one read-only REPEATABLE READ transaction. (A
    caller already inside a transaction keeps its own isolation level.)
    """
    if connection.in_atomic_block:
        return _verify(chunk_size=chunk_size, progress=progress)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _verify(chunk_size=chunk_size, progress=progress)


def _verify(*, chunk_size: int, progress: Callable[[str, int], None] | None) -> Report:
    report = Report(problems=[])
    problems: list[Problem] = []
    # (record uuid, version) -> (data hash, seq) of the entry that wrote that version.
    versions: dict[tuple[str, int], tuple[str, int]] = {}
    tombstoned: set[str] = set()
    seq_hashes: dict[int, str] = {}

    expected, prev = 1, GENESIS_HASH
    for entry in _chunked(LedgerEntry.objects.order_by("seq"), chunk_size):
        report.entries += 1
        where = f"ledger #{entry.seq}"
        if entry.seq != expected:
            missing = f"#{expected}" if entry.seq > expected else "an earlier position"
            what = f"out of sequence: expected {missing} here (entry deleted or moved)"
            problems.append(Problem(where, what, expected))
        if entry.prev_hash != prev:
            what = "does not link to the entry before it (inserted, deleted or reordered)"
            problems.append(Problem(where, what, entry.seq))
        if _hash_of(entry) != entry.entry_hash:
            problems.append(Problem(where, "its contents do not match its hash (entry altered)", entry.seq))
        record_key = str(entry.record_uuid)
        if entry.kind == LedgerEntryKind.VERSION:
            versions[(record_key, entry.version)] = (entry.data_hash, entry.seq)
        elif entry.kind == LedgerEntryKind.TOMBSTONE:
            tombstoned.add(record_key)
        seq_hashes[entry.seq] = entry.entry_hash
        expected, prev = entry.seq + 1, entry.entry_hash
        if progress is not None:
            progress("ledger", 1)

    seen: set[tuple[str, int]] = set()
    records = MedicalRecord.objects.order_by("id").only("id", "uuid", "version", "data_hash", "payload")
    for record in _chunked(records, chunk_size):
        report.records += 1
        key = (str(record.uuid), record.version)
        seen.add(key)
        where = f"record {record.uuid} v{record.version}"
        written = versions.get(key)
        at = written[1] if written else AFTER_CHAIN
        try:
            plaintext_hash = sha256_hex(record.payload)
        except DecryptionError:
            problems.append(Problem(where, "payload does not decrypt (ciphertext altered or moved)", at))
            plaintext_hash = None
        if plaintext_hash is not None and plaintext_hash != record.data_hash:
            problems.append(Problem(where, "payload does not match its data_hash (payload altered)", at))
        if written is None:
            what = "has no ledger entry (written outside the application, or its entry was removed)"
            problems.append(Problem(where, what, AFTER_CHAIN))
        elif written[0] != record.data_hash:
            problems.append(Problem(where, f"data_hash differs from ledger #{written[1]} (hash altered)", at))
        if progress is not None:
            progress("records", 1)

    for (record_key, version), (_, seq) in versions.items():
        if (record_key, version) not in seen and record_key not in tombstoned:
            problems.append(
                Problem(f"ledger #{seq}", f"record {record_key} v{version} is gone without a tombstone (deleted)", seq)
            )

    # A head that disagrees with an intact chain means entries were cut from its end.
    chain_intact = not problems
    head = LedgerHead.objects.filter(pk=1).first()
    if chain_intact and head is not None and (head.seq, head.entry_hash) != (expected - 1, prev):
        problems.append(
            Problem(
                f"ledger #{head.seq}",
                f"the head row (#{head.seq}) is not the last entry (#{expected - 1}) (head or chain altered)",
                AFTER_CHAIN,
            )
        )

    for checkpoint in LedgerCheckpoint.objects.order_by("seq"):
        report.checkpoints += 1
        if seq_hashes.get(checkpoint.seq) != checkpoint.entry_hash:
            problems.append(
                Problem(
                    f"ledger #{checkpoint.seq}",
                    f"differs from the head published to {checkpoint.published_to} "
                    f"at {checkpoint.created_at:%Y-%m-%d %H:%M} (chain rewritten)",
                    checkpoint.seq,
                )
            )

    problems.sort(key=lambda problem: problem.seq)
    report.problems = problems
    return report
