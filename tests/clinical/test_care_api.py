"""The appointment and prescription API (``clinical.api.care``): bodies, errors, lists, privacy, audit, cost.

Who gets which status code is the persona matrix's (``tests/test_persona_matrix.py``,
``CARE_API_MATRIX``); here what the answers say. Appointments that have already
begun are written around the services (``visit``): a booking cannot start in the past.
"""

from __future__ import annotations

import datetime
import json
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.services import api_token_create
from clinical import access, appointments, prescriptions, services
from clinical.models import (
    Appointment,
    AppointmentStatus,
    Doctor,
    Document,
    Frequency,
    MedicalRecord,
    Medication,
    MembershipRole,
    Patient,
    Prescription,
    PrescriptionItem,
    RecordType,
)
from tests.clinical.care import medication, visit
from tests.clinical.test_files import pdf_bytes, png_bytes
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

UTC = datetime.UTC
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
FILE_SYSTEM_STORAGE = "django.core.files.storage.FileSystemStorage"
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
APPOINTMENT_FIELDS = {
    "id",
    "patient",
    "doctor",
    "institution",
    "starts_at",
    "ends_at",
    "time_zone",
    "local_starts_at",
    "local_ends_at",
    "status",
    "reason",
    "booked_by",
    "cancelled_by",
    "cancelled_at",
    "cancellation_reason",
    "outcome_recorded_at",
    "prescription",
    "created_at",
}
PRESCRIPTION_FIELDS = {
    "id",
    "patient",
    "appointment",
    "doctor",
    "issued_by",
    "notes",
    "items",
    "printable",
    "documents",
    "created_at",
}
ITEM_FIELDS = {
    "position",
    "medication",
    "dose",
    "route",
    "frequency",
    "duration_days",
    "quantity",
    "instructions",
    "medical_record",
}


# Storage, people, clients ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    """The default storage in this test's own folder (changing STORAGES resets ``default_storage``)."""
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": FILE_SYSTEM_STORAGE, "OPTIONS": {"location": str(root)}},
    }
    return root


def stored_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def with_role(user: Any, role: str = "Doctor") -> Any:
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def clinician(doctor: Doctor, roles: None) -> Any:
    """The patients' primary doctor, in the Doctor role (``doctor_register`` does not add it)."""
    return with_role(doctor.user)


def token_client(user: Any, **options: Any) -> Client:
    _token, secret = api_token_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {secret}", **options)


@pytest.fixture
def api(clinician: Any) -> Client:
    return token_client(clinician)


@pytest.fixture
def patient(make_patient: Callable[..., Patient]) -> Patient:
    """A patient with a portal account and names distinctive enough to look for in the log."""
    return make_patient(
        first_name="Wilhelmina",
        last_name="Quackenbush",
        portal_email="quackenbush.portal@example.org",
        portal_password=PASSWORD,
    )


@pytest.fixture
def other_patient(make_patient: Callable[..., Patient]) -> Patient:
    return make_patient(
        first_name="Bartholomew", last_name="Oyelaran", portal_email="oyelaran@example.org", portal_password=PASSWORD
    )


def post_json(client: Client, url: str, body: Any) -> Any:
    return client.post(url, data=json.dumps(body), content_type="application/json")


def errors(response: Any, *fields: str) -> dict[str, Any]:
    """A 400 whose JSON body names each of ``fields``."""
    assert response.status_code == 400, (response.status_code, response.content)
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict)
    for field in fields:
        assert field in body, (field, body)
    return body


# Times and appointments --------------------------------------------------------------------------


def future(days: int = 3, hour: int = 14) -> datetime.datetime:
    """A whole hour ``days`` ahead, in UTC."""
    day = (timezone.now() + datetime.timedelta(days=days)).date()
    return datetime.datetime.combine(day, datetime.time(hour), tzinfo=UTC)


def minutes(n: int) -> datetime.timedelta:
    return datetime.timedelta(minutes=n)


def drf_time(moment: datetime.datetime) -> str:
    """How the API writes a UTC time (DRF: ISO 8601 with "Z")."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def book_body(doctor: Doctor, starts_at: datetime.datetime, length: int = 30, **extra: Any) -> dict[str, Any]:
    return {
        "doctor": str(doctor.uuid),
        "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + minutes(length)).isoformat(),
        **extra,
    }


def booked(patient: Patient, doctor: Doctor, starts_at: datetime.datetime, length: int = 30) -> Appointment:
    """A scheduled appointment through the service."""
    return appointments.appointment_book(
        patient=patient,
        doctor=doctor,
        institution=doctor.institution,
        starts_at=starts_at,
        ends_at=starts_at + minutes(length),
        reason="Check-up",
        booked_by=doctor.user,
    )


def appointments_url(patient: Patient) -> str:
    return reverse("v1:appointment-list", args=[patient.uuid])


def appointment_url(appointment: Appointment, action: str = "") -> str:
    name = f"v1:appointment-{action}" if action else "v1:appointment-detail"
    return reverse(name, args=[appointment.patient.uuid, appointment.uuid])


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


# Prescriptions -----------------------------------------------------------------------------------


def other_medication(than: Medication) -> Medication:
    return Medication.objects.exclude(pk=than.pk).order_by("id")[0]


def item_body(**overrides: Any) -> dict[str, Any]:
    return {
        "medication": str(medication().uuid),
        "dose": "1 capsule",
        "route": "oral",
        "frequency": Frequency.THREE_TIMES_DAILY,
        "duration_days": 7,
        "quantity": 21,
        "instructions": "After meals",
        **overrides,
    }


def issue_body(appointment: Appointment, items: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"appointment": str(appointment.uuid), "items": [item_body()] if items is None else items, **extra}


def prescriptions_url(patient: Patient) -> str:
    return reverse("v1:prescription-list", args=[patient.uuid])


def prescription_url(prescription: Prescription, name: str = "prescription-detail") -> str:
    return reverse(f"v1:{name}", args=[prescription.patient.uuid, prescription.uuid])


def issued(appointment: Appointment, items: int = 1) -> Prescription:
    """A prescription through the service, by the appointment's doctor."""
    rows = [
        {
            "medication": medication() if n % 2 == 0 else other_medication(medication()),
            "dose": f"{n + 1} tablet(s)",
            "frequency": Frequency.ONCE_DAILY,
            "duration_days": 10,
            "quantity": 10,
        }
        for n in range(items)
    ]
    return prescriptions.prescription_issue(appointment=appointment, items=rows, issued_by=appointment.doctor.user)


