"""The access policy (clinical.access) and the services that change who sees whom.

Each answer is read for a freshly loaded user, as the next request would: Django
caches a user's permissions on the instance, and a role removed in the database
must count at once.
"""

import datetime

import pytest
from auditlog.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clinical import access, services
from clinical.models import (
    BreakGlassReview,
    InstitutionMembership,
    MedicalInstitution,
    MembershipRole,
    PatientUserObjectPermission,
    ReviewOutcome,
)
from tests.db import raw, rule_name

pytestmark = pytest.mark.django_db

User = get_user_model()


# Helpers -----------------------------------------------------------------------------


def fresh(user):
    """The user as the next request loads them (no cached permissions)."""
    return User.objects.get(pk=user.pk)


def visible(user):
    return set(access.patients_visible_to(fresh(user)).values_list("pk", flat=True))


def changeable(user):
    return set(access.patients_changeable_by(fresh(user)).values_list("pk", flat=True))


def ids(*patients):
    return {p.pk for p in patients}


def give_role(user, role):
    user.groups.add(Group.objects.get(name=role))
    return user


def grant(patient, user, kind="view", granted_by=None, **fields):
    fields.setdefault("reason", "Covers the night shift")
    return services.grant_create(patient=patient, user=user, kind=kind, granted_by=granted_by, **fields)


def move_into_the_past(grant_row):
    """Make an existing grant one that expired an hour ago (created the day before)."""
    now = timezone.now()
    PatientUserObjectPermission.objects.filter(pk=grant_row.pk).update(
        created_at=now - datetime.timedelta(days=1), expires_at=now - datetime.timedelta(hours=1)
    )


@pytest.fixture
def other_institution(make_institution):
    return make_institution()


@pytest.fixture
def doctor_with_role(roles, doctor):
    """The primary doctor of ``patient``, holding the Doctor role (doctor_register gives no role)."""
    give_role(doctor.user, "Doctor")
    return doctor


@pytest.fixture
def other_doctor(roles, make_doctor, other_institution):
    """A doctor with the Doctor role at another institution."""
    other = make_doctor(institution=other_institution)
    give_role(other.user, "Doctor")
    return other


@pytest.fixture
def elsewhere_patient(make_patient, other_doctor):
    return make_patient(doctor=other_doctor)


@pytest.fixture
def outsider_nurse(make_staff, other_institution):
    """A nurse who works only at the other institution: ``patient`` is out of her reach."""
    return make_staff("Nurse", other_institution)


# Who sees whom ---------------------------------------------------------------------------


def test_a_superuser_sees_and_may_change_every_patient(superuser, patient, elsewhere_patient):
    assert visible(superuser) == ids(patient, elsewhere_patient)
    assert changeable(superuser) == ids(patient, elsewhere_patient)


def test_an_anonymous_user_sees_no_patient(patient):
    assert not access.patients_visible_to(AnonymousUser()).exists()
    assert not access.patients_changeable_by(AnonymousUser()).exists()
    assert not access.can_view_patient(AnonymousUser(), patient)


def test_an_inactive_user_sees_no_patient_even_their_own_doctors(doctor_with_role, patient):
    assert visible(doctor_with_role.user) == ids(patient)
    User.objects.filter(pk=doctor_with_role.user.pk).update(is_active=False)
    assert visible(doctor_with_role.user) == set()
    assert changeable(doctor_with_role.user) == set()


def test_an_inactive_superuser_sees_no_patient(superuser, patient):
    User.objects.filter(pk=superuser.pk).update(is_active=False)
    assert visible(superuser) == set()


def test_a_patients_portal_user_sees_only_their_own_record(make_patient):
    own = make_patient(portal_email="grace@example.org", portal_password="a long enough password")
    make_patient(portal_email="alan@example.org", portal_password="a long enough password")
    make_patient()
    assert visible(own.user) == ids(own)


def test_a_patients_portal_user_cannot_change_their_own_record(make_patient):
    own = make_patient(portal_email="grace@example.org", portal_password="a long enough password")
    assert changeable(own.user) == set()
    assert access.can_view_patient(fresh(own.user), own)
    assert not access.can_change_patient(fresh(own.user), own)


