"""Appointments: the booking services and the database rules behind them.

Service tests go through ``clinical.appointments``. Database tests write
around the services (``bulk_create``, ``QuerySet.update``, raw SQL), so only
PostgreSQL can stop them, and assert the name of the rule that did
(``tests.db.rule_name``). The concurrency tests book on two connections at
the same moment.
"""

from __future__ import annotations

import datetime
import threading
import zoneinfo
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from accounts.rotation import rotate_keys
from clinical import appointments, schema, services
from clinical.models import Appointment, AppointmentStatus, Doctor, InstitutionMembership, MembershipRole, Patient
from config.embedded import new_field_key
from tests.db import raw, rule_name, violated

pytestmark = pytest.mark.django_db

UTC = datetime.UTC
NOT_NULL_VIOLATION = "23502"
STATUSES = list(AppointmentStatus.values)
ALLOWED = {
    ("scheduled", "completed"),
    ("scheduled", "cancelled"),
    ("scheduled", "no_show"),
}
FORBIDDEN = [(old, new) for old in STATUSES for new in STATUSES if old != new and (old, new) not in ALLOWED]
CLOSED = ["completed", "cancelled", "no_show"]


def accepted(write: Callable[[], Any]) -> Any:
    """Run ``write`` with deferred rules made immediate; it must not raise."""
    with transaction.atomic():
        raw("SET CONSTRAINTS ALL IMMEDIATE")
        return write()


def slot_start() -> datetime.datetime:
    """A whole hour three days ahead, in UTC: every test's 'now + a bit'."""
    soon = timezone.now().astimezone(UTC) + datetime.timedelta(days=3)
    return soon.replace(minute=0, second=0, microsecond=0)


def minutes(n: int) -> datetime.timedelta:
    return datetime.timedelta(minutes=n)


@pytest.fixture
def t0() -> datetime.datetime:
    return slot_start()


@pytest.fixture
def clerk(make_user: Callable[..., Any]) -> Any:
    return make_user(is_staff=True)


@pytest.fixture
def book(patient: Patient, doctor: Doctor, clerk: Any) -> Callable[..., Appointment]:
    """``book(starts_at, ends_at, **overrides)`` through the service, for the default patient and doctor."""

    def make(starts_at: datetime.datetime, ends_at: datetime.datetime, **fields: Any) -> Appointment:
        values = {
            "patient": patient,
            "doctor": doctor,
            "institution": doctor.institution,
            "starts_at": starts_at,
            "ends_at": ends_at,
            "reason": "Follow-up of blood pressure",
            "booked_by": clerk,
            **fields,
        }
        return appointments.appointment_book(**values)

    return make


def outcome_fields(status: str, user: Any) -> dict[str, Any]:
    """The who/when/why columns a row in ``status`` must carry to be consistent."""
    now = timezone.now()
    if status == AppointmentStatus.CANCELLED:
        return {"cancelled_by": user, "cancelled_at": now, "cancellation_reason": "Patient called"}
    if status in (AppointmentStatus.COMPLETED, AppointmentStatus.NO_SHOW):
        return {"outcome_recorded_by": user, "outcome_recorded_at": now}
    return {}


def new_row(patient: Patient, doctor: Doctor, starts_at: datetime.datetime, **fields: Any) -> Appointment:
    """An unsaved appointment, consistent for its status unless ``fields`` say otherwise."""
    values = {
        "patient": patient,
        "doctor": doctor,
        "institution_id": doctor.institution_id,
        "starts_at": starts_at,
        "ends_at": starts_at + minutes(30),
        **fields,
    }
    return Appointment(**values)


def row(patient: Patient, doctor: Doctor, starts_at: datetime.datetime, status: str, user: Any) -> Appointment:
    """An appointment written around the services, in any status (history, or a start already passed)."""
    (appointment,) = Appointment.objects.bulk_create(
        [new_row(patient, doctor, starts_at, status=status, **outcome_fields(status, user))]
    )
    return appointment


def set_status_raw(appointment: Appointment, status: str, user: Any) -> None:
    """A raw UPDATE to ``status`` that leaves the row consistent, so only the transition rule can object."""
    cancelled = status == AppointmentStatus.CANCELLED
    outcome = status in (AppointmentStatus.COMPLETED, AppointmentStatus.NO_SHOW)
    raw(
        """
        UPDATE clinical_appointment
        SET status = %s,
            cancelled_by_id = %s, cancelled_at = CASE WHEN %s THEN clock_timestamp() END,
            cancellation_reason = CASE WHEN %s THEN 'ct1$sealed-elsewhere' END,
            outcome_recorded_by_id = %s, outcome_recorded_at = CASE WHEN %s THEN clock_timestamp() END
        WHERE id = %s
        """,
        [
            status,
            user.pk if cancelled else None,
            cancelled,
            cancelled,
            user.pk if outcome else None,
            outcome,
            appointment.pk,
        ],
    )


