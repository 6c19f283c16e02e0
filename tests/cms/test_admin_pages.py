"""The admin, page by page: every registered model, the patient workflows, access."""

import datetime
import re
from decimal import Decimal

import pytest
from auditlog.mixins import AuditlogHistoryAdminMixin
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.forms import MultiWidget
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from accounts.services import api_token_create
from clinical import prescriptions, services
from clinical.fhir import build_vital_signs
from clinical.models import (
    Address,
    Appointment,
    Country,
    HealthProfile,
    InstitutionMembership,
    MedicalCondition,
    Medication,
    MembershipRole,
    Patient,
    PatientAllergy,
    PatientCondition,
    PatientMedication,
    ValidationStatus,
)
from cms.models import SystemSetting

pytestmark = pytest.mark.django_db

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)


# Helpers -----------------------------------------------------------------------------


def admin_url(model, view, *args):
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


def request_as(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def _form_data(form):
    """What a browser would post for ``form`` as rendered (unbound, so its initial values)."""
    data = {}
    for bound in form:
        value = bound.value()
        widget = bound.field.widget
        if isinstance(widget, MultiWidget):
            parts = widget.decompress(value) if value is not None else []
            for i in range(len(widget.widgets)):
                part = parts[i] if i < len(parts) else None
                data[f"{bound.html_name}_{i}"] = "" if part is None else str(part)
        elif value is None:
            data[bound.html_name] = ""
        elif isinstance(value, bool):
            if value:
                data[bound.html_name] = "on"
        elif isinstance(value, (list, tuple)):
            data[bound.html_name] = [str(v) for v in value]
        else:
            data[bound.html_name] = str(value)
    return data


def change_form_data(response):
    """POST data reproducing a rendered admin change page, inline formsets included."""
    data = _form_data(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update(_form_data(formset.management_form))
        for form in formset.forms:
            data.update(_form_data(form))
    return data


def headline_rows(html):
    """(label, url, value) of each row of the index's "At a glance" table."""
    table = re.search(r'<div class="module" id="headline-counts">(.*?)</div>', html, re.S)
    assert table, "the headline counts are not on the page"
    return re.findall(
        r'<th scope="row"><a href="([^"]+)">([^<]+)</a></th>\s*<td class="headline-count">(\d+)</td>',
        table.group(1),
    )


# Data -------------------------------------------------------------------------------


@pytest.fixture
def media_root(settings, tmp_path):
    """The default storage in this test's own folder (documents' files)."""
    storage = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}
    settings.STORAGES = {**settings.STORAGES, "default": storage}
    return tmp_path


@pytest.fixture
def admin_data(ref, roles, superuser, institution, doctor, make_user, media_root):
    """One row (at least) for every model the admin shows."""
    condition = MedicalCondition.objects.order_by("code").first()
    medication = Medication.objects.order_by("id").first()
    patient = services.patient_register(
        doctor=doctor,
        first_name="Grace",
        last_name="Hopper",
        date_of_birth=datetime.date(1970, 1, 2),
        sex=ref.female,
        notes="Prefers morning appointments.",
        profile={"height_cm": Decimal("170.0"), "weight_kg": Decimal("65.00"), "blood_type": ref.blood_type},
        emails=[{"address": "grace@example.org", "email_type": ref.email_type, "is_primary": True}],
        phones=[{"number": "+14155550123", "phone_type": ref.phone_type, "is_primary": True}],
        addresses=[{"line1": "1 Main Street", "city": "Springfield", "country": ref.country, "is_primary": True}],
    )
    PatientCondition.objects.create(
        patient=patient, condition=condition, onset_date=datetime.date(2020, 1, 1), diagnosed_by=doctor
    )
    PatientMedication.objects.create(
        patient=patient,
        medication=medication,
        dose="1 tablet",
        route="oral",
        frequency="daily",
        start_date=datetime.date(2021, 1, 1),
        prescribed_by=doctor,
    )
    PatientAllergy.objects.create(patient=patient, substance="Peanut", category="food", severity="severe")
    nurse = make_user(first_name="Florence", last_name="Nightingale", is_staff=True)
    membership = services.membership_start(user=nurse, institution=institution, role=MembershipRole.NURSE)
    token, _secret = api_token_create(user=superuser, name="integration")
    group = Group.objects.create(name="Front desk")
    services.grant_create(
        patient=patient, user=nurse, kind="view", granted_by=superuser, reason="Covers the night shift"
    )
    emergency_doctor = make_user(first_name="Emergency", last_name="Doctor", is_staff=True)
    emergency_doctor.groups.add(Group.objects.get(name="Doctor"))
    services.break_glass_open(user=emergency_doctor, patient=patient, reason="Unconscious in the emergency room")
    SystemSetting.objects.create(key="portal-banner", value={"text": "Welcome"})
    record = services.record_create(
        patient=patient,
        record_type="vital_signs",
        payload=build_vital_signs(
            kind="8867-4", value=64, effective=timezone.now(), patient_reference=f"Patient/{patient.uuid}"
        ),
        author=doctor.user,
    )
    services.document_upload(
        patient=patient,
        upload=SimpleUploadedFile("pulse-log.txt", b"Resting pulse 64/min, measured at home.\n"),
        kind="other",
        uploaded_by=doctor.user,
        medical_record=record,
    )
    # An appointment that has begun (bookings cannot start in the past) and its prescription, for
    # another patient: a prescription writes medical records, and the tests below count Grace's.
    visitor = services.patient_register(
        doctor=doctor, first_name="Ada", last_name="Lovelace", date_of_birth=datetime.date(1975, 12, 10), sex=ref.female
    )
    starts_at = timezone.now() - datetime.timedelta(hours=1)
    (visit,) = Appointment.objects.bulk_create(
        [
            Appointment(
                patient=visitor,
                doctor=doctor,
                institution=institution,
                starts_at=starts_at,
                ends_at=starts_at + datetime.timedelta(minutes=30),
            )
        ]
    )
    prescriptions.prescription_issue(
        appointment=visit,
        items=[
            {"medication": medication, "dose": "1 tablet", "frequency": "once_daily", "duration_days": 5, "quantity": 5}
        ],
        issued_by=doctor.user,
    )
    AccessAttempt.objects.create(
        username="someone@example.org",
        ip_address="127.0.0.1",
        user_agent="test",
        http_accept="*/*",
        path_info="/admin/login/",
        get_data="",
        post_data="",
        failures_since_start=1,
    )
    AccessFailureLog.objects.create(
        username="someone@example.org", ip_address="127.0.0.1", user_agent="test", http_accept="*/*", path_info="/"
    )
    return {
        "patient": patient,
        "doctor": doctor,
        "institution": institution,
        "membership": membership,
        "token": token,
        "group": group,
    }


# Every registered model -------------------------------------------------------------


def test_the_registry_covers_the_models_the_admin_is_meant_to_show():
    labels = {model._meta.label for model in REGISTERED}
    assert {
        "accounts.User",
        "accounts.ApiToken",
        "clinical.Patient",
        "clinical.HealthProfile",
        "clinical.PatientCondition",
        "clinical.PatientMedication",
        "clinical.PatientAllergy",
        "clinical.Email",
        "clinical.Phone",
        "clinical.Address",
        "clinical.MedicalInstitution",
        "clinical.InstitutionMembership",
        "clinical.Doctor",
    } <= labels


@pytest.mark.parametrize("model", REGISTERED, ids=[model._meta.label for model in REGISTERED])
def test_every_admin_page_of_every_model_renders_for_a_superuser(model, admin_data, superuser, superuser_client):
    model_admin = admin.site._registry[model]
    request = request_as(superuser)

    changelist = superuser_client.get(admin_url(model, "changelist"))
    assert changelist.status_code == 200
    assert changelist.context["cl"].result_count > 0, "the change list is empty"

    if model_admin.has_add_permission(request):
        assert superuser_client.get(admin_url(model, "add")).status_code == 200

    obj = model_admin.get_queryset(request).order_by("pk").first()
    assert obj is not None
    change = superuser_client.get(admin_url(model, "change", obj.pk))
    assert change.status_code == 200
    assert change.context["original"] == obj

    if isinstance(model_admin, AuditlogHistoryAdminMixin):
        history = superuser_client.get(admin_url(model, "auditlog", obj.pk))
        assert history.status_code == 200
        assert history.context["object"] == obj


# Patients: search, autocomplete, index -------------------------------------------------


def test_patient_change_list_searches_by_mrn_and_last_name(superuser_client, make_patient):
    hopper = make_patient(last_name="Hopper")
    lovelace = make_patient(last_name="Lovelace")
    url = admin_url(Patient, "changelist")

    by_mrn = superuser_client.get(url, {"q": lovelace.mrn})
    assert list(by_mrn.context["cl"].result_list) == [lovelace]

    by_name = superuser_client.get(url, {"q": "hopper"})
    assert list(by_name.context["cl"].result_list) == [hopper]
    assert "Hopper" in by_name.content.decode()
    assert "Lovelace" not in by_name.content.decode()


def test_autocomplete_offers_the_patient_to_a_superuser(superuser_client, make_patient):
    hopper = make_patient(last_name="Hopper")
    make_patient(last_name="Lovelace")
    response = superuser_client.get(
        "/admin/autocomplete/",
        {"app_label": "clinical", "model_name": "patientcondition", "field_name": "patient", "term": "Hopp"},
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert results == [{"id": str(hopper.pk), "text": str(hopper)}]


def test_admin_index_shows_the_headline_counts(
    ref, superuser, superuser_client, make_institution, make_doctor, make_patient
):
    other = make_institution()
    closed = make_institution()
    type(closed).objects.filter(pk=closed.pk).update(is_active=False)
    second = make_doctor(institution=other)
    retired = make_doctor()
    type(retired).objects.filter(pk=retired.pk).update(is_active=False)
    patients = [make_patient(), make_patient(), make_patient(doctor=second)]
    services.patient_validate(patient=patients[0], actor=superuser)

    response = superuser_client.get(reverse("admin:index"))

    assert response.status_code == 200
    counts = {item["label"]: item["value"] for item in response.context["headline_counts"]}
    # institutions: the fixture's, ``other`` (``closed`` is inactive); doctors: the
    # fixture's, ``second`` (``retired`` is inactive).
    expected = {"Patients": 3, "Pending validations": 2, "Institutions": 2, "Doctors": 2}
    assert counts == expected
    rows = headline_rows(response.content.decode())
    assert {label: int(value) for _url, label, value in rows} == expected
    urls = {label: url.replace("&amp;", "&") for url, label, _value in rows}
    assert urls["Patients"] == admin_url(Patient, "changelist")
    assert urls["Pending validations"].endswith("?validation_status__exact=pending")


# Patients: actions -------------------------------------------------------------------


def test_validate_action_validates_the_selected_patients(superuser, superuser_client, make_patient):
    chosen, other = make_patient(), make_patient()
    response = superuser_client.post(
        admin_url(Patient, "changelist"),
        {"action": "validate_patients", ACTION_CHECKBOX_NAME: [chosen.pk]},
    )
    assert response.status_code == 302
    chosen.refresh_from_db()
    other.refresh_from_db()
    assert chosen.validation_status == ValidationStatus.VALIDATED
    assert chosen.reviewed_by == superuser
    assert chosen.reviewed_at is not None
    assert other.validation_status == ValidationStatus.PENDING


def test_reject_action_asks_for_a_reason_then_rejects_and_stores_it(superuser, superuser_client, make_patient):
    chosen, other = make_patient(), make_patient()
    url = admin_url(Patient, "changelist")

    form = superuser_client.post(url, {"action": "reject_patients", ACTION_CHECKBOX_NAME: [chosen.pk]})
    assert form.status_code == 200
    assert "admin/clinical/patient/reject.html" in [t.name for t in form.templates]
    assert list(form.context["patients"]) == [chosen]
    assert 'name="reason"' in form.content.decode()
    chosen.refresh_from_db()
    assert chosen.validation_status == ValidationStatus.PENDING

    without_reason = superuser_client.post(
        url, {"action": "reject_patients", ACTION_CHECKBOX_NAME: [chosen.pk], "apply": "Reject", "reason": ""}
    )
    assert without_reason.status_code == 200
    assert without_reason.context["form"].errors
    chosen.refresh_from_db()
    assert chosen.validation_status == ValidationStatus.PENDING

    done = superuser_client.post(
        url,
        {
            "action": "reject_patients",
            ACTION_CHECKBOX_NAME: [chosen.pk],
            "apply": "Reject",
            "reason": "Duplicate of an existing record",
        },
    )
    assert done.status_code == 302
    chosen.refresh_from_db()
    other.refresh_from_db()
    assert chosen.validation_status == ValidationStatus.REJECTED
    assert chosen.rejection_reason == "Duplicate of an existing record"
    assert chosen.reviewed_by == superuser
    assert other.validation_status == ValidationStatus.PENDING
    with connection.cursor() as cursor:
        cursor.execute("SELECT rejection_reason FROM clinical_patient WHERE id = %s", [chosen.pk])
        (stored,) = cursor.fetchone()
    assert "Duplicate" not in stored  # encrypted at rest


# Patients: add and change forms ------------------------------------------------------


def test_adding_a_patient_in_the_admin_registers_them_with_profile_and_mrn(ref, superuser_client, doctor):
    add = superuser_client.get(admin_url(Patient, "add"))
    assert add.status_code == 200

    response = superuser_client.post(
        admin_url(Patient, "add"),
        {
            "doctor": doctor.pk,
            "first_name": "Katherine",
            "last_name": "Johnson",
            "date_of_birth": "1918-08-26",
            "sex": ref.female.pk,
        },
    )

    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    patient = Patient.objects.get(last_name="Johnson")
    assert patient.first_name == "Katherine"
    assert patient.date_of_birth == datetime.date(1918, 8, 26)
    assert patient.doctor == doctor
    assert patient.institution == doctor.institution
    assert patient.mrn == "00000001"
    assert patient.validation_status == ValidationStatus.PENDING
    assert HealthProfile.objects.filter(patient=patient).exists()
    assert response["Location"] in {
        admin_url(Patient, "changelist"),
        admin_url(Patient, "change", patient.pk),
    }


def test_adding_a_patient_with_an_explicit_mrn_keeps_it(ref, superuser_client, doctor):
    response = superuser_client.post(
        admin_url(Patient, "add"),
        {
            "doctor": doctor.pk,
            "first_name": "Mary",
            "last_name": "Jackson",
            "date_of_birth": "1921-04-09",
            "sex": ref.female.pk,
            "mrn": "LEGACY-42",
        },
    )
    assert response.status_code == 302
    assert Patient.objects.get(last_name="Jackson").mrn == "LEGACY-42"


def test_change_page_round_trip_keeps_the_patient_and_everything_inline(admin_data, superuser_client):
    patient = admin_data["patient"]
    url = admin_url(Patient, "change", patient.pk)
    page = superuser_client.get(url)
    prefixes = {inline.formset.prefix for inline in page.context["inline_admin_formsets"]}
    assert prefixes == {
        "health_profile",
        "conditions",
        "medications",
        "allergies",
        "emails",
        "phones",
        "addresses",
        "records",  # read only: saving the patient leaves records alone
        "documents",  # read only, like records
    }
    assert "Heart rate" in page.content.decode()  # the record's summary, decrypted

    data = change_form_data(page)
    data["first_name"] = "Grace Brewster"
    response = superuser_client.post(url, data)

    assert response.status_code == 302, response.context and [
        response.context["adminform"].form.errors,
        *[inline.formset.errors for inline in response.context["inline_admin_formsets"]],
    ]
    patient.refresh_from_db()
    assert patient.first_name == "Grace Brewster"
    assert patient.notes == "Prefers morning appointments."
    profile = HealthProfile.objects.get(patient=patient)
    assert (profile.height_cm, profile.weight_kg) == (Decimal("170.0"), Decimal("65.00"))
    assert patient.conditions.count() == patient.medications.count() == patient.allergies.count() == 1
    assert patient.emails.count() == patient.phones.count() == Address.objects.filter(patient=patient).count() == 1
    assert patient.records.count() == 1


def test_changing_the_doctor_to_one_at_another_institution_transfers_the_patient(
    admin_data, superuser_client, make_institution, make_doctor
):
    patient = admin_data["patient"]
    elsewhere = make_institution()
    new_doctor = make_doctor(institution=elsewhere)
    url = admin_url(Patient, "change", patient.pk)

    data = change_form_data(superuser_client.get(url))
    data["doctor"] = str(new_doctor.pk)
    response = superuser_client.post(url, data)

    assert response.status_code == 302, response.context and [
        response.context["adminform"].form.errors,
        *[inline.formset.errors for inline in response.context["inline_admin_formsets"]],
    ]
    patient.refresh_from_db()
    assert patient.doctor == new_doctor
    assert patient.institution == elsewhere
    assert patient.mrn == "00000001"  # the first MRN at the new institution
    assert HealthProfile.objects.get(patient=patient).blood_type is not None
    assert patient.conditions.count() == 1


# Access: model permissions never reveal a patient -----------------------------------


@pytest.fixture
def staff_with_patient_permissions(make_user, staff_client_factory):
    user = make_user(is_staff=True)
    models = (Patient, HealthProfile, PatientCondition)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__in=ContentType.objects.get_for_models(*models).values())
    )
    return user, staff_client_factory(user)


