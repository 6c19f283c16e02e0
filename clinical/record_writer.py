"""Storing a new record version: the row, its ledger entry and its audit entry in one statement.

A record version is written once and never changed, and it must never exist
without its ledger entry and its audit entry. One SQL statement writes all
three, so PostgreSQL makes them atomic by itself: in autocommit the statement
is its own transaction (no BEGIN and COMMIT round trips), inside a caller's
transaction it is part of that one. It costs one round trip instead of five,
which is what keeps an audited, chained write within three plain inserts.

The statement, built once from the models' own field definitions::

    WITH head   AS (UPDATE clinical_ledgerhead ... RETURNING ...)      -- the chain's lock
       , record AS (INSERT INTO clinical_medicalrecord ... FROM head)
       , entry  AS (INSERT INTO clinical_ledgerentry ... FROM head, record)
       , audit  AS (INSERT INTO auditlog_logentry ... FROM record)
    SELECT ...

Everything hangs on ``head``: without a head row (a new or flushed database)
nothing at all is written, and ``ledger.execute_on_head`` creates the head and
runs the statement again.

Column values come from Django's public field API, as ``Model.save()`` makes
them (``pre_save`` then ``get_db_prep_save``), so defaults, ``auto_now`` and
the encrypted fields behave as in a save. The record's own model signals are
not sent: auditlog is the only receiver of them, and its CREATE entry is the
one written here. That entry is built as auditlog's ``log_create`` builds it:
``model_instance_diff`` for the changes, the ``pre_log``/``post_log`` signals,
``disable_auditlog`` honoured, and the entry's own ``pre_save``/``post_save``
sent, which is how ``set_actor`` and the middleware fill in the actor, address
and port. ``tests/clinical/test_record_writer.py`` compares it column by column
with the entry auditlog writes for a save.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from auditlog import get_logentry_model
from auditlog.cid import get_cid
from auditlog.context import auditlog_disabled
from auditlog.diff import model_instance_diff
from auditlog.registry import auditlog
from auditlog.signals import post_log, pre_log
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import connection, models
from django.db.models.signals import post_save, pre_save
from django.utils.encoding import smart_str

from clinical import ledger
from clinical.models import LedgerEntry, LedgerEntryKind, MedicalRecord

# The record's id while auditlog's diff is computed: the row has none before the
# INSERT, so the statement puts the real one in its place (``changes -> id -> 1``).
_ID_PLACEHOLDER = 0


def _json_changes() -> bool:
    return bool(getattr(settings, "AUDITLOG_STORE_JSON_CHANGES", False))  # auditlog's own default


@cache
def _insertable(model: type[models.Model]) -> tuple[models.Field[Any, Any], ...]:
    return tuple(field for field in model._meta.concrete_fields if not field.primary_key)


def _typed(field: models.Field[Any, Any], prefix: str) -> str:
    return f"CAST(%({prefix}{field.column})s AS {field.db_type(connection)})"


def _values(instance: models.Model, prefix: str) -> dict[str, Any]:
    """The INSERT parameters of ``instance``, as ``Model.save()`` would send them."""
    return {
        prefix + field.column: field.get_db_prep_save(field.pre_save(instance, add=True), connection)
        for field in _insertable(type(instance))
    }


@cache
def _statement(audited: bool, id_in_changes: str | None) -> str:
    """The write statement; ``id_in_changes`` is how the diff spells the id (``text``, ``json``) or None."""
    quote = connection.ops.quote_name
    record_fields = _insertable(MedicalRecord)
    ctes = [
        f"head AS ({ledger.HEAD_ADVANCE_SQL})",
        f"""record AS (
    INSERT INTO {quote(MedicalRecord._meta.db_table)} ({", ".join(quote(f.column) for f in record_fields)})
    SELECT {", ".join(_typed(f, "r_") for f in record_fields)} FROM head
    RETURNING id
)""",  # noqa: S608 - names from the models, values as parameters
        f"entry AS ({ledger.entry_insert_sql('record.id', sources='head, record')}"
        " RETURNING id, seq, prev_hash, entry_hash)",
    ]
    columns = "entry.id, entry.seq, entry.prev_hash, entry.entry_hash"
    if audited:
        entry_model = get_logentry_model()
        audit_fields = _insertable(entry_model)
        expressions = []
        for field in audit_fields:
            if field.column == "object_pk":
                expressions.append("record.id::text")
            elif field.column == "object_id":
                expressions.append("record.id")
            elif field.column == "changes" and id_in_changes is not None:
                real_id = "to_jsonb(record.id::text)" if id_in_changes == "text" else "to_jsonb(record.id)"
                expressions.append(f"jsonb_set({_typed(field, 'a_')}, '{{id,1}}', {real_id})")
            else:
                expressions.append(_typed(field, "a_"))
        ctes.append(
            f"""audit AS (
    INSERT INTO {quote(entry_model._meta.db_table)} ({", ".join(quote(f.column) for f in audit_fields)})
    SELECT {", ".join(expressions)} FROM record
    RETURNING id
)"""  # noqa: S608 - names from the models, values as parameters
        )
        columns += ", audit.id"
    sources = "record, entry, audit" if audited else "record, entry"
    return f"WITH {', '.join(ctes)}\nSELECT record.id, {columns} FROM {sources}"


def _audit_entry(record: MedicalRecord) -> tuple[Any, list[Any]] | None:
    """The CREATE entry auditlog would write for ``record`` (not saved), or None where it would write none."""
    if auditlog_disabled.get() or not auditlog.contains(MedicalRecord):
        return None
    if auditlog.get_serialize_options(MedicalRecord)["serialize_data"]:
        raise RuntimeError("record audit entries must not carry serialized data: the payload is PHI")
    entry_model = get_logentry_model()
    pre_log_results = pre_log.send(MedicalRecord, instance=record, action=entry_model.Action.CREATE)
    if any(result is False for _, result in pre_log_results):
        return None
    record.pk = _ID_PLACEHOLDER
    try:
        changes = model_instance_diff(None, record, use_json_for_changes=_json_changes())
    finally:
        record.pk = None
    entry = entry_model(
        content_type=ContentType.objects.get_for_model(MedicalRecord),
        object_pk="",
        object_repr=smart_str(record),
        serialized_data=None,
        action=entry_model.Action.CREATE,
        changes=changes,
        cid=get_cid(),
    )
    additional = getattr(record, "get_additional_data", None)
    if callable(additional):
        entry.additional_data = additional()
    pre_save.send(entry_model, instance=entry, raw=False, using=connection.alias, update_fields=None)
    return entry, pre_log_results


def insert(record: MedicalRecord) -> LedgerEntry:
    """Store the new version ``record`` with its ledger entry and its audit entry, all or nothing.

    Returns the ledger entry. ``record`` gets its id, as after ``save()``.
    """
    if not record._state.adding or record.pk is not None:
        raise ValueError("insert writes new record versions only")
    ledger_entry, params = ledger.new_entry(record, LedgerEntryKind.VERSION)
    params.update(_values(record, "r_"))  # first: the diff shows what pre_save set (updated_at)
    audit = _audit_entry(record)
    id_in_changes = None
    if audit is not None:
        changes = audit[0].changes or {}
        if "id" in changes:
            id_in_changes = "text" if isinstance(changes["id"][1], str) else "json"
        params.update(_values(audit[0], "a_"))
    row = ledger.execute_on_head(_statement(audit is not None, id_in_changes), params)
    record.pk = row[0]
    record._state.adding = False
    record._state.db = connection.alias
    ledger_entry.record_id = record.pk
    ledger.entry_written(ledger_entry, row[1:5])
    if audit is not None:
        _audit_written(record, *audit, entry_id=row[5])
    return ledger_entry


def _audit_written(record: MedicalRecord, entry: Any, pre_log_results: list[Any], *, entry_id: int) -> None:
    entry.pk = entry_id
    entry.object_pk, entry.object_id = str(record.pk), record.pk
    if entry.changes and "id" in entry.changes:
        before, placeholder = entry.changes["id"]
        real_id = str(record.pk) if isinstance(placeholder, str) else record.pk
        entry.changes["id"] = type(entry.changes["id"])((before, real_id))
    entry._state.adding = False
    entry._state.db = connection.alias
    entry_model = type(entry)
    post_save.send(entry_model, instance=entry, created=True, update_fields=None, raw=False, using=connection.alias)
    post_log.send(
        MedicalRecord,
        instance=record,
        instance_old=None,
        action=entry_model.Action.CREATE,
        error=None,
        pre_log_results=pre_log_results,
        changes=entry.changes,
        log_entry=entry,
        log_created=True,
        use_json_for_changes=_json_changes(),
    )