def field_errors(caught: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return caught.value.message_dict


# Booking ---------------------------------------------------------------------------------------


def test_it_books_an_appointment_in_utc_with_its_reason_encrypted(book, patient, doctor, clerk):
    new_york = zoneinfo.ZoneInfo("America/New_York")
    start = slot_start().astimezone(new_york)

    appointment = book(start, start + minutes(30))

    stored = Appointment.objects.get(pk=appointment.pk)
    assert stored.starts_at == start and stored.starts_at.utcoffset() == datetime.timedelta(0)
    assert stored.ends_at - stored.starts_at == minutes(30)
    assert (stored.patient, stored.doctor, stored.institution) == (patient, doctor, doctor.institution)
    assert (stored.status, stored.booked_by) == (AppointmentStatus.SCHEDULED, clerk)
    assert stored.reason == "Follow-up of blood pressure"
    with connection.cursor() as cursor:
        cursor.execute("SELECT reason FROM clinical_appointment WHERE id = %s", [appointment.pk])
        (column,) = cursor.fetchone()
    assert "blood pressure" not in column


@pytest.mark.parametrize(
    "zone, month_day, utc, local",
    [
        ("America/New_York", (1, 15), (15, 0), "10:00 -0500"),
        ("America/New_York", (7, 15), (14, 0), "10:00 -0400"),
        ("Asia/Kolkata", (3, 3), (4, 30), "10:00 +0530"),
    ],
    ids=["new-york-winter", "new-york-summer", "kolkata"],
)
def test_it_shows_the_times_in_the_institutions_time_zone(
    book, make_institution, make_doctor, make_patient, zone, month_day, utc, local
):
    year = timezone.now().year + 1
    starts_at = datetime.datetime(year, *month_day, *utc, tzinfo=UTC)
    institution = make_institution(time_zone=zone)
    doctor = make_doctor(institution=institution)
    appointment = book(
        starts_at, starts_at + minutes(45), doctor=doctor, institution=institution, patient=make_patient(doctor=doctor)
    )

    stored = Appointment.objects.select_related("institution").get(pk=appointment.pk)
    assert stored.starts_at == starts_at and stored.starts_at.utcoffset() == datetime.timedelta(0)
    assert stored.local_starts_at.strftime("%m-%d %H:%M %z") == f"{month_day[0]:02d}-{month_day[1]:02d} {local}"
    assert stored.local_ends_at - stored.local_starts_at == minutes(45)
    assert stored.local_starts_at == stored.starts_at  # the same instant, shown elsewhere


@pytest.mark.parametrize("field", ["starts_at", "ends_at"])
def test_it_refuses_a_naive_time(book, t0, field):
    times = {"starts_at": t0, "ends_at": t0 + minutes(30)}
    times[field] = times[field].replace(tzinfo=None)
    with pytest.raises(ValidationError) as caught:
        book(**times)
    assert field in field_errors(caught)
    assert not Appointment.objects.exists()


@pytest.mark.parametrize("length", [minutes(0), -minutes(30)], ids=["ends as it starts", "ends before it starts"])
def test_it_refuses_an_appointment_that_does_not_end_after_it_starts(book, t0, length):
    with pytest.raises(ValidationError) as caught:
        book(t0, t0 + length)
    assert "ends_at" in field_errors(caught)
    assert not Appointment.objects.exists()


def test_it_books_eight_hours_but_refuses_longer(book, t0):
    book(t0, t0 + datetime.timedelta(hours=8))
    later = t0 + datetime.timedelta(days=1)
    with pytest.raises(ValidationError) as caught:
        book(later, later + datetime.timedelta(hours=8, seconds=1))
    assert "ends_at" in field_errors(caught)
    assert Appointment.objects.count() == 1


def test_it_refuses_to_book_an_appointment_that_starts_in_the_past(book):
    start = timezone.now() - minutes(5)
    with pytest.raises(ValidationError) as caught:
        book(start, start + minutes(30))
    assert "starts_at" in field_errors(caught)


def test_it_refuses_a_doctor_from_another_institution(book, t0, institution, make_doctor, make_institution):
    stranger = make_doctor(institution=make_institution())
    with pytest.raises(ValidationError) as caught:
        book(t0, t0 + minutes(30), doctor=stranger, institution=institution)
    assert "doctor" in field_errors(caught)
    assert not Appointment.objects.exists()


def test_it_books_a_doctor_at_a_second_institution_where_they_also_hold_a_doctor_membership(
    book, t0, doctor, make_institution
):
    second = make_institution()
    services.membership_start(user=doctor.user, institution=second, role=MembershipRole.DOCTOR)
    appointment = book(t0, t0 + minutes(30), institution=second)
    assert appointment.institution == second


def test_it_books_only_a_doctor_who_can_open_the_patients_record(
    book, t0, patient, make_doctor, make_institution, clerk
):
    """At another institution, a doctor who is neither the primary doctor nor holds a grant would
    have the slot in their calendar and no access to the record."""
    elsewhere = make_institution()
    stranger = make_doctor(institution=elsewhere)
    with pytest.raises(ValidationError) as caught:
        book(t0, t0 + minutes(30), doctor=stranger, institution=elsewhere)
    assert "cannot see this patient's record" in field_errors(caught)["doctor"][0]
    assert not Appointment.objects.filter(doctor=stranger).exists()
    services.grant_create(patient=patient, user=stranger.user, kind="view", granted_by=clerk, reason="Referral")
    assert book(t0, t0 + minutes(30), doctor=stranger, institution=elsewhere).doctor == stranger


@pytest.mark.parametrize(
    "membership",
    ["as a nurse", "ended", "not yet started", "ends before the appointment does"],
)
def test_it_refuses_a_doctor_without_an_active_doctor_membership_at_the_institution(
    book, t0, doctor, make_institution, membership
):
    elsewhere = make_institution()
    now = timezone.now()
    user = doctor.user
    if membership == "as a nurse":
        services.membership_start(user=user, institution=elsewhere, role=MembershipRole.NURSE)
    elif membership == "ended":
        services.membership_start(
            user=user,
            institution=elsewhere,
            role=MembershipRole.DOCTOR,
            valid_from=now - datetime.timedelta(days=9),
            valid_until=now - datetime.timedelta(days=1),
        )
    elif membership == "not yet started":
        services.membership_start(
            user=user, institution=elsewhere, role=MembershipRole.DOCTOR, valid_from=now + datetime.timedelta(days=1)
        )
    else:
        services.membership_start(
            user=user, institution=elsewhere, role=MembershipRole.DOCTOR, valid_until=t0 + minutes(15)
        )
    with pytest.raises(ValidationError) as caught:
        book(t0, t0 + minutes(30), institution=elsewhere)
    assert "doctor" in field_errors(caught)
    assert not Appointment.objects.exists()


@pytest.mark.parametrize("party", ["doctor", "patient"])
def test_it_refuses_an_inactive_doctor_or_patient(book, t0, doctor, patient, party):
    inactive = {"doctor": doctor, "patient": patient}[party]
    type(inactive).objects.filter(pk=inactive.pk).update(is_active=False)
    inactive.refresh_from_db()
    with pytest.raises(ValidationError) as caught:
        book(t0, t0 + minutes(30), **{party: inactive})
    assert party in field_errors(caught)
    assert not Appointment.objects.exists()


# Overlaps ---------------------------------------------------------------------------------------

OVERLAPS = [
    pytest.param(0, 30, id="the same slot"),
    pytest.param(15, 30, id="starts inside"),
    pytest.param(-15, 30, id="ends inside"),
    pytest.param(-15, 60, id="around it"),
    pytest.param(10, 10, id="inside it"),
]


@pytest.mark.parametrize("offset, length", OVERLAPS)
def test_it_refuses_an_overlapping_appointment_with_the_same_doctor(book, t0, make_patient, offset, length):
    book(t0, t0 + minutes(30))
    start = t0 + minutes(offset)
    with pytest.raises(ValidationError) as caught:
        book(start, start + minutes(length), patient=make_patient())
    assert field_errors(caught) == {"starts_at": ["The doctor already has an appointment at this time."]}
    assert Appointment.objects.count() == 1


@pytest.mark.parametrize("offset, length", OVERLAPS)
def test_it_refuses_an_overlapping_appointment_for_the_same_patient_with_another_doctor(
    book, t0, make_doctor, offset, length
):
    book(t0, t0 + minutes(30))
    start = t0 + minutes(offset)
    with pytest.raises(ValidationError) as caught:
        book(start, start + minutes(length), doctor=make_doctor())
    assert field_errors(caught) == {"starts_at": ["The patient already has an appointment at this time."]}
    assert Appointment.objects.count() == 1


def test_the_overlap_error_leaves_the_callers_transaction_usable(book, t0, make_patient):
    book(t0, t0 + minutes(30))
    with transaction.atomic():
        with pytest.raises(ValidationError):
            book(t0, t0 + minutes(30), patient=make_patient())
        assert Appointment.objects.count() == 1  # no "current transaction is aborted"


def test_it_books_back_to_back_appointments(book, t0, make_patient, make_doctor):
    book(t0, t0 + minutes(30))
    book(t0 + minutes(30), t0 + minutes(60), patient=make_patient())  # the same doctor, right after
    book(t0 - minutes(30), t0, doctor=make_doctor())  # the same patient, right before
    assert Appointment.objects.scheduled().count() == 3


def test_a_cancelled_appointment_frees_its_slot(book, t0, clerk, make_patient):
    first = book(t0, t0 + minutes(30))
    appointments.appointment_cancel(appointment=first, by=clerk, reason="Patient is travelling")
    again = book(t0, t0 + minutes(30))
    other = book(t0 + minutes(60), t0 + minutes(90), patient=make_patient())
    appointments.appointment_cancel(appointment=other, by=clerk, reason="Doctor is ill")
    book(t0 + minutes(60), t0 + minutes(90), patient=make_patient())
    assert again.status == AppointmentStatus.SCHEDULED
    assert Appointment.objects.filter(status=AppointmentStatus.CANCELLED).count() == 2


# Reschedule -------------------------------------------------------------------------------------


def test_it_reschedules_a_scheduled_appointment_even_onto_part_of_its_own_slot(book, t0, clerk):
    appointment = book(t0, t0 + minutes(30))
    moved = appointments.appointment_reschedule(
        appointment=appointment, starts_at=t0 + minutes(15), ends_at=t0 + minutes(45), by=clerk
    )
    stored = Appointment.objects.get(pk=appointment.pk)
    assert (
        (stored.starts_at, stored.ends_at) == (t0 + minutes(15), t0 + minutes(45)) == (moved.starts_at, moved.ends_at)
    )


def test_it_refuses_to_reschedule_onto_another_appointment(book, t0, clerk, make_patient):
    book(t0, t0 + minutes(30))
    later = book(t0 + minutes(60), t0 + minutes(90), patient=make_patient())
    with pytest.raises(ValidationError) as caught:
        appointments.appointment_reschedule(appointment=later, starts_at=t0, ends_at=t0 + minutes(30), by=clerk)
    assert field_errors(caught) == {"starts_at": ["The doctor already has an appointment at this time."]}
    assert Appointment.objects.get(pk=later.pk).starts_at == t0 + minutes(60)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda t: (t.replace(tzinfo=None), t + minutes(30)), id="naive"),
        pytest.param(lambda t: (t, t - minutes(30)), id="ends before it starts"),
        pytest.param(lambda t: (t, t + datetime.timedelta(hours=9)), id="nine hours"),
        pytest.param(
            lambda t: (t - datetime.timedelta(days=4), t - datetime.timedelta(days=4) + minutes(30)), id="past"
        ),
    ],
)
def test_it_refuses_to_reschedule_to_invalid_times(book, t0, clerk, change):
    appointment = book(t0, t0 + minutes(30))
    starts_at, ends_at = change(t0 + datetime.timedelta(days=1))
    with pytest.raises(ValidationError):
        appointments.appointment_reschedule(appointment=appointment, starts_at=starts_at, ends_at=ends_at, by=clerk)
    assert Appointment.objects.get(pk=appointment.pk).starts_at == t0