def counts() -> tuple[int, int, int, int]:
    return (
        Prescription.objects.count(),
        PrescriptionItem.objects.count(),
        MedicalRecord.objects.filter(record_type=RecordType.PRESCRIPTION).count(),
        Document.objects.count(),
    )


# Booking ----------------------------------------------------------------------------------------


def test_a_booking_answers_201_with_utc_times_the_institutions_local_time_and_the_reason(
    api, patient, doctor, clinician
):
    # 15:00 at +01:00 is 14:00 UTC, which in New York in January is 09:00 at -05:00.
    year = timezone.now().year + 2
    starts = datetime.datetime(year, 1, 15, 15, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    body = book_body(doctor, starts, 45, reason="Persistent cough since March")

    response = post_json(api, appointments_url(patient), body)

    assert response.status_code == 201, response.content
    data = response.json()
    assert set(data) == APPOINTMENT_FIELDS
    appointment = Appointment.objects.get(uuid=data["id"])
    assert data["patient"] == str(patient.uuid)
    assert data["doctor"] == {"id": str(doctor.uuid), "name": f"Dr {clinician.get_full_name()}"}
    assert data["institution"] == {"id": str(doctor.institution.uuid), "name": doctor.institution.name}
    assert data["starts_at"] == f"{year}-01-15T14:00:00Z"
    assert data["ends_at"] == f"{year}-01-15T14:45:00Z"
    assert data["time_zone"] == "America/New_York"
    assert data["local_starts_at"] == f"{year}-01-15T09:00:00-05:00"
    assert data["local_ends_at"] == f"{year}-01-15T09:45:00-05:00"
    assert data["status"] == "scheduled"
    assert data["reason"] == "Persistent cough since March"
    assert data["booked_by"] == clinician.get_full_name()
    assert (data["cancelled_by"], data["cancelled_at"], data["cancellation_reason"]) == (None, None, None)
    assert (data["outcome_recorded_at"], data["prescription"]) == (None, None)
    assert appointment.starts_at == datetime.datetime(year, 1, 15, 14, 0, tzinfo=UTC)
    assert (appointment.patient, appointment.doctor, appointment.institution) == (patient, doctor, doctor.institution)
    assert appointment.booked_by == clinician
    assert appointment.reason == "Persistent cough since March"


def test_local_times_follow_daylight_saving_time_in_the_institutions_zone(api, patient, doctor):
    year = timezone.now().year + 2
    starts = datetime.datetime(year, 7, 15, 14, 0, tzinfo=UTC)

    data = post_json(api, appointments_url(patient), book_body(doctor, starts)).json()

    assert data["starts_at"] == f"{year}-07-15T14:00:00Z"
    assert data["local_starts_at"] == f"{year}-07-15T10:00:00-04:00"


def test_a_named_institution_is_used_and_its_own_time_zone_shown(api, patient, doctor, make_institution):
    kolkata = make_institution(time_zone="Asia/Kolkata")
    services.membership_start(user=doctor.user, institution=kolkata, role=MembershipRole.DOCTOR)
    starts = future(hour=6)

    response = post_json(api, appointments_url(patient), book_body(doctor, starts, institution=str(kolkata.uuid)))

    assert response.status_code == 201, response.content
    data = response.json()
    assert data["institution"] == {"id": str(kolkata.uuid), "name": kolkata.name}
    assert data["time_zone"] == "Asia/Kolkata"
    assert data["local_starts_at"] == starts.astimezone(zoneinfo.ZoneInfo("Asia/Kolkata")).isoformat()
    assert data["local_starts_at"].endswith("+05:30")
    assert Appointment.objects.get(uuid=data["id"]).institution == kolkata


def test_a_blank_or_missing_reason_is_stored_as_none(api, patient, doctor):
    blank = post_json(api, appointments_url(patient), book_body(doctor, future(hour=9), reason="  "))
    missing = post_json(api, appointments_url(patient), book_body(doctor, future(hour=10)))

    assert blank.status_code == 201 and missing.status_code == 201
    assert blank.json()["reason"] is None and missing.json()["reason"] is None


def test_a_naive_time_is_refused_on_starts_at_and_nothing_is_written(api, patient, doctor):
    body = book_body(doctor, future())
    body["starts_at"] = future().replace(tzinfo=None).isoformat()

    body = errors(post_json(api, appointments_url(patient), body), "starts_at")

    assert "ends_at" not in body
    assert not Appointment.objects.exists()


def test_a_naive_end_is_refused_on_ends_at(api, patient, doctor):
    body = book_body(doctor, future())
    body["ends_at"] = (future() + minutes(30)).replace(tzinfo=None).isoformat()

    errors(post_json(api, appointments_url(patient), body), "ends_at")
    assert not Appointment.objects.exists()


def test_an_end_before_the_start_is_refused_on_ends_at(api, patient, doctor):
    body = book_body(doctor, future())
    body["ends_at"] = (future() - minutes(30)).isoformat()

    body = errors(post_json(api, appointments_url(patient), body), "ends_at")

    assert "starts_at" not in body
    assert not Appointment.objects.exists()


def test_a_start_in_the_past_is_refused_on_starts_at(api, patient, doctor):
    starts = timezone.now() - datetime.timedelta(days=1)

    errors(post_json(api, appointments_url(patient), book_body(doctor, starts)), "starts_at")
    assert not Appointment.objects.exists()


def test_an_overlapping_slot_is_refused_on_starts_at_and_nothing_is_written(api, patient, doctor):
    first = booked(patient, doctor, future())

    body = errors(post_json(api, appointments_url(patient), book_body(doctor, future() + minutes(15))), "starts_at")

    assert "already has an appointment" in " ".join(body["starts_at"])
    assert list(Appointment.objects.values_list("pk", flat=True)) == [first.pk]


def test_an_unknown_doctor_is_refused_on_doctor(api, patient, doctor):
    body = book_body(doctor, future())
    body["doctor"] = "6f1c2b9e-0000-4000-8000-000000000000"

    errors(post_json(api, appointments_url(patient), body), "doctor")
    assert not Appointment.objects.exists()


def test_a_malformed_doctor_id_is_refused_on_doctor(api, patient, doctor):
    body = book_body(doctor, future())
    body["doctor"] = "not-a-uuid"

    errors(post_json(api, appointments_url(patient), body), "doctor")


def test_an_unknown_institution_is_refused_on_institution(api, patient, doctor):
    body = book_body(doctor, future(), institution="6f1c2b9e-0000-4000-8000-000000000001")

    errors(post_json(api, appointments_url(patient), body), "institution")
    assert not Appointment.objects.exists()


def test_a_doctor_without_membership_at_the_named_institution_is_refused_on_doctor(
    api, patient, doctor, make_institution
):
    elsewhere = make_institution()

    body = errors(
        post_json(api, appointments_url(patient), book_body(doctor, future(), institution=str(elsewhere.uuid))),
        "doctor",
    )

    assert "membership" in " ".join(body["doctor"])
    assert not Appointment.objects.exists()


def test_missing_fields_are_each_named(api, patient):
    body = errors(post_json(api, appointments_url(patient), {}), "doctor", "starts_at", "ends_at")

    assert "institution" not in body and "reason" not in body
    assert not Appointment.objects.exists()


@pytest.mark.parametrize(
    ("action", "field", "value"),
    [
        ("book", "starts_at", "9999-12-31T23:30:00-05:00"),
        ("book", "ends_at", "9999-12-31T23:30:00-05:00"),
        ("book", "starts_at", "0001-01-01T00:30:00+05:00"),
        ("reschedule", "starts_at", "9999-12-31T23:30:00-05:00"),
    ],
    ids=["book-start-past-year-9999", "book-end-past-year-9999", "book-start-before-year-1", "reschedule-start"],
)
def test_a_time_that_leaves_the_calendar_in_utc_is_refused_on_its_field_not_a_server_error(
    clinician, patient, doctor, action, field, value
):
    # Valid ISO 8601 with an offset, but its UTC instant lies outside what Python's datetime holds.
    client = token_client(clinician, raise_request_exception=False)
    if action == "book":
        url, body = appointments_url(patient), book_body(doctor, future())
    else:
        appointment = booked(patient, doctor, future())
        url, body = appointment_url(appointment, "reschedule"), {"ends_at": (future() + minutes(30)).isoformat()}
    body[field] = value

    errors(post_json(client, url, body), field)
    assert Appointment.objects.count() == (0 if action == "book" else 1)


# Actions ----------------------------------------------------------------------------------------


def test_reschedule_moves_the_times(api, patient, doctor):
    appointment = booked(patient, doctor, future())
    new_start = future(days=5, hour=16)

    response = post_json(
        api,
        appointment_url(appointment, "reschedule"),
        {"starts_at": new_start.isoformat(), "ends_at": (new_start + minutes(20)).isoformat()},
    )

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["id"] == str(appointment.uuid)
    assert (data["starts_at"], data["ends_at"]) == (drf_time(new_start), drf_time(new_start + minutes(20)))
    assert data["local_starts_at"] == new_start.astimezone(NEW_YORK).isoformat()
    appointment.refresh_from_db()
    assert (appointment.starts_at, appointment.ends_at) == (new_start, new_start + minutes(20))
    assert appointment.status == AppointmentStatus.SCHEDULED


def test_reschedule_refuses_a_naive_time_and_an_overlap_and_leaves_the_times(api, patient, doctor):
    appointment = booked(patient, doctor, future())
    other = booked(patient, doctor, future(days=4))
    naive = future(days=5).replace(tzinfo=None)

    errors(
        post_json(
            api,
            appointment_url(appointment, "reschedule"),
            {"starts_at": naive.isoformat(), "ends_at": (naive + minutes(30)).isoformat()},
        ),
        "starts_at",
    )
    errors(
        post_json(
            api,
            appointment_url(appointment, "reschedule"),
            {"starts_at": other.starts_at.isoformat(), "ends_at": other.ends_at.isoformat()},
        ),
        "starts_at",
    )
    appointment.refresh_from_db()
    assert appointment.starts_at == future()


def test_reschedule_may_move_onto_part_of_its_own_slot(api, patient, doctor):
    appointment = booked(patient, doctor, future())
    new_start = future() + minutes(15)

    response = post_json(
        api,
        appointment_url(appointment, "reschedule"),
        {"starts_at": new_start.isoformat(), "ends_at": (new_start + minutes(30)).isoformat()},
    )

    assert response.status_code == 200, response.content
    assert response.json()["starts_at"] == drf_time(new_start)


def test_cancel_needs_a_reason(api, patient, doctor):
    appointment = booked(patient, doctor, future())

    errors(post_json(api, appointment_url(appointment, "cancel"), {}), "reason")
    errors(post_json(api, appointment_url(appointment, "cancel"), {"reason": "   "}), "reason")

    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.SCHEDULED


def test_cancel_records_who_and_why_and_a_second_cancel_is_refused_on_status(api, patient, doctor, clinician):
    appointment = booked(patient, doctor, future())

    first = post_json(api, appointment_url(appointment, "cancel"), {"reason": "Feels better"})
    second = post_json(api, appointment_url(appointment, "cancel"), {"reason": "Again"})

    assert first.status_code == 200, first.content
    data = first.json()
    assert data["status"] == "cancelled"
    assert data["cancelled_by"] == clinician.get_full_name()
    assert data["cancellation_reason"] == "Feels better"
    assert data["cancelled_at"] is not None
    errors(second, "status")
    appointment.refresh_from_db()
    assert appointment.cancellation_reason == "Feels better"


def test_complete_then_no_show_is_refused_on_status(api, patient, doctor):
    appointment = visit(patient, doctor, status=AppointmentStatus.SCHEDULED, hours_ago=1)

    completed = post_json(api, appointment_url(appointment, "complete"), {})
    no_show = post_json(api, appointment_url(appointment, "no-show"), {})

    assert completed.status_code == 200, completed.content
    assert completed.json()["status"] == "completed"
    assert completed.json()["outcome_recorded_at"] is not None
    errors(no_show, "status")
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.COMPLETED


def test_no_show_before_the_start_is_refused_on_status_and_after_it_is_recorded(api, patient, doctor, clinician):
    upcoming = booked(patient, doctor, future())
    begun = visit(patient, doctor, status=AppointmentStatus.SCHEDULED, hours_ago=1)

    early = post_json(api, appointment_url(upcoming, "no-show"), {})
    late = post_json(api, appointment_url(begun, "no-show"), {})

    errors(early, "status")
    upcoming.refresh_from_db()
    assert upcoming.status == AppointmentStatus.SCHEDULED
    assert late.status_code == 200, late.content
    assert late.json()["status"] == "no_show"
    begun.refresh_from_db()
    assert (begun.status, begun.outcome_recorded_by) == (AppointmentStatus.NO_SHOW, clinician)


def test_a_cancelled_appointment_cannot_be_completed_or_moved(api, patient, doctor):
    appointment = booked(patient, doctor, future())
    post_json(api, appointment_url(appointment, "cancel"), {"reason": "Travel"})
    new_start = future(days=6)

    errors(post_json(api, appointment_url(appointment, "complete"), {}), "status")
    errors(
        post_json(
            api,
            appointment_url(appointment, "reschedule"),
            {"starts_at": new_start.isoformat(), "ends_at": (new_start + minutes(30)).isoformat()},
        ),
        "status",
    )
    appointment.refresh_from_db()
    assert (appointment.status, appointment.starts_at) == (AppointmentStatus.CANCELLED, future())


# Lists ------------------------------------------------------------------------------------------


@pytest.fixture
def calendar(patient: Patient, doctor: Doctor) -> dict[str, Appointment]:
    """Four of the patient's appointments: two past (completed, cancelled), two ahead (scheduled)."""
    return {
        "completed": visit(patient, doctor, hours_ago=48),
        "cancelled": visit(patient, doctor, status=AppointmentStatus.CANCELLED, hours_ago=24),
        "soon": booked(patient, doctor, future(days=2)),
        "later": booked(patient, doctor, future(days=9)),
    }


def test_the_list_is_latest_start_first(api, patient, calendar):
    expected = [calendar[name].uuid for name in ("later", "soon", "cancelled", "completed")]

    assert ids(api.get(appointments_url(patient))) == [str(uuid) for uuid in expected]


def test_the_status_filter(api, patient, calendar):
    assert ids(api.get(appointments_url(patient), {"status": "scheduled"})) == [
        str(calendar["later"].uuid),
        str(calendar["soon"].uuid),
    ]
    assert ids(api.get(appointments_url(patient), {"status": "cancelled"})) == [str(calendar["cancelled"].uuid)]
    assert ids(api.get(appointments_url(patient), {"status": "no_show"})) == []


def test_from_is_inclusive_and_to_exclusive_in_any_offset(api, patient, calendar):
    soon, later = calendar["soon"], calendar["later"]
    soon_in_tokyo = soon.starts_at.astimezone(zoneinfo.ZoneInfo("Asia/Tokyo")).isoformat()

    assert ids(api.get(appointments_url(patient), {"from": soon_in_tokyo})) == [str(later.uuid), str(soon.uuid)]
    assert ids(api.get(appointments_url(patient), {"to": soon_in_tokyo})) == [
        str(calendar["cancelled"].uuid),
        str(calendar["completed"].uuid),
    ]
    window = {"from": soon.starts_at.isoformat(), "to": later.starts_at.isoformat()}
    assert ids(api.get(appointments_url(patient), window)) == [str(soon.uuid)]
    z = drf_time(later.starts_at)
    assert ids(api.get(appointments_url(patient), {"from": z})) == [str(later.uuid)]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "done"}, "status"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2030-13-45T10:00:00+00:00"}, "to"),
        ({"from": "2030-01-15T10:00:00"}, "from"),
        ({"to": "2030-01-15"}, "to"),
    ],
    ids=["unknown-status", "not-a-time", "impossible-date", "naive-from", "date-only-to"],
)
def test_a_bad_filter_answers_400_naming_the_parameter(api, patient, calendar, params, named):
    body = errors(api.get(appointments_url(patient), params), named)

    assert set(body) == {named}


