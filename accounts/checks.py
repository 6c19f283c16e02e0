"""System checks: the encryption keys parse (every environment); MFA is not relaxed unnoticed."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from accounts.encryption import parse_keys


@register()
def encryption_keys_are_valid(app_configs: Any, **kwargs: Any) -> list[Error]:
    try:
        parse_keys(settings.FIELD_ENCRYPTION_KEYS)
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="accounts.E001")]
    return []


@register()
def mfa_is_required(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """Shown by runserver (``make run``) and every management command while MFA is relaxed."""
    if getattr(settings, "MFA_REQUIRED", True):
        return []
    return [
        Warning(
            "MFA_REQUIRED is off: staff can use the admin and obtain API tokens with a password alone.",
            hint="Only for local development. Unset MFA_REQUIRED (or set it to true) to require MFA; "
            "production settings always require it.",
            id="accounts.W001",
        )
    ]
