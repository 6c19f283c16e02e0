"""The directory's rules hold in PostgreSQL itself, not only in Python.

Every rule gets a write that the database accepts and a write it rejects.
The writes bypass the services and ``full_clean``: ``QuerySet.update``,
``bulk_create`` or raw SQL, so the only thing that can stop them is the
database. Each rejection asserts the name of the constraint or trigger that
fired (``tests.db.rule_name``); NOT NULL violations have no name, so they
assert the SQLSTATE and the column instead.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from clinical import services
from clinical.models import (
    Address,
    Doctor,
    Email,
    HealthProfile,
    InstitutionMembership,
    Medication,
    MembershipRole,
    Patient,
    PatientMedication,
    Phone,
    ValidationStatus,
)
from tests.db import raw, rule_name, violated

pytestmark = pytest.mark.django_db

User = get_user_model()
NOT_NULL_VIOLATION = "23502"
_serial = itertools.count(1)

# A stand-in in parametrized values for the reviewing user and the review time.
REVIEWER = object()
NOW = object()


def accepted(write: Callable[[], Any]) -> Any:
    """Run ``write`` with deferred rules made immediate; it must not raise."""
    with transaction.atomic():
        raw("SET CONSTRAINTS ALL IMMEDIATE")
        return write()


def check_deferred_rules_now() -> None:
    """Fire the deferred checks queued so far, e.g. for rows the fixtures wrote."""
    raw("SET CONSTRAINTS ALL IMMEDIATE")
    raw("SET CONSTRAINTS ALL DEFERRED")


def db_today() -> datetime.date:
    """The database's CURRENT_DATE, which the date-of-birth trigger compares with."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_DATE")
        return cursor.fetchone()[0]  # type: ignore[no-any-return]


def new_doctor(user: Any, institution: Any, specialty: Any) -> Doctor:
    return Doctor(user=user, institution=institution, specialty=specialty, license_number=f"RAW-{next(_serial)}")


def new_patient(doctor: Doctor, sex: Any, **fields: Any) -> Patient:
    n = next(_serial)
    values = {
        "institution_id": doctor.institution_id,
        "doctor": doctor,
        "mrn": f"RAW-{n}",
        "first_name": "Raw",
        "last_name": f"Patient{n}",
        "date_of_birth": datetime.date(1980, 1, 1),
        "sex": sex,
        **fields,
    }
    return Patient(**values)


def new_contact(model: type[Any], ref: Any, **fields: Any) -> Any:
    n = next(_serial)
    if model is Email:
        return Email(**{"address": f"contact{n}@example.org", "email_type": ref.email_type, **fields})
    if model is Phone:
        return Phone(**{"number": f"+1415555{n:04d}", "phone_type": ref.phone_type, **fields})
    return Address(line1=f"{n} Main Street", city="Springfield", country=ref.country, **fields)


@pytest.fixture
def owners(patient: Patient, doctor: Doctor, institution: Any, make_user: Any) -> dict[str, Any]:
    """One of each kind of contact owner."""
    return {"patient": patient, "doctor": doctor, "institution": institution, "user": make_user()}


@pytest.fixture
def profile(patient: Patient) -> HealthProfile:
    return HealthProfile.objects.get(patient=patient)


# Patient ↔ doctor ↔ institution ---------------------------------------------------------


@pytest.mark.parametrize("column", ["doctor_id", "institution_id"])
def test_it_rejects_a_patient_without_a_doctor_or_an_institution(patient, column):
    diag = violated(lambda: Patient.objects.filter(pk=patient.pk).update(**{column: None}))
    assert diag.sqlstate == NOT_NULL_VIOLATION
    assert diag.column_name == column


def test_it_accepts_a_patient_with_both_a_doctor_and_an_institution(patient, doctor):
    accepted(lambda: Patient.objects.filter(pk=patient.pk).update(doctor=doctor, institution=doctor.institution))
    accepted(lambda: Patient.objects.bulk_create([new_patient(doctor, patient.sex)]))