def test_a_bad_filter_on_the_own_list_answers_400_too(patient, calendar):
    client = token_client(patient.user)

    errors(client.get(reverse("v1:my-appointment-list"), {"from": "2030-01-15T10:00:00"}), "from")


def test_cursor_pages_yield_every_appointment_exactly_once_even_with_equal_starts(api, patient, doctor, calendar):
    # Two more at the very same start as the completed one (not scheduled, so they may overlap).
    same = calendar["completed"].starts_at
    twins = [visit(patient, doctor, status=AppointmentStatus.CANCELLED, starts_at=same) for _ in range(2)]
    everything = ids(api.get(appointments_url(patient)))
    assert len(everything) == 6
    assert set(everything[-3:]) == {str(calendar["completed"].uuid), *(str(t.uuid) for t in twins)}

    seen: list[str] = []
    pages = 0
    url: str | None = appointments_url(patient) + "?page_size=2"
    while url:
        response = api.get(url)
        seen += ids(response)
        url = response.json()["next"]
        pages += 1
        assert pages <= 4

    assert seen == everything
    assert pages == 3


def test_the_previous_link_leads_back_to_the_page_before(api, patient, calendar):
    first = api.get(appointments_url(patient), {"page_size": 2})
    second = api.get(first.json()["next"])

    assert first.json()["previous"] is None
    assert ids(api.get(second.json()["previous"])) == ids(first)


