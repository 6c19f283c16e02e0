"""Key rotation: re-seal every encrypted value under the primary key.

After a new key is put first in ``FIELD_ENCRYPTION_KEYS`` (the old ones stay
in the list, so they still open), ``rotate_keys()`` walks every encrypted
column of every model, in batches by ascending primary key, and re-seals the
values whose token names another key. The work left is always "the values
not yet under the primary key", so there is no state to keep: an interrupted
run resumes where it stopped, and a run after a complete one changes nothing.

Rotation writes with raw SQL, never ``Model.save()``: the data does not
change, so there is nothing for the audit log or for signal receivers, and
``updated_at`` keeps its value (the trigger function exempts transactions
that set ``caretrail.key_rotation``, see ``accounts.schema``). Each write is
guarded by the token it replaces, so an application write made in the
meantime is never overwritten.

Sealed values that do not live in an encrypted column (encrypted files, for
instance) join the rotation through ``register_rotators()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

from accounts.encryption import TOKEN_PREFIX, DecryptionError, KeyRing, associated_data, keyring
from accounts.fields import ROW_ID_ATTRIBUTE, EncryptedMixin
from accounts.schema import KEY_ROTATION_SETTING

# Reports ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A value that could not be opened. It names where the value is, never the value."""

    table: str
    column: str
    pk: Any
    reason: str


@dataclass(frozen=True)
class Tally:
    """How many values of a column are under the primary key, and how many under another."""

    table: str
    column: str
    current: int
    outdated: int


@dataclass
class TargetReport:
    """What one run did to one column (or other registered target)."""

    table: str
    column: str
    current: int = 0  # already under the primary key when the run began
    resealed: int = 0
    changed: list[Any] = dataclasses.field(default_factory=list)  # pks the application rewrote meanwhile: left alone
    failures: list[Failure] = dataclasses.field(default_factory=list)


@dataclass
class RotationReport:
    primary_key_id: str
    targets: list[TargetReport] = dataclasses.field(default_factory=list)

    @property
    def resealed(self) -> int:
        return sum(t.resealed for t in self.targets)

    @property
    def current(self) -> int:
        return sum(t.current for t in self.targets)

    @property
    def changed(self) -> int:
        return sum(len(t.changed) for t in self.targets)

    @property
    def failures(self) -> list[Failure]:
        return [failure for t in self.targets for failure in t.failures]

    @property
    def ok(self) -> bool:
        return not self.failures


# The extension point ---------------------------------------------------------------------


class ProgressBar(Protocol):
    """What ``rotate_keys`` needs of a progress display (a ``tqdm`` bar fits)."""

    def update(self, n: int) -> object: ...

    def close(self) -> object: ...


Progress = Callable[[str, int], ProgressBar]
"""Called once per target with its label and the number of outdated values."""


class Rotator(Protocol):
    """Something that holds sealed values and can re-seal them under the primary key.

    ``rotate`` must follow the rules of this module: work in batches, each in
    its own transaction; skip what is already under ``ring.primary_id`` (that
    is what makes a second run resume); report a value it cannot open as a
    ``Failure`` instead of raising or skipping it silently; call ``advance``
    with the number of values handled after each batch.
    """

    @property
    def table(self) -> str: ...

    @property
    def column(self) -> str: ...

    def tally(self, ring: KeyRing) -> Tally: ...

    def rotate(self, ring: KeyRing, *, batch_size: int, advance: Callable[[int], object]) -> TargetReport: ...


RotatorFactory = Callable[[], Iterable[Rotator]]

_rotator_factories: list[RotatorFactory] = []


def register_rotators(factory: RotatorFactory) -> RotatorFactory:
    """Add sealed values that do not live in an encrypted column (encrypted files, say).

    ``factory`` is called at every run, after the encrypted columns, and
    returns the ``Rotator`` objects to run. Register from an
    ``AppConfig.ready()``; usable as a decorator; registering twice is harmless.
    """
    if factory not in _rotator_factories:
        _rotator_factories.append(factory)
    return factory


def unregister_rotators(factory: RotatorFactory) -> None:
    if factory in _rotator_factories:
        _rotator_factories.remove(factory)


# Encrypted columns -----------------------------------------------------------------------


