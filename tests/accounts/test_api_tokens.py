"""API tokens: obtained with a password (and MFA for staff), listed and revoked by their owner."""

import hashlib
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import api_token_create
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

OBTAIN = "/api/v1/auth/token/"
LIST = "/api/v1/auth/tokens/"


def obtain(client, email, password=PASSWORD, **extra):
    return client.post(OBTAIN, {"email": email, "password": password, **extra}, content_type="application/json")


def bearer(secret):
    return Client(HTTP_AUTHORIZATION=f"Token {secret}")


# Obtaining a token -------------------------------------------------------------------------


def test_a_member_obtains_a_token_that_works_and_is_stored_only_as_a_hash(client, member):
    response = obtain(client, member.email, name="laptop")

    assert response.status_code == 201
    body = response.json()
    secret = body["token"]
    assert set(body) == {"id", "name", "prefix", "created_at", "expires_at", "token"}
    token = ApiToken.objects.get(uuid=body["id"])
    assert token.user == member and token.name == "laptop"
    assert token.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(token.prefix)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM accounts_apitoken WHERE key_hash = %s OR prefix = %s", [secret, secret])
        assert cursor.fetchone()[0] == 0
    assert bearer(secret).get("/api/v1/me/").json()["email"] == member.email


def test_the_token_expires_after_the_configured_lifetime(client, member, settings):
    settings.API_TOKEN_TTL_HOURS = 2
    body = obtain(client, member.email).json()
    token = ApiToken.objects.get(uuid=body["id"])
    assert token.expires_at - token.created_at == timedelta(hours=2)


def test_the_e_mail_address_is_matched_case_insensitively(client, member):
    assert obtain(client, member.email.upper()).status_code == 201


def test_a_wrong_password_gets_a_json_400_and_no_token(client, member):
    response = obtain(client, member.email, password="not-the-password")
    assert response.status_code == 400
    assert response.json()["non_field_errors"] == ["Unable to sign in with this e-mail address and password."]
    assert not ApiToken.objects.exists()


def test_an_unknown_address_gets_the_same_answer_as_a_wrong_password(client, member):
    unknown = obtain(client, "nobody@example.org")
    wrong = obtain(client, member.email, password="not-the-password")
    assert unknown.status_code == wrong.status_code == 400
    assert unknown.json() == wrong.json()


def test_a_deactivated_user_cannot_obtain_a_token(client, member):
    member.is_active = False
    member.save()
    assert obtain(client, member.email).status_code == 400
    assert not ApiToken.objects.exists()


def test_missing_fields_are_named_in_the_error(client):
    response = client.post(OBTAIN, {}, content_type="application/json")
    assert response.status_code == 400
    assert {"email", "password"} <= set(response.json())


def test_staff_without_an_mfa_device_are_refused_with_403_and_told_to_enrol(client, staff):
    response = obtain(client, staff.email)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "mfa_not_enrolled"
    assert "/admin/" in body["detail"] and "two-factor" in body["detail"]
    assert not ApiToken.objects.exists()


def test_staff_with_a_device_must_send_a_one_time_code(client, staff, device):
    response = obtain(client, staff.email)
    assert response.status_code == 400
    assert "otp" in response.json()
    assert not ApiToken.objects.exists()


def test_staff_with_a_wrong_one_time_code_get_no_token(client, staff, device):
    response = obtain(client, staff.email, otp="000000")
    assert response.status_code == 400
    assert response.json()["code"] == "otp_invalid"
    assert not ApiToken.objects.exists()


def test_staff_with_the_current_code_obtain_a_token(client, staff, device, code):
    response = obtain(client, staff.email, otp=code(device))
    assert response.status_code == 201
    assert bearer(response.json()["token"]).get("/api/v1/me/").json()["is_staff"] is True


def test_a_code_is_accepted_only_once(client, staff, device, code):
    current = code(device)
    assert obtain(client, staff.email, otp=current).status_code == 201
    assert obtain(client, staff.email, otp=current).status_code == 400
    assert ApiToken.objects.count() == 1


def test_staff_may_use_a_backup_code_once_instead(client, staff, device):
    from accounts.services import mfa_backup_codes_issue

    backup = mfa_backup_codes_issue(user=staff)[0]
    assert obtain(client, staff.email, otp=backup).status_code == 201
    assert obtain(client, staff.email, otp=backup).status_code == 400


def test_with_mfa_relaxed_staff_without_a_device_obtain_a_token(client, staff, settings):
    settings.MFA_REQUIRED = False
    assert obtain(client, staff.email).status_code == 201


