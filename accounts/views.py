"""Pages of the login itself: MFA enrolment and verification, password reset.

Views stay thin: the checks, the lockout bookkeeping and the writes are in
``accounts.services``.
"""

from __future__ import annotations

import base64
from typing import Any

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters

from accounts.forms import OneTimeCodeForm
from accounts.lockout import client_ip, lockout_response
from accounts.mfa import mfa_satisfied
from accounts.services import (
    LockedOut,
    MfaCodeInvalid,
    mfa_enrolment_confirm,
    mfa_enrolment_start,
    mfa_is_enrolled,
    mfa_verify,
    password_reset_request_register,
    user_sessions_revoke,
)

SITE = {"site_header": "Caretrail", "site_title": "Caretrail"}


def _next_url(request: HttpRequest) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse("admin:index")


def _with_next(name: str, next_url: str) -> str:
    from urllib.parse import urlencode

    return f"{reverse(name)}?{urlencode({'next': next_url})}"


def _locked(request: HttpRequest) -> HttpResponse:
    # The pair is locked: the half-finished login ends here.
    logout(request)
    return lockout_response(request)


def _page(request: HttpRequest, template: str, status: int = 200, **context: Any) -> TemplateResponse:
    return TemplateResponse(request, template, {**SITE, **context}, status=status)


@never_cache
@sensitive_post_parameters("code")
@login_required
def mfa_setup(request: HttpRequest) -> HttpResponse:
    """Enrol an authenticator app: show its secret, confirm a code, show backup codes once."""
    user: Any = request.user
    next_url = _next_url(request)
    if mfa_is_enrolled(user=user):
        return HttpResponseRedirect(next_url if mfa_satisfied(request) else _with_next("accounts:mfa-verify", next_url))
    device = mfa_enrolment_start(user=user)
    form = OneTimeCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            codes = mfa_enrolment_confirm(request=request, user=user, code=form.cleaned_data["code"])
        except LockedOut:
            return _locked(request)
        except MfaCodeInvalid as exc:
            form.add_error("code", exc.message)
        else:
            return _page(
                request, "accounts/mfa_backup_codes.html", title="Your backup codes", codes=codes, next=next_url
            )
    return _page(
        request,
        "accounts/mfa_setup.html",
        status=400 if form.errors else 200,
        title="Set up two-factor authentication",
        form=form,
        next=next_url,
        otpauth_uri=device.config_url,
        secret=base64.b32encode(device.bin_key).decode(),
    )


@never_cache
@sensitive_post_parameters("code")
@login_required
def mfa_verify_view(request: HttpRequest) -> HttpResponse:
    """Ask a signed-in user who enrolled for a TOTP or backup code."""
    user: Any = request.user
    next_url = _next_url(request)
    if not mfa_is_enrolled(user=user):
        return HttpResponseRedirect(_with_next("accounts:mfa-setup", next_url))
    form = OneTimeCodeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            mfa_verify(request=request, user=user, code=form.cleaned_data["code"])
        except LockedOut:
            return _locked(request)
        except MfaCodeInvalid as exc:
            form.add_error("code", exc.message)
        else:
            return HttpResponseRedirect(next_url)
    return _page(
        request,
        "accounts/mfa_verify.html",
        status=400 if form.errors else 200,
        title="Two-factor authentication",
        form=form,
        next=next_url,
    )


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset form, limited to PASSWORD_RESET_LIMIT requests per address and window."""

    template_name = "accounts/password_reset_form.html"
    email_template_name = "accounts/password_reset_email.txt"
    subject_template_name = "accounts/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password-reset-done")
    extra_context = SITE

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not password_reset_request_register(ip_address=client_ip(request)):
            minutes = int(settings.PASSWORD_RESET_WINDOW.total_seconds() // 60)
            return _page(
                request,
                "accounts/password_reset_throttled.html",
                status=429,
                title="Too many reset requests",
                minutes=minutes,
            )
        return super().post(request, *args, **kwargs)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"
    extra_context = SITE


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Set a new password; every session and API token of the user ends with the old one."""

    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password-reset-complete")
    extra_context = SITE

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        user_sessions_revoke(user=form.user)
        return response


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"
    extra_context = SITE
