"""How Caretrail registers models with django-auditlog.

Encrypted fields are masked completely in diffs: the log says that the field
changed, never what it said.
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


def audit_register(model: type[models.Model], **options: Any) -> None:
    hidden = encrypted_field_names(model)
    auditlog.register(
        model,
        mask_fields=[*options.pop("mask_fields", []), *hidden],
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
