"""The care workflow in the admin: appointments (booking, actions, the day view), prescriptions, document uploads.

Every write goes through a service; these tests check that the pages call them
with the right values (times entered on the institution's clock), show their
refusals as form errors, leave nothing behind when they refuse, apply the
access policy, and cost a bounded number of queries.
"""

from __future__ import annotations

import datetime
import itertools
import zoneinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from clinical import appointments, prescriptions
from clinical.models import (
    Appointment,
    AppointmentStatus,
    Document,
    DocumentKind,
    Frequency,
    MedicalRecord,
    Medication,
    Prescription,
    RecordType,
    Route,
)
from tests.clinical.test_files import pdf_bytes, text_bytes

pytestmark = pytest.mark.django_db

UTC = datetime.UTC
FILE_SYSTEM_STORAGE = "django.core.files.storage.FileSystemStorage"
# 2030-01-15 is in winter: New York is UTC-5 (EST). 2030-03-10 is the day its clocks go forward.
DAY = datetime.date(2030, 1, 15)


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    """The default storage in this test's own folder."""
    root = tmp_path / "media"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": FILE_SYSTEM_STORAGE, "OPTIONS": {"location": str(root)}},
    }
    return root


def stored_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def as_clinician(doctor: Any) -> Any:
    """A doctor (``make_doctor``) who signs in to the admin in the Doctor role."""
    doctor.user.is_staff = True
    doctor.user.save(update_fields=["is_staff"])
    doctor.user.groups.add(Group.objects.get(name="Doctor"))
    return doctor


@pytest.fixture
def clinic(make_institution, make_doctor, make_patient, make_staff, staff_client_factory) -> SimpleNamespace:
    """A New York clinic: a doctor and their patient, a colleague, a nurse; and a doctor elsewhere."""
    home = make_institution(time_zone="America/New_York")
    doctor = as_clinician(make_doctor(institution=home))
    colleague = as_clinician(make_doctor(institution=home))
    outsider = as_clinician(make_doctor(institution=make_institution()))
    nurse = make_staff("Nurse", institution=home)
    return SimpleNamespace(
        home=home,
        doctor=doctor,
        colleague=colleague,
        outsider=outsider,
        nurse=nurse,
        patient=make_patient(doctor=doctor, last_name="Quillfeather"),
        make_patient=make_patient,
        client_of=staff_client_factory,
    )


def book(clinic: SimpleNamespace, local_start: datetime.datetime, minutes: int = 30, **fields: Any) -> Appointment:
    """Book through the service; ``local_start`` is naive, on the clinic's clock."""
    starts_at = local_start.replace(tzinfo=_zone(clinic))
    return appointments.appointment_book(
        patient=fields.pop("patient", clinic.patient),
        doctor=fields.pop("doctor", clinic.doctor),
        institution=clinic.home,
        starts_at=starts_at,
        ends_at=starts_at + datetime.timedelta(minutes=minutes),
        reason=fields.pop("reason", "Check-up"),
        booked_by=clinic.nurse,
    )


def _zone(clinic: SimpleNamespace) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(clinic.home.time_zone)


_visits = itertools.count(1)


def visit(
    clinic: SimpleNamespace, *, hours_ago: float | None = None, patient: Any = None, doctor: Any = None
) -> Appointment:
    """An appointment that has begun (written around the services: bookings cannot start in the past).

    Each starts an hour earlier than the one before, so a doctor's visits never overlap.
    """
    doctor = doctor or clinic.doctor
    starts_at = timezone.now() - datetime.timedelta(hours=hours_ago or next(_visits))
    (appointment,) = Appointment.objects.bulk_create(
        [
            Appointment(
                patient=patient or clinic.patient,
                doctor=doctor,
                institution=clinic.home,
                starts_at=starts_at,
                ends_at=starts_at + datetime.timedelta(minutes=30),
            )
        ]
    )
    return appointment


def medications(n: int) -> list[Medication]:
    return list(Medication.objects.order_by("id")[:n])


def items_post(*items: dict[str, Any], rows: int = 3) -> dict[str, Any]:
    """The items formset as a browser posts it: untouched rows keep the route's default and nothing else."""
    data: dict[str, Any] = {
        "items-TOTAL_FORMS": str(rows),
        "items-INITIAL_FORMS": "0",
        "items-MIN_NUM_FORMS": "1",
        "items-MAX_NUM_FORMS": "20",
    }
    for row in range(rows):
        for name in ("medication", "dose", "frequency", "duration_days", "quantity", "instructions"):
            data[f"items-{row}-{name}"] = ""
        data[f"items-{row}-route"] = Route.ORAL
    for row, item in enumerate(items):
        data.update({f"items-{row}-{name}": value for name, value in item.items()})
    return data