def test_staff_with_every_patient_permission_still_sees_no_patient(admin_data, staff_with_patient_permissions):
    user, client = staff_with_patient_permissions
    patient = admin_data["patient"]
    assert user.has_perm("clinical.view_patient") and user.has_perm("clinical.change_patient")
    assert not user.is_superuser

    changelist = client.get(admin_url(Patient, "changelist"))
    assert changelist.status_code == 200
    assert list(changelist.context["cl"].result_list) == []
    assert patient.last_name not in changelist.content.decode()

    change = client.get(admin_url(Patient, "change", patient.pk))
    assert change.status_code in (302, 404)
    if change.status_code == 302:
        assert change["Location"] == reverse("admin:index")

    for model in (HealthProfile, PatientCondition):
        listing = client.get(admin_url(model, "changelist"))
        assert listing.status_code == 200, model
        assert listing.context["cl"].result_count == 0, model
        assert patient.last_name not in listing.content.decode()

    profile = HealthProfile.objects.get(patient=patient)
    assert client.get(admin_url(HealthProfile, "change", profile.pk)).status_code in (302, 404)

    complete = client.get(
        "/admin/autocomplete/",
        {"app_label": "clinical", "model_name": "patientcondition", "field_name": "patient", "term": "Hopp"},
    )
    assert complete.status_code in (200, 403)
    if complete.status_code == 200:
        assert complete.json()["results"] == []

    index = client.get(reverse("admin:index"))
    counts = {item["label"]: item["value"] for item in index.context["headline_counts"]}
    assert counts["Patients"] == 0
    assert counts["Pending validations"] == 0