def test_a_doctor_sees_and_changes_their_own_patients(doctor_with_role, patient):
    assert visible(doctor_with_role.user) == ids(patient)
    assert changeable(doctor_with_role.user) == ids(patient)


def test_a_doctor_sees_the_patients_of_colleagues_at_their_membership_institutions(
    doctor_with_role, make_doctor, make_patient, other_institution, other_doctor, make_institution
):
    colleague = make_doctor()  # same institution as doctor_with_role
    colleagues_patient = make_patient(doctor=colleague)
    services.membership_start(user=doctor_with_role.user, institution=other_institution, role=MembershipRole.DOCTOR)
    at_second_institution = make_patient(doctor=other_doctor)
    third = make_institution()
    elsewhere = make_patient(doctor=make_doctor(institution=third))
    seen = visible(doctor_with_role.user)
    assert ids(colleagues_patient, at_second_institution) <= seen
    assert elsewhere.pk not in seen


def test_a_doctor_does_not_see_patients_of_institutions_where_they_have_no_membership(
    doctor_with_role, patient, elsewhere_patient
):
    assert elsewhere_patient.pk not in visible(doctor_with_role.user)
    assert not access.can_view_patient(fresh(doctor_with_role.user), elsewhere_patient)


def test_a_nurse_sees_and_changes_the_patients_of_her_institution(
    make_staff, institution, make_doctor, make_patient, elsewhere_patient
):
    nurse = make_staff("Nurse", institution)
    first = make_patient()
    second = make_patient(doctor=make_doctor())
    assert visible(nurse) == ids(first, second)
    assert changeable(nurse) == ids(first, second)


def test_a_front_desk_membership_reveals_no_patient(make_staff, institution, patient):
    clerk = make_staff("Nurse", institution, membership_role=MembershipRole.STAFF)
    assert visible(clerk) == set()


def test_a_doctor_role_without_membership_and_without_patients_sees_nothing(make_staff, patient, elsewhere_patient):
    assert visible(make_staff("Doctor")) == set()


def test_model_permissions_alone_reveal_no_patient(make_user, patient, elsewhere_patient):
    staff = make_user(is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label="clinical"))
    assert fresh(staff).has_perm("clinical.view_patient")
    assert fresh(staff).has_perm("clinical.change_patient")
    assert visible(staff) == set()
    assert changeable(staff) == set()


def test_removing_the_role_removes_primary_and_institution_access_at_once(doctor_with_role, patient, make_doctor):
    colleagues_patient = services.patient_register(
        doctor=make_doctor(),
        first_name="Alan",
        last_name="Turing",
        date_of_birth=datetime.date(1960, 6, 23),
        sex=patient.sex,
    )
    user = doctor_with_role.user
    assert visible(user) == ids(patient, colleagues_patient)
    user.groups.remove(Group.objects.get(name="Doctor"))
    assert InstitutionMembership.objects.active().filter(user=user, institution=doctor_with_role.institution).exists()
    assert visible(user) == set()
    assert changeable(user) == set()


@pytest.mark.parametrize("role", ["CMS Admin", "CMS Editor"])
def test_cms_roles_see_no_patient_even_with_a_clinical_membership(role, make_staff, institution, patient):
    user = make_staff(role, institution, membership_role=MembershipRole.NURSE)
    assert visible(user) == set()
    assert changeable(user) == set()


@pytest.mark.parametrize("role", ["CMS Admin", "CMS Editor"])
def test_cms_roles_see_a_patient_they_hold_an_active_grant_on(role, make_staff, superuser, patient, make_patient):
    user = make_staff(role)
    make_patient()
    grant(patient, user, granted_by=superuser)
    assert visible(user) == ids(patient)
    assert changeable(user) == set()


# Grants ----------------------------------------------------------------------------------


