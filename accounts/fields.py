"""Model fields that keep PHI encrypted in the database.

The database column holds only the sealed token (see ``accounts.encryption``).
Values are opened lazily, on first attribute access, because the associated
data needs the row's UUID, which ``from_db_value`` does not see. A value that
was read and not changed is written back as the same token, so saving a row
does not re-encrypt untouched fields.

Writing plaintext with ``QuerySet.update()`` or ``bulk_update()`` is refused:
without the row there is nothing to bind the ciphertext to, and a plaintext
value must never reach the database.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Case, F, Value, When
from django.db.models.query_utils import DeferredAttribute

from accounts.encryption import associated_data, keyring

ROW_ID_ATTRIBUTE = "uuid"


LOADED_ROW_ID = "_sealed_row_id"


def loaded_row_id(instance: Any) -> Any:
    """The UUID the row had when read from the database: its tokens are bound to it."""
    return instance.__dict__.get(LOADED_ROW_ID) or getattr(instance, ROW_ID_ATTRIBUTE, None)


class Sealed(str):
    """A token read from the database and not yet opened."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<sealed value>"


class _EncryptedAttribute(DeferredAttribute):
    """A data descriptor, so every read passes here even when the value is loaded."""

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.field.attname] = value

    def __get__(self, instance: Any, cls: Any = None) -> Any:
        if instance is None:
            return self
        value = super().__get__(instance, cls)
        if isinstance(value, Sealed):
            field: EncryptedMixin = self.field  # type: ignore[assignment]
            bound_to = loaded_row_id(instance)
            raw = keyring().open(value, field._aad(instance, bound_to))
            plaintext = field.decode(raw)
            instance.__dict__[self.field.attname] = plaintext
            # The opened bytes are what ``encode`` made of the value when it was sealed, so
            # they are its fingerprint: no second encoding on every read. (Bytes from
            # another encoder only cost a needless re-seal at the next save.)
            instance.__dict__[field.cache_name] = (raw.decode("utf-8"), str(value), bound_to)
            value = plaintext
        return value


class EncryptedMixin:
    """Shared behaviour of the encrypted text and JSON fields."""

    descriptor_class = _EncryptedAttribute
    attname: str
    name: str
    model: type[models.Model]

    # What a subclass defines -------------------------------------------------
    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, raw: bytes) -> Any:
        raise NotImplementedError

    # Mechanics ---------------------------------------------------------------
    @property
    def cache_name(self) -> str:
        return f"_sealed_{self.attname}"

    def _aad(self, instance: models.Model, row_id: Any = None) -> bytes:
        row_id = row_id or getattr(instance, ROW_ID_ATTRIBUTE, None)
        if row_id is None:
            raise ValueError(
                f"{self.model._meta.label}.{self.name} needs the row's {ROW_ID_ATTRIBUTE} before it can be encrypted."
            )
        return associated_data(self.model._meta.label_lower, self.attname, row_id)

    def open_token(self, instance: models.Model, token: str, row_id: Any = None) -> Any:
        return self.decode(keyring().open(token, self._aad(instance, row_id)))

    def seal_value(self, instance: models.Model, value: Any) -> str:
        return keyring().seal(self.encode(value), self._aad(instance))

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        value = model_instance.__dict__.get(self.attname)
        current = getattr(model_instance, ROW_ID_ATTRIBUTE, None)
        if value is None:
            return None
        if isinstance(value, Sealed):
            if loaded_row_id(model_instance) == current:
                return value
            # The row got a new UUID (a copy): open with the old binding, seal for the new.
            value = getattr(model_instance, self.attname)
        # The encoding is the value's fingerprint (compared with the one cached when it was last sealed
        # or opened) and, when it changed, the plaintext to seal: one encoding for both.
        raw = self.encode(value)
        fingerprint = raw.decode("utf-8")
        cached = model_instance.__dict__.get(self.cache_name)
        if cached is not None and cached[0] == fingerprint and cached[2] == current:
            return Sealed(cached[1])
        token = keyring().seal(raw, self._aad(model_instance))
        model_instance.__dict__[self.cache_name] = (fingerprint, token, current)
        return Sealed(token)

    def get_db_prep_save(self, value: Any, connection: Any) -> Any:
        if value is None or isinstance(value, Sealed):
            return None if value is None else str(value)
        if hasattr(value, "resolve_expression"):
            return value
        raise TypeError(
            f"{self.model._meta.label}.{self.name} is encrypted per row; write it "
            "through Model.save() or bulk_create(), never QuerySet.update()."
        )

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        # Reached outside writes: Django's Python-side constraint checks and
        # lookups. They only need to know whether a value is there, so a
        # plaintext is replaced by a marker and never leaves the process.
        if value is None or isinstance(value, Sealed):
            return None if value is None else str(value)
        return "[encrypted]"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return None if value is None else Sealed(value)

    def value_to_string(self, obj: models.Model) -> str:
        return "[encrypted]"


class EncryptedTextField(EncryptedMixin, models.TextField):
    """Free text (notes, reasons, reactions) stored encrypted."""

    def encode(self, value: Any) -> bytes:
        return str(value).encode("utf-8")

    def decode(self, raw: bytes) -> str:
        return raw.decode("utf-8")

    def to_python(self, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        return str(value)

    def db_type(self, connection: Any) -> str:
        return "text"


class EncryptedJSONField(EncryptedMixin, models.TextField):
    """A JSON document stored encrypted; it round-trips exactly what was given."""

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def decode(self, raw: bytes) -> Any:
        return json.loads(raw)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and not isinstance(value, Sealed):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValidationError("Enter valid JSON.", code="invalid") from exc
        return value

    def formfield(self, **kwargs: Any) -> Any:
        from django import forms

        return super().formfield(**{"form_class": forms.JSONField, **kwargs})

    def db_type(self, connection: Any) -> str:
        return "text"


def _carries_only_ciphertext(expression: Any, column: str) -> bool:
    """True for expressions that can only put a sealed token (or NULL) in ``column``."""
    if isinstance(expression, Value):
        return expression.value is None or isinstance(expression.value, Sealed)
    if isinstance(expression, Case):
        return all(_carries_only_ciphertext(w, column) for w in expression.cases) and _carries_only_ciphertext(
            expression.default, column
        )
    if isinstance(expression, When):
        return _carries_only_ciphertext(expression.result, column)
    if isinstance(expression, F):
        return expression.name == column
    return False


class EncryptedQuerySet(models.QuerySet[Any]):
    """Refuses ``update()`` values that could put plaintext in an encrypted column.

    A plain value is refused by the field itself; this catches expressions
    (``Value("…")``, ``F("other_column")``, ``Concat(...)``), which Django
    compiles without asking the field.
    """

    def update(self, **kwargs: Any) -> int:
        for name, value in kwargs.items():
            field = self.model._meta.get_field(name)
            expression = hasattr(value, "resolve_expression")
            if isinstance(field, EncryptedMixin) and expression and not _carries_only_ciphertext(value, field.attname):
                raise TypeError(
                    f"{self.model._meta.label}.{name} is encrypted per row; an expression "
                    "could write plaintext into it."
                )
        return super().update(**kwargs)


EncryptedManager = models.Manager.from_queryset(EncryptedQuerySet)


def encrypted_field_names(model: type[models.Model]) -> list[str]:
    return [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedMixin)]