def test_it_accepts_a_patient_moved_to_a_colleague_at_the_same_institution(patient, make_doctor):
    colleague = make_doctor()
    accepted(lambda: Patient.objects.filter(pk=patient.pk).update(doctor=colleague))
    patient.refresh_from_db()
    assert patient.doctor == colleague


def test_it_rejects_a_patient_at_an_institution_where_their_doctor_does_not_work(patient, make_institution):
    other = make_institution()
    assert (
        rule_name(lambda: Patient.objects.filter(pk=patient.pk).update(institution=other))
        == "clinical_patient_doctor_works_at_institution"
    )


def test_it_rejects_a_patient_given_a_doctor_from_another_institution(patient, make_doctor, make_institution):
    stranger = make_doctor(institution=make_institution())
    assert (
        rule_name(lambda: Patient.objects.filter(pk=patient.pk).update(doctor=stranger))
        == "clinical_patient_doctor_works_at_institution"
    )


def test_it_rejects_inserting_a_patient_whose_doctor_works_elsewhere(ref, doctor, make_institution):
    elsewhere = make_institution()
    stray = new_patient(doctor, ref.female, institution_id=elsewhere.pk)
    assert rule_name(lambda: Patient.objects.bulk_create([stray])) == "clinical_patient_doctor_works_at_institution"


def test_it_rejects_moving_a_doctor_who_still_has_patients_at_the_old_institution(patient, doctor, make_institution):
    other = make_institution()
    services.membership_start(user=doctor.user, institution=other, role=MembershipRole.DOCTOR)
    assert (
        rule_name(lambda: raw("UPDATE clinical_doctor SET institution_id = %s WHERE id = %s", [other.pk, doctor.pk]))
        == "clinical_patient_doctor_works_at_institution"
    )
    assert (
        rule_name(lambda: Doctor.objects.filter(pk=doctor.pk).update(institution=other))
        == "clinical_patient_doctor_works_at_institution"
    )


def test_it_accepts_moving_a_doctor_once_their_patients_are_transferred(patient, doctor, make_doctor, make_institution):
    other = make_institution()
    services.patient_transfer(patient=patient, doctor=make_doctor())
    services.membership_start(user=doctor.user, institution=other, role=MembershipRole.DOCTOR)
    accepted(lambda: raw("UPDATE clinical_doctor SET institution_id = %s WHERE id = %s", [other.pk, doctor.pk]))
    doctor.refresh_from_db()
    assert doctor.institution == other


# Doctors ---------------------------------------------------------------------------------


def test_it_rejects_a_doctor_without_an_institution(doctor):
    accepted(lambda: Doctor.objects.filter(pk=doctor.pk).update(institution=doctor.institution))
    diag = violated(lambda: Doctor.objects.filter(pk=doctor.pk).update(institution=None))
    assert diag.sqlstate == NOT_NULL_VIOLATION
    assert diag.column_name == "institution_id"


def test_it_rejects_a_licence_number_held_by_another_doctor(make_doctor):
    first, second = make_doctor(), make_doctor()
    accepted(lambda: Doctor.objects.filter(pk=second.pk).update(license_number="LIC-UNIQUE-1"))
    assert (
        rule_name(lambda: Doctor.objects.filter(pk=second.pk).update(license_number=first.license_number))
        == "clinical_doctor_license_unique"
    )


def test_it_accepts_a_doctor_with_an_active_doctor_membership(ref, make_user, institution):
    user = make_user()
    services.membership_start(
        user=user,
        institution=institution,
        role=MembershipRole.DOCTOR,
        valid_until=timezone.now() + datetime.timedelta(days=30),
    )
    accepted(lambda: Doctor.objects.bulk_create([new_doctor(user, institution, ref.specialty)]))
    assert Doctor.objects.filter(user=user, institution=institution).exists()


