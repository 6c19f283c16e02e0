"""Reads for accounts."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import ApiToken, User


def api_tokens_of(*, user: User) -> QuerySet[ApiToken]:
    """The user's own tokens, newest first: live, expired and revoked alike."""
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-pk")