def test_an_active_view_grant_gives_view_but_not_change(outsider_nurse, superuser, patient):
    grant(patient, outsider_nurse, "view", superuser, expires_at=timezone.now() + datetime.timedelta(days=1))
    assert patient.pk in visible(outsider_nurse)
    assert patient.pk not in changeable(outsider_nurse)


def test_a_change_grant_gives_view_and_change(outsider_nurse, superuser, patient):
    grant(patient, outsider_nurse, "change", superuser)
    assert patient.pk in visible(outsider_nurse)
    assert patient.pk in changeable(outsider_nurse)


def test_a_grant_counts_whatever_the_holders_role(make_user, superuser, patient):
    nobody = make_user()
    grant(patient, nobody, "change", superuser)
    assert visible(nobody) == ids(patient)
    assert changeable(nobody) == ids(patient)


def test_an_expired_grant_does_not_count_and_stays_as_history(outsider_nurse, superuser, patient):
    row = grant(patient, outsider_nurse, "change", superuser, expires_at=timezone.now() + datetime.timedelta(days=1))
    move_into_the_past(row)
    assert patient.pk not in visible(outsider_nurse)
    assert patient.pk not in changeable(outsider_nurse)
    kept = PatientUserObjectPermission.objects.get(pk=row.pk)
    assert kept.revoked_at is None
    assert not kept.is_active


def test_a_revoked_grant_does_not_count_and_stays_as_history(outsider_nurse, superuser, patient):
    row = grant(patient, outsider_nurse, "change", superuser)
    services.grant_revoke(grant=row, revoked_by=superuser)
    assert patient.pk not in visible(outsider_nurse)
    assert patient.pk not in changeable(outsider_nurse)
    kept = PatientUserObjectPermission.objects.get(pk=row.pk)
    assert kept.revoked_at is not None
    assert kept.revoked_by == superuser
    assert kept.reason == "Covers the night shift"


def test_deleting_a_user_who_held_a_grant_is_refused_and_the_grant_stays(make_user, superuser, patient):
    holder = make_user(email="locum@example.org")  # no membership or anything else that protects the user
    row = grant(patient, holder, "view", superuser)
    services.grant_revoke(grant=row, revoked_by=superuser)
    with pytest.raises(ProtectedError) as refused:
        fresh(holder).delete()
    assert row in refused.value.protected_objects
    assert PatientUserObjectPermission.objects.filter(pk=row.pk, user=holder).exists()


def test_revoking_a_grant_twice_keeps_the_first_revocation(outsider_nurse, superuser, patient, make_user):
    row = grant(patient, outsider_nurse, "view", superuser)
    first = services.grant_revoke(grant=row, revoked_by=superuser).revoked_at
    services.grant_revoke(grant=PatientUserObjectPermission.objects.get(pk=row.pk), revoked_by=make_user())
    kept = PatientUserObjectPermission.objects.get(pk=row.pk)
    assert (kept.revoked_at, kept.revoked_by) == (first, superuser)


def test_grant_create_supersedes_the_open_grant_of_the_same_kind(outsider_nurse, superuser, patient):
    old = grant(patient, outsider_nurse, "view", superuser, reason="First shift")
    new = grant(patient, outsider_nurse, "view", superuser, reason="Second shift")
    old.refresh_from_db()
    assert old.revoked_at is not None
    assert old.revoked_by == superuser
    assert new.revoked_at is None
    open_grants = PatientUserObjectPermission.objects.filter(
        user=outsider_nurse, content_object=patient, revoked_at__isnull=True
    )
    assert list(open_grants) == [new]
    assert patient.pk in visible(outsider_nurse)