@pytest.mark.parametrize(
    "membership",
    ["none", "as a nurse", "at another institution", "ended", "not yet started"],
)
def test_it_rejects_a_doctor_without_an_active_doctor_membership_at_the_institution(
    ref, make_user, institution, make_institution, membership
):
    user = make_user()
    now = timezone.now()
    day = datetime.timedelta(days=1)
    doctor_role = {"user": user, "role": MembershipRole.DOCTOR}
    if membership == "as a nurse":
        services.membership_start(user=user, institution=institution, role=MembershipRole.NURSE)
    elif membership == "at another institution":
        services.membership_start(institution=make_institution(), **doctor_role)
    elif membership == "ended":
        services.membership_start(
            institution=institution, valid_from=now - 2 * day, valid_until=now - day, **doctor_role
        )
    elif membership == "not yet started":
        services.membership_start(institution=institution, valid_from=now + day, **doctor_role)
    assert (
        rule_name(lambda: Doctor.objects.bulk_create([new_doctor(user, institution, ref.specialty)]))
        == "clinical_doctor_active_membership"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE clinical_institutionmembership SET valid_until = valid_from + interval '1 microsecond' "
        "WHERE user_id = %s AND institution_id = %s",
        "DELETE FROM clinical_institutionmembership WHERE user_id = %s AND institution_id = %s",
    ],
    ids=["ended", "deleted"],
)
def test_it_rejects_ending_a_doctors_membership_at_the_primary_institution_behind_its_back(doctor, sql):
    # Settle the check queued by the doctor's registration while the membership is active.
    check_deferred_rules_now()
    assert rule_name(lambda: raw(sql, [doctor.user_id, doctor.institution_id])) == "clinical_doctor_active_membership"


def test_it_accepts_ending_a_doctor_membership_once_another_one_is_active(doctor):
    check_deferred_rules_now()
    second = InstitutionMembership.objects.create(
        user=doctor.user,
        institution=doctor.institution,
        role="doctor",
        valid_from=timezone.now() - datetime.timedelta(days=1),
        valid_until=timezone.now() + datetime.timedelta(days=365),
    )
    accepted(
        lambda: raw(
            "UPDATE clinical_institutionmembership SET valid_until = clock_timestamp() "
            "WHERE user_id = %s AND institution_id = %s AND id <> %s",
            [doctor.user_id, doctor.institution_id, second.pk],
        )
    )


def test_it_rejects_handing_a_doctor_record_to_a_user_without_a_membership(doctor, make_user):
    newcomer = make_user()
    assert (
        rule_name(lambda: Doctor.objects.filter(pk=doctor.pk).update(user=newcomer))
        == "clinical_doctor_active_membership"
    )


# Health profile ----------------------------------------------------------------------------


def test_it_accepts_one_health_profile_per_patient_and_rejects_a_second(patient):
    HealthProfile.objects.filter(patient=patient).delete()
    accepted(lambda: HealthProfile.objects.bulk_create([HealthProfile(patient=patient)]))
    assert (
        rule_name(lambda: HealthProfile.objects.bulk_create([HealthProfile(patient=patient)]))
        == "clinical_healthprofile_patient_id_key"
    )


@pytest.mark.parametrize(
    "name, phone, relationship",
    [("", "", ""), ("Alan Turing", "+14155550123", "brother")],
    ids=["all empty", "all set"],
)
def test_it_accepts_an_emergency_contact_that_is_complete_or_absent(profile, name, phone, relationship):
    accepted(
        lambda: HealthProfile.objects.filter(pk=profile.pk).update(
            emergency_contact_name=name,
            emergency_contact_phone=phone,
            emergency_contact_relationship=relationship,
        )
    )


@pytest.mark.parametrize(
    "name, phone, relationship",
    [
        ("Alan Turing", "", ""),
        ("", "+14155550123", ""),
        ("", "", "brother"),
        ("Alan Turing", "+14155550123", ""),
        ("", "+14155550123", "brother"),
        ("Alan Turing", "", "brother"),
    ],
)
def test_it_rejects_a_partial_emergency_contact(profile, name, phone, relationship):
    assert (
        rule_name(
            lambda: HealthProfile.objects.filter(pk=profile.pk).update(
                emergency_contact_name=name,
                emergency_contact_phone=phone,
                emergency_contact_relationship=relationship,
            )
        )
        == "clinical_profile_emergency_contact_complete"
    )


