"""How Caretrail registers models with django-auditlog.

Encrypted fields are masked completely in diffs: the log says that the field
changed, never what it said. Reverse relations are left out: on a create or a
delete auditlog would otherwise write the related manager's name
(``clinical.LedgerEntry.None``) or, for a reverse one-to-one, query the related
row on every write.
"""

from __future__ import annotations

from typing import Any

from auditlog.context import auditlog_value
from auditlog.registry import auditlog
from django.db import models

from accounts.fields import encrypted_field_names

MASK = "[encrypted]"


def mask_completely(value: Any) -> str:
    return MASK


def reverse_relation_names(model: type[models.Model]) -> list[str]:
    """The relations other models hold to ``model``: not columns of its table."""
    return [field.name for field in model._meta.get_fields() if field.auto_created and not field.concrete]


def audit_register(model: type[models.Model], **options: Any) -> None:
    hidden = encrypted_field_names(model)
    auditlog.register(
        model,
        mask_fields=[*options.pop("mask_fields", []), *hidden],
        exclude_fields=[*options.pop("exclude_fields", []), *reverse_relation_names(model)],
        mask_callable="accounts.audit.mask_completely",
        **options,
    )


def bind_actor(user: Any) -> None:
    """Record ``user`` as the actor of the audit context opened by the middleware."""
    try:
        context = auditlog_value.get()
    except LookupError:
        return
    if context.get("actor") is None:
        context["actor"] = user
