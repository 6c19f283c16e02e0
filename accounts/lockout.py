"""How django-axes sees Caretrail's logins, and what a locked-out client is told.

Every login path (admin form, API token endpoint, MFA step) counts failures
against the pair (e-mail address, client address). The e-mail is compared
case-insensitively, as the login itself does, so changing its case does not
buy more attempts.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

LOCKED_OUT_MESSAGE = (
    "Too many failed sign-in attempts for this account from your address. "
    "Try again in {minutes} minutes, or ask an administrator to unlock it."
)


def cooloff_minutes() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)


def retry_after_seconds() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds())


def locked_out_message() -> str:
    return LOCKED_OUT_MESSAGE.format(minutes=cooloff_minutes())


def normalise_username(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().lower()


def lockout_username(request: HttpRequest, credentials: dict[str, Any] | None = None) -> str | None:
    """AXES_USERNAME_CALLABLE: the e-mail address being tried, lower-cased."""
    if credentials:
        return normalise_username(credentials.get("username") or credentials.get("email"))
    data = getattr(request, "data", None) or request.POST
    return normalise_username(data.get("username") or data.get("email"))


def client_ip(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: REMOTE_ADDR, or the address the trusted proxies saw.

    With ``TRUSTED_PROXY_COUNT = n`` the client is the n-th address from the
    right of X-Forwarded-For; anything further left was written by the client
    and is ignored.
    """
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR")


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: JSON for API clients, a readable page for people."""
    status = getattr(settings, "AXES_HTTP_RESPONSE_CODE", 429)
    response: HttpResponse
    if is_api_request(request):
        response = JsonResponse({"detail": locked_out_message(), "code": "locked_out"}, status=status)
    else:
        response = TemplateResponse(
            request,
            "accounts/locked_out.html",
            {"title": "Sign-in locked", "message": locked_out_message(), "site_header": "Caretrail"},
            status=status,
        )
        response.render()
    response["Retry-After"] = str(retry_after_seconds())
    return response