@pytest.mark.parametrize("phone", ["4155550123", "+04155550123", "+1 415 555 0123", "+123456", "0014155550123"])
def test_it_rejects_an_emergency_phone_not_in_e164(profile, phone):
    assert (
        rule_name(
            lambda: HealthProfile.objects.filter(pk=profile.pk).update(
                emergency_contact_name="Alan Turing",
                emergency_contact_phone=phone,
                emergency_contact_relationship="brother",
            )
        )
        == "clinical_profile_emergency_phone_e164"
    )


@pytest.mark.parametrize(
    "flag, count, values",
    [
        ("is_smoker", "cigarettes_per_day", [(False, None), (True, 0), (True, 20), (True, 200)]),
        ("consumes_alcohol", "drinks_per_week", [(False, None), (True, 0), (True, 7), (True, 200)]),
    ],
)
def test_it_accepts_consistent_smoking_and_drinking_habits(profile, flag, count, values):
    for yes, amount in values:
        accepted(
            lambda yes=yes, amount=amount: HealthProfile.objects.filter(pk=profile.pk).update(
                **{flag: yes, count: amount}
            )
        )


@pytest.mark.parametrize(
    "flag, count, rule",
    [
        ("is_smoker", "cigarettes_per_day", "clinical_profile_smoking_consistent"),
        ("consumes_alcohol", "drinks_per_week", "clinical_profile_alcohol_consistent"),
    ],
)
@pytest.mark.parametrize(
    "yes, amount",
    [(False, 0), (False, 5), (True, None), (True, 201)],
    ids=["abstainer with zero", "abstainer with an amount", "consumer without an amount", "over 200"],
)
def test_it_rejects_inconsistent_smoking_and_drinking_habits(profile, flag, count, rule, yes, amount):
    assert rule_name(lambda: HealthProfile.objects.filter(pk=profile.pk).update(**{flag: yes, count: amount})) == rule


@pytest.mark.parametrize(
    "field, value",
    [
        ("height_cm", None),
        ("height_cm", Decimal("20")),
        ("height_cm", Decimal("280")),
        ("weight_kg", None),
        ("weight_kg", Decimal("0.2")),
        ("weight_kg", Decimal("700")),
        ("physical_activity_minutes_per_week", None),
        ("physical_activity_minutes_per_week", 0),
        ("physical_activity_minutes_per_week", 10_080),
    ],
)
def test_it_accepts_body_measures_within_range_including_the_bounds(profile, field, value):
    accepted(lambda: HealthProfile.objects.filter(pk=profile.pk).update(**{field: value}))
    profile.refresh_from_db()
    assert getattr(profile, field) == value


@pytest.mark.parametrize(
    "field, value, rule",
    [
        ("height_cm", Decimal("19.9"), "clinical_profile_height_range"),
        ("height_cm", Decimal("280.1"), "clinical_profile_height_range"),
        ("weight_kg", Decimal("0.19"), "clinical_profile_weight_range"),
        ("weight_kg", Decimal("0"), "clinical_profile_weight_range"),
        ("weight_kg", Decimal("700.01"), "clinical_profile_weight_range"),
        ("physical_activity_minutes_per_week", 10_081, "clinical_profile_activity_range"),
    ],
)
def test_it_rejects_body_measures_out_of_range(profile, field, value, rule):
    assert rule_name(lambda: HealthProfile.objects.filter(pk=profile.pk).update(**{field: value})) == rule


# Date of birth ------------------------------------------------------------------------------


def test_it_accepts_a_date_of_birth_from_1890_up_to_today(patient):
    for born in (datetime.date(1890, 1, 1), db_today()):
        accepted(lambda born=born: Patient.objects.filter(pk=patient.pk).update(date_of_birth=born))
        patient.refresh_from_db()
        assert patient.date_of_birth == born


def test_it_rejects_a_date_of_birth_before_1890(patient):
    assert (
        rule_name(lambda: Patient.objects.filter(pk=patient.pk).update(date_of_birth=datetime.date(1889, 12, 31)))
        == "clinical_patient_dob_from_1890"
    )