def test_grant_create_keeps_the_open_grant_of_the_other_kind(outsider_nurse, superuser, patient):
    view = grant(patient, outsider_nurse, "view", superuser)
    grant(patient, outsider_nurse, "change", superuser)
    view.refresh_from_db()
    assert view.revoked_at is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"reason": "   "}, "reason"),
        ({"reason": ""}, "reason"),
        ({"expires_at": "past"}, "expires_at"),
        ({"kind": "delete"}, "permission"),
        ({"inactive": True}, "user"),
    ],
    ids=["blank reason", "empty reason", "past expiry", "unknown kind", "inactive user"],
)
def test_grant_create_refuses_invalid_input_naming_the_field(change, field, outsider_nurse, superuser, patient):
    arguments = {"patient": patient, "user": outsider_nurse, "kind": "view", "granted_by": superuser, "reason": "Cover"}
    change = dict(change)
    if change.pop("inactive", False):
        outsider_nurse.is_active = False
        outsider_nurse.save()
    if change.get("expires_at") == "past":
        change["expires_at"] = timezone.now() - datetime.timedelta(minutes=1)
    arguments.update(change)
    with pytest.raises(ValidationError) as caught:
        services.grant_create(**arguments)
    assert field in caught.value.message_dict
    assert not PatientUserObjectPermission.objects.exists()


# Break-the-glass -----------------------------------------------------------------------------


def test_break_glass_open_is_refused_without_the_break_glass_permission(make_staff, patient):
    editor = make_staff("CMS Editor")
    with pytest.raises(PermissionDenied):
        services.break_glass_open(user=fresh(editor), patient=patient, reason="Unconscious in the emergency room")
    assert not PatientUserObjectPermission.objects.exists()
    assert not BreakGlassReview.objects.exists()
    assert patient.pk not in visible(editor)


@pytest.mark.parametrize("reason", ["", "   "])
def test_break_glass_open_needs_a_reason(reason, outsider_nurse, patient):
    with pytest.raises(ValidationError) as caught:
        services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason=reason)
    assert "reason" in caught.value.message_dict
    assert not PatientUserObjectPermission.objects.exists()


def test_break_glass_open_creates_a_flagged_view_grant_for_four_hours(outsider_nurse, patient):
    row = services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    row.refresh_from_db()
    assert row.is_break_glass
    assert row.permission.codename == "view_patient"
    assert row.expires_at - row.created_at == datetime.timedelta(hours=4)
    assert row.reason == "Unconscious in the ER"
    assert row.granted_by == outsider_nurse
    assert visible(outsider_nurse) == ids(patient)
    assert changeable(outsider_nurse) == set()


def test_break_glass_open_queues_one_review_at_the_patients_institution(outsider_nurse, patient, other_institution):
    row = services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    review = BreakGlassReview.objects.get()
    assert review.grant == row
    assert review.institution == patient.institution
    assert review.institution != other_institution  # not the nurse's own institution
    assert review.outcome == ReviewOutcome.PENDING


def test_break_glass_open_writes_one_access_entry_flagged_as_emergency(outsider_nurse, patient):
    before = set(LogEntry.objects.filter(action=LogEntry.Action.ACCESS).values_list("pk", flat=True))
    services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    entries = LogEntry.objects.filter(action=LogEntry.Action.ACCESS).exclude(pk__in=before)
    assert entries.count() == 1
    entry = entries.get()
    assert entry.object_pk == str(patient.pk)
    assert entry.actor_id == outsider_nurse.pk
    assert entry.additional_data["break_glass"] is True
    assert entry.additional_data["purpose_of_use"] == "ETREAT"


def test_break_glass_access_is_flagged_when_the_break_glass_grant_is_the_only_route(outsider_nurse, patient):
    assert not access.is_break_glass_access(fresh(outsider_nurse), patient)
    services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    assert access.is_break_glass_access(fresh(outsider_nurse), patient)


def test_break_glass_access_is_not_flagged_when_a_membership_later_reaches_the_patient(
    outsider_nurse, institution, patient
):
    services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    services.membership_start(user=outsider_nurse, institution=institution, role="nurse")
    assert not access.is_break_glass_access(fresh(outsider_nurse), patient)


def test_break_glass_access_is_not_flagged_when_a_change_grant_later_reaches_the_patient(
    outsider_nurse, superuser, patient
):
    services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    grant(patient, outsider_nurse, "change", superuser)
    assert not access.is_break_glass_access(fresh(outsider_nurse), patient)


