"""Whether a request has passed MFA. Used by the admin site and the API's session authentication."""

from __future__ import annotations

from django.http import HttpRequest

from accounts.services import mfa_required_for


def mfa_satisfied(request: HttpRequest) -> bool:
    """True unless MFA is required for the signed-in user and this session has not passed it.

    Fails closed: without django-otp's middleware there is no ``is_verified``
    and a user who needs MFA is refused.
    """
    user = getattr(request, "user", None)
    if user is None or not mfa_required_for(user):
        return True
    is_verified = getattr(user, "is_verified", None)
    return bool(callable(is_verified) and is_verified())