def issue(clinic: SimpleNamespace, appointment: Appointment) -> Prescription:
    (medication,) = medications(1)
    item = {
        "medication": medication,
        "dose": "1 tablet",
        "route": Route.ORAL,
        "frequency": Frequency.ONCE_DAILY,
        "duration_days": 5,
        "quantity": 5,
        "instructions": None,
    }
    return prescriptions.prescription_issue(appointment=appointment, items=[item], issued_by=clinic.doctor.user)


def admin(view: str, *args: Any) -> str:
    return reverse(f"admin:clinical_{view}", args=args)


def access_entries() -> Any:
    return LogEntry.objects.filter(action=LogEntry.Action.ACCESS)


# Booking -----------------------------------------------------------------------------------


def booking(clinic: SimpleNamespace, **fields: Any) -> dict[str, Any]:
    return {
        "patient": clinic.patient.pk,
        "doctor": clinic.doctor.pk,
        "institution": clinic.home.pk,
        "date": DAY.isoformat(),
        "start_time": "09:30",
        "duration_minutes": "45",
        "reason": "Knee pain",
        **fields,
    }


def test_a_nurse_books_an_appointment_entered_on_the_institutions_clock(clinic) -> None:
    client = clinic.client_of(clinic.nurse)
    assert client.get(admin("appointment_add")).status_code == 200

    response = client.post(admin("appointment_add"), booking(clinic))

    assert response.status_code == 302, response.context and response.context["form"].errors
    appointment = Appointment.objects.get(patient=clinic.patient)
    assert response["Location"] == admin("appointment_change", appointment.pk)
    # 09:30 in New York in January is 14:30 UTC.
    assert appointment.starts_at == datetime.datetime(2030, 1, 15, 14, 30, tzinfo=UTC)
    assert appointment.ends_at == datetime.datetime(2030, 1, 15, 15, 15, tzinfo=UTC)
    assert (appointment.reason, appointment.booked_by, appointment.status) == ("Knee pain", clinic.nurse, "scheduled")
    page = client.get(response["Location"]).content.decode()
    assert "2030-01-15 09:30 EST" in page
    assert "2030-01-15 10:15 EST" in page


def test_an_overlapping_booking_shows_the_services_error_on_the_start_and_writes_nothing(clinic) -> None:
    first = book(clinic, datetime.datetime(2030, 1, 15, 9, 0), patient=clinic.make_patient(doctor=clinic.doctor))
    client = clinic.client_of(clinic.nurse)

    response = client.post(admin("appointment_add"), booking(clinic, start_time="09:15"))

    assert response.status_code == 200
    assert response.context["form"].errors["start_time"] == ["The doctor already has an appointment at this time."]
    assert list(Appointment.objects.values_list("pk", flat=True)) == [first.pk]


def test_a_time_the_clocks_skip_is_refused_and_nothing_is_written(clinic) -> None:
    client = clinic.client_of(clinic.nurse)

    response = client.post(admin("appointment_add"), booking(clinic, date="2030-03-10", start_time="02:30"))

    assert response.status_code == 200
    assert "does not exist" in str(response.context["form"].errors["start_time"])
    assert not Appointment.objects.exists()


def test_a_booking_in_the_past_is_refused_on_the_start(clinic) -> None:
    client = clinic.client_of(clinic.nurse)

    response = client.post(admin("appointment_add"), booking(clinic, date="2020-01-15"))

    assert response.status_code == 200
    assert response.context["form"].errors["start_time"] == ["An appointment cannot start in the past."]
    assert not Appointment.objects.exists()


def test_a_patient_the_user_may_not_change_cannot_be_booked(clinic, make_institution, make_doctor) -> None:
    stranger = clinic.make_patient(doctor=make_doctor(institution=make_institution()))
    client = clinic.client_of(clinic.nurse)

    response = client.post(admin("appointment_add"), booking(clinic, patient=stranger.pk))

    assert response.status_code == 200
    assert "patient" in response.context["form"].errors
    assert not Appointment.objects.exists()


# Object actions ------------------------------------------------------------------------------


