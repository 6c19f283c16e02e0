"""Writes for accounts: users and API tokens."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from accounts.models import ApiToken, User


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def api_token_create(*, user: User, name: str = "", ttl: timedelta | None = None) -> tuple[ApiToken, str]:
    """Issue a token; the secret is returned once and never stored."""
    secret = secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken(
        user=user,
        name=name,
        prefix=secret[:8],
        key_hash=token_hash(secret),
        created_at=now,
        expires_at=now + (ttl or timedelta(hours=settings.API_TOKEN_TTL_HOURS)),
    )
    token.full_clean()
    token.save()
    return token, secret


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


@transaction.atomic
def user_update_profile(
    *,
    user: User,
    first_name: str | None = None,
    last_name: str | None = None,
    preferred_language: str | None = None,
) -> User:
    """Change what a user may change about themselves."""
    changes = {
        "first_name": first_name,
        "last_name": last_name,
        "preferred_language": preferred_language,
    }
    for field, value in changes.items():
        if value is not None:
            setattr(user, field, value)
    user.full_clean(exclude=["password"])
    user.save()
    return user


TOKEN_HISTORY_DAYS = 30


def api_tokens_purge(*, keep_days: int = TOKEN_HISTORY_DAYS) -> int:
    """Forget tokens that stopped working more than ``keep_days`` ago.

    Recent ones stay so that a user can see what was revoked or expired.
    """
    cutoff = timezone.now() - timedelta(days=keep_days)
    stale = ApiToken.objects.filter(models.Q(expires_at__lt=cutoff) | models.Q(revoked_at__lt=cutoff))
    deleted, _ = stale.delete()
    return deleted