def test_it_rejects_updating_a_date_of_birth_to_the_future(patient):
    tomorrow = db_today() + datetime.timedelta(days=1)
    assert (
        rule_name(lambda: Patient.objects.filter(pk=patient.pk).update(date_of_birth=tomorrow))
        == "clinical_patient_dob_not_in_future"
    )


def test_it_rejects_inserting_a_patient_born_in_the_future_but_not_one_born_today(ref, doctor):
    tomorrow = db_today() + datetime.timedelta(days=1)
    accepted(lambda: Patient.objects.bulk_create([new_patient(doctor, ref.female, date_of_birth=db_today())]))
    assert (
        rule_name(lambda: Patient.objects.bulk_create([new_patient(doctor, ref.female, date_of_birth=tomorrow)]))
        == "clinical_patient_dob_not_in_future"
    )


# Medications -------------------------------------------------------------------------------


def test_it_rejects_a_medication_that_ends_before_it_starts(patient):
    started = datetime.date(2024, 3, 10)
    (course,) = PatientMedication.objects.bulk_create(
        [PatientMedication(patient=patient, medication=Medication.objects.order_by("id").first(), start_date=started)]
    )
    for end in (None, started, started + datetime.timedelta(days=1)):
        accepted(lambda end=end: PatientMedication.objects.filter(pk=course.pk).update(end_date=end))
    assert (
        rule_name(
            lambda: PatientMedication.objects.filter(pk=course.pk).update(end_date=started - datetime.timedelta(days=1))
        )
        == "clinical_patientmedication_end_not_before_start"
    )


# Contacts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["+1234567", "+14155550123", "+123456789012345"])
def test_it_accepts_phone_numbers_in_e164(ref, patient, number):
    accepted(lambda: Phone.objects.bulk_create([new_contact(Phone, ref, patient=patient, number=number)]))


@pytest.mark.parametrize(
    "number", ["4155550123", "+04155550123", "+1 415 555 0123", "+1-415-555-0123", "+123456", "0014155550123"]
)
def test_it_rejects_phone_numbers_not_in_e164(ref, patient, number):
    (phone,) = Phone.objects.bulk_create([new_contact(Phone, ref, patient=patient)])
    assert rule_name(lambda: Phone.objects.filter(pk=phone.pk).update(number=number)) == "clinical_phone_e164"


PRIMARY_RULES = [
    *[(Email, owner) for owner in ("patient", "doctor", "institution")],
    *[(Phone, owner) for owner in ("user", "patient", "doctor", "institution")],
    *[(Address, owner) for owner in ("patient", "doctor", "institution")],
]


@pytest.mark.parametrize("model, owner", PRIMARY_RULES, ids=[f"{m.__name__.lower()}-{o}" for m, o in PRIMARY_RULES])
def test_it_rejects_a_second_primary_contact_of_the_same_kind_per_owner(ref, owners, model, owner):
    mine = {owner: owners[owner]}
    accepted(
        lambda: model.objects.bulk_create(
            [
                new_contact(model, ref, is_primary=True, **mine),
                new_contact(model, ref, is_primary=False, **mine),
                new_contact(model, ref, is_primary=False, **mine),
            ]
        )
    )
    assert (
        rule_name(lambda: model.objects.bulk_create([new_contact(model, ref, is_primary=True, **mine)]))
        == f"clinical_{model.__name__.lower()}_one_primary_per_{owner}"
    )


@pytest.mark.parametrize("model", [Email, Phone, Address], ids=["email", "phone", "address"])
def test_it_accepts_a_contact_moved_from_one_owner_to_another(ref, owners, model):
    (contact,) = model.objects.bulk_create([new_contact(model, ref, patient=owners["patient"])])
    accepted(lambda: model.objects.filter(pk=contact.pk).update(patient=None, doctor=owners["doctor"]))
    contact.refresh_from_db()
    assert contact.owner == owners["doctor"]