def test_a_member_who_enrolled_mfa_is_asked_for_the_code_too(client, member, code):
    from accounts.models import AuthenticatorApp

    device = AuthenticatorApp.objects.create(user=member, confirmed=True)
    assert obtain(client, member.email).status_code == 400
    assert obtain(client, member.email, otp=code(device)).status_code == 201


# Listing ---------------------------------------------------------------------------------------


def test_the_list_shows_only_the_callers_tokens_and_never_a_hash(member, make_user):
    mine, secret = api_token_create(user=member, name="mine")
    api_token_create(user=make_user(), name="theirs")

    response = bearer(secret).get(LIST)

    assert response.status_code == 200
    rows = response.json()
    assert [row["id"] for row in rows] == [str(mine.uuid)]
    assert set(rows[0]) == {"id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"}
    assert mine.key_hash not in response.content.decode()


def test_the_list_includes_revoked_tokens_with_the_time_of_revocation(member):
    _, secret = api_token_create(user=member)
    old, _ = api_token_create(user=member, name="old")
    old.revoked_at = timezone.now()
    old.save()
    rows = {row["name"]: row for row in bearer(secret).get(LIST).json()}
    assert rows["old"]["revoked_at"] is not None


@pytest.mark.parametrize("count", [2, 20])
def test_the_list_costs_the_same_number_of_queries_for_few_and_many_tokens(
    member, count, django_assert_max_num_queries
):
    _, secret = api_token_create(user=member)
    for n in range(count - 1):
        api_token_create(user=member, name=f"t{n}")
    client = bearer(secret)
    with django_assert_max_num_queries(3):
        response = client.get(LIST)
    assert len(response.json()) == count


def test_a_session_user_lists_their_tokens(client, member):
    api_token_create(user=member)
    client.force_login(member)
    assert len(client.get(LIST).json()) == 1


def test_anonymous_callers_cannot_list_tokens(client):
    assert client.get(LIST).status_code == 401


# Revoking ----------------------------------------------------------------------------------------


def test_a_user_revokes_their_own_token_and_it_stops_working_at_once(member):
    _, keep = api_token_create(user=member, name="keep")
    doomed, doomed_secret = api_token_create(user=member, name="doomed")
    assert bearer(doomed_secret).get("/api/v1/me/").status_code == 200

    response = bearer(keep).delete(f"{LIST}{doomed.uuid}/")

    assert response.status_code == 204
    doomed.refresh_from_db()
    assert doomed.revoked_at is not None
    assert bearer(doomed_secret).get("/api/v1/me/").status_code == 401
    assert bearer(keep).get("/api/v1/me/").status_code == 200


def test_a_token_can_revoke_itself(member):
    token, secret = api_token_create(user=member)
    assert bearer(secret).delete(f"{LIST}{token.uuid}/").status_code == 204
    assert bearer(secret).get(LIST).status_code == 401


def test_another_users_token_is_not_found_and_keeps_working(member, make_user):
    _, mine = api_token_create(user=member)
    theirs, their_secret = api_token_create(user=make_user())

    response = bearer(mine).delete(f"{LIST}{theirs.uuid}/")

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert bearer(their_secret).get("/api/v1/me/").status_code == 200


def test_an_unknown_token_id_is_not_found(member):
    _, secret = api_token_create(user=member)
    assert bearer(secret).delete(f"{LIST}00000000-0000-0000-0000-000000000000/").status_code == 404


def test_anonymous_callers_cannot_revoke(client, member):
    token, _ = api_token_create(user=member)
    assert client.delete(f"{LIST}{token.uuid}/").status_code == 401
    token.refresh_from_db()
    assert token.revoked_at is None


def test_an_expired_token_is_refused(member):
    token, secret = api_token_create(user=member)
    ApiToken.objects.filter(pk=token.pk).update(
        created_at=timezone.now() - timedelta(hours=2), expires_at=timezone.now() - timedelta(hours=1)
    )
    assert bearer(secret).get(LIST).status_code == 401


# Documentation -----------------------------------------------------------------------------------


def test_the_token_endpoints_are_documented_without_schema_warnings(tmp_path):
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--fail-on-warn", "--file", str(target))
    schema = target.read_text()
    for path in ("/api/v1/auth/token/:", "/api/v1/auth/tokens/:", "/api/v1/auth/tokens/{token_id}/:"):
        assert path in schema
    assert "key_hash" not in schema