def test_it_refuses_to_reschedule_once_the_doctor_no_longer_works_there(book, t0, clerk, doctor, make_institution):
    second = make_institution()
    membership = services.membership_start(user=doctor.user, institution=second, role=MembershipRole.DOCTOR)
    appointment = book(t0, t0 + minutes(30), institution=second)
    services.membership_end(membership=membership)
    with pytest.raises(ValidationError) as caught:
        appointments.appointment_reschedule(
            appointment=appointment, starts_at=t0 + minutes(60), ends_at=t0 + minutes(90), by=clerk
        )
    assert "doctor" in field_errors(caught)


# Cancel, complete, no-show ----------------------------------------------------------------------


def test_cancelling_records_who_when_and_why_encrypted(book, t0, clerk):
    appointment = book(t0, t0 + minutes(30))
    with pytest.raises(ValidationError) as caught:
        appointments.appointment_cancel(appointment=appointment, by=clerk, reason="  ")
    assert "reason" in field_errors(caught)

    appointments.appointment_cancel(appointment=appointment, by=clerk, reason="Patient is travelling")

    stored = Appointment.objects.get(pk=appointment.pk)
    assert (stored.status, stored.cancelled_by) == (AppointmentStatus.CANCELLED, clerk)
    assert stored.cancelled_at is not None and stored.cancellation_reason == "Patient is travelling"
    with connection.cursor() as cursor:
        cursor.execute("SELECT cancellation_reason FROM clinical_appointment WHERE id = %s", [appointment.pk])
        assert "travelling" not in cursor.fetchone()[0]