@pytest.mark.parametrize("model", [Email, Phone, Address], ids=["email", "phone", "address"])
@pytest.mark.parametrize(
    "change",
    [
        {"patient": None},
        {"doctor": "doctor"},
        {"institution": "institution"},
        {"doctor": "doctor", "institution": "institution"},
    ],
    ids=["no owner", "patient and doctor", "patient and institution", "three owners"],
)
def test_it_rejects_a_contact_without_exactly_one_owner(ref, owners, model, change):
    (contact,) = model.objects.bulk_create([new_contact(model, ref, patient=owners["patient"])])
    values = {field: owners[value] if value else None for field, value in change.items()}
    assert (
        rule_name(lambda: model.objects.filter(pk=contact.pk).update(**values))
        == f"clinical_{model.__name__.lower()}_exactly_one_owner"
    )


def test_it_rejects_a_phone_owned_by_a_user_and_a_patient(ref, owners):
    (phone,) = Phone.objects.bulk_create([new_contact(Phone, ref, user=owners["user"])])
    assert (
        rule_name(lambda: Phone.objects.filter(pk=phone.pk).update(patient=owners["patient"]))
        == "clinical_phone_exactly_one_owner"
    )


def test_it_rejects_an_ownerless_contact_inserted_with_raw_sql(ref):
    assert (
        rule_name(
            lambda: raw(
                """
                INSERT INTO clinical_email (uuid, created_at, updated_at, is_primary, address, email_type_id)
                VALUES (gen_random_uuid(), now(), now(), false, 'nobody@example.org', %s)
                """,
                [ref.email_type.pk],
            )
        )
        == "clinical_email_exactly_one_owner"
    )


@pytest.mark.parametrize(
    "first, second",
    [("A@x.org", "a@X.org"), ("a@x.org", "a@x.org"), ("Grace@Example.ORG", "grace@example.org")],
)
def test_it_rejects_an_email_address_already_taken_in_another_case(ref, patient, doctor, first, second):
    Email.objects.bulk_create([new_contact(Email, ref, patient=patient, address=first)])
    accepted(lambda: Email.objects.bulk_create([new_contact(Email, ref, doctor=doctor, address="b@x.org")]))
    assert (
        rule_name(lambda: Email.objects.bulk_create([new_contact(Email, ref, doctor=doctor, address=second)]))
        == "clinical_email_address_ci_unique"
    )


def test_it_rejects_a_user_email_already_taken_in_another_case(make_user):
    make_user(email="Ada@example.org")
    second = make_user()
    accepted(lambda: User.objects.filter(pk=second.pk).update(email="ada.other@example.org"))
    assert (
        rule_name(lambda: User.objects.filter(pk=second.pk).update(email="ada@EXAMPLE.ORG"))
        == "accounts_user_email_ci_unique"
    )


# Medical record numbers -------------------------------------------------------------------------


def test_it_accepts_the_same_mrn_at_two_institutions(patient, make_patient, make_doctor, make_institution):
    elsewhere = make_patient(doctor=make_doctor(institution=make_institution()))
    assert elsewhere.mrn == patient.mrn
    accepted(lambda: Patient.objects.filter(pk__in=[patient.pk, elsewhere.pk]).update(mrn="SHARED-1"))


def test_it_rejects_an_mrn_already_used_at_the_same_institution(patient, make_patient):
    neighbour = make_patient()
    assert (
        rule_name(lambda: Patient.objects.filter(pk=neighbour.pk).update(mrn=patient.mrn))
        == "clinical_patient_mrn_unique_per_institution"
    )


# Validation workflow ----------------------------------------------------------------------------


def _resolved(values: dict[str, Any], reviewer: Any) -> dict[str, Any]:
    stand_ins = {id(REVIEWER): reviewer, id(NOW): timezone.now()}
    return {field: stand_ins.get(id(value), value) for field, value in values.items()}


