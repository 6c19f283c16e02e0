"""Staff sessions end after 15 minutes without a request and 12 hours after sign-in.

Time is moved by editing the session's clock values, never by sleeping.
"""

import pytest
from django.contrib.messages import get_messages
from django.utils import timezone

from accounts.middleware import LAST_SEEN, LOGIN_AT
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

MINUTE = 60
HOUR = 60 * MINUTE


def move_clock(client, *, login_ago=None, seen_ago=None):
    now = timezone.now().timestamp()
    session = client.session
    if login_ago is not None:
        session[LOGIN_AT] = now - login_ago
    if seen_ago is not None:
        session[LAST_SEEN] = now - seen_ago
    session.save()


@pytest.fixture
def staff_client(staff_client_factory, staff):
    return staff_client_factory(staff)


def test_signing_in_starts_both_clocks(client, staff):
    before = timezone.now().timestamp()
    client.post("/admin/login/", {"username": staff.email, "password": PASSWORD})
    session = client.session
    assert before <= session[LOGIN_AT] <= timezone.now().timestamp()
    assert session[LAST_SEEN] == session[LOGIN_AT]


def test_fourteen_idle_minutes_keep_the_session_and_restart_the_idle_clock(staff_client):
    move_clock(staff_client, seen_ago=14 * MINUTE)
    assert staff_client.get("/admin/").status_code == 200
    assert timezone.now().timestamp() - staff_client.session[LAST_SEEN] < MINUTE


def test_sixteen_idle_minutes_end_the_session(staff_client):
    move_clock(staff_client, seen_ago=16 * MINUTE)

    response = staff_client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert "_auth_user_id" not in staff_client.session
    page = staff_client.get(response["Location"])
    assert any("without activity" in str(m) for m in get_messages(page.wsgi_request))


def test_an_ended_session_is_also_anonymous_to_the_api(staff_client):
    move_clock(staff_client, seen_ago=16 * MINUTE)
    assert staff_client.get("/api/v1/me/").status_code == 401


def test_an_active_session_ends_twelve_hours_after_sign_in(staff_client):
    move_clock(staff_client, login_ago=11 * HOUR + 59 * MINUTE, seen_ago=MINUTE)
    assert staff_client.get("/admin/").status_code == 200
    move_clock(staff_client, login_ago=12 * HOUR + MINUTE, seen_ago=MINUTE)
    assert staff_client.get("/admin/").status_code == 302
    assert "_auth_user_id" not in staff_client.session


def test_activity_keeps_a_session_alive_past_fifteen_minutes_in_total(staff_client):
    for _ in range(3):
        move_clock(staff_client, seen_ago=10 * MINUTE)
        assert staff_client.get("/admin/").status_code == 200
    move_clock(staff_client, login_ago=30 * MINUTE)
    assert staff_client.get("/admin/").status_code == 200


def test_requests_within_a_minute_do_not_rewrite_the_session(staff_client):
    move_clock(staff_client, seen_ago=10)
    seen = staff_client.session[LAST_SEEN]
    staff_client.get("/api/v1/me/")
    assert staff_client.session[LAST_SEEN] == seen


def test_a_force_logged_in_staff_session_starts_its_clock_at_the_first_request(client, staff):
    client.force_login(staff)
    client.get("/api/v1/me/")
    assert LOGIN_AT in client.session and LAST_SEEN in client.session


def test_members_keep_djangos_default_session_length(client, member):
    client.force_login(member)
    move_clock(client, login_ago=13 * HOUR, seen_ago=2 * HOUR)
    assert client.get("/api/v1/me/").status_code == 200