def test_the_change_page_is_read_only_and_offers_the_actions_of_a_scheduled_appointment(clinic) -> None:
    appointment = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    client = clinic.client_of(clinic.nurse)

    page = client.get(admin("appointment_change", appointment.pk))

    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    offered = dict(page.context["care_actions"])
    assert offered["Reschedule"] == admin("appointment_reschedule", appointment.pk)
    assert offered["Cancel"] == admin("appointment_cancel", appointment.pk)
    assert offered["Complete"] == admin("appointment_complete", appointment.pk)
    assert "Mark no-show" not in offered  # it has not started yet
    # The change form itself writes nothing.
    assert client.post(admin("appointment_change", appointment.pk), {"status": "cancelled"}).status_code == 403
    assert client.get(admin("appointment_delete", appointment.pk)).status_code == 403
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.SCHEDULED


def test_cancelling_needs_a_reason_and_records_it(clinic) -> None:
    appointment = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    client = clinic.client_of(clinic.nurse)
    url = admin("appointment_cancel", appointment.pk)
    assert client.get(url).status_code == 200

    no_reason = client.post(url, {"reason": "  "})
    assert no_reason.status_code == 200
    assert "reason" in no_reason.context["form"].errors
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.SCHEDULED

    assert client.post(url, {"reason": "Patient travelling"}).status_code == 302
    appointment.refresh_from_db()
    assert (appointment.status, appointment.cancellation_reason) == ("cancelled", "Patient travelling")
    assert appointment.cancelled_by == clinic.nurse
    # A closed appointment offers no action, and the services refuse one posted anyway.
    page = client.get(admin("appointment_change", appointment.pk))
    assert [label for label, _url in page.context["care_actions"]] == ["Upload a document", "The doctor's day"]
    refused = client.post(admin("appointment_complete", appointment.pk))
    assert refused.status_code == 200
    assert "cannot become completed" in str(refused.context["form"].non_field_errors())
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.CANCELLED


def test_completing_records_who(clinic) -> None:
    appointment = visit(clinic)
    client = clinic.client_of(clinic.doctor.user)

    assert client.post(admin("appointment_complete", appointment.pk)).status_code == 302

    appointment.refresh_from_db()
    assert (appointment.status, appointment.outcome_recorded_by) == ("completed", clinic.doctor.user)


def test_a_no_show_is_refused_before_the_start_and_recorded_after_it(clinic) -> None:
    upcoming = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    started = visit(clinic, patient=clinic.make_patient(doctor=clinic.doctor))
    client = clinic.client_of(clinic.nurse)

    early = client.post(admin("appointment_no_show", upcoming.pk))
    assert early.status_code == 200
    assert "once its start time has passed" in str(early.context["form"].non_field_errors())
    upcoming.refresh_from_db()
    assert upcoming.status == AppointmentStatus.SCHEDULED

    assert "Mark no-show" in dict(client.get(admin("appointment_change", started.pk)).context["care_actions"])
    assert client.post(admin("appointment_no_show", started.pk)).status_code == 302
    started.refresh_from_db()
    assert (started.status, started.outcome_recorded_by) == ("no_show", clinic.nurse)


def test_rescheduling_moves_the_appointment_on_the_institutions_clock_and_refuses_an_overlap(clinic) -> None:
    appointment = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    book(clinic, datetime.datetime(2030, 1, 16, 11, 0), patient=clinic.make_patient(doctor=clinic.doctor))
    client = clinic.client_of(clinic.nurse)
    url = admin("appointment_reschedule", appointment.pk)
    form = client.get(url).context["form"]
    assert (form["date"].value(), form["start_time"].value(), form["duration_minutes"].value()) == (
        DAY,
        datetime.time(9, 0),
        30,
    )

    moved = client.post(url, {"date": "2030-01-16", "start_time": "08:00", "duration_minutes": "60"})
    assert moved.status_code == 302
    appointment.refresh_from_db()
    assert appointment.starts_at == datetime.datetime(2030, 1, 16, 13, 0, tzinfo=UTC)
    assert appointment.ends_at == datetime.datetime(2030, 1, 16, 14, 0, tzinfo=UTC)

    overlap = client.post(url, {"date": "2030-01-16", "start_time": "10:45", "duration_minutes": "30"})
    assert overlap.status_code == 200
    assert overlap.context["form"].errors["start_time"] == ["The doctor already has an appointment at this time."]
    appointment.refresh_from_db()
    assert appointment.starts_at == datetime.datetime(2030, 1, 16, 13, 0, tzinfo=UTC)


