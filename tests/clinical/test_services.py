import datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection

from clinical import services
from clinical.models import (
    Email,
    HealthProfile,
    InstitutionMembership,
    MembershipRole,
    Patient,
    Phone,
    ValidationStatus,
)

pytestmark = pytest.mark.django_db


def test_patient_register_creates_patient_profile_and_contacts_in_one_go(ref, doctor):
    patient = services.patient_register(
        doctor=doctor,
        first_name="Grace",
        last_name="Hopper",
        date_of_birth=datetime.date(1970, 1, 2),
        sex=ref.female,
        profile={"height_cm": 170, "weight_kg": 65, "blood_type": ref.blood_type},
        portal_email="Grace@Example.org",
        portal_password="a long enough password",
        emails=[{"address": "grace@example.org", "email_type": ref.email_type, "is_primary": True}],
        phones=[{"number": "+1 (415) 555-0123", "phone_type": ref.phone_type, "is_primary": True}],
    )
    assert patient.institution == doctor.institution
    assert patient.mrn == "00000001"
    assert patient.validation_status == ValidationStatus.PENDING
    assert HealthProfile.objects.get(patient=patient).blood_type == ref.blood_type
    assert Phone.objects.get(patient=patient).number == "+14155550123"
    assert patient.user.check_password("a long enough password")


def test_patient_register_allocates_consecutive_mrns_per_institution(make_patient):
    assert [make_patient().mrn for _ in range(3)] == ["00000001", "00000002", "00000003"]


def test_a_failure_midway_through_patient_register_leaves_nothing_written(ref, doctor):
    users_before = get_user_model().objects.count()
    with pytest.raises(ValidationError) as caught:
        services.patient_register(
            doctor=doctor,
            first_name="Ann",
            last_name="Smith",
            date_of_birth=datetime.date(1990, 1, 1),
            sex=ref.female,
            portal_email="ann@example.org",
            emails=[{"address": "ann@example.org", "email_type": ref.email_type}],
            # the phone comes last and is invalid: everything before it must vanish
            phones=[{"number": "+0 12", "phone_type": ref.phone_type}],
        )
    assert "number" in caught.value.message_dict
    assert Patient.objects.count() == 0
    assert HealthProfile.objects.count() == 0
    assert Email.objects.count() == 0
    assert get_user_model().objects.count() == users_before


def test_patient_register_refuses_a_future_date_of_birth(ref, doctor):
    with pytest.raises(ValidationError) as caught:
        services.patient_register(
            doctor=doctor,
            first_name="Ann",
            last_name="Smith",
            date_of_birth=datetime.date.today() + datetime.timedelta(days=1),
            sex=ref.female,
        )
    assert "date_of_birth" in caught.value.message_dict


def test_patient_register_refuses_an_invalid_profile_without_writing_the_patient(ref, doctor):
    with pytest.raises(ValidationError) as caught:
        services.patient_register(
            doctor=doctor,
            first_name="Ann",
            last_name="Smith",
            date_of_birth=datetime.date(1990, 1, 1),
            sex=ref.female,
            profile={"height_cm": 300},
        )
    assert "height_cm" in caught.value.message_dict
    assert not Patient.objects.exists()


def test_patient_validate_records_who_and_when(patient, superuser):
    validated = services.patient_validate(patient=patient, actor=superuser)
    assert validated.validation_status == ValidationStatus.VALIDATED
    assert validated.reviewed_by == superuser
    assert validated.reviewed_at is not None


def test_patient_reject_needs_a_reason_and_stores_it_encrypted(patient, superuser):
    with pytest.raises(ValidationError):
        services.patient_reject(patient=patient, actor=superuser, reason="  ")
    rejected = services.patient_reject(patient=patient, actor=superuser, reason="Duplicate of another record")
    assert Patient.objects.get(pk=rejected.pk).rejection_reason == "Duplicate of another record"
    with connection.cursor() as cursor:
        cursor.execute("SELECT rejection_reason FROM clinical_patient WHERE id = %s", [patient.pk])
        assert "Duplicate" not in cursor.fetchone()[0]