def test_completing_records_who_and_when(book, t0, doctor):
    appointment = book(t0, t0 + minutes(30))
    appointments.appointment_complete(appointment=appointment, by=doctor.user)
    stored = Appointment.objects.get(pk=appointment.pk)
    assert (stored.status, stored.outcome_recorded_by) == (AppointmentStatus.COMPLETED, doctor.user)
    assert stored.outcome_recorded_at is not None


def test_a_no_show_is_refused_before_the_start_time(book, t0, clerk):
    appointment = book(t0, t0 + minutes(30))
    with pytest.raises(ValidationError) as caught:
        appointments.appointment_mark_no_show(appointment=appointment, by=clerk)
    assert "status" in field_errors(caught)
    assert Appointment.objects.get(pk=appointment.pk).status == AppointmentStatus.SCHEDULED


def test_a_no_show_is_recorded_once_the_start_time_has_passed(patient, doctor, clerk):
    started = row(patient, doctor, timezone.now() - minutes(10), "scheduled", clerk)
    appointments.appointment_mark_no_show(appointment=started, by=clerk)
    stored = Appointment.objects.get(pk=started.pk)
    assert (stored.status, stored.outcome_recorded_by) == (AppointmentStatus.NO_SHOW, clerk)


SERVICES = {
    "completed": lambda a, user: appointments.appointment_complete(appointment=a, by=user),
    "cancelled": lambda a, user: appointments.appointment_cancel(appointment=a, by=user, reason="Changed plans"),
    "no_show": lambda a, user: appointments.appointment_mark_no_show(appointment=a, by=user),
    "scheduled": lambda a, user: appointments.appointment_reschedule(
        appointment=a, starts_at=slot_start() + minutes(120), ends_at=slot_start() + minutes(150), by=user
    ),
}


