"""Ending access at once: the security stamp, deactivation and password changes."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import ApiToken
from accounts.services import api_token_create, user_sessions_revoke

pytestmark = pytest.mark.django_db


def session_client(user):
    client = Client()
    client.force_login(user)
    return client


def bearer(secret):
    return Client(HTTP_AUTHORIZATION=f"Token {secret}")


def test_revoking_ends_every_session_of_the_user_at_their_next_request(member):
    browsers = [session_client(member), session_client(member)]
    assert all(b.get("/api/v1/me/").status_code == 200 for b in browsers)

    user_sessions_revoke(user=member)

    assert [b.get("/api/v1/me/").status_code for b in browsers] == [401, 401]


def test_revoking_ends_a_verified_staff_admin_session(staff_client_factory, staff):
    admin_client = staff_client_factory(staff)
    assert admin_client.get("/admin/").status_code == 200
    user_sessions_revoke(user=get_user_model().objects.get(pk=staff.pk))
    response = admin_client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_revoking_ends_every_api_token_and_marks_them_revoked(member):
    secrets = [api_token_create(user=member)[1] for _ in range(2)]

    user_sessions_revoke(user=member)

    assert [bearer(s).get("/api/v1/me/").status_code for s in secrets] == [401, 401]
    assert not ApiToken.objects.filter(user=member, revoked_at__isnull=True).exists()


def test_a_token_issued_before_the_stamp_changed_is_refused_even_if_not_marked(member):
    token, secret = api_token_create(user=member)
    user_sessions_revoke(user=member)
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=None)  # e.g. written concurrently
    assert bearer(secret).get("/api/v1/me/").status_code == 401


def test_revoking_leaves_other_users_alone(member, make_user):
    other = make_user()
    browser = session_client(other)
    _, secret = api_token_create(user=other)
    user_sessions_revoke(user=member)
    assert browser.get("/api/v1/me/").status_code == 200
    assert bearer(secret).get("/api/v1/me/").status_code == 200


def test_the_user_can_sign_in_again_and_new_tokens_work(client, member):
    user_sessions_revoke(user=member)
    member.refresh_from_db()
    token, secret = api_token_create(user=member)
    assert token.security_stamp == member.security_stamp
    assert bearer(secret).get("/api/v1/me/").status_code == 200
    assert session_client(member).get("/api/v1/me/").status_code == 200


def test_revoking_rotates_the_stamp_and_the_session_hash(member):
    stamp, session_hash = member.security_stamp, member.get_session_auth_hash()
    user_sessions_revoke(user=member)
    member.refresh_from_db()
    assert member.security_stamp != stamp
    assert member.get_session_auth_hash() != session_hash


def test_every_user_gets_a_stamp_of_their_own(make_user):
    stamps = {make_user().security_stamp for _ in range(3)}
    assert len(stamps) == 3


def test_deactivating_a_user_ends_their_sessions_and_tokens(member):
    browser = session_client(member)
    _, secret = api_token_create(user=member)

    get_user_model().objects.filter(pk=member.pk).update(is_active=False)

    assert browser.get("/api/v1/me/").status_code == 401
    assert bearer(secret).get("/api/v1/me/").status_code == 401


def test_deactivating_staff_ends_their_admin_session(staff_client_factory, staff):
    admin_client = staff_client_factory(staff)
    get_user_model().objects.filter(pk=staff.pk).update(is_active=False)
    assert admin_client.get("/admin/").status_code == 302


def test_a_password_change_ends_other_sessions(member):
    browser = session_client(member)
    member.set_password("another long passphrase")
    member.save()
    assert browser.get("/api/v1/me/").status_code == 401


# From the admin ------------------------------------------------------------------------------------


def test_a_superuser_ends_a_users_sessions_and_tokens_from_the_user_list(superuser_client, member):
    browser = session_client(member)
    _, secret = api_token_create(user=member)

    response = superuser_client.post(
        "/admin/accounts/user/", {"action": "end_sessions", "_selected_action": [member.pk]}
    )

    assert response.status_code == 302
    assert browser.get("/api/v1/me/").status_code == 401
    assert bearer(secret).get("/api/v1/me/").status_code == 401


def test_a_superuser_resets_mfa_and_the_user_enrols_again(superuser_client, staff_client_factory, staff):
    from accounts.models import AuthenticatorApp, BackupCodes

    old_session = staff_client_factory(staff)
    old_device = AuthenticatorApp.objects.get(user=staff)
    old_key = old_device.key
    assert BackupCodes.objects.filter(user=staff).exists()

    superuser_client.post("/admin/accounts/user/", {"action": "reset_mfa", "_selected_action": [staff.pk]})

    assert not AuthenticatorApp.objects.filter(pk=old_device.pk).exists()
    assert not BackupCodes.objects.filter(user=staff).exists()
    assert old_session.get("/admin/").status_code == 302
    assert staff_client_factory(staff).get("/admin/").status_code == 200  # enrolled a new device
    assert AuthenticatorApp.objects.get(user=staff, confirmed=True).key != old_key