def test_a_view_only_grantee_sees_the_appointment_but_cannot_act_on_it(clinic, make_staff, superuser) -> None:
    from clinical import services

    appointment = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    grantee = make_staff("Nurse")  # no membership: reaches the patient by a view grant only
    services.grant_create(patient=clinic.patient, user=grantee, kind="view", granted_by=superuser, reason="Consult")
    client = clinic.client_of(grantee)

    page = client.get(admin("appointment_change", appointment.pk))
    assert page.status_code == 200
    assert [label for label, _url in page.context["care_actions"]] == ["The doctor's day"]
    for action in ("reschedule", "cancel", "complete", "no_show"):
        assert client.post(admin(f"appointment_{action}", appointment.pk), {"reason": "x"}).status_code == 403
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.SCHEDULED


def test_a_doctor_of_another_institution_sees_none_of_the_care_rows(clinic) -> None:
    appointment = visit(clinic)
    prescription = issue(clinic, appointment)
    client = clinic.client_of(clinic.outsider.user)

    for model in ("appointment", "prescription", "document"):
        listing = client.get(admin(f"{model}_changelist"))
        assert listing.status_code == 200
        assert list(listing.context["cl"].result_list) == []
        assert "Quillfeather" not in listing.content.decode()
    for url in (admin("appointment_change", appointment.pk), admin("prescription_change", prescription.pk)):
        hidden = client.get(url)
        assert (hidden.status_code, hidden["Location"]) == (302, reverse("admin:index"))
    for action in ("reschedule", "cancel", "complete", "no_show"):
        assert client.post(admin(f"appointment_{action}", appointment.pk), {"reason": "x"}).status_code == 404
    assert client.get(admin("prescription_signed_copy", prescription.pk)).status_code == 404
    day = client.get(admin("appointment_day"), {"doctor": clinic.doctor.pk, "date": timezone.localdate().isoformat()})
    assert day.status_code == 200
    assert day.context["appointments"] == []
    assert "Quillfeather" not in day.content.decode()


def test_a_role_without_appointments_gets_403(clinic, make_staff) -> None:
    appointment = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    client = clinic.client_of(make_staff("CMS Admin"))
    for url in (admin("appointment_changelist"), admin("appointment_day"), admin("appointment_change", appointment.pk)):
        assert client.get(url).status_code == 403, url


# The day view ----------------------------------------------------------------------------------


def test_the_day_view_lists_the_doctors_day_on_the_institutions_clock(clinic, make_staff, superuser) -> None:
    from clinical import services

    first = clinic.make_patient(doctor=clinic.doctor)
    # 00:30 and 23:30 on the 15th in New York are 05:30 on the 15th and 04:30 on the 16th in UTC.
    early = book(clinic, datetime.datetime(2030, 1, 15, 0, 30), patient=first)
    late = book(clinic, datetime.datetime(2030, 1, 15, 23, 30))
    next_day = book(clinic, datetime.datetime(2030, 1, 16, 0, 30), patient=first)
    colleagues = book(
        clinic,
        datetime.datetime(2030, 1, 15, 12, 0),
        doctor=clinic.colleague,
        patient=clinic.make_patient(doctor=clinic.colleague),
    )
    url = admin("appointment_day")

    doctor_client = clinic.client_of(clinic.doctor.user)
    page = doctor_client.get(url, {"date": DAY.isoformat()})  # no doctor given: the doctor's own day
    assert page.status_code == 200
    assert page.context["doctor"] == clinic.doctor
    assert [a.pk for a in page.context["appointments"]] == [early.pk, late.pk]
    body = page.content.decode()
    assert admin("appointment_change", early.pk) in body
    assert "23:30" in body
    assert page.context["previous_url"] == f"{url}?doctor={clinic.doctor.pk}&date=2030-01-14"
    assert page.context["next_url"] == f"{url}?doctor={clinic.doctor.pk}&date=2030-01-16"
    following = doctor_client.get(page.context["next_url"])
    assert [a.pk for a in following.context["appointments"]] == [next_day.pk]
    assert colleagues.pk not in [a.pk for a in following.context["appointments"]]

    # A care-team member who sees one of the doctor's patients sees that patient's appointments only.
    grantee = make_staff("Nurse")
    services.grant_create(patient=first, user=grantee, kind="view", granted_by=superuser, reason="Consult")
    granted = clinic.client_of(grantee).get(url, {"doctor": clinic.doctor.pk, "date": DAY.isoformat()})
    assert [a.pk for a in granted.context["appointments"]] == [early.pk]
    assert clinic.doctor in granted.context["doctors"]  # the doctor of a patient granted to them