def test_break_glass_only_names_just_the_patients_no_other_route_reaches(
    outsider_nurse, superuser, patient, make_patient, other_doctor
):
    colleague_patient = make_patient(doctor=other_doctor)  # at the nurse's own institution
    granted = make_patient()
    grant(granted, outsider_nurse, "view", superuser)
    services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    nurse = fresh(outsider_nurse)
    shown = [patient.pk, colleague_patient.pk, granted.pk]
    assert access.break_glass_only(nurse, shown) == {patient.pk}
    assert access.break_glass_only(fresh(superuser), shown) == set()


def test_break_glass_only_asks_nothing_when_no_patient_is_under_a_break_glass_grant(
    outsider_nurse, superuser, make_patient, other_doctor
):
    colleague_patient = make_patient(doctor=other_doctor)
    nurse = fresh(outsider_nurse)
    scope = access.scope_of(nurse, access.VIEW)
    with CaptureQueriesContext(connection) as captured:
        assert access.break_glass_only(nurse, [colleague_patient.pk], scope) == set()
    assert captured.captured_queries == []


@pytest.mark.parametrize("route", ["membership", "care-team grant"])
def test_break_glass_is_refused_to_someone_who_can_already_see_the_patient(
    route, outsider_nurse, superuser, institution, patient
):
    if route == "membership":
        services.membership_start(user=outsider_nurse, institution=institution, role="nurse")
    else:
        grant(patient, outsider_nurse, "view", superuser)
    with pytest.raises(ValidationError) as caught:
        services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    assert "patient" in caught.value.message_dict
    assert not BreakGlassReview.objects.exists()


def test_break_glass_access_is_not_flagged_once_the_grant_expired(outsider_nurse, patient):
    row = services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    move_into_the_past(row)
    assert not access.is_break_glass_access(fresh(outsider_nurse), patient)
    assert patient.pk not in visible(outsider_nurse)


def test_break_glass_access_is_never_flagged_for_a_superuser(superuser, patient):
    with pytest.raises(ValidationError):
        services.break_glass_open(user=superuser, patient=patient, reason="Unconscious in the ER")
    assert not access.is_break_glass_access(fresh(superuser), patient)


def test_break_glass_review_records_the_reviewer_and_the_time(outsider_nurse, patient, make_staff, institution):
    services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    admin = make_staff("Institution Admin", institution)
    before = timezone.now()
    review = services.break_glass_review(
        review=BreakGlassReview.objects.get(), reviewer=admin, outcome=ReviewOutcome.APPROPRIATE, notes="Seen"
    )
    review.refresh_from_db()
    assert review.outcome == ReviewOutcome.APPROPRIATE
    assert review.reviewed_by == admin
    assert before <= review.reviewed_at <= timezone.now()
    assert review.notes == "Seen"


@pytest.mark.parametrize("outcome", ["pending", "maybe", ""])
def test_break_glass_review_refuses_an_unknown_outcome(outcome, outsider_nurse, patient, superuser):
    services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    with pytest.raises(ValidationError) as caught:
        services.break_glass_review(review=BreakGlassReview.objects.get(), reviewer=superuser, outcome=outcome)
    assert "outcome" in caught.value.message_dict
    review = BreakGlassReview.objects.get()
    assert (review.outcome, review.reviewed_by, review.reviewed_at) == (ReviewOutcome.PENDING, None, None)


# Memberships and transfers -------------------------------------------------------------------


def test_ending_a_membership_removes_access_at_once(make_staff, institution, patient):
    nurse = make_staff("Nurse", institution)
    assert visible(nurse) == ids(patient)
    services.membership_end(membership=InstitutionMembership.objects.get(user=nurse))
    assert visible(nurse) == set()
    assert changeable(nurse) == set()


def test_a_membership_that_has_not_started_yet_reveals_nothing(make_staff, institution, patient):
    nurse = make_staff("Nurse")
    services.membership_start(
        user=nurse,
        institution=institution,
        role=MembershipRole.NURSE,
        valid_from=timezone.now() + datetime.timedelta(days=1),
    )
    assert visible(nurse) == set()


