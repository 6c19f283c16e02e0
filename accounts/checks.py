"""System checks: the encryption keys parse (every environment)."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from accounts.encryption import parse_keys


@register()
def encryption_keys_are_valid(app_configs: Any, **kwargs: Any) -> list[Error]:
    try:
        parse_keys(settings.FIELD_ENCRYPTION_KEYS)
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="accounts.E001")]
    return []