@pytest.mark.parametrize("old, new", FORBIDDEN, ids=[f"{old}-to-{new}" for old, new in FORBIDDEN])
def test_the_services_refuse_every_forbidden_status_transition(patient, doctor, clerk, old, new):
    # Started an hour ago, so the no-show rule's own time condition would pass.
    appointment = row(patient, doctor, timezone.now() - minutes(60), old, clerk)
    before = Appointment.objects.filter(pk=appointment.pk).values().get()
    with pytest.raises(ValidationError) as caught:
        SERVICES[new](appointment, clerk)
    assert "status" in field_errors(caught)
    assert Appointment.objects.filter(pk=appointment.pk).values().get() == before


@pytest.mark.parametrize("old", CLOSED)
def test_a_closed_appointment_cannot_be_closed_again_in_the_same_way(patient, doctor, clerk, old):
    appointment = row(patient, doctor, timezone.now() - minutes(60), old, clerk)
    with pytest.raises(ValidationError) as caught:
        SERVICES[old](appointment, clerk)
    assert "status" in field_errors(caught)


@pytest.mark.parametrize("new", CLOSED)
def test_the_services_make_every_allowed_status_transition(patient, doctor, clerk, new):
    appointment = row(patient, doctor, timezone.now() - minutes(60), "scheduled", clerk)
    SERVICES[new](appointment, clerk)
    assert Appointment.objects.get(pk=appointment.pk).status == new


# A doctor who moves --------------------------------------------------------------------------------


def test_a_moved_doctors_past_appointment_keeps_its_institution(
    patient, doctor, clerk, institution, make_doctor, make_institution
):
    visit = row(patient, doctor, timezone.now() - datetime.timedelta(days=2), "scheduled", clerk)
    appointments.appointment_complete(appointment=visit, by=doctor.user)
    shown_at = Appointment.objects.get(pk=visit.pk).local_starts_at
    # The doctor moves: their patients go to a colleague, then the doctor to a new institution.
    services.patient_transfer(patient=patient, doctor=make_doctor())
    new_home = make_institution(time_zone="Europe/Paris")
    services.membership_start(user=doctor.user, institution=new_home, role=MembershipRole.DOCTOR)
    accepted(lambda: Doctor.objects.filter(pk=doctor.pk).update(institution=new_home))

    stored = Appointment.objects.get(pk=visit.pk)
    assert stored.doctor.institution == new_home
    assert stored.institution == institution
    assert stored.local_starts_at.tzinfo == zoneinfo.ZoneInfo(institution.time_zone)
    assert stored.local_starts_at.utcoffset() == shown_at.utcoffset()


# Database rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["patient_id", "doctor_id", "institution_id", "starts_at", "ends_at"])
def test_the_database_refuses_an_appointment_without_its_parties_or_times(book, t0, column):
    appointment = book(t0, t0 + minutes(30))
    diag = violated(lambda: raw(f"UPDATE clinical_appointment SET {column} = NULL WHERE id = %s", [appointment.pk]))
    assert diag.sqlstate == NOT_NULL_VIOLATION
    assert diag.column_name == column


def test_the_database_refuses_an_appointment_that_does_not_end_after_it_starts(book, t0):
    rows = Appointment.objects.filter(pk=book(t0, t0 + minutes(30)).pk)
    accepted(lambda: rows.update(ends_at=t0 + datetime.timedelta(microseconds=1)))
    assert rule_name(lambda: rows.update(ends_at=t0)) == "clinical_appointment_ends_after_start"
    assert rule_name(lambda: rows.update(ends_at=t0 - minutes(1))) == "clinical_appointment_ends_after_start"


def test_the_database_refuses_an_appointment_longer_than_eight_hours(book, t0):
    rows = Appointment.objects.filter(pk=book(t0, t0 + minutes(30)).pk)
    accepted(lambda: rows.update(ends_at=t0 + datetime.timedelta(hours=8)))
    assert (
        rule_name(lambda: rows.update(ends_at=t0 + datetime.timedelta(hours=8, microseconds=1)))
        == "clinical_appointment_at_most_8_hours"
    )


