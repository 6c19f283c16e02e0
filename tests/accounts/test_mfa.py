"""TOTP MFA for staff: enrolment with backup codes, verification, and what an unverified session may do."""

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib import admin
from django.core.checks import run_checks
from django.test import Client, RequestFactory
from django_otp import DEVICE_ID_SESSION_KEY

from accounts.models import AuthenticatorApp, BackupCode, backup_code_hashes
from accounts.services import api_token_create, mfa_backup_codes_issue
from tests.conftest import PASSWORD, totp_code

pytestmark = pytest.mark.django_db

SETUP = "/accounts/mfa/setup/"
VERIFY = "/accounts/mfa/verify/"
ROOT = Path(__file__).resolve().parents[2]


def sign_in(client, user):
    response = client.post("/admin/login/?next=/admin/", {"username": user.email, "password": PASSWORD})
    assert response.status_code == 302
    return client.get(response["Location"])


# Enrolment --------------------------------------------------------------------------------------


def test_staff_without_a_device_are_sent_to_enrolment_after_the_password(client, staff):
    response = sign_in(client, staff)
    assert response.status_code == 302
    assert response["Location"] == f"{SETUP}?next=%2Fadmin%2F"


def test_the_enrolment_page_shows_the_otpauth_uri_and_the_secret_of_a_new_unconfirmed_device(client, staff):
    sign_in(client, staff)
    page = client.get(SETUP)

    assert page.status_code == 200
    device = AuthenticatorApp.objects.get(user=staff)
    assert device.confirmed is False
    secret = base64.b32encode(device.bin_key).decode()
    html = page.content.decode()
    assert secret in html
    uri = re.search(r'href="(otpauth://totp/[^"]+)"', html).group(1)
    params = parse_qs(urlparse(uri.replace("&amp;", "&")).query)
    assert params["secret"] == [secret]
    assert params["issuer"] == ["Caretrail"]
    assert "no-store" in page["Cache-Control"]


def test_reloading_the_enrolment_page_keeps_the_same_secret(client, staff):
    sign_in(client, staff)
    client.get(SETUP)
    client.get(SETUP)
    assert AuthenticatorApp.objects.filter(user=staff).count() == 1


def test_a_wrong_code_does_not_confirm_the_device(client, staff):
    sign_in(client, staff)
    client.get(SETUP)
    response = client.post(SETUP, {"code": "000000"})
    assert response.status_code == 400
    assert "not valid" in response.content.decode()
    assert not AuthenticatorApp.objects.get(user=staff).confirmed
    assert DEVICE_ID_SESSION_KEY not in client.session
    assert client.get("/admin/").status_code == 302