def encrypted_columns(
    models_to_scan: Iterable[type[Model]] | None = None,
) -> list[tuple[type[Model], Field[Any, Any]]]:
    """Every (model, field) pair whose column holds sealed tokens, in a stable order.

    Found, not listed: any encrypted field of any installed concrete model
    takes part, including models added after this was written. Proxies are
    left out (their table is their concrete model's), and so are unmanaged
    models (not our tables to write; a view over one of ours would count twice).
    """
    candidates = apps.get_models() if models_to_scan is None else models_to_scan
    pairs = [
        (model, model_field)
        for model in candidates
        if not model._meta.proxy and model._meta.managed
        for model_field in model._meta.local_concrete_fields
        if isinstance(model_field, EncryptedMixin)
    ]
    return sorted(pairs, key=lambda pair: (pair[0]._meta.db_table, pair[1].column))


@dataclass(frozen=True)
class ColumnRotator:
    """Re-seals one encrypted column in batches of raw SQL."""

    model: type[Model]
    field: Field[Any, Any]

    def __post_init__(self) -> None:
        self._row_id_field()  # refuse at once, not halfway through a run

    def _pk_field(self) -> Field[Any, Any]:
        pk = self.model._meta.pk
        assert pk is not None  # every concrete model has one
        return pk

    def _row_id_field(self) -> Field[Any, Any]:
        row_id = self.model._meta.get_field(ROW_ID_ATTRIBUTE)
        # Multi-table inheritance would put the row id in another table.
        if not isinstance(row_id, Field) or row_id not in self.model._meta.local_concrete_fields:
            raise ImproperlyConfigured(
                f"{self.model._meta.label}.{self.field.name}: rotation needs {ROW_ID_ATTRIBUTE!r} in the same table."
            )
        return row_id

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    @property
    def column(self) -> str:
        return self.field.column

    @property
    def using(self) -> str:
        return router.db_for_write(self.model)

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.using]

    def _names(self) -> tuple[str, str, str, str]:
        quote = self.connection.ops.quote_name
        return (
            quote(self.table),
            quote(self._pk_field().column),
            quote(self._row_id_field().column),
            quote(self.column),
        )

    def associated_data(self, row_id: Any) -> bytes:
        # The binding EncryptedMixin uses. Were the two ever to differ, opening
        # would fail and the value be reported: nothing is written with a wrong binding.
        return associated_data(self.field.model._meta.label_lower, self.field.attname, row_id)

    def tally(self, ring: KeyRing) -> Tally:
        table, _, _, column = self._names()
        sql = (
            f"SELECT count(*) FILTER (WHERE starts_with({column}, %s)), "  # noqa: S608 - quoted identifiers
            f"count(*) FILTER (WHERE NOT starts_with({column}, %s)) "
            f"FROM {table} WHERE {column} IS NOT NULL"
        )
        prefix = primary_prefix(ring)
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [prefix, prefix])
            current, outdated = cursor.fetchone()
        return Tally(self.table, self.column, current, outdated)

    def read_batch(self, ring: KeyRing, *, after: Any, batch_size: int) -> list[tuple[Any, Any, str]]:
        """(pk, row id, token) of the next values not under the primary key, by ascending pk."""
        table, pk, row_id, column = self._names()
        conditions = [f"{column} IS NOT NULL", f"NOT starts_with({column}, %s)"]
        params: list[Any] = [primary_prefix(ring)]
        if after is not None:
            conditions.append(f"{pk} > %s")
            params.append(after)
        sql = (
            f"SELECT {pk}, {row_id}, {column} FROM {table} "  # noqa: S608 - quoted identifiers
            f"WHERE {' AND '.join(conditions)} ORDER BY {pk} LIMIT %s"
        )
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [*params, batch_size])
            return [(row[0], row[1], row[2]) for row in cursor.fetchall()]

    def write_batch(self, updates: Sequence[tuple[Any, str, str]]) -> set[Any]:
        """Write (pk, old token, new token) in one UPDATE; return the pks written.

        A row whose token is no longer the one read was rewritten by the
        application in the meantime and is left as it is.
        """
        table, pk, _, column = self._names()
        pk_type = self._pk_field().db_type(self.connection)
        rows = ", ".join([f"(%s::{pk_type}, %s::text, %s::text)"] * len(updates))
        sql = (
            f"UPDATE {table} AS t SET {column} = v.new "  # noqa: S608 - quoted identifiers
            f"FROM (VALUES {rows}) AS v(pk, old, new) "
            f"WHERE t.{pk} = v.pk AND t.{column} = v.old RETURNING t.{pk}"
        )
        with self.connection.cursor() as cursor:
            # The updated_at trigger leaves this UPDATE alone. The setting is
            # local to the transaction, and switched off again at once in case
            # the caller's transaction (a test, say) goes on after this batch.
            cursor.execute("SELECT set_config(%s, 'on', true)", [KEY_ROTATION_SETTING])
            cursor.execute(sql, [value for update in updates for value in update])
            written = {row[0] for row in cursor.fetchall()}
            cursor.execute("SELECT set_config(%s, '', true)", [KEY_ROTATION_SETTING])
        return written

    def reseal(
        self, ring: KeyRing, rows: Sequence[tuple[Any, Any, str]]
    ) -> tuple[list[tuple[Any, str, str]], list[Failure]]:
        updates: list[tuple[Any, str, str]] = []
        failures: list[Failure] = []
        for pk, row_id, token in rows:
            aad = self.associated_data(row_id)
            try:
                plaintext = ring.open(token, aad)
            except DecryptionError as exc:
                failures.append(Failure(self.table, self.column, pk, str(exc)))
                continue
            updates.append((pk, token, ring.seal(plaintext, aad)))
        return updates, failures

    def rotate(self, ring: KeyRing, *, batch_size: int, advance: Callable[[int], object]) -> TargetReport:
        report = TargetReport(self.table, self.column)
        after = None
        while True:
            with transaction.atomic(using=self.using):
                rows = self.read_batch(ring, after=after, batch_size=batch_size)
                updates, failures = self.reseal(ring, rows)
                written = self.write_batch(updates) if updates else set()
            # Counted only once the batch is committed.
            report.resealed += len(written)
            report.changed += [pk for pk, _, _ in updates if pk not in written]
            report.failures += failures
            advance(len(rows))
            if len(rows) < batch_size:
                return report
            # Failed values stay outdated: move past them, not back to them.
            after = rows[-1][0]