def test_the_filters_hold_across_pages(api, patient, doctor, calendar):
    booked(patient, doctor, future(days=12))
    first = api.get(appointments_url(patient), {"status": "scheduled", "page_size": 2})
    second = api.get(first.json()["next"])

    assert len(ids(first)) == 2
    assert ids(second) == [str(calendar["soon"].uuid)]
    assert second.json()["next"] is None


@pytest.mark.parametrize(
    ("params", "named"), [({"page_size": "0"}, "page_size"), ({"cursor": "not-a-cursor"}, "cursor")]
)
def test_a_bad_page_parameter_answers_400_naming_it(api, patient, calendar, params, named):
    errors(api.get(appointments_url(patient), params), named)


def test_an_offset_filter_survives_in_the_next_link(api, patient, calendar):
    since = calendar["cancelled"].starts_at.astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))

    first = api.get(appointments_url(patient), {"from": since.isoformat(), "page_size": 2})
    second = api.get(first.json()["next"])

    assert ids(first) == [str(calendar["later"].uuid), str(calendar["soon"].uuid)]
    assert ids(second) == [str(calendar["cancelled"].uuid)]
    assert second.json()["next"] is None


def test_an_appointment_shows_its_prescriptions_id(api, patient, calendar):
    prescription = issued(calendar["completed"])

    rows = {row["id"]: row for row in api.get(appointments_url(patient)).json()["results"]}
    detail = api.get(appointment_url(calendar["completed"])).json()

    assert rows[str(calendar["completed"].uuid)]["prescription"] == str(prescription.uuid)
    assert rows[str(calendar["soon"].uuid)]["prescription"] is None
    assert detail["prescription"] == str(prescription.uuid)