def test_validating_a_rejected_patient_clears_the_reason(patient, superuser):
    services.patient_reject(patient=patient, actor=superuser, reason="Wrong date of birth")
    validated = services.patient_validate(patient=patient, actor=superuser)
    assert Patient.objects.get(pk=validated.pk).rejection_reason is None


def test_patient_transfer_moves_doctor_and_institution_together(patient, make_institution, make_doctor):
    other = make_institution()
    new_doctor = make_doctor(institution=other)
    moved = services.patient_transfer(patient=patient, doctor=new_doctor)
    moved.refresh_from_db()
    assert (moved.doctor, moved.institution) == (new_doctor, other)
    assert moved.mrn == "00000001"  # first MRN at the new institution


def test_patient_transfer_within_an_institution_keeps_the_mrn(patient, make_doctor):
    colleague = make_doctor()
    moved = services.patient_transfer(patient=patient, doctor=colleague)
    assert moved.mrn == patient.mrn
    assert moved.doctor == colleague


def test_doctor_register_creates_user_membership_and_doctor(ref, institution):
    doctor = services.doctor_register(
        email="house@example.org",
        first_name="Greg",
        last_name="House",
        institution=institution,
        specialty=ref.specialty,
        license_number="NJ-123",
    )
    assert doctor.user.is_staff
    assert (
        InstitutionMembership.objects.active()
        .filter(user=doctor.user, institution=institution, role=MembershipRole.DOCTOR)
        .exists()
    )


def test_doctor_register_with_a_taken_licence_leaves_no_user_behind(ref, institution, doctor):
    with pytest.raises(ValidationError) as caught:
        services.doctor_register(
            email="other@example.org",
            first_name="Other",
            last_name="Doctor",
            institution=institution,
            specialty=ref.specialty,
            license_number=doctor.license_number,
        )
    assert "license_number" in caught.value.message_dict
    assert not get_user_model().objects.filter(email="other@example.org").exists()


def test_doctor_register_refuses_a_taken_email_case_insensitively(ref, institution, doctor):
    with pytest.raises(ValidationError) as caught:
        services.doctor_register(
            email=doctor.user.email.upper(),
            first_name="X",
            last_name="Y",
            institution=institution,
            specialty=ref.specialty,
            license_number="NEW-1",
        )
    assert "email" in caught.value.message_dict


def test_institution_create_validates_the_time_zone(ref):
    with pytest.raises(ValidationError) as caught:
        services.institution_create(
            name="X",
            code="x",
            institution_type=ref.institution_type,
            country=ref.country,
            time_zone="Mars/Base",
        )
    assert "time_zone" in caught.value.message_dict


def test_membership_start_refuses_a_second_open_membership_in_the_same_role(make_user, institution):
    user = make_user()
    services.membership_start(user=user, institution=institution, role=MembershipRole.NURSE)
    with pytest.raises(ValidationError):
        services.membership_start(user=user, institution=institution, role=MembershipRole.NURSE)


def test_membership_end_closes_the_membership(make_user, institution):
    membership = services.membership_start(user=make_user(), institution=institution, role=MembershipRole.NURSE)
    ended = services.membership_end(membership=membership)
    assert not ended.is_active
    assert not InstitutionMembership.objects.active().filter(pk=membership.pk).exists()


def test_membership_end_refuses_to_end_a_doctors_primary_institution(doctor):
    membership = InstitutionMembership.objects.get(user=doctor.user, institution=doctor.institution)
    with pytest.raises(ValidationError) as caught:
        services.membership_end(membership=membership)
    assert "valid_until" in caught.value.message_dict
    membership.refresh_from_db()
    assert membership.valid_until is None


def test_membership_end_ends_the_users_sessions_and_tokens_at_once(make_user, institution):
    from accounts.services import api_token_create

    user = make_user()
    membership = services.membership_start(user=user, institution=institution, role=MembershipRole.NURSE)
    token, _ = api_token_create(user=user)
    stamp = user.security_stamp
    services.membership_end(membership=membership)
    user.refresh_from_db()
    token.refresh_from_db()
    assert user.security_stamp != stamp
    assert token.revoked_at is not None
