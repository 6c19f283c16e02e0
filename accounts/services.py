"""Writes for accounts: users, sessions, API tokens, MFA devices and login lockout."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from datetime import timedelta
from typing import Any

import django_otp
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.signals import user_login_failed
from django.db import connection, models, transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts.lockout import locked_out_message, normalise_username
from accounts.models import (
    ApiToken,
    AuthenticatorApp,
    BackupCode,
    BackupCodes,
    PasswordResetRequest,
    User,
    backup_code_hashes,
)


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
        security_stamp=user.security_stamp,
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


# Sessions and tokens end at once --------------------------------------------------------


@transaction.atomic
def user_sessions_revoke(*, user: User) -> None:
    """End every session and API token of ``user``; each stops working on its next request.

    Rotating the security stamp changes the session hash that Django checks on
    every request and no longer matches the stamp each token was issued with.
    Live tokens are also marked revoked so that the user's token list says so.
    """
    user.security_stamp = uuid.uuid4()
    user.save(update_fields=["security_stamp", "updated_at"])
    ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())


# Lockout (django-axes) ---------------------------------------------------------------------


class LoginRefused(Exception):
    """A login step refused; ``field`` names the input at fault, if any."""

    code = "login_refused"
    field: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidCredentials(LoginRefused):
    code = "invalid_credentials"


class LockedOut(LoginRefused):
    code = "locked_out"


class MfaNotEnrolled(LoginRefused):
    code = "mfa_not_enrolled"


class MfaCodeRequired(LoginRefused):
    code = "otp_required"
    field = "otp"


class MfaCodeInvalid(LoginRefused):
    code = "otp_invalid"
    field = "otp"


def _credentials(username: str) -> dict[str, Any]:
    return {"username": normalise_username(username)}


def login_is_locked(*, request: HttpRequest, username: str) -> bool:
    """True while (``username``, the client's address) is locked out."""
    return not AxesProxyHandler.is_allowed(request, _credentials(username))


def login_failure_record(*, request: HttpRequest, username: str) -> bool:
    """Count a failed login step (a wrong one-time code, say); True if that locked the pair."""
    user_login_failed.send(sender=__name__, credentials=_credentials(username), request=request)
    return bool(getattr(request, "axes_locked_out", False))


def login_failures_reset(*, request: HttpRequest, username: str) -> int:
    """Forget the failures of (``username``, client address) once a whole login succeeded."""
    AxesProxyHandler.update_request(request)
    ip_address = getattr(request, "axes_ip_address", None)
    return AxesProxyHandler.reset_attempts(username=normalise_username(username), ip_address=ip_address)


def login_unlock(*, username: str) -> int:
    """Lift every lock on ``username`` (all addresses); returns how many records went."""
    return AxesProxyHandler.reset_attempts(username=normalise_username(username))


# MFA (django-otp) ------------------------------------------------------------------------------

TOTP_CODE = re.compile(r"^\d{6}$")


def mfa_required_for(user: Any) -> bool:
    """Staff must pass MFA, unless local settings relaxed it (never in production)."""
    return bool(settings.MFA_REQUIRED and user.is_authenticated and user.is_staff)


def mfa_totp_device(*, user: User) -> AuthenticatorApp | None:
    """The user's confirmed authenticator app, if they enrolled one."""
    return AuthenticatorApp.objects.filter(user=user, confirmed=True).order_by("pk").first()


def mfa_is_enrolled(*, user: User) -> bool:
    return AuthenticatorApp.objects.filter(user=user, confirmed=True).exists()


@transaction.atomic
def mfa_enrolment_start(*, user: User) -> AuthenticatorApp:
    """The unconfirmed authenticator app to enrol; reused until confirmed, so the secret stays put."""
    device = AuthenticatorApp.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = AuthenticatorApp.objects.create(user=user, name="Authenticator app", confirmed=False)
    return device


def _backup_code() -> str:
    # 40 random bits in lower-case base32: eight characters, no 0/1/8/9 to misread.
    return base64.b32encode(secrets.token_bytes(5)).decode().lower()


@transaction.atomic
def mfa_backup_codes_issue(*, user: User) -> list[str]:
    """Replace the user's single-use backup codes; the new ones are returned once and stored only hashed."""
    BackupCodes.objects.filter(user=user).delete()
    device = BackupCodes.objects.create(user=user, name="Backup codes", confirmed=True)
    codes: set[str] = set()
    while len(codes) < settings.MFA_BACKUP_CODES:
        codes.add(_backup_code())
    ordered = sorted(codes)
    BackupCode.objects.bulk_create(BackupCode(device=device, code_hash=backup_code_hashes(code)[0]) for code in ordered)
    return ordered


def mfa_code_match(*, user: User, code: str) -> Any:
    """The confirmed device that accepts ``code`` (a 6-digit TOTP or a backup code), or None.

    A backup code is used up by a match. Each device also throttles itself
    after failures (django-otp), on top of the lockout.
    """
    code = "".join(code.split()).lower()
    if not code:
        return None
    with transaction.atomic():
        if TOTP_CODE.match(code):
            devices: Any = AuthenticatorApp.objects.filter(user=user, confirmed=True)
        else:
            devices = BackupCodes.objects.filter(user=user, confirmed=True)
        for device in devices.select_for_update().order_by("pk"):
            if device.verify_token(code):
                return device
    return None


@transaction.atomic
def mfa_reset(*, user: User) -> None:
    """Remove the user's authenticator and backup codes (a lost phone) and end their sessions.

    Staff then enrol again after their next password sign-in.
    """
    AuthenticatorApp.objects.filter(user=user).delete()
    BackupCodes.objects.filter(user=user).delete()
    user_sessions_revoke(user=user)


def _session_verified(request: HttpRequest, device: Any) -> None:
    # A new session key for the more privileged session, then remember the device.
    request.session.cycle_key()
    django_otp.login(request, device)


def mfa_verify(*, request: HttpRequest, user: User, code: str) -> Any:
    """Check a code for the signed-in ``user`` and mark the session as verified.

    A wrong code counts as a failed login for the lockout. Raises ``LockedOut``
    or ``MfaCodeInvalid``; returns the device that accepted the code.
    """
    if login_is_locked(request=request, username=user.email):
        raise LockedOut(locked_out_message())
    device = mfa_code_match(user=user, code=code)
    if device is None:
        if login_failure_record(request=request, username=user.email):
            raise LockedOut(locked_out_message())
        raise MfaCodeInvalid("The code is not valid. Enter the current code from your app or a backup code.")
    login_failures_reset(request=request, username=user.email)
    _session_verified(request, device)
    return device


def mfa_enrolment_confirm(*, request: HttpRequest, user: User, code: str) -> list[str]:
    """Confirm the device being enrolled with a code from it; returns fresh backup codes.

    Also marks the session as verified. A wrong code counts towards the lockout.
    """
    if login_is_locked(request=request, username=user.email):
        raise LockedOut(locked_out_message())
    code = "".join(code.split())
    codes: list[str] | None = None
    with transaction.atomic():
        device = AuthenticatorApp.objects.select_for_update().filter(user=user, confirmed=False).order_by("pk").first()
        if device is not None and TOTP_CODE.match(code) and device.verify_token(code):
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            codes = mfa_backup_codes_issue(user=user)
    if codes is None:
        if login_failure_record(request=request, username=user.email):
            raise LockedOut(locked_out_message())
        raise MfaCodeInvalid("The code is not valid. Check the time on your phone and enter the current code.")
    login_failures_reset(request=request, username=user.email)
    _session_verified(request, device)
    return codes


# API tokens through a login -----------------------------------------------------------------


NOT_ENROLLED_MESSAGE = (
    "Staff accounts need two-factor authentication before they can obtain an API token. "
    "Sign in to the admin at /admin/ to set up an authenticator app, then try again."
)


def api_token_obtain(
    *, request: HttpRequest, email: str, password: str, otp: str = "", name: str = ""
) -> tuple[ApiToken, str]:
    """Issue a token for valid credentials: the password, and a one-time code for staff.

    Every failure counts towards the lockout of (e-mail, client address); a
    locked pair is refused before the password is even checked.
    """
    if login_is_locked(request=request, username=email):
        raise LockedOut(locked_out_message())
    user = authenticate(request, username=email, password=password)
    if user is None:
        if getattr(request, "axes_locked_out", False):
            raise LockedOut(locked_out_message())
        raise InvalidCredentials("Unable to sign in with this e-mail address and password.")
    assert isinstance(user, User)
    enrolled = mfa_is_enrolled(user=user)
    if mfa_required_for(user) and not enrolled:
        raise MfaNotEnrolled(NOT_ENROLLED_MESSAGE)
    if enrolled:  # anyone who enrolled is asked for the code, staff or not
        if not otp.strip():
            raise MfaCodeRequired("Enter the one-time code from your authenticator app or a backup code.")
        if mfa_code_match(user=user, code=otp) is None:
            if login_failure_record(request=request, username=email):
                raise LockedOut(locked_out_message())
            raise MfaCodeInvalid("The one-time code is not valid.")
    login_failures_reset(request=request, username=email)
    return api_token_create(user=user, name=name)


def api_token_revoke_own(*, user: User, token_uuid: uuid.UUID) -> ApiToken:
    """Revoke one of ``user``'s tokens; someone else's raises ``ApiToken.DoesNotExist``."""
    token = ApiToken.objects.get(user=user, uuid=token_uuid)
    return api_token_revoke(token=token)


# Password reset requests -------------------------------------------------------------------------


@transaction.atomic
def password_reset_request_register(*, ip_address: str | None) -> bool:
    """Count a reset request from ``ip_address``; False once the limit for the window is reached.

    Requests from one address are serialised by an advisory lock, so parallel
    requests cannot slip past the limit.
    """
    if not ip_address:
        return False
    now = timezone.now()
    window_start = now - settings.PASSWORD_RESET_WINDOW
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"password-reset:{ip_address}"])
    PasswordResetRequest.objects.filter(created_at__lt=window_start).delete()
    recent = PasswordResetRequest.objects.filter(ip_address=ip_address, created_at__gte=window_start).count()
    if recent >= settings.PASSWORD_RESET_LIMIT:
        return False
    PasswordResetRequest.objects.create(ip_address=ip_address, created_at=now)
    return True