def test_my_appointments_are_the_callers_own_only(patient, other_patient, doctor, calendar):
    theirs = visit(other_patient, doctor, hours_ago=5)
    client = token_client(patient.user)

    response = client.get(reverse("v1:my-appointment-list"))

    expected = [calendar[name].uuid for name in ("later", "soon", "cancelled", "completed")]
    assert ids(response) == [str(uuid) for uuid in expected]
    assert str(theirs.uuid) not in response.content.decode()
    assert {row["patient"] for row in response.json()["results"]} == {str(patient.uuid)}
    mine = client.get(reverse("v1:my-appointment-detail", args=[calendar["soon"].uuid]))
    assert mine.status_code == 200 and mine.json()["id"] == str(calendar["soon"].uuid)


# Prescriptions: issuing -------------------------------------------------------------------------


@pytest.fixture
def appointment(patient: Patient, doctor: Doctor) -> Appointment:
    """A visit that began two hours ago."""
    return visit(patient, doctor)


def test_the_appointments_doctor_issues_a_prescription_with_its_items_and_records(
    api, patient, doctor, clinician, appointment
):
    first, second = medication(), other_medication(medication())
    body = issue_body(
        appointment,
        [
            item_body(medication=str(first.uuid)),
            {
                "medication": str(second.uuid),
                "dose": "400 mg",
                "frequency": "as_needed",
                "duration_days": 5,
                "quantity": 20,
            },
        ],
        notes="Come back if the fever lasts.",
    )

    response = post_json(api, prescriptions_url(patient), body)

    assert response.status_code == 201, response.content
    data = response.json()
    assert set(data) == PRESCRIPTION_FIELDS
    prescription = Prescription.objects.get(uuid=data["id"])
    assert data["patient"] == str(patient.uuid)
    assert data["appointment"] == str(appointment.uuid)
    assert data["doctor"] == {"id": str(doctor.uuid), "name": f"Dr {clinician.get_full_name()}"}
    assert data["issued_by"] == clinician.get_full_name()
    assert data["notes"] == "Come back if the fever lasts."
    assert (data["printable"], data["documents"]) == (None, [])
    one, two = data["items"]
    assert set(one) == ITEM_FIELDS
    assert (one["position"], two["position"]) == (1, 2)
    assert one["medication"]["id"] == str(first.uuid) and one["medication"]["name"] == str(first)
    assert two["medication"]["id"] == str(second.uuid) and two["medication"]["name"] == str(second)
    assert (one["dose"], one["route"], one["frequency"]) == ("1 capsule", "oral", "three_times_daily")
    assert (one["duration_days"], one["quantity"], one["instructions"]) == (7, 21, "After meals")
    assert (two["dose"], two["route"], two["frequency"]) == ("400 mg", "oral", "as_needed")
    assert (two["duration_days"], two["quantity"], two["instructions"]) == (5, 20, None)
    records = [MedicalRecord.objects.get(uuid=row["medical_record"]) for row in (one, two)]
    assert [record.record_type for record in records] == [RecordType.PRESCRIPTION] * 2
    assert {record.patient_id for record in records} == {patient.pk}
    assert records[0].pk != records[1].pk
    assert list(prescription.items.order_by("position").values_list("medical_record_id", flat=True)) == [
        record.pk for record in records
    ]
    assert api.get(prescription_url(prescription)).json() == data


@pytest.mark.parametrize(("count", "fragment"), [(0, "empty"), (21, "20")], ids=["no-items", "21-items"])
def test_an_empty_or_oversized_item_list_is_refused_on_items(api, patient, appointment, count, fragment):
    items = [item_body(quantity=n + 1) for n in range(count)]

    body = errors(post_json(api, prescriptions_url(patient), issue_body(appointment, items)), "items")

    assert fragment in json.dumps(body)
    assert counts()[:3] == (0, 0, 0)