def test_after_a_transfer_the_old_doctor_loses_access_and_the_new_doctor_gains_it(
    doctor_with_role, other_doctor, patient
):
    assert patient.pk in changeable(doctor_with_role.user)
    assert patient.pk not in visible(other_doctor.user)
    services.patient_transfer(patient=patient, doctor=other_doctor)
    assert patient.pk not in visible(doctor_with_role.user)
    assert patient.pk not in changeable(doctor_with_role.user)
    assert patient.pk in visible(other_doctor.user)
    assert patient.pk in changeable(other_doctor.user)


def test_after_a_transfer_the_old_institutions_nurse_loses_access(make_staff, institution, other_doctor, patient):
    nurse = make_staff("Nurse", institution)
    services.patient_transfer(patient=patient, doctor=other_doctor)
    assert visible(nurse) == set()


def test_institutions_administered_by_lists_the_active_admin_memberships_only(make_staff, make_institution):
    first, second, third = make_institution(), make_institution(), make_institution()
    admin = make_staff("Institution Admin", first)
    ended = services.membership_start(user=admin, institution=second, role=MembershipRole.INSTITUTION_ADMIN)
    services.membership_end(membership=ended)
    services.membership_start(user=admin, institution=third, role=MembershipRole.NURSE)
    assert list(access.institutions_administered_by(fresh(admin))) == [first]


def test_institutions_administered_by_a_superuser_are_all_of_them(superuser, make_institution):
    make_institution()
    assert set(access.institutions_administered_by(superuser)) == set(MedicalInstitution.objects.all())


def test_institutions_administered_by_nobody_signed_in_or_a_nurse_are_none(make_staff, institution):
    assert not access.institutions_administered_by(AnonymousUser()).exists()
    assert not access.institutions_administered_by(fresh(make_staff("Nurse", institution))).exists()


# patient_update ------------------------------------------------------------------------------


def test_patient_update_changes_the_allowed_fields(patient):
    services.patient_update(patient=patient, first_name="Ada", notes="Prefers mornings", is_active=False)
    patient.refresh_from_db()
    assert (patient.first_name, patient.notes, patient.is_active) == ("Ada", "Prefers mornings", False)


def test_patient_update_refuses_a_future_date_of_birth(patient):
    with pytest.raises(ValidationError) as caught:
        services.patient_update(patient=patient, date_of_birth=timezone.localdate() + datetime.timedelta(days=1))
    assert "date_of_birth" in caught.value.message_dict
    patient.refresh_from_db()
    assert patient.date_of_birth == datetime.date(1980, 5, 17)


def test_patient_update_refuses_unknown_fields_naming_them(patient, other_doctor):
    with pytest.raises(ValidationError) as caught:
        services.patient_update(patient=patient, first_name="Ada", mrn="X-1", doctor=other_doctor)
    assert {"mrn", "doctor"} <= set(caught.value.message_dict)
    patient.refresh_from_db()
    assert patient.first_name == "Grace"


# The grant table's database rules -------------------------------------------------------------


def _row(patient, user, **fields):
    values = {
        "user": user,
        "permission": Permission.objects.get(content_type__app_label="clinical", codename="view_patient"),
        "content_object": patient,
        "reason": "Cover",
        **fields,
    }
    return PatientUserObjectPermission(**values)


def test_the_database_allows_one_open_grant_per_user_permission_and_patient(outsider_nurse, superuser, patient):
    grant(patient, outsider_nurse, "view", superuser)
    write = lambda: PatientUserObjectPermission.objects.bulk_create([_row(patient, outsider_nurse)])  # noqa: E731
    assert rule_name(write) == "clinical_grant_one_open_per_user_permission_patient"


def test_the_database_keeps_revoked_grants_of_the_same_triple_as_history(outsider_nurse, superuser, patient):
    now = timezone.now()
    PatientUserObjectPermission.objects.bulk_create(
        [_row(patient, outsider_nurse, revoked_at=now), _row(patient, outsider_nurse, revoked_at=now)]
    )
    grant(patient, outsider_nurse, "view", superuser)
    assert PatientUserObjectPermission.objects.filter(user=outsider_nurse).count() == 3