def test_it_accepts_each_consistent_validation_state(patient, superuser):
    rows = Patient.objects.filter(pk=patient.pk)
    accepted(
        lambda: rows.update(
            validation_status=ValidationStatus.VALIDATED, reviewed_by=superuser, reviewed_at=timezone.now()
        )
    )
    accepted(lambda: rows.update(validation_status=ValidationStatus.PENDING, reviewed_by=None, reviewed_at=None))
    services.patient_reject(patient=patient, actor=superuser, reason="Duplicate record")
    assert rows.get().validation_status == ValidationStatus.REJECTED
    accepted(lambda: rows.update(validation_status=ValidationStatus.VALIDATED, rejection_reason=None))
    assert rows.get().rejection_reason is None


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"validation_status": "validated"}, id="validated without reviewer or time"),
        pytest.param({"validation_status": "validated", "reviewed_by": REVIEWER}, id="validated without time"),
        pytest.param({"validation_status": "validated", "reviewed_at": NOW}, id="validated without reviewer"),
        pytest.param(
            {"validation_status": "rejected", "reviewed_by": REVIEWER, "reviewed_at": NOW},
            id="rejected without a reason",
        ),
        pytest.param({"reviewed_by": REVIEWER}, id="pending with a reviewer"),
        pytest.param({"reviewed_at": NOW}, id="pending with a review time"),
        pytest.param(
            {"validation_status": "approved", "reviewed_by": REVIEWER, "reviewed_at": NOW},
            id="an unknown status",
        ),
    ],
)
def test_it_rejects_an_inconsistent_validation_state_of_a_pending_patient(patient, superuser, values):
    changes = _resolved(values, superuser)
    assert (
        rule_name(lambda: Patient.objects.filter(pk=patient.pk).update(**changes))
        == "clinical_patient_validation_consistent"
    )


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"validation_status": "validated"}, id="validated keeping the reason"),
        pytest.param(
            {"validation_status": "pending", "reviewed_by": None, "reviewed_at": None},
            id="pending keeping the reason",
        ),
        pytest.param({"reviewed_by": None}, id="rejected without a reviewer"),
        pytest.param({"reviewed_at": None}, id="rejected without a time"),
    ],
)
def test_it_rejects_an_inconsistent_validation_state_of_a_rejected_patient(patient, superuser, values):
    services.patient_reject(patient=patient, actor=superuser, reason="Wrong date of birth")
    assert (
        rule_name(lambda: Patient.objects.filter(pk=patient.pk).update(**values))
        == "clinical_patient_validation_consistent"
    )


def test_it_rejects_a_rejection_reason_on_a_pending_patient_written_with_raw_sql(patient):
    assert (
        rule_name(lambda: raw("UPDATE clinical_patient SET rejection_reason = 'x' WHERE id = %s", [patient.pk]))
        == "clinical_patient_validation_consistent"
    )


def test_it_refuses_a_plaintext_rejection_reason_in_queryset_update_before_reaching_the_database(patient, superuser):
    with pytest.raises(TypeError, match="encrypted per row"), transaction.atomic():
        Patient.objects.filter(pk=patient.pk).update(
            validation_status=ValidationStatus.REJECTED,
            reviewed_by=superuser,
            reviewed_at=timezone.now(),
            rejection_reason="Duplicate record",
        )
    patient.refresh_from_db()
    assert patient.validation_status == ValidationStatus.PENDING
    assert patient.rejection_reason is None


# Memberships ----------------------------------------------------------------------------------


@pytest.fixture
def nurse_membership(make_user, institution) -> InstitutionMembership:
    return services.membership_start(user=make_user(), institution=institution, role=MembershipRole.NURSE)


def test_it_accepts_a_membership_that_ends_after_it_starts(nurse_membership):
    accepted(
        lambda: InstitutionMembership.objects.filter(pk=nurse_membership.pk).update(
            valid_until=F("valid_from") + datetime.timedelta(microseconds=1)
        )
    )


@pytest.mark.parametrize(
    "gap",
    [datetime.timedelta(0), -datetime.timedelta(days=1)],
    ids=["ends as it starts", "ends before it starts"],
)
def test_it_rejects_a_membership_that_does_not_end_after_it_starts(nurse_membership, gap):
    assert (
        rule_name(
            lambda: InstitutionMembership.objects.filter(pk=nurse_membership.pk).update(
                valid_until=F("valid_from") + gap
            )
        )
        == "clinical_membership_ends_after_start"
    )


