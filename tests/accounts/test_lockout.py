"""Lockout: 5 failures per (user, address) lock that pair for 15 minutes, on every login path."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib import admin
from django.core import mail
from django.db.models import F
from django.test import Client
from django.urls import reverse

from accounts.models import ApiToken, PasswordResetRequest
from accounts.services import api_token_create
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

ADMIN_LOGIN = "/admin/login/?next=/admin/"
OBTAIN = "/api/v1/auth/token/"
OTHER_ADDRESS = "203.0.113.9"


def admin_login(client, email, password, **extra):
    return client.post(ADMIN_LOGIN, {"username": email, "password": password}, **extra)


def obtain(client, email, password, data=None):
    body = {"email": email, "password": password, **(data or {})}
    return client.post(OBTAIN, body, content_type="application/json")


def fail_admin_logins(client, email, times=5, **extra):
    return [admin_login(client, email, "wrong-password-x", **extra) for _ in range(times)]


def age_attempts(minutes):
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=minutes))


# The admin login form ------------------------------------------------------------------------------


def test_four_failures_still_let_the_right_password_in(client, staff):
    responses = fail_admin_logins(client, staff.email, times=4)
    assert all(r.status_code == 200 for r in responses)  # the form again, with its error
    assert admin_login(client, staff.email, PASSWORD).status_code == 302


def test_the_fifth_failure_locks_the_pair_and_shows_a_readable_page(client, staff):
    *_, fifth = fail_admin_logins(client, staff.email)
    assert fifth.status_code == 429
    page = fifth.content.decode()
    assert "Too many failed sign-in attempts" in page and "15 minutes" in page
    assert fifth["Content-Type"].startswith("text/html")


def test_a_locked_pair_is_refused_even_with_the_right_password(client, staff):
    fail_admin_logins(client, staff.email)
    response = admin_login(client, staff.email, PASSWORD)
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_lock_is_per_user_and_address(client, staff, make_user):
    fail_admin_logins(client, staff.email)
    colleague = make_user(is_staff=True)
    assert admin_login(Client(), colleague.email, PASSWORD).status_code == 302
    assert admin_login(Client(REMOTE_ADDR=OTHER_ADDRESS), staff.email, PASSWORD).status_code == 302


def test_changing_the_case_of_the_address_buys_no_extra_attempts(client, staff):
    variants = [staff.email, staff.email.upper(), staff.email.title(), f" {staff.email}", staff.email.swapcase()]
    for variant in variants:
        admin_login(client, variant, "wrong-password-x")
    assert admin_login(client, staff.email, PASSWORD).status_code == 429


def test_the_lock_ends_after_15_minutes(client, staff):
    fail_admin_logins(client, staff.email)
    age_attempts(14)
    assert admin_login(client, staff.email, PASSWORD).status_code == 429
    age_attempts(2)
    assert admin_login(client, staff.email, PASSWORD).status_code == 302


def test_every_failure_is_kept_in_the_failure_log(client, staff):
    fail_admin_logins(client, staff.email, times=3)
    assert AccessFailureLog.objects.filter(username=staff.email).count() == 3


# Admin unlock ----------------------------------------------------------------------------------------


def test_the_lockout_records_are_in_the_admin(superuser_client, client, staff):
    for model in (AccessAttempt, AccessFailureLog):
        assert model in admin.site._registry
    fail_admin_logins(client, staff.email)
    page = superuser_client.get(reverse("admin:axes_accessattempt_changelist"))
    assert page.status_code == 200
    assert staff.email in page.content.decode()
    assert "Locked Out" in page.content.decode()


def test_a_superuser_unlocks_a_user_by_deleting_the_attempt_in_the_admin(superuser_client, client, staff):
    fail_admin_logins(client, staff.email)
    attempt = AccessAttempt.objects.get(username=staff.email)

    deleted = superuser_client.post(reverse("admin:axes_accessattempt_delete", args=[attempt.pk]), {"post": "yes"})

    assert deleted.status_code == 302
    assert not AccessAttempt.objects.exists()
    assert admin_login(client, staff.email, PASSWORD).status_code == 302


def test_staff_without_rights_cannot_see_or_lift_locks(staff_client_factory, make_user, client, staff):
    fail_admin_logins(client, staff.email)
    colleague = staff_client_factory(make_user(is_staff=True))
    attempt = AccessAttempt.objects.get()
    assert colleague.get(reverse("admin:axes_accessattempt_changelist")).status_code == 403
    delete = reverse("admin:axes_accessattempt_delete", args=[attempt.pk])
    assert colleague.post(delete, {"post": "yes"}).status_code == 403
    assert AccessAttempt.objects.exists()


# The API token endpoint -------------------------------------------------------------------------------


def test_the_token_endpoint_locks_after_five_failures_with_a_json_429(client, member):
    responses = [obtain(client, member.email, "wrong-password-x") for _ in range(5)]
    assert [r.status_code for r in responses] == [400, 400, 400, 400, 429]

    locked = obtain(client, member.email, PASSWORD)

    assert locked.status_code == 429
    assert locked["Content-Type"] == "application/json"
    assert locked["Retry-After"] == "900"
    body = locked.json()
    assert body["code"] == "locked_out"
    assert "Too many failed sign-in attempts" in body["detail"]
    assert not ApiToken.objects.exists()


def test_failures_on_one_path_count_on_the_others(client, staff):
    for _ in range(3):
        obtain(client, staff.email, "wrong-password-x")
    fail_admin_logins(client, staff.email, times=2)
    assert obtain(client, staff.email, PASSWORD).status_code == 429
    assert admin_login(client, staff.email, PASSWORD).status_code == 429


def test_wrong_one_time_codes_at_the_token_endpoint_count_as_failures(client, staff, device, code):
    for _ in range(5):
        obtain(client, staff.email, PASSWORD, data={"otp": "000000"})
    response = obtain(client, staff.email, PASSWORD, data={"otp": code(device)})
    assert response.status_code == 429
    assert not ApiToken.objects.exists()


def test_a_successful_login_with_mfa_clears_earlier_failures(client, staff, device, code):
    for _ in range(4):
        obtain(client, staff.email, "wrong-password-x")
    assert obtain(client, staff.email, PASSWORD, data={"otp": code(device)}).status_code == 201
    assert not AccessAttempt.objects.exists()


def test_a_correct_password_alone_does_not_clear_failures_for_staff(client, staff, device):
    # Otherwise someone with the password could try one-time codes without end.
    for _ in range(4):
        obtain(client, staff.email, PASSWORD, data={"otp": "000000"})
    assert obtain(client, staff.email, PASSWORD).status_code == 400  # asks for the code
    assert AccessAttempt.objects.get().failures_since_start == 4


# The MFA step -----------------------------------------------------------------------------------------


def test_five_wrong_codes_at_the_mfa_step_lock_and_sign_out(client, staff, device, code):
    assert admin_login(client, staff.email, PASSWORD).status_code == 302
    verify = reverse("accounts:mfa-verify")
    statuses = [client.post(verify, {"code": "000000"}).status_code for _ in range(5)]
    assert statuses == [400, 400, 400, 400, 429]
    assert "_auth_user_id" not in client.session
    # Signing in again is refused while the lock lasts, even with password and code.
    assert admin_login(client, staff.email, PASSWORD).status_code == 429


def test_wrong_codes_while_enrolling_count_too(client, staff):
    assert admin_login(client, staff.email, PASSWORD).status_code == 302
    setup = reverse("accounts:mfa-setup")
    client.get(setup)
    statuses = [client.post(setup, {"code": "000000"}).status_code for _ in range(5)]
    assert statuses[-1] == 429
    assert AccessAttempt.objects.get().failures_since_start == 5


# Password reset ---------------------------------------------------------------------------------------

RESET = "/accounts/password-reset/"


def test_the_admin_login_page_links_to_password_reset(client):
    assert RESET in client.get("/admin/login/").content.decode()


def test_password_reset_requests_are_limited_to_five_per_address_in_15_minutes(client, member):
    statuses = [client.post(RESET, {"email": member.email}).status_code for _ in range(5)]
    assert statuses == [302] * 5
    assert len(mail.outbox) == 5

    sixth = client.post(RESET, {"email": member.email})

    assert sixth.status_code == 429
    assert "Too many password reset requests" in sixth.content.decode()
    assert len(mail.outbox) == 5
    # Another address is not affected.
    assert Client(REMOTE_ADDR=OTHER_ADDRESS).post(RESET, {"email": member.email}).status_code == 302


def test_unknown_addresses_count_towards_the_reset_limit_too(client):
    for n in range(5):
        assert client.post(RESET, {"email": f"nobody{n}@example.org"}).status_code == 302
    assert client.post(RESET, {"email": "nobody9@example.org"}).status_code == 429
    assert mail.outbox == []


def test_the_reset_limit_lifts_after_the_window(client, member):
    for _ in range(5):
        client.post(RESET, {"email": member.email})
    PasswordResetRequest.objects.update(created_at=F("created_at") - timedelta(minutes=16))
    assert client.post(RESET, {"email": member.email}).status_code == 302
    assert PasswordResetRequest.objects.count() == 1  # the expired rows were cleaned up


def reset_link(outbox_message):
    import re

    return re.search(r"https?://testserver(/accounts/password-reset/[^/\s]+/[^/\s]+/)", outbox_message.body).group(1)


def test_a_password_reset_sets_the_new_password_and_ends_sessions_and_tokens(client, member):
    old_session = Client()
    old_session.force_login(member)
    _, secret = api_token_create(user=member)

    client.post(RESET, {"email": member.email})
    form = client.get(reset_link(mail.outbox[0]), follow=True)
    assert form.status_code == 200
    new = "a brand new passphrase 42"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})

    assert done.status_code == 302
    member.refresh_from_db()
    assert member.check_password(new)
    assert old_session.get("/api/v1/me/").status_code == 401
    assert Client(HTTP_AUTHORIZATION=f"Token {secret}").get("/api/v1/me/").status_code == 401


def test_a_password_reset_does_not_lift_a_lockout(client, staff):
    fail_admin_logins(client, staff.email)
    client.post(RESET, {"email": staff.email})
    form = client.get(reset_link(mail.outbox[0]), follow=True)
    new = "a brand new passphrase 42"
    client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert admin_login(client, staff.email, new).status_code == 429