@pytest.mark.parametrize("status", STATUSES)
def test_the_database_accepts_each_consistent_status(patient, doctor, clerk, t0, status):
    accepted(lambda: row(patient, doctor, t0, status, clerk))


INCONSISTENT = [
    pytest.param("scheduled", {"cancelled_at": "now"}, id="scheduled with a cancellation time"),
    pytest.param("scheduled", {"cancellation_reason": "x"}, id="scheduled with a cancellation reason"),
    pytest.param("scheduled", {"outcome_recorded_by": "user"}, id="scheduled with an outcome author"),
    pytest.param("cancelled", {}, id="cancelled without who, when and why"),
    pytest.param("cancelled", {"cancelled_by": "user", "cancelled_at": "now"}, id="cancelled without a reason"),
    pytest.param("cancelled", {"cancelled_by": "user", "cancellation_reason": "x"}, id="cancelled without a time"),
    pytest.param("cancelled", {"cancelled_at": "now", "cancellation_reason": "x"}, id="cancelled without who"),
    pytest.param(
        "cancelled",
        {
            **dict.fromkeys(["cancelled_by", "outcome_recorded_by"], "user"),
            "cancelled_at": "now",
            "cancellation_reason": "x",
            "outcome_recorded_at": "now",
        },
        id="cancelled with an outcome",
    ),
    pytest.param("completed", {}, id="completed without who and when"),
    pytest.param("completed", {"outcome_recorded_by": "user"}, id="completed without a time"),
    pytest.param("no_show", {"outcome_recorded_at": "now"}, id="no-show without who"),
    pytest.param(
        "no_show",
        {"outcome_recorded_by": "user", "outcome_recorded_at": "now", "cancellation_reason": "x"},
        id="no-show with a cancellation reason",
    ),
    pytest.param("postponed", {}, id="an unknown status"),
]


@pytest.mark.parametrize("status, values", INCONSISTENT)
def test_the_database_refuses_an_inconsistent_status(patient, doctor, clerk, t0, status, values):
    stand_ins = {"user": clerk, "now": timezone.now()}
    fields = {name: stand_ins.get(value, value) for name, value in values.items()}
    assert (
        rule_name(lambda: Appointment.objects.bulk_create([new_row(patient, doctor, t0, status=status, **fields)]))
        == "clinical_appointment_status_consistent"
    )


def test_the_database_refuses_a_plain_cancellation_reason_written_with_raw_sql_on_a_scheduled_row(book, t0):
    appointment = book(t0, t0 + minutes(30))
    assert (
        rule_name(
            lambda: raw("UPDATE clinical_appointment SET cancellation_reason = 'x' WHERE id = %s", [appointment.pk])
        )
        == "clinical_appointment_status_consistent"
    )


@pytest.mark.parametrize("offset, length", OVERLAPS)
def test_the_database_refuses_overlapping_scheduled_appointments_of_a_doctor(
    patient, doctor, make_patient, clerk, t0, offset, length
):
    row(patient, doctor, t0, "scheduled", clerk)
    other = make_patient()
    start = t0 + minutes(offset)
    clash = new_row(other, doctor, start, ends_at=start + minutes(length))
    assert rule_name(lambda: Appointment.objects.bulk_create([clash])) == schema.APPOINTMENT_DOCTOR_NO_OVERLAP


@pytest.mark.parametrize("offset, length", OVERLAPS)
def test_the_database_refuses_overlapping_scheduled_appointments_of_a_patient(
    patient, doctor, make_doctor, clerk, t0, offset, length
):
    row(patient, doctor, t0, "scheduled", clerk)
    start = t0 + minutes(offset)
    clash = new_row(patient, make_doctor(), start, ends_at=start + minutes(length))
    assert rule_name(lambda: Appointment.objects.bulk_create([clash])) == schema.APPOINTMENT_PATIENT_NO_OVERLAP


@pytest.mark.parametrize("status", CLOSED)
def test_the_database_accepts_overlaps_with_closed_appointments_and_back_to_back_ones(
    patient, doctor, make_patient, clerk, t0, status
):
    row(patient, doctor, t0, status, clerk)
    accepted(lambda: row(patient, doctor, t0, "scheduled", clerk))  # the closed one does not hold the slot
    accepted(lambda: row(make_patient(), doctor, t0 + minutes(30), "scheduled", clerk))  # back to back
    accepted(lambda: row(patient, doctor, t0 - minutes(30), "scheduled", clerk))


def test_the_database_refuses_moving_an_appointment_onto_another_with_raw_sql(patient, doctor, make_patient, clerk, t0):
    row(patient, doctor, t0, "scheduled", clerk)
    later = row(make_patient(), doctor, t0 + minutes(60), "scheduled", clerk)
    move = "UPDATE clinical_appointment SET starts_at = %s, ends_at = %s WHERE id = %s"
    accepted(lambda: raw(move, [t0 + minutes(30), t0 + minutes(60), later.pk]))
    assert rule_name(lambda: raw(move, [t0 + minutes(15), t0 + minutes(45), later.pk])) == (
        schema.APPOINTMENT_DOCTOR_NO_OVERLAP
    )