def test_twenty_items_are_accepted(api, patient, appointment):
    items = [item_body(quantity=n + 1) for n in range(20)]

    response = post_json(api, prescriptions_url(patient), issue_body(appointment, items))

    assert response.status_code == 201, response.content
    assert [row["position"] for row in response.json()["items"]] == list(range(1, 21))
    assert [row["quantity"] for row in response.json()["items"]] == list(range(1, 21))


def test_an_unknown_medication_is_named_at_its_items_index(api, patient, appointment):
    items = [item_body(), item_body(medication="6f1c2b9e-0000-4000-8000-000000000002")]

    body = errors(post_json(api, prescriptions_url(patient), issue_body(appointment, items)), "items")

    assert len(body["items"]) == 2
    assert body["items"][0] == {}
    assert "medication" in body["items"][1]
    assert counts()[:3] == (0, 0, 0)


def test_an_invalid_frequency_is_named_at_its_item(api, patient, appointment):
    items = [item_body(frequency="hourly")]

    body = errors(post_json(api, prescriptions_url(patient), issue_body(appointment, items)), "items")

    assert "frequency" in body["items"][0]
    assert counts()[:3] == (0, 0, 0)


def test_missing_item_fields_and_bad_numbers_are_named(api, patient, appointment):
    items = [{"medication": str(medication().uuid), "duration_days": 0, "quantity": 10001}]

    body = errors(post_json(api, prescriptions_url(patient), issue_body(appointment, items)), "items")

    assert set(body["items"][0]) == {"dose", "frequency", "duration_days", "quantity"}


def test_another_patients_appointment_is_refused_on_appointment(api, patient, other_patient, doctor):
    theirs = visit(other_patient, doctor)

    errors(post_json(api, prescriptions_url(patient), issue_body(theirs)), "appointment")
    assert counts()[:3] == (0, 0, 0)


def test_an_unknown_appointment_is_refused_on_appointment(api, patient, appointment):
    body = issue_body(appointment)
    body["appointment"] = "6f1c2b9e-0000-4000-8000-000000000003"

    errors(post_json(api, prescriptions_url(patient), body), "appointment")


def test_a_second_prescription_for_the_same_appointment_is_refused_on_appointment(api, patient, appointment):
    first = post_json(api, prescriptions_url(patient), issue_body(appointment))
    assert first.status_code == 201, first.content
    before = counts()

    errors(post_json(api, prescriptions_url(patient), issue_body(appointment)), "appointment")
    assert counts() == before


@pytest.mark.parametrize("status", [AppointmentStatus.CANCELLED, AppointmentStatus.NO_SHOW])
def test_a_cancelled_or_missed_appointment_has_no_prescription(api, patient, doctor, status):
    closed = visit(patient, doctor, status=status)

    errors(post_json(api, prescriptions_url(patient), issue_body(closed)), "appointment")
    assert counts()[:3] == (0, 0, 0)


def test_an_appointment_that_has_not_begun_has_no_prescription(api, patient, doctor):
    upcoming = booked(patient, doctor, future())

    errors(post_json(api, prescriptions_url(patient), issue_body(upcoming)), "appointment")
    assert counts()[:3] == (0, 0, 0)


def test_another_doctor_of_the_institution_may_not_write_the_prescription(
    patient, doctor, make_doctor, appointment, roles
):
    colleague = make_doctor()
    assert colleague.institution == doctor.institution
    with_role(colleague.user)
    assert access.can_change_patient(colleague.user, patient)
    client = token_client(colleague.user)

    response = post_json(client, prescriptions_url(patient), issue_body(appointment))

    assert response.status_code == 403, response.content
    assert response["Content-Type"] == "application/json"
    assert counts() == (0, 0, 0, 0)
    assert client.get(prescriptions_url(patient)).status_code == 200


def test_printable_is_null_until_the_pdf_is_made_then_listed_among_documents(api, patient, appointment):
    prescription = issued(appointment)
    before = api.get(prescription_url(prescription)).json()

    document = prescriptions.prescription_pdf(prescription=prescription)

    after = api.get(prescription_url(prescription)).json()
    assert (before["printable"], before["documents"]) == (None, [])
    assert after["printable"] == str(document.uuid)
    assert after["documents"] == [str(document.uuid)]
    assert document.kind == "prescription_file" and document.content_type == "application/pdf"
    listed = api.get(prescriptions_url(patient)).json()["results"]
    assert [row["printable"] for row in listed] == [str(document.uuid)]


def test_prescriptions_are_listed_newest_first_in_cursor_pages(api, patient, doctor):
    made = [issued(visit(patient, doctor, hours_ago=10 - n)) for n in range(5)]
    expected = [str(prescription.uuid) for prescription in reversed(made)]

    seen: list[str] = []
    url: str | None = prescriptions_url(patient) + "?page_size=2"
    while url:
        response = api.get(url)
        seen += ids(response)
        url = response.json()["next"]
        assert len(seen) <= 6

    assert seen == expected
    assert ids(api.get(prescriptions_url(patient))) == expected


# Prescriptions: signed copies -------------------------------------------------------------------


def test_a_signed_copy_is_stored_as_a_prescription_file_of_the_prescription(api, patient, appointment, media):
    prescription = issued(appointment)
    printable = prescriptions.prescription_pdf(prescription=prescription)
    unrelated = services.document_upload(
        patient=patient, upload=SimpleUploadedFile("a.pdf", pdf_bytes()), kind="lab_report", uploaded_by=None
    )

    response = api.post(
        prescription_url(prescription, "prescription-signed-copy"),
        {"file": SimpleUploadedFile("signed.png", png_bytes())},
    )

    assert response.status_code == 201, response.content
    data = response.json()
    document = Document.objects.get(uuid=data["id"])
    assert data["prescription"] == str(prescription.uuid)
    assert data["kind"] == "prescription_file"
    assert (data["original_name"], data["content_type"]) == ("signed.png", "image/png")
    assert data["patient"] == str(patient.uuid)
    assert document.prescription == prescription
    detail = api.get(prescription_url(prescription)).json()
    assert detail["documents"] == [str(printable.uuid), str(document.uuid)]
    assert detail["printable"] == str(printable.uuid)
    rows = {row["id"]: row for row in api.get(reverse("v1:document-list", args=[patient.uuid])).json()["results"]}
    assert rows[str(document.uuid)]["prescription"] == str(prescription.uuid)
    assert rows[str(printable.uuid)]["prescription"] == str(prescription.uuid)
    assert rows[str(unrelated.uuid)]["prescription"] is None