def test_the_day_view_shows_each_appointment_on_the_day_it_has_where_it_happens(clinic, make_institution) -> None:
    from clinical import services

    tokyo = make_institution(time_zone="Asia/Tokyo")
    services.membership_start(user=clinic.doctor.user, institution=tokyo, role="doctor")
    # 08:00 on the 16th in Tokyo is 18:00 on the 15th in New York, the doctor's home clock.
    starts_at = datetime.datetime(2030, 1, 16, 8, 0, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo"))
    away = appointments.appointment_book(
        patient=clinic.patient,
        doctor=clinic.doctor,
        institution=tokyo,
        starts_at=starts_at,
        ends_at=starts_at + datetime.timedelta(minutes=30),
        reason="Visiting clinic",
        booked_by=clinic.doctor.user,
    )
    at_home = book(clinic, datetime.datetime(2030, 1, 15, 17, 0))
    client = clinic.client_of(clinic.doctor.user)
    url = admin("appointment_day")

    fifteenth = client.get(url, {"date": "2030-01-15"})
    sixteenth = client.get(url, {"date": "2030-01-16"})

    assert [a.pk for a in fifteenth.context["appointments"]] == [at_home.pk]
    assert [a.pk for a in sixteenth.context["appointments"]] == [away.pk]
    assert [row["starts"] for row in sixteenth.context["rows"]] == ["08:00"]


def test_the_day_view_answers_bad_input_without_a_500(clinic) -> None:
    client = clinic.client_of(clinic.nurse)
    url = admin("appointment_day")
    assert client.get(url, {"doctor": "999999999"}).status_code == 404
    assert client.get(url, {"doctor": "abc"}).status_code == 404
    assert client.get(url, {"doctor": "²"}).status_code == 404  # a digit to str.isdigit, not to int()
    for edge in ("9999-12-31", "0001-01-01"):  # no next or previous day: shown as a bad date
        at_the_edge = client.get(url, {"doctor": clinic.doctor.pk, "date": edge})
        assert at_the_edge.status_code == 200
        assert at_the_edge.context["day"] == timezone.localdate(timezone=_zone(clinic))
    bad_date = client.get(url, {"doctor": clinic.doctor.pk, "date": "2030-02-31"})
    assert bad_date.status_code == 200
    assert bad_date.context["day"] == timezone.localdate(timezone=_zone(clinic))
    nobody = client.get(url)  # a nurse has no doctor record: the page asks to choose
    assert nobody.status_code == 200
    assert nobody.context["doctor"] is None
    assert {clinic.doctor, clinic.colleague} <= set(nobody.context["doctors"])
    assert clinic.outsider not in nobody.context["doctors"]


def test_the_changelist_links_to_the_day_view_and_filters_by_local_day_and_doctor(clinic) -> None:
    zone = _zone(clinic)
    tomorrow = timezone.localdate(timezone=zone) + datetime.timedelta(days=1)
    noon = datetime.time(12, 0)
    first = book(clinic, datetime.datetime.combine(tomorrow, noon))
    later = book(
        clinic, datetime.datetime.combine(tomorrow + datetime.timedelta(days=2), noon), doctor=clinic.colleague
    )
    begun = visit(clinic, hours_ago=48)  # two days ago: never today on any clock
    client = clinic.client_of(clinic.nurse)
    url = admin("appointment_changelist")

    def listed(**query: str) -> set[int]:
        response = client.get(url, query)
        assert response.status_code == 200
        return {appointment.pk for appointment in response.context["cl"].result_list}

    assert admin("appointment_day") in client.get(url).content.decode()
    assert listed(when="tomorrow") == {first.pk}
    assert listed(when="next_7_days") == {first.pk, later.pk}
    assert first.pk not in listed(when="today")
    assert listed(when="past") == {begun.pk}
    assert listed(doctor=str(clinic.colleague.pk)) == {later.pk}


# Prescriptions ------------------------------------------------------------------------------------


def prescribe(client: Any, appointment: Appointment, *items: dict[str, Any], notes: str = "") -> Any:
    return client.post(admin("prescription_add"), {"appointment": appointment.pk, "notes": notes, **items_post(*items)})


def two_items() -> list[dict[str, Any]]:
    first, second = medications(2)
    return [
        {
            "medication": first.pk,
            "dose": "1 capsule",
            "route": Route.ORAL,
            "frequency": Frequency.THREE_TIMES_DAILY,
            "duration_days": "7",
            "quantity": "21",
            "instructions": "After meals",
        },
        {
            "medication": second.pk,
            "dose": "2 puffs",
            "route": Route.INHALATION,
            "frequency": Frequency.AS_NEEDED,
            "duration_days": "30",
            "quantity": "1",
        },
    ]


def test_the_doctor_issues_a_prescription_with_two_items(clinic) -> None:
    appointment = visit(clinic)
    client = clinic.client_of(clinic.doctor.user)
    form = client.get(admin("prescription_add"), {"appointment": appointment.pk}).context["form"]
    assert list(form.fields["appointment"].queryset) == [appointment]

    response = prescribe(client, appointment, *two_items(), notes="Drink plenty of water")

    assert response.status_code == 302, response.context and (
        response.context["form"].errors,
        response.context["formset"].errors,
    )
    prescription = Prescription.objects.get(appointment=appointment)
    assert response["Location"] == admin("prescription_change", prescription.pk)
    assert (prescription.doctor, prescription.patient, prescription.issued_by) == (
        clinic.doctor,
        clinic.patient,
        clinic.doctor.user,
    )
    assert prescription.notes == "Drink plenty of water"
    items = list(prescription.items.order_by("position"))
    assert [(i.dose, i.frequency, i.quantity) for i in items] == [
        ("1 capsule", "three_times_daily", 21),
        ("2 puffs", "as_needed", 1),
    ]
    assert items[0].instructions == "After meals"
    records = MedicalRecord.objects.filter(patient=clinic.patient, record_type=RecordType.PRESCRIPTION)
    assert records.count() == 2
    page = client.get(response["Location"])
    assert page.status_code == 200
    body = page.content.decode()
    assert "1 capsule, oral, three times a day, for 7 days" in body
    assert "2 puffs, inhalation, when needed, for 30 days" in body
    assert "Drink plenty of water" in body
    # One prescription per appointment: it is no longer offered.
    assert appointment not in client.get(admin("prescription_add")).context["form"].fields["appointment"].queryset


def test_an_item_error_names_the_row_and_nothing_is_written(clinic) -> None:
    appointment = visit(clinic)
    client = clinic.client_of(clinic.doctor.user)
    first, second = two_items()

    response = prescribe(client, appointment, first, {**second, "quantity": "0"})

    assert response.status_code == 200
    assert "quantity" in response.context["formset"].forms[1].errors
    empty = prescribe(client, appointment)
    assert empty.status_code == 200
    assert empty.context["formset"].non_form_errors()
    assert not Prescription.objects.exists()
    assert not MedicalRecord.objects.filter(record_type=RecordType.PRESCRIPTION).exists()


def test_only_the_appointments_own_doctor_issues_its_prescription(clinic) -> None:
    appointment = visit(clinic)
    colleague = clinic.client_of(clinic.colleague.user)  # a Doctor who sees the patient through the clinic
    assert appointment not in colleague.get(admin("prescription_add")).context["form"].fields["appointment"].queryset

    refused = prescribe(colleague, appointment, *two_items())

    assert refused.status_code == 200
    assert "appointment" in refused.context["form"].errors
    nurse = clinic.client_of(clinic.nurse)  # the Nurse role issues no prescription at all
    assert nurse.get(admin("prescription_add")).status_code == 403
    assert prescribe(nurse, appointment, *two_items()).status_code == 403
    assert not Prescription.objects.exists()


def test_cancelled_and_future_appointments_get_no_prescription(clinic) -> None:
    future = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    cancelled = visit(clinic, hours_ago=5, patient=clinic.make_patient(doctor=clinic.doctor))
    appointments.appointment_cancel(appointment=cancelled, by=clinic.nurse, reason="Ill")
    client = clinic.client_of(clinic.doctor.user)

    offered = list(client.get(admin("prescription_add")).context["form"].fields["appointment"].queryset)

    assert future not in offered
    assert cancelled not in offered
    assert prescribe(client, future, *two_items()).status_code == 200
    assert not Prescription.objects.exists()


def test_the_prescription_page_links_the_pdf_and_takes_a_signed_copy(clinic, media) -> None:
    prescription = issue(clinic, visit(clinic))
    prescriptions.prescription_pdf(prescription=prescription)  # what the task does after commit
    prescription.refresh_from_db()
    client = clinic.client_of(clinic.nurse)

    page = client.get(admin("prescription_change", prescription.pk))
    offered = dict(page.context["care_actions"])
    assert offered["Printable PDF"] == admin("document_download", prescription.printable_id)
    assert offered["Upload a signed copy"] == admin("prescription_signed_copy", prescription.pk)
    assert client.get(offered["Printable PDF"]).status_code == 200
    files_before = stored_files(media)
    entries = access_entries().count()
    form_page = client.get(offered["Upload a signed copy"])
    assert form_page.status_code == 200 and clinic.patient.last_name in form_page.content.decode()
    assert access_entries().count() == entries + 1  # the form names the patient: a recorded read
    assert access_entries().latest("id").additional_data["prescriptions"] == [str(prescription.uuid)]

    bad = client.post(offered["Upload a signed copy"], {"file": SimpleUploadedFile("signed.pdf", b"<html>no</html>")})
    assert bad.status_code == 200
    assert "file" in bad.context["form"].errors
    assert stored_files(media) == files_before
    assert Document.objects.filter(prescription=prescription).count() == 1

    signed = SimpleUploadedFile("signed.pdf", pdf_bytes())
    assert client.post(offered["Upload a signed copy"], {"file": signed}).status_code == 302
    copy = Document.objects.filter(prescription=prescription).exclude(pk=prescription.printable_id).get()
    assert (copy.kind, copy.uploaded_by, copy.patient) == (DocumentKind.PRESCRIPTION_FILE, clinic.nurse, clinic.patient)
    assert (
        admin("document_download", copy.pk)
        in client.get(admin("prescription_change", prescription.pk)).content.decode()
    )


def test_an_institution_admin_reads_prescriptions_but_uploads_nothing(clinic, make_staff) -> None:
    prescription = issue(clinic, visit(clinic))
    client = clinic.client_of(make_staff("Institution Admin", institution=clinic.home))

    page = client.get(admin("prescription_change", prescription.pk))

    assert page.status_code == 200
    assert "Upload a signed copy" not in dict(page.context["care_actions"])
    upload = {"file": SimpleUploadedFile("signed.pdf", pdf_bytes())}
    assert client.post(admin("prescription_signed_copy", prescription.pk), upload).status_code == 403
    assert client.get(admin("document_add")).status_code == 403
    assert not Document.objects.exists()


def test_prescriptions_cannot_be_edited_or_deleted(clinic, superuser_client) -> None:
    prescription = issue(clinic, visit(clinic))
    url = admin("prescription_change", prescription.pk)
    assert superuser_client.post(url, {"notes": "changed"}).status_code == 403
    assert superuser_client.get(admin("prescription_delete", prescription.pk)).status_code == 403
    prescription.refresh_from_db()
    assert prescription.notes is None


# Document uploads -----------------------------------------------------------------------------------


def test_a_nurse_uploads_a_document_linked_to_an_appointment(clinic, media) -> None:
    appointment = book(clinic, datetime.datetime(2030, 1, 15, 9, 0))
    client = clinic.client_of(clinic.nurse)
    assert client.get(admin("document_add")).status_code == 200
    content = text_bytes()

    response = client.post(
        admin("document_add"),
        {
            "patient": clinic.patient.pk,
            "kind": DocumentKind.LAB_REPORT,
            "file": SimpleUploadedFile("glucose.txt", content),
            "appointment": appointment.pk,
        },
    )

    assert response.status_code == 302, response.context and response.context["form"].errors
    document = Document.objects.get(patient=clinic.patient)
    assert response["Location"] == admin("document_change", document.pk)
    assert (document.kind, document.appointment, document.uploaded_by) == ("lab_report", appointment, clinic.nurse)
    download = client.get(admin("document_download", document.pk))
    assert b"".join(download.streaming_content) == content
    assert content not in b"".join(path.read_bytes() for path in stored_files(media))


def test_a_refused_file_leaves_nothing_behind(clinic, media) -> None:
    client = clinic.client_of(clinic.nurse)

    response = client.post(
        admin("document_add"),
        {
            "patient": clinic.patient.pk,
            "kind": DocumentKind.LAB_REPORT,
            "file": SimpleUploadedFile("report.pdf", b"<html><script>alert(1)</script></html>"),
        },
    )

    assert response.status_code == 200
    assert "file" in response.context["form"].errors
    assert not Document.objects.exists()
    assert stored_files(media) == []


def test_a_document_cannot_go_to_a_hidden_patient_or_link_another_patients_appointment(clinic, media) -> None:
    other = clinic.make_patient(doctor=clinic.doctor)
    others_appointment = book(clinic, datetime.datetime(2030, 1, 15, 9, 0), patient=other)
    stranger = clinic.make_patient(doctor=clinic.outsider)
    client = clinic.client_of(clinic.nurse)

    def upload(**fields: Any) -> Any:
        body = {"kind": "other", "file": SimpleUploadedFile("note.txt", text_bytes()), **fields}
        return client.post(admin("document_add"), body)

    hidden = upload(patient=stranger.pk)
    assert "patient" in hidden.context["form"].errors
    mismatched = upload(patient=clinic.patient.pk, appointment=others_appointment.pk)
    assert mismatched.context["form"].errors["appointment"] == ["This appointment belongs to another patient."]
    assert not Document.objects.exists()
    assert stored_files(media) == []


# Audit of reads --------------------------------------------------------------------------------------


def test_care_pages_are_audited(clinic) -> None:
    appointment = visit(clinic)
    prescription = issue(clinic, appointment)
    client = clinic.client_of(clinic.doctor.user)
    before = set(access_entries().values_list("pk", flat=True))

    client.get(admin("appointment_change", appointment.pk))
    client.get(admin("prescription_change", prescription.pk))
    client.get(admin("appointment_changelist"))
    day = appointment.starts_at.astimezone(_zone(clinic)).date()
    client.get(admin("appointment_day"), {"doctor": clinic.doctor.pk, "date": day.isoformat()})

    entries = list(access_entries().exclude(pk__in=before).order_by("pk"))
    assert [e.additional_data.get("view") or e.additional_data.get("list") for e in entries] == [
        "admin appointment",
        "admin prescription",
        "admin appointment list",
        "admin doctor's day",
    ]
    assert all(entry.actor == clinic.doctor.user for entry in entries)
    assert entries[0].additional_data["appointments"] == [str(appointment.uuid)]
    assert entries[1].additional_data["prescriptions"] == [str(prescription.uuid)]
    assert (
        entries[2].additional_data["patients"] == entries[3].additional_data["patients"] == [str(clinic.patient.uuid)]
    )


# Query counts -----------------------------------------------------------------------------------------


def _count(client: Any, url: str, params: dict[str, Any] | None = None, rows: int | None = None) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, params or {})
    assert response.status_code == 200
    if rows is not None:
        shown = response.context["cl"].result_list if "cl" in response.context else response.context["appointments"]
        assert len(shown) == rows
    return len(captured.captured_queries)