@pytest.mark.parametrize("new", CLOSED)
def test_the_database_accepts_every_allowed_status_transition(patient, doctor, clerk, t0, new):
    appointment = row(patient, doctor, t0, "scheduled", clerk)
    accepted(lambda: set_status_raw(appointment, new, clerk))
    assert Appointment.objects.get(pk=appointment.pk).status == new


@pytest.mark.parametrize("old, new", FORBIDDEN, ids=[f"{old}-to-{new}" for old, new in FORBIDDEN])
def test_the_database_refuses_every_forbidden_status_transition(patient, doctor, clerk, t0, old, new):
    appointment = row(patient, doctor, t0, old, clerk)
    assert rule_name(lambda: set_status_raw(appointment, new, clerk)) == schema.APPOINTMENT_STATUS_TRANSITION
    assert (
        rule_name(lambda: Appointment.objects.filter(pk=appointment.pk).update(status=new))
        == schema.APPOINTMENT_STATUS_TRANSITION
    )


@pytest.mark.parametrize("status", CLOSED)
@pytest.mark.parametrize(
    "sql",
    [
        "starts_at = starts_at - interval '1 day', ends_at = ends_at - interval '1 day'",
        "institution_id = %(other_institution)s",
        "doctor_id = %(other_doctor)s",
        "outcome_recorded_at = outcome_recorded_at + interval '1 minute', "
        "cancelled_at = cancelled_at + interval '1 minute'",
    ],
    ids=["times", "institution", "doctor", "outcome time"],
)
def test_the_database_keeps_a_closed_appointment_as_it_was(
    patient, doctor, clerk, t0, make_doctor, make_institution, status, sql
):
    appointment = row(patient, doctor, t0, status, clerk)
    values = {"other_institution": make_institution().pk, "other_doctor": make_doctor().pk, "id": appointment.pk}
    assert (
        rule_name(lambda: raw(f"UPDATE clinical_appointment SET {sql} WHERE id = %(id)s", values))
        == schema.APPOINTMENT_CLOSED_IS_FINAL
    )


@pytest.mark.parametrize("status", CLOSED)
def test_the_database_lets_a_closed_appointment_change_patient_and_resealed_text(
    patient, doctor, make_patient, clerk, t0, status
):
    appointment = row(patient, doctor, t0, status, clerk)
    # A later merge of duplicate patients re-points history; key rotation rewrites ciphertext.
    accepted(lambda: Appointment.objects.filter(pk=appointment.pk).update(patient=make_patient()))
    accepted(lambda: raw("UPDATE clinical_appointment SET reason = NULL WHERE id = %s", [appointment.pk]))


def test_the_database_refuses_a_scheduled_appointment_with_a_doctor_who_does_not_work_there(
    patient, doctor, clerk, t0, make_institution
):
    elsewhere = make_institution()
    accepted(lambda: row(patient, doctor, t0, "scheduled", clerk))
    assert (
        rule_name(
            lambda: Appointment.objects.bulk_create(
                [new_row(patient, doctor, t0 + minutes(60), institution_id=elsewhere.pk)]
            )
        )
        == schema.APPOINTMENT_DOCTOR_MEMBERSHIP
    )


def test_the_database_refuses_moving_a_scheduled_appointment_to_an_institution_the_doctor_left(
    patient, doctor, clerk, t0, make_institution
):
    appointment = row(patient, doctor, t0, "scheduled", clerk)
    second = make_institution()
    membership = services.membership_start(user=doctor.user, institution=second, role=MembershipRole.DOCTOR)
    rows = Appointment.objects.filter(pk=appointment.pk)
    accepted(lambda: rows.update(institution=second))
    accepted(lambda: rows.update(institution=doctor.institution))
    services.membership_end(membership=membership)
    assert rule_name(lambda: rows.update(institution=second)) == schema.APPOINTMENT_DOCTOR_MEMBERSHIP


def test_the_database_refuses_a_booking_past_the_end_of_the_doctors_membership(
    patient, doctor, clerk, t0, make_institution
):
    second = make_institution()
    services.membership_start(
        user=doctor.user, institution=second, role=MembershipRole.DOCTOR, valid_until=t0 + minutes(30)
    )
    accepted(lambda: Appointment.objects.bulk_create([new_row(patient, doctor, t0, institution_id=second.pk)]))
    late = new_row(patient, doctor, t0 + minutes(30), institution_id=second.pk)
    assert rule_name(lambda: Appointment.objects.bulk_create([late])) == schema.APPOINTMENT_DOCTOR_MEMBERSHIP