def test_it_accepts_open_memberships_in_other_roles_places_and_closed_ones_alongside(
    nurse_membership, make_institution
):
    user, here = nurse_membership.user, nurse_membership.institution
    now = timezone.now()
    accepted(
        lambda: InstitutionMembership.objects.bulk_create(
            [
                InstitutionMembership(user=user, institution=here, role=MembershipRole.STAFF),
                InstitutionMembership(user=user, institution=make_institution(), role=MembershipRole.NURSE),
                InstitutionMembership(
                    user=user,
                    institution=here,
                    role=MembershipRole.NURSE,
                    valid_from=now - datetime.timedelta(days=9),
                    valid_until=now - datetime.timedelta(days=5),
                ),
            ]
        )
    )


def test_it_rejects_a_second_open_membership_in_the_same_role_and_place(nurse_membership):
    again = InstitutionMembership(
        user=nurse_membership.user, institution=nurse_membership.institution, role=MembershipRole.NURSE
    )
    assert (
        rule_name(lambda: InstitutionMembership.objects.bulk_create([again])) == "clinical_membership_one_open_per_role"
    )


# updated_at ------------------------------------------------------------------------------------


def test_every_table_with_an_updated_at_column_has_a_touch_trigger():
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.table_name
            FROM information_schema.columns c
            JOIN information_schema.tables t USING (table_schema, table_name)
            WHERE c.table_schema = 'public' AND c.column_name = 'updated_at'
              AND t.table_type = 'BASE TABLE'
            ORDER BY 1
            """
        )
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            """
            SELECT rel.relname, tg.tgname, tg.tgfoid::regproc::text, tg.tgtype, tg.tgenabled
            FROM pg_trigger tg
            JOIN pg_class rel ON rel.oid = tg.tgrelid
            JOIN pg_namespace ns ON ns.oid = rel.relnamespace
            WHERE ns.nspname = 'public' AND NOT tg.tgisinternal
            """
        )
        triggers = {(table, name): (function, kind, enabled) for table, name, function, kind, enabled in cursor}
    assert {"accounts_user", "clinical_patient", "clinical_healthprofile", "clinical_phone"} <= set(tables)
    row_before_update = 0b1 | 0b10 | 0b10000  # TRIGGER_TYPE_ROW | _BEFORE | _UPDATE
    missing = [table for table in tables if (table, f"{table}_touch_updated_at") not in triggers]
    assert missing == []
    for table in tables:
        function, kind, enabled = triggers[(table, f"{table}_touch_updated_at")]
        assert function == "caretrail_touch_updated_at", table
        assert kind & row_before_update == row_before_update, table
        assert enabled != "D", table


UPDATED_AT_TARGETS = {
    "patient": (lambda p: Patient.objects.filter(pk=p.pk), {"first_name": "Changed"}),
    "health profile": (lambda p: HealthProfile.objects.filter(patient=p), {"height_cm": Decimal("170")}),
    "user": (lambda p: User.objects.filter(pk=p.doctor.user_id), {"first_name": "Changed"}),
}


@pytest.mark.parametrize("target", UPDATED_AT_TARGETS)
def test_queryset_update_moves_updated_at_forward(patient, target):
    rows, changes = UPDATED_AT_TARGETS[target]
    before = rows(patient).get().updated_at
    rows(patient).update(**changes)
    assert rows(patient).get().updated_at > before


def test_the_trigger_overrides_an_updated_at_written_explicitly(patient):
    before = Patient.objects.get(pk=patient.pk).updated_at
    long_ago = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    Patient.objects.filter(pk=patient.pk).update(first_name="Changed", updated_at=long_ago)
    assert Patient.objects.get(pk=patient.pk).updated_at > before


def test_raw_sql_moves_updated_at_forward(patient):
    before = HealthProfile.objects.get(patient=patient).updated_at
    raw("UPDATE clinical_healthprofile SET is_smoker = false WHERE patient_id = %s", [patient.pk])
    assert HealthProfile.objects.get(patient=patient).updated_at > before
