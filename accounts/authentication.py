"""API authentication: tokens (which also tell auditlog who the actor is) and MFA-aware sessions.

auditlog's middleware runs before DRF authenticates the token, so without this
token-authenticated writes would be logged with no actor.

A token works only while its owner's security stamp is the one it was issued
with: ``accounts.services.user_sessions_revoke`` ends all of them at once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.audit import bind_actor
from accounts.mfa import mfa_satisfied
from accounts.models import ApiToken
from accounts.services import token_hash

LAST_USED_RESOLUTION = timedelta(minutes=5)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() not in (b"token", b"bearer"):
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        try:
            secret = header[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Malformed token.") from exc
        token = ApiToken.objects.select_related("user").filter(key_hash=token_hash(secret)).first()
        if (
            token is None
            or not token.is_usable
            or not token.user.is_active
            or token.security_stamp != token.user.security_stamp
        ):
            raise exceptions.AuthenticationFailed("Invalid or expired token.")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        bind_actor(token.user)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class MfaSessionAuthentication(authentication.SessionAuthentication):
    """Django's session, but a staff session counts only once it passed MFA.

    Otherwise a password alone would open the API to a staff member who signed
    in to the admin and stopped at the MFA step.
    """

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        result = super().authenticate(request)
        if result is None or not mfa_satisfied(request._request):
            return None
        return result
