"""Request-time rules for signed-in staff: session limits and MFA.

``StaffSessionLimitsMiddleware`` ends a staff session after 15 minutes without
a request or 12 hours after sign-in (``STAFF_SESSION_IDLE_TIMEOUT``,
``STAFF_SESSION_MAX_AGE``). ``MfaRequiredMiddleware`` sends staff whose session
has not passed MFA to enrolment or verification before any page but those of
the login itself.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import SESSION_KEY, logout
from django.contrib.sessions.backends.base import SessionBase
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from accounts.mfa import mfa_satisfied
from accounts.services import mfa_is_enrolled, mfa_required_for

LOGIN_AT = "accounts_login_at"
LAST_SEEN = "accounts_last_seen"
# Writing the session on every request would cost a write per request; the idle
# clock only needs to move once a minute.
LAST_SEEN_RESOLUTION = 60


def _is_staff_session(request: HttpRequest) -> bool:
    # The session must carry the sign-in: a token-authenticated API call sets
    # request.user too (DRF does, during the view) but has no staff session to time.
    user = request.user
    return bool(user.is_authenticated and user.is_staff and SESSION_KEY in request.session)


def staff_session_expired(session: SessionBase, now: float) -> str | None:
    """Why the staff session must end ("idle" or "total"), or None."""
    login_at = session.get(LOGIN_AT)
    last_seen = session.get(LAST_SEEN)
    if login_at is not None and now - login_at > settings.STAFF_SESSION_MAX_AGE.total_seconds():
        return "total"
    if last_seen is not None and now - last_seen > settings.STAFF_SESSION_IDLE_TIMEOUT.total_seconds():
        return "idle"
    return None


EXPIRED_MESSAGES = {
    "idle": "You were signed out after {minutes} minutes without activity. Please sign in again.",
    "total": "Staff sessions last at most {hours} hours. Please sign in again.",
}


class StaffSessionLimitsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        now = timezone.now().timestamp()
        was_staff = _is_staff_session(request)
        if was_staff:
            reason = staff_session_expired(request.session, now)
            if reason is not None:
                logout(request)
                messages.warning(
                    request,
                    EXPIRED_MESSAGES[reason].format(
                        minutes=int(settings.STAFF_SESSION_IDLE_TIMEOUT.total_seconds() // 60),
                        hours=int(settings.STAFF_SESSION_MAX_AGE.total_seconds() // 3600),
                    ),
                    fail_silently=True,
                )
                was_staff = False
            else:
                self._stamp(request, now)
        response = self.get_response(request)
        if not was_staff and _is_staff_session(request):
            # Signed in during this request: the 12 hours start now.
            request.session[LOGIN_AT] = now
            request.session[LAST_SEEN] = now
        return response

    @staticmethod
    def _stamp(request: HttpRequest, now: float) -> None:
        session = request.session
        if LOGIN_AT not in session:
            # A session made without the login form (tests' force_login, or one
            # from before this rule): its clock starts at its first request.
            session[LOGIN_AT] = now
        if now - session.get(LAST_SEEN, 0) >= LAST_SEEN_RESOLUTION:
            session[LAST_SEEN] = now


def _exempt(path: str) -> bool:
    """Paths an unverified staff user may still reach: the login, MFA and reset pages."""
    exempt_prefixes = (
        "/accounts/",
        "/api/",  # API sessions are refused by accounts.authentication.MfaSessionAuthentication
        "/healthz",
        settings.STATIC_URL if settings.STATIC_URL.startswith("/") else f"/{settings.STATIC_URL}",
        reverse("admin:logout"),
    )
    return path.startswith(exempt_prefixes)


class MfaRequiredMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if mfa_required_for(user) and not mfa_satisfied(request) and not _exempt(request.path):
            step = "accounts:mfa-verify" if mfa_is_enrolled(user=user) else "accounts:mfa-setup"  # type: ignore[arg-type]
            query = urlencode({"next": request.get_full_path()})
            return HttpResponseRedirect(f"{reverse(step)}?{query}")
        return self.get_response(request)