def test_the_right_code_confirms_the_device_and_shows_ten_backup_codes_once(client, staff):
    sign_in(client, staff)
    client.get(SETUP)
    device = AuthenticatorApp.objects.get(user=staff)

    response = client.post(SETUP, {"code": totp_code(device), "next": "/admin/"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    shown = re.findall(r"<li><code>([a-z2-7]{8})</code></li>", response.content.decode())
    stored = set(BackupCode.objects.filter(device__user=staff).values_list("code_hash", flat=True))
    assert len(shown) == 10 and {backup_code_hashes(code)[0] for code in shown} == stored
    assert AuthenticatorApp.objects.get(user=staff).confirmed
    assert client.get("/admin/").status_code == 200
    # Once enrolled, the page does not show a secret again.
    assert client.get(SETUP).status_code == 302


def test_enrolment_needs_a_signed_in_user(client):
    response = client.get(SETUP)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert not AuthenticatorApp.objects.exists()


# Verification -------------------------------------------------------------------------------------


def test_enrolled_staff_are_asked_for_a_code_after_the_password(client, staff, device):
    response = sign_in(client, staff)
    assert response.status_code == 302
    assert response["Location"] == f"{VERIFY}?next=%2Fadmin%2F"


def test_the_current_code_opens_the_admin(client, staff, device, code):
    sign_in(client, staff)
    response = client.post(VERIFY, {"code": code(device), "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_wrong_code_keeps_the_admin_closed(client, staff, device):
    sign_in(client, staff)
    assert client.post(VERIFY, {"code": "123456"}).status_code == 400
    assert client.get("/admin/").status_code == 302


def test_a_backup_code_works_once(staff, device):
    code = mfa_backup_codes_issue(user=staff)[0]
    first, second = Client(), Client()
    sign_in(first, staff)
    assert first.post(VERIFY, {"code": f"{code[:4].upper()} {code[4:].upper()}"}).status_code == 302
    assert first.get("/admin/").status_code == 200
    sign_in(second, staff)
    assert second.post(VERIFY, {"code": code}).status_code == 400
    assert BackupCode.objects.filter(device__user=staff).count() == 9


def test_verification_never_redirects_to_another_site(client, staff, device, code):
    sign_in(client, staff)
    response = client.post(VERIFY, {"code": code(device), "next": "https://evil.example.org/"})
    assert response["Location"] == "/admin/"


def test_verification_gives_the_session_a_new_key(client, staff, device, code):
    sign_in(client, staff)
    before = client.session.session_key
    client.post(VERIFY, {"code": code(device)})
    assert client.session.session_key != before


# An unverified staff session ----------------------------------------------------------------------


def test_a_force_logged_in_staff_session_cannot_use_the_admin(client, staff):
    client.force_login(staff)
    response = client.get("/admin/clinical/patient/")
    assert response.status_code == 302
    assert response["Location"].startswith(SETUP)


def test_the_admin_site_refuses_permission_without_a_verified_device(staff):
    request = RequestFactory().get("/admin/")
    request.user = staff
    staff.is_verified = lambda: False
    assert admin.site.has_permission(request) is False
    staff.is_verified = lambda: True
    assert admin.site.has_permission(request) is True


def test_the_admin_site_fails_closed_without_the_otp_middleware(staff):
    request = RequestFactory().get("/admin/")
    request.user = staff  # no is_verified attribute at all
    assert admin.site.has_permission(request) is False


def test_an_unverified_staff_session_is_anonymous_to_the_api(client, staff):
    client.force_login(staff)
    assert client.get("/api/v1/me/").status_code == 401


def test_a_verified_staff_session_uses_the_api(staff_client_factory, staff):
    assert staff_client_factory(staff).get("/api/v1/me/").json()["email"] == staff.email


def test_a_staff_token_obtained_with_mfa_works_without_a_session(staff):
    _, secret = api_token_create(user=staff)
    assert Client(HTTP_AUTHORIZATION=f"Token {secret}").get("/api/v1/me/").status_code == 200


def test_members_are_not_asked_for_mfa(client, member):
    client.force_login(member)
    assert client.get("/api/v1/me/").status_code == 200
    assert client.get("/admin/").status_code == 302  # not staff: the admin's own login


def test_the_otp_aware_fixture_signs_superusers_in_through_mfa(superuser_client, superuser):
    assert superuser_client.session[DEVICE_ID_SESSION_KEY]
    assert AuthenticatorApp.objects.get(user=superuser).confirmed
    assert superuser_client.get("/admin/").status_code == 200


def test_the_otp_aware_fixture_verifies_an_enrolled_user_again(staff_client_factory, staff):
    for _ in range(3):  # three logins within one 30-second step
        assert staff_client_factory(staff).get("/admin/").status_code == 200
    assert AuthenticatorApp.objects.filter(user=staff).count() == 1


# Relaxing MFA (local settings only) -------------------------------------------------------------------


def test_with_mfa_relaxed_staff_use_the_admin_with_a_password(client, staff, settings):
    settings.MFA_REQUIRED = False
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    assert client.get("/api/v1/me/").status_code == 200


def test_a_system_check_warns_while_mfa_is_relaxed(settings):
    assert "accounts.W001" not in [m.id for m in run_checks()]
    settings.MFA_REQUIRED = False
    warning = next(m for m in run_checks() if m.id == "accounts.W001")
    assert "MFA_REQUIRED is off" in warning.msg


def manage(settings_module, *args, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MFA_"))}
    clean.update(DJANGO_SETTINGS_MODULE=settings_module, **env)
    return subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def test_production_requires_mfa_whatever_the_environment_says():
    env = {
        "MFA_REQUIRED": "false",
        "SECRET_KEY": base64.b64encode(os.urandom(48)).decode(),
        "DATABASE_URL": "postgres://caretrail@127.0.0.1:5432/caretrail",
        "ALLOWED_HOSTS": "caretrail.example.org",
        "FIELD_ENCRYPTION_KEYS": "k1:" + base64.b64encode(os.urandom(32)).decode(),
    }
    result = manage("config.settings.production", "check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode == 0, result.stderr
    assert "accounts.W001" not in result.stderr


@pytest.mark.parametrize("value", ["false", "0", None])
def test_local_settings_warn_at_start_only_when_mfa_required_is_off(tmp_path, value):
    env = {"DATABASE_URL": "postgres://caretrail@127.0.0.1:5432/caretrail", "CARETRAIL_VAR_DIR": str(tmp_path)}
    if value is not None:
        env["MFA_REQUIRED"] = value
    result = manage("config.settings.local", "check", **env)
    assert result.returncode == 0, result.stderr
    assert ("accounts.W001" in result.stderr) is (value is not None)
    if value is not None:
        assert "MFA_REQUIRED is off" in result.stderr
