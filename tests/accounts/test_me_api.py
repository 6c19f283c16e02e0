import pytest
from django.test import Client

from accounts.services import api_token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(make_user):
    return make_user(first_name="Mary", last_name="Seacole")


@pytest.fixture
def token_client(user):
    _, secret = api_token_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {secret}")


def test_anonymous_callers_get_401_with_a_json_body(client):
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "detail" in response.json()


def test_a_token_user_reads_their_own_account_by_uuid_only(token_client, user):
    body = token_client.get("/api/v1/me/").json()
    assert body["id"] == str(user.uuid)
    assert body["email"] == user.email
    assert "pk" not in body and "password" not in body
    assert body["preferred_language"] == "en"


def test_a_session_user_reads_their_own_account(client, user):
    client.force_login(user)
    assert client.get("/api/v1/me/").json()["first_name"] == "Mary"


def test_a_user_changes_their_language_and_name(token_client, user):
    response = token_client.patch(
        "/api/v1/me/", {"preferred_language": "hi", "first_name": "M."}, content_type="application/json"
    )
    assert response.status_code == 200
    user.refresh_from_db()
    assert (user.preferred_language, user.first_name) == ("hi", "M.")


def test_an_unknown_language_is_refused_with_a_json_error_naming_the_field(token_client, user):
    response = token_client.patch("/api/v1/me/", {"preferred_language": "xx"}, content_type="application/json")
    assert response.status_code == 400
    assert "preferred_language" in response.json()
    user.refresh_from_db()
    assert user.preferred_language == "en"


def test_read_only_fields_cannot_be_changed_through_the_api(token_client, user):
    token_client.patch("/api/v1/me/", {"email": "evil@example.org", "is_staff": True}, content_type="application/json")
    user.refresh_from_db()
    assert user.email != "evil@example.org"
    assert user.is_staff is False


def test_a_malformed_authorization_header_is_refused(client):
    response = client.get("/api/v1/me/", HTTP_AUTHORIZATION="Token a b")
    assert response.status_code == 401


def test_the_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/me/" in schema.content
    assert b"tokenAuth" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()  # assets come from the installed package


def test_a_token_request_by_staff_neither_creates_nor_touches_a_session(make_user):
    from django.contrib.sessions.models import Session

    staff = make_user(is_staff=True)
    _, secret = api_token_create(user=staff)
    client = Client(HTTP_AUTHORIZATION=f"Token {secret}")
    for _ in range(2):
        response = client.get("/api/v1/me/")
        assert response.status_code == 200
        assert "sessionid" not in response.cookies
    assert not Session.objects.exists()