def test_the_database_refuses_a_break_glass_grant_without_an_expiry(outsider_nurse, patient):
    write = lambda: PatientUserObjectPermission.objects.bulk_create(  # noqa: E731
        [_row(patient, outsider_nurse, is_break_glass=True, expires_at=None)]
    )
    assert rule_name(write) == "clinical_grant_break_glass_is_time_boxed"


def test_the_database_refuses_a_grant_without_a_reason(outsider_nurse, patient):
    write = lambda: PatientUserObjectPermission.objects.bulk_create([_row(patient, outsider_nurse, reason="")])  # noqa: E731
    assert rule_name(write) == "clinical_grant_has_reason"


def test_the_database_refuses_a_grant_that_expires_before_it_was_created(outsider_nurse, patient):
    now = timezone.now()
    write = lambda: PatientUserObjectPermission.objects.bulk_create(  # noqa: E731
        [_row(patient, outsider_nurse, created_at=now, expires_at=now - datetime.timedelta(seconds=1))]
    )
    assert rule_name(write) == "clinical_grant_expires_after_creation"


def test_the_database_refuses_a_raw_update_that_removes_the_expiry_of_a_break_glass_grant(outsider_nurse, patient):
    row = services.break_glass_open(user=fresh(outsider_nurse), patient=patient, reason="Unconscious in the ER")
    table = PatientUserObjectPermission._meta.db_table
    write = lambda: raw(f"UPDATE {table} SET expires_at = NULL WHERE id = %s", [row.pk])  # noqa: E731
    assert rule_name(write) == "clinical_grant_break_glass_is_time_boxed"


def test_the_database_refuses_a_raw_update_that_empties_the_reason(outsider_nurse, superuser, patient):
    row = grant(patient, outsider_nurse, "view", superuser)
    table = PatientUserObjectPermission._meta.db_table
    write = lambda: raw(f"UPDATE {table} SET reason = '' WHERE id = %s", [row.pk])  # noqa: E731
    assert rule_name(write) == "clinical_grant_has_reason"


def test_the_database_refuses_a_raw_update_that_reopens_a_superseded_grant(outsider_nurse, superuser, patient):
    old = grant(patient, outsider_nurse, "view", superuser)
    grant(patient, outsider_nurse, "view", superuser)
    table = PatientUserObjectPermission._meta.db_table
    write = lambda: raw(f"UPDATE {table} SET revoked_at = NULL WHERE id = %s", [old.pk])  # noqa: E731
    assert rule_name(write) == "clinical_grant_one_open_per_user_permission_patient"


# Query counts --------------------------------------------------------------------------------


def _reach(doctor, how_many, *, make_patient, make_doctor, other_doctor, superuser):
    """Give ``doctor`` ``how_many`` visible patients through every route: own, colleague's, granted."""
    colleague = make_doctor()
    for n in range(how_many):
        if n % 3 == 0:
            make_patient(doctor=doctor)
        elif n % 3 == 1:
            make_patient(doctor=colleague)
        else:
            grant(make_patient(doctor=other_doctor), doctor.user, "view", superuser)


def _queries_for_list(user):
    with CaptureQueriesContext(connection) as captured:
        list(access.patients_visible_to(user))
    return len(captured)


def test_listing_visible_patients_costs_the_same_queries_for_5_and_for_50_patients(
    django_assert_num_queries, doctor_with_role, make_patient, make_doctor, other_doctor, superuser
):
    reach = {
        "make_patient": make_patient,
        "make_doctor": make_doctor,
        "other_doctor": other_doctor,
        "superuser": superuser,
    }
    _reach(doctor_with_role, 5, **reach)
    user = fresh(doctor_with_role.user)
    assert len(access.patients_visible_to(fresh(user))) == 5
    with_five = _queries_for_list(user)
    _reach(doctor_with_role, 45, **reach)
    user = fresh(doctor_with_role.user)
    with django_assert_num_queries(with_five):
        patients = list(access.patients_visible_to(user))
    assert len(patients) == 50