@pytest.mark.parametrize("model", [Patient, HealthProfile, PatientCondition], ids=lambda m: m._meta.label)
def test_the_history_page_of_a_hidden_patient_row_is_not_found(admin_data, staff_with_patient_permissions, model):
    user, _client = staff_with_patient_permissions
    client = Client(raise_request_exception=False)
    client.force_login(user)
    row = admin_data["patient"] if model is Patient else model.objects.get(patient=admin_data["patient"])

    response = client.get(admin_url(model, "auditlog", row.pk))

    assert response.status_code in (302, 403, 404)
    assert admin_data["patient"].last_name not in response.content.decode()


def test_the_history_page_of_a_missing_patient_is_not_found(superuser):
    client = Client(raise_request_exception=False)
    client.force_login(superuser)
    missing = (Patient.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000
    response = client.get(admin_url(Patient, "auditlog", missing))
    assert response.status_code in (302, 404)


def test_staff_cannot_validate_a_patient_through_the_action(admin_data, staff_with_patient_permissions):
    _user, client = staff_with_patient_permissions
    patient = admin_data["patient"]
    client.post(admin_url(Patient, "changelist"), {"action": "validate_patients", ACTION_CHECKBOX_NAME: [patient.pk]})
    patient.refresh_from_db()
    assert patient.validation_status == ValidationStatus.PENDING


# Anonymous ------------------------------------------------------------------------------


def test_login_page_renders_for_anonymous_users(db):
    response = Client().get(reverse("admin:login"))
    assert response.status_code == 200
    assert 'name="username"' in response.content.decode()
    assert 'name="password"' in response.content.decode()


@pytest.mark.parametrize("path", ["/admin/", "/admin/clinical/patient/"])
def test_anonymous_admin_requests_redirect_to_login(db, path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={path}"


def test_the_country_catalog_is_searchable(superuser_client, ref):
    response = superuser_client.get(admin_url(Country, "changelist"), {"q": "Portugal"})
    assert [c.alpha2 for c in response.context["cl"].result_list] == ["PT"]


def test_membership_list_shows_the_nurse(admin_data, superuser_client):
    response = superuser_client.get(admin_url(InstitutionMembership, "changelist"))
    assert admin_data["membership"] in list(response.context["cl"].result_list)


def test_ending_a_doctors_membership_warns_about_their_appointments_still_to_come(
    superuser_client, doctor, patient, make_institution
):
    from clinical import appointments

    second = make_institution()
    membership = services.membership_start(user=doctor.user, institution=second, role="doctor")
    start = (timezone.now() + datetime.timedelta(days=2)).replace(microsecond=0)
    appointments.appointment_book(
        patient=patient,
        doctor=doctor,
        institution=second,
        starts_at=start,
        ends_at=start + datetime.timedelta(minutes=30),
        reason=None,
        booked_by=None,
    )
    response = superuser_client.post(
        admin_url(InstitutionMembership, "changelist"),
        {"action": "end_memberships", ACTION_CHECKBOX_NAME: [membership.pk]},
        follow=True,
    )
    shown = [str(message) for message in response.context["messages"]]
    assert any("1 scheduled appointment(s) still to come" in message for message in shown), shown
    assert any("1 membership(s) ended" in message for message in shown)
    # No warning for a nurse, or for a doctor with nothing booked there.
    third = make_institution()
    quiet = services.membership_start(user=doctor.user, institution=third, role="doctor")
    response = superuser_client.post(
        admin_url(InstitutionMembership, "changelist"),
        {"action": "end_memberships", ACTION_CHECKBOX_NAME: [quiet.pk]},
        follow=True,
    )
    assert not any("still to come" in str(message) for message in response.context["messages"])