def test_an_html_signed_copy_is_refused_on_file_and_nothing_is_stored(api, patient, appointment, media):
    prescription = issued(appointment)
    files_before, documents_before = stored_files(media), Document.objects.count()

    response = api.post(
        prescription_url(prescription, "prescription-signed-copy"),
        {"file": SimpleUploadedFile("signed.html", HTML)},
    )

    errors(response, "file")
    assert Document.objects.count() == documents_before
    assert stored_files(media) == files_before
    assert api.get(prescription_url(prescription)).json()["documents"] == []


def test_a_signed_copy_without_a_file_is_refused_on_file(api, patient, appointment):
    prescription = issued(appointment)

    errors(api.post(prescription_url(prescription, "prescription-signed-copy"), {}), "file")
    assert Document.objects.count() == 0


# Privacy ----------------------------------------------------------------------------------------


def test_a_patient_cannot_read_another_patients_care_by_guessing_ids(patient, other_patient, doctor):
    their_visit = visit(patient, doctor)
    their_prescription = issued(their_visit)
    own_visit = visit(other_patient, doctor, hours_ago=3)
    own_prescription = issued(own_visit)
    client = token_client(other_patient.user)

    assert client.get(reverse("v1:my-appointment-detail", args=[their_visit.uuid])).status_code == 404
    assert client.get(reverse("v1:my-prescription-detail", args=[their_prescription.uuid])).status_code == 404
    assert client.get(appointment_url(their_visit)).status_code == 404
    assert client.get(prescription_url(their_prescription)).status_code == 404
    assert ids(client.get(reverse("v1:my-appointment-list"))) == [str(own_visit.uuid)]
    assert ids(client.get(reverse("v1:my-prescription-list"))) == [str(own_prescription.uuid)]
    own = client.get(reverse("v1:my-prescription-detail", args=[own_prescription.uuid]))
    assert own.status_code == 200 and own.json()["appointment"] == str(own_visit.uuid)