def test_the_appointment_pages_cost_the_same_for_2_and_for_12_rows(clinic, django_assert_max_num_queries) -> None:
    client = clinic.client_of(clinic.nurse)
    day = {"doctor": clinic.doctor.pk, "date": DAY.isoformat()}

    def grow(n: int, first_hour: int) -> None:
        for hour in range(first_hour, first_hour + n):
            book(clinic, datetime.datetime(2030, 1, 15, hour, 0), patient=clinic.make_patient(doctor=clinic.doctor))

    grow(2, 8)
    client.get(admin("appointment_changelist"))  # warm-up: session, content types
    at_two = _count(client, admin("appointment_changelist"), rows=2)
    day_at_two = _count(client, admin("appointment_day"), day, rows=2)

    grow(10, 10)
    with django_assert_max_num_queries(at_two):
        response = client.get(admin("appointment_changelist"))
    assert len(response.context["cl"].result_list) == 12
    with django_assert_max_num_queries(day_at_two):
        response = client.get(admin("appointment_day"), day)
    assert len(response.context["appointments"]) == 12


def test_the_prescription_changelist_costs_the_same_for_2_and_for_8_rows(clinic, django_assert_max_num_queries) -> None:
    client = clinic.client_of(clinic.nurse)

    def grow(n: int) -> None:
        for _ in range(n):
            issue(clinic, visit(clinic, patient=clinic.make_patient(doctor=clinic.doctor)))

    grow(2)
    client.get(admin("prescription_changelist"))
    at_two = _count(client, admin("prescription_changelist"), rows=2)

    grow(6)
    with django_assert_max_num_queries(at_two):
        response = client.get(admin("prescription_changelist"))
    assert len(response.context["cl"].result_list) == 8
    assert {p.item_count for p in response.context["cl"].result_list} == {1}