def test_the_database_keeps_appointments_with_a_doctor_who_left_and_records_history_there(
    patient, doctor, clerk, t0, make_institution
):
    second = make_institution()
    membership = services.membership_start(user=doctor.user, institution=second, role=MembershipRole.DOCTOR)
    scheduled = row(patient, doctor, t0, "scheduled", clerk)
    Appointment.objects.filter(pk=scheduled.pk).update(institution=second)
    services.membership_end(membership=membership)
    rows = Appointment.objects.filter(pk=scheduled.pk)
    # Leaving does not invalidate what was booked; the outcome can still be recorded.
    accepted(lambda: rows.update(reason=None))
    accepted(lambda: set_status_raw(scheduled, "cancelled", clerk))
    # Closed history may be written where the doctor no longer works (an import).
    history = new_row(
        patient,
        doctor,
        t0 - datetime.timedelta(days=30),
        institution_id=second.pk,
        status="completed",
        **outcome_fields("completed", clerk),
    )
    accepted(lambda: Appointment.objects.bulk_create([history]))
    assert not InstitutionMembership.objects.active().filter(user=doctor.user, institution=second).exists()


# Concurrent bookings ------------------------------------------------------------------------------


def book_at_once(bookings: list[dict[str, Any]]) -> tuple[list[Appointment], list[ValidationError]]:
    """Run each booking on its own thread and connection; all of them reach the database's gate at once.

    A barrier in front of the calendar lock (the service's last step before its
    INSERT) holds every writer until all have passed the service's checks inside
    their own open transaction, so none of them saw the other's row: only the
    database can keep one out. The lock makes the later writer wait for the
    earlier one's commit, then the exclusion constraint refuses its row (without
    the lock, PostgreSQL may fail one with a deadlock instead).
    """
    at_the_insert = threading.Barrier(len(bookings), timeout=30)
    booked: list[Appointment] = []
    refused: list[ValidationError] = []
    unexpected: list[BaseException] = []

    def hold_the_insert(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "pg_advisory_xact_lock" in sql and "caretrail.appointment" in sql:
            at_the_insert.wait()
        return execute(sql, params, many, context)

    def run(values: dict[str, Any]) -> None:
        try:
            with connection.execute_wrapper(hold_the_insert):
                booked.append(appointments.appointment_book(**values))
        except ValidationError as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            unexpected.append(exc)
            at_the_insert.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(values,)) for values in bookings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert unexpected == []
    return booked, refused


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_bookings_of_one_doctors_slot_let_exactly_one_through(doctor, make_patient, clerk):
    start = slot_start()
    common = {"doctor": doctor, "institution": doctor.institution, "booked_by": clerk, "reason": None}
    slot = {"starts_at": start, "ends_at": start + minutes(30)}

    booked, refused = book_at_once([{"patient": make_patient(), **common, **slot} for _ in range(2)])

    assert len(booked) == 1 and len(refused) == 1
    assert refused[0].message_dict == {"starts_at": ["The doctor already has an appointment at this time."]}
    assert list(Appointment.objects.values_list("pk", flat=True)) == [booked[0].pk]


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_bookings_of_one_patient_with_two_doctors_let_exactly_one_through(patient, make_doctor, clerk):
    start = slot_start()
    doctors = [make_doctor(), make_doctor()]
    common = {"patient": patient, "booked_by": clerk, "reason": None}
    slot = {"starts_at": start + minutes(10), "ends_at": start + minutes(40)}

    booked, refused = book_at_once([{"doctor": d, "institution": d.institution, **common, **slot} for d in doctors])

    assert len(booked) == 1 and len(refused) == 1
    assert refused[0].message_dict == {"starts_at": ["The patient already has an appointment at this time."]}
    assert list(Appointment.objects.values_list("pk", flat=True)) == [booked[0].pk]


# Key rotation -----------------------------------------------------------------------------------


def test_key_rotation_reseals_the_texts_of_closed_appointments_and_of_a_doctor_who_left(
    book, t0, clerk, doctor, make_institution
):
    old, new = new_field_key(), new_field_key()
    second = make_institution()
    membership = services.membership_start(user=doctor.user, institution=second, role=MembershipRole.DOCTOR)
    with override_settings(FIELD_ENCRYPTION_KEYS=old):
        cancelled = book(t0, t0 + minutes(30), reason="Chest pain")
        appointments.appointment_cancel(appointment=cancelled, by=clerk, reason="Went to the emergency room")
        left_behind = book(t0 + minutes(60), t0 + minutes(90), institution=second, reason="Palpitations")
    services.membership_end(membership=membership)

    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new},{old}"):
        report = rotate_keys(models=[Appointment])
    assert report.ok and report.resealed == 3

    with override_settings(FIELD_ENCRYPTION_KEYS=new):
        stored = Appointment.objects.get(pk=cancelled.pk)
        assert (stored.reason, stored.cancellation_reason) == ("Chest pain", "Went to the emergency room")
        assert Appointment.objects.get(pk=left_behind.pk).reason == "Palpitations"