def test_an_appointment_or_prescription_of_another_patient_is_404_under_this_patients_url(
    api, patient, other_patient, doctor
):
    theirs = visit(other_patient, doctor)
    their_prescription = issued(theirs)

    wrong_appointment = reverse("v1:appointment-detail", args=[patient.uuid, theirs.uuid])
    wrong_prescription = reverse("v1:prescription-detail", args=[patient.uuid, their_prescription.uuid])

    assert api.get(wrong_appointment).status_code == 404
    assert api.get(wrong_prescription).status_code == 404
    assert post_json(api, wrong_appointment + "cancel/", {"reason": "x"}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == AppointmentStatus.COMPLETED


def test_staff_of_another_institution_get_404(patient, doctor, appointment, make_staff, make_institution):
    prescription = issued(appointment)
    outsider = token_client(make_staff("Doctor", make_institution()))

    assert outsider.get(appointment_url(appointment)).status_code == 404
    assert outsider.get(prescription_url(prescription)).status_code == 404
    assert outsider.get(appointments_url(patient)).status_code == 404
    assert post_json(outsider, appointment_url(appointment, "no-show"), {}).status_code == 404
    assert not access_entries().exists()


# Audit ------------------------------------------------------------------------------------------


def access_entries(model: str | None = None) -> Any:
    entries = LogEntry.objects.filter(action=LogEntry.Action.ACCESS).order_by("pk")
    return entries.filter(content_type__model=model) if model else entries


def assert_no_patient_name(entry: LogEntry, patient: Patient) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT l::text FROM auditlog_logentry l WHERE id = %s", [entry.pk])
        row = cursor.fetchone()[0]
    text = " ".join([entry.object_repr, json.dumps(entry.additional_data), row])
    for secret in (patient.first_name, patient.last_name, patient.mrn, str(patient)):
        assert secret not in text, secret


def test_an_appointment_detail_read_writes_one_access_entry(api, patient, clinician, appointment):
    response = api.get(appointment_url(appointment), HTTP_X_PURPOSE_OF_USE="HOPERAT")

    assert response.status_code == 200
    [entry] = access_entries()
    assert entry.content_type.model_class() is Appointment
    assert (entry.actor, entry.object_pk) == (clinician, str(appointment.uuid))
    assert entry.additional_data["view"] == "api appointment detail"
    assert entry.additional_data["patient"] == str(patient.uuid)
    assert entry.additional_data["appointments"] == [str(appointment.uuid)]
    assert entry.additional_data["purpose_of_use"] == "HOPERAT"
    assert entry.additional_data["break_glass"] is False
    assert_no_patient_name(entry, patient)


def test_a_list_page_writes_one_access_entry_naming_the_rows_shown(api, patient, clinician, calendar):
    api.get(appointments_url(patient), {"page_size": 3})

    [entry] = access_entries()
    assert entry.content_type.model_class() is Appointment
    assert entry.object_pk == ""
    assert entry.additional_data["view"] == "api appointment list"
    assert entry.additional_data["appointments"] == [
        str(calendar[name].uuid) for name in ("later", "soon", "cancelled")
    ]
    assert entry.additional_data["purpose_of_use"] == "TREAT"
    assert_no_patient_name(entry, patient)


def test_prescription_reads_write_access_entries(api, patient, clinician, appointment):
    prescription = issued(appointment)

    api.get(prescriptions_url(patient))
    api.get(prescription_url(prescription))

    listing, detail = access_entries("prescription")
    assert listing.additional_data["view"] == "api prescription list"
    assert listing.additional_data["prescriptions"] == [str(prescription.uuid)]
    assert (detail.object_pk, detail.actor) == (str(prescription.uuid), clinician)
    assert detail.additional_data["view"] == "api prescription detail"
    assert detail.additional_data["prescriptions"] == [str(prescription.uuid)]
    assert detail.additional_data["patient"] == str(patient.uuid)
    for entry in (listing, detail):
        assert_no_patient_name(entry, patient)


def test_a_patients_own_reads_are_logged_as_patient_requests(patient, appointment):
    prescription = issued(appointment)
    client = token_client(patient.user)

    for url in (
        reverse("v1:my-appointment-list"),
        reverse("v1:my-appointment-detail", args=[appointment.uuid]),
        reverse("v1:my-prescription-list"),
        reverse("v1:my-prescription-detail", args=[prescription.uuid]),
    ):
        assert client.get(url).status_code == 200, url

    entries = list(access_entries())
    assert [entry.additional_data["view"] for entry in entries] == [
        "api my appointments",
        "api my appointment",
        "api my prescriptions",
        "api my prescription",
    ]
    assert {entry.additional_data["purpose_of_use"] for entry in entries} == {"PATRQT"}
    assert {entry.actor_id for entry in entries} == {patient.user_id}
    assert entries[1].additional_data["appointments"] == [str(appointment.uuid)]
    assert entries[3].additional_data["prescriptions"] == [str(prescription.uuid)]
    for entry in entries:
        assert_no_patient_name(entry, patient)


def test_a_read_through_broken_glass_is_logged_as_emergency_treatment(
    patient, appointment, make_staff, make_institution
):
    emergency = make_staff("Doctor", make_institution())
    services.break_glass_open(user=emergency, patient=patient, reason="Unconscious in the emergency room")

    assert token_client(emergency).get(appointment_url(appointment)).status_code == 200

    [entry] = access_entries("appointment")
    assert entry.actor == emergency
    assert entry.additional_data["purpose_of_use"] == "ETREAT"
    assert entry.additional_data["break_glass"] is True


def test_a_refused_read_writes_no_access_entry(patient, other_patient, doctor, appointment):
    prescription = issued(appointment)
    client = token_client(other_patient.user)

    assert client.get(reverse("v1:my-appointment-detail", args=[appointment.uuid])).status_code == 404
    assert client.get(reverse("v1:my-prescription-detail", args=[prescription.uuid])).status_code == 404
    assert not access_entries().exists()


# Query counts -----------------------------------------------------------------------------------


def page_queries(client: Client, url: str, rows: int) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    assert len(response.json()["results"]) == rows
    return len(captured.captured_queries)


def fill_appointments(patient: Patient, doctor: Doctor, count: int) -> None:
    statuses = [AppointmentStatus.COMPLETED, AppointmentStatus.CANCELLED, AppointmentStatus.NO_SHOW]
    for n in range(count):
        appointment = visit(patient, doctor, status=statuses[n % 3], hours_ago=3 + n)
        if n % 3 == 0:
            issued(appointment)


def test_the_appointment_list_costs_the_same_queries_for_5_and_15_rows(
    api, make_patient, doctor, django_assert_max_num_queries
):
    few, many = make_patient(), make_patient()
    fill_appointments(few, doctor, 5)
    fill_appointments(many, doctor, 15)
    page_queries(api, appointments_url(few), 5)  # warm the per-process caches and the token's stamp

    with django_assert_max_num_queries(page_queries(api, appointments_url(few), 5)):
        api.get(appointments_url(many))

    assert page_queries(api, appointments_url(many), 15) == page_queries(api, appointments_url(few), 5)


def fill_prescriptions(patient: Patient, doctor: Doctor, count: int) -> None:
    for n in range(count):
        prescription = issued(visit(patient, doctor, hours_ago=3 + n), items=2)
        if n % 2 == 0:
            prescriptions.prescription_pdf(prescription=prescription)


def test_the_prescription_list_costs_the_same_queries_for_5_and_15_rows(
    api, make_patient, doctor, django_assert_max_num_queries
):
    few, many = make_patient(), make_patient()
    fill_prescriptions(few, doctor, 5)
    fill_prescriptions(many, doctor, 15)
    page_queries(api, prescriptions_url(few), 5)

    with django_assert_max_num_queries(page_queries(api, prescriptions_url(few), 5)):
        api.get(prescriptions_url(many))

    assert page_queries(api, prescriptions_url(many), 15) == page_queries(api, prescriptions_url(few), 5)


def test_the_own_lists_cost_the_same_queries_for_5_and_15_rows(make_patient, doctor):
    few = make_patient(portal_email="few.portal@example.org", portal_password=PASSWORD)
    many = make_patient(portal_email="many.portal@example.org", portal_password=PASSWORD)
    fill_appointments(few, doctor, 5)
    fill_appointments(many, doctor, 15)
    few_client, many_client = token_client(few.user), token_client(many.user)
    for name, few_rows, many_rows in (("v1:my-appointment-list", 5, 15), ("v1:my-prescription-list", 2, 5)):
        url = reverse(name)
        page_queries(few_client, url, few_rows)
        page_queries(many_client, url, many_rows)

        assert page_queries(many_client, url, many_rows) == page_queries(few_client, url, few_rows), name


def test_a_patient_cannot_attach_a_file_to_their_prescription(patient, doctor, roles):
    """A prescription's files are its PDF and the prescriber side's signed copies."""
    prescription = issued(visit(patient, doctor))
    client = token_client(patient.user)
    before = counts()
    response = client.post(
        reverse("v1:my-document-list"),
        {
            "file": SimpleUploadedFile("signed.txt", b"Signed, honestly.\n"),
            "kind": "prescription_file",
            "prescription": str(prescription.uuid),
        },
    )
    assert response.status_code == 400
    assert "prescription" in response.json()
    assert counts() == before
