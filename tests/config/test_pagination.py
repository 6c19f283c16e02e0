"""Keyset pagination (config.pagination) through the patient list: every route, ties, both directions."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.services import api_token_create
from clinical import services
from config.pagination import Cursor

pytestmark = pytest.mark.django_db

LIST = reverse("v1:patient-list")


@pytest.fixture
def world(make_institution, make_doctor, make_patient, make_staff, superuser) -> dict[str, Any]:
    """A doctor reaching patients by four routes, some by two at once, with identical timestamps."""
    home, other = make_institution(), make_institution()
    doctor = make_doctor(institution=home)
    stranger = make_doctor(institution=other)
    own = [make_patient(doctor=doctor) for _ in range(4)]
    colleagues = [make_patient(doctor=make_doctor(institution=home)) for _ in range(3)]
    elsewhere = [make_patient(doctor=stranger) for _ in range(5)]
    granted = elsewhere[:2]
    for patient in granted:
        services.grant_create(patient=patient, user=doctor.user, kind="view", granted_by=superuser, reason="consult")
    from django.contrib.auth.models import Group

    doctor.user.groups.add(Group.objects.get(name="Doctor"))
    # Ties: three patients share one registration instant, so (created_at, id) breaks them.
    tied = [own[1].pk, colleagues[0].pk, granted[0].pk]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE clinical_patient SET created_at = %s WHERE id = ANY(%s)",
            [datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), tied],
        )
    expected = sorted(own + colleagues + granted, key=lambda p: p.pk)
    _, secret = api_token_create(user=doctor.user)
    return {"client": Client(HTTP_AUTHORIZATION=f"Token {secret}"), "expected": expected, "tied": tied}


def _walk(client: Client, url: str, link: str) -> list[list[str]]:
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        pages.append([row["id"] for row in body["results"]])
        url = body[link]
    return pages


def _expected_order(world: dict[str, Any]) -> list[str]:
    from clinical.models import Patient

    rows = Patient.objects.filter(pk__in=[p.pk for p in world["expected"]]).order_by("created_at", "id")
    return [str(p.uuid) for p in rows]


def test_forward_pages_cover_every_route_once_in_key_order(world) -> None:
    pages = _walk(world["client"], f"{LIST}?page_size=3", "next")
    assert [len(page) for page in pages] == [3, 3, 3]
    assert [uuid for page in pages for uuid in page] == _expected_order(world)


def test_backward_pages_mirror_forward_pages(world) -> None:
    client = world["client"]
    forward = _walk(client, f"{LIST}?page_size=4", "next")
    last = client.get(f"{LIST}?page_size=4")
    while last.json()["next"]:
        last = client.get(last.json()["next"])
    assert last.json()["results"] and last.json()["next"] is None
    previous = last.json()["previous"]
    backward = _walk(client, previous, "previous")
    assert [uuid for page in reversed(backward) for uuid in page] + forward[-1] == [
        uuid for page in forward for uuid in page
    ]
    assert client.get(f"{LIST}?page_size=4").json()["previous"] is None


def test_a_page_size_out_of_range_or_a_forged_cursor_answers_400_naming_the_parameter(world) -> None:
    client = world["client"]
    for size in ("0", "201", "many"):
        response = client.get(f"{LIST}?page_size={size}")
        assert response.status_code == 400
        assert "page_size" in response.json()
    for cursor in ("garbage", "e30", Cursor((datetime.datetime(2020, 1, 1), 1), True).encode()):
        response = client.get(f"{LIST}?cursor={cursor}")
        assert response.status_code == 400, cursor
        assert "cursor" in response.json()


def test_an_unknown_validation_status_answers_400(world) -> None:
    response = world["client"].get(f"{LIST}?validation_status=maybe")
    assert response.status_code == 400
    assert "validation_status" in response.json()


def test_the_page_reads_each_route_by_its_own_index_in_one_statement_with_the_scope(world) -> None:
    """The page is one statement: the user's scope, a UNION of per-route keyset scans, each limited to a
    page, and the rows they name; never an OR over all routes, and no separate scope query."""
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = world["client"].get(f"{LIST}?page_size=3")
    assert response.status_code == 200
    statements = [q["sql"] for q in captured.captured_queries]
    [page] = [sql for sql in statements if "UNION" in sql]
    assert "scope AS" in page
    assert [sql for sql in statements if "WITH grants" in sql] == [page]
    # primary doctor, the membership institutions, the grants: a page plus one each; the union's page; the rows.
    assert page.count("LIMIT 4") == 5
    assert " OR " not in page.split("scope AS", 1)[1].split("page AS", 1)[1]