def primary_prefix(ring: KeyRing) -> str:
    return f"{TOKEN_PREFIX}${ring.primary_id}$"


# Services --------------------------------------------------------------------------------


def rotators(*, models: Iterable[type[Model]] | None = None) -> list[Rotator]:
    """The encrypted columns (of ``models``, or of every model), then the registered extras.

    Extras take part only in a full run (``models=None``).
    """
    found: list[Rotator] = [ColumnRotator(model, model_field) for model, model_field in encrypted_columns(models)]
    if models is None:
        for factory in _rotator_factories:
            found.extend(factory())
    return found


def count_outdated(*, models: Iterable[type[Model]] | None = None) -> list[Tally]:
    """For a dry run: per target, the values under the primary key and those under another."""
    ring = keyring()
    return [rotator.tally(ring) for rotator in rotators(models=models)]


def rotate_keys(
    *,
    batch_size: int = 500,
    models: Iterable[type[Model]] | None = None,
    progress: Progress | None = None,
) -> RotationReport:
    """Re-seal every value not under the primary key; return what was done.

    Each batch is read, re-sealed and written in its own transaction, so an
    interruption loses at most the batch in flight and the next run goes on
    from there. Values that cannot be opened are listed in the report's
    ``failures`` (by table, column and pk) and left untouched; the caller
    decides what a failure means (the command exits non-zero).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    ring = keyring()
    report = RotationReport(primary_key_id=ring.primary_id)
    for rotator in rotators(models=models):
        tally = rotator.tally(ring)
        bar = progress(f"{tally.table}.{tally.column}", tally.outdated) if progress else None
        try:
            if tally.outdated:
                done = rotator.rotate(ring, batch_size=batch_size, advance=bar.update if bar else _ignore)
            else:
                done = TargetReport(tally.table, tally.column)
        finally:
            if bar:
                bar.close()
        report.targets.append(dataclasses.replace(done, current=tally.current))
    return report


def _ignore(_: int) -> None:
    return None
