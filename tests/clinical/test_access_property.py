"""Property test of the access policy: random worlds, every user, three answers and a reference.

Hypothesis draws a small world (institutions, staff with roles, memberships in
every state, doctors and their patients, grants with expiries, revocations,
transfers, break-the-glass openings). The test builds it through the services,
then asks, for every user, which patients they may view and change:

- ``clinical.access`` (the policy),
- the API list (``GET /api/v1/patients/`` with a token, every page),
- the admin change list (staff users, signed in through MFA),

and compares each with ``Reference``: the rules of DESIGN.md ("Access policy")
written out plainly over the plan the world was built from. It knows nothing
of ``clinical.access``, and nothing about times either: each membership and
grant is simply "in force" or not by the way it was made.

Each example runs in a savepoint that is rolled back, so worlds never pile up.
"""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from accounts.services import api_token_create
from clinical import access, services
from clinical.models import Doctor, MembershipRole, Patient, PatientUserObjectPermission
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

User = get_user_model()
_serial = itertools.count(1)

# The plain rules ---------------------------------------------------------------------------

STAFF_ROLES = ["Doctor", "Nurse", "Institution Admin", "CMS Editor", None]
# Which roles carry the model permission to view / change patients (cms/roles.py, by hand).
ROLES_THAT_MAY = {
    "view": {"Doctor", "Nurse", "Institution Admin"},
    "change": {"Doctor", "Nurse", "Institution Admin"},
}
ROLES_THAT_MAY_BREAK_GLASS = {"Doctor", "Nurse"}
# Membership roles that open an institution's patients to a clinical role.
CLINICAL_MEMBERSHIPS = {MembershipRole.DOCTOR, MembershipRole.NURSE, MembershipRole.INSTITUTION_ADMIN}
MEMBERSHIP_ROLES = [MembershipRole.DOCTOR, MembershipRole.NURSE, MembershipRole.INSTITUTION_ADMIN, MembershipRole.STAFF]
# How a membership was made, and whether it is in force now.
MEMBERSHIP_STATES = {"open": True, "ends_later": True, "ended": False, "past": False, "not_started": False}
EXPIRIES = [None, "future", "past"]


class _Rollback(Exception):
    """Raised at the end of each example to undo its world."""


# The plan Hypothesis draws ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    institutions: int
    doctors: list[tuple[int, bool]]  # (institution, holds the Doctor role)
    staff: list[str | None]  # role of each staff user
    memberships: list[tuple[int, int, str, str]]  # (user among staff + doctors, institution, role, state)
    patients: list[tuple[int, bool]]  # (doctor, has a portal user)
    operations: list[tuple]
    superuser: bool
    deactivate_users: list[int]
    retire_doctors: list[int]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    institutions = draw(st.integers(1, 3))
    institution = st.integers(0, institutions - 1)
    doctors = draw(st.lists(st.tuples(institution, st.booleans()), min_size=1, max_size=3))
    staff = draw(st.lists(st.sampled_from(STAFF_ROLES), min_size=1, max_size=4))
    members = len(staff) + len(doctors)
    memberships = draw(
        st.lists(
            st.tuples(
                st.integers(0, members - 1),
                institution,
                st.sampled_from(MEMBERSHIP_ROLES),
                st.sampled_from(list(MEMBERSHIP_STATES)),
            ),
            max_size=5,
        )
    )
    patients = draw(st.lists(st.tuples(st.integers(0, len(doctors) - 1), st.booleans()), min_size=1, max_size=6))
    patient = st.integers(0, len(patients) - 1)
    anyone = st.integers(0, 15)  # a user, taken modulo the number of users in the world
    operation = st.one_of(
        st.tuples(st.just("grant"), anyone, patient, st.sampled_from(["view", "change"]), st.sampled_from(EXPIRIES)),
        st.tuples(st.just("revoke"), st.integers(0, 15)),
        st.tuples(st.just("transfer"), patient, st.integers(0, len(doctors) - 1)),
        st.tuples(st.just("break_glass"), anyone, patient, st.booleans()),
    )
    return Plan(
        institutions=institutions,
        doctors=doctors,
        staff=staff,
        memberships=memberships,
        patients=patients,
        operations=draw(st.lists(operation, max_size=8)),
        superuser=draw(st.booleans()),
        deactivate_users=draw(st.lists(anyone, max_size=1)),
        retire_doctors=draw(st.lists(st.integers(0, len(doctors) - 1), max_size=1)),
    )


# The world as the reference sees it -------------------------------------------------------


@dataclass
class Person:
    user: object
    roles: set[str] = field(default_factory=set)
    active: bool = True
    superuser: bool = False


@dataclass
class Membership:
    user: int
    institution: int
    role: str
    in_force: bool


@dataclass
class DoctorRow:
    pk: int
    user: int
    institution: int
    active: bool = True


@dataclass
class PatientRow:
    pk: int
    uuid: str
    doctor: int  # index into doctors
    institution: int
    portal_user: int | None


@dataclass
class Grant:
    pk: int
    user: int
    patient: int  # patient pk
    kind: str
    expired: bool = False
    revoked: bool = False
    break_glass: bool = False


@dataclass
class Reference:
    """The access rules of DESIGN.md over plain Python records of the world."""

    people: dict[int, Person] = field(default_factory=dict)
    memberships: list[Membership] = field(default_factory=list)
    doctors: list[DoctorRow] = field(default_factory=list)
    patients: list[PatientRow] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)

    def patients_for(self, user_pk: int, kind: str) -> set[int]:
        person = self.people[user_pk]
        if not person.active:
            return set()
        if person.superuser:
            return {p.pk for p in self.patients}
        reached = set()
        if person.roles & ROLES_THAT_MAY[kind]:
            own_doctors = {i for i, d in enumerate(self.doctors) if d.user == user_pk and d.active}
            institutions = {
                m.institution
                for m in self.memberships
                if m.user == user_pk and m.in_force and m.role in CLINICAL_MEMBERSHIPS
            }
            reached |= {p.pk for p in self.patients if p.doctor in own_doctors or p.institution in institutions}
        if kind == "view":
            reached |= {p.pk for p in self.patients if p.portal_user == user_pk}
        kinds = {"view", "change"} if kind == "view" else {"change"}
        reached |= {
            g.patient for g in self.grants if g.user == user_pk and g.kind in kinds and not g.revoked and not g.expired
        }
        return reached

    def may_break_glass(self, user_pk: int) -> bool:
        person = self.people[user_pk]
        return person.active and (person.superuser or bool(person.roles & ROLES_THAT_MAY_BREAK_GLASS))

    def open_grant(self, user_pk: int, patient_pk: int, kind: str, pk: int, *, break_glass: bool = False) -> Grant:
        for old in self.grants:  # one open grant per user, kind and patient: the new one supersedes
            if (old.user, old.patient, old.kind) == (user_pk, patient_pk, kind):
                old.revoked = True
        grant = Grant(pk=pk, user=user_pk, patient=patient_pk, kind=kind, break_glass=break_glass)
        self.grants.append(grant)
        return grant


# Building the world through the services ----------------------------------------------------


def _email(kind: str) -> str:
    return f"{kind}{next(_serial)}@world.example.org"


def _expire(row: PatientUserObjectPermission) -> None:
    """Move a grant into the past: made yesterday, expired an hour ago."""
    now = timezone.now()
    PatientUserObjectPermission.objects.filter(pk=row.pk).update(
        created_at=now - datetime.timedelta(days=1), expires_at=now - datetime.timedelta(hours=1)
    )


def build(plan: Plan, ref_rows) -> Reference:
    world = Reference()
    now = timezone.now()
    day = datetime.timedelta(days=1)
    institutions = []
    for _ in range(plan.institutions):
        n = next(_serial)
        institutions.append(
            services.institution_create(
                name=f"World clinic {n}",
                code=f"world-{n}",
                institution_type=ref_rows.institution_type,
                country=ref_rows.country,
            )
        )
    groups = {group.name: group for group in Group.objects.all()}

    staff_users = []
    for role in plan.staff:
        user = User.objects.create_user(email=_email("staff"), password=PASSWORD, is_staff=True)
        if role:
            user.groups.add(groups[role])
        world.people[user.pk] = Person(user, roles={role} if role else set())
        staff_users.append(user)

    doctor_users = []
    for institution_index, has_role in plan.doctors:
        institution = institutions[institution_index]
        doctor = services.doctor_register(
            email=_email("doctor"),
            password=PASSWORD,
            first_name="Ada",
            last_name="Doctor",
            institution=institution,
            specialty=ref_rows.specialty,
            license_number=f"W-{next(_serial):06d}",
        )
        if has_role:
            doctor.user.groups.add(groups["Doctor"])
        world.people[doctor.user.pk] = Person(doctor.user, roles={"Doctor"} if has_role else set())
        # doctor_register opens a doctor membership at the primary institution.
        world.memberships.append(Membership(doctor.user.pk, institution.pk, MembershipRole.DOCTOR, True))
        world.doctors.append(DoctorRow(doctor.pk, doctor.user.pk, institution.pk))
        doctor_users.append(doctor.user)

    members = staff_users + doctor_users
    for user_index, institution_index, role, state in plan.memberships:
        user, institution = members[user_index], institutions[institution_index]
        dates = {
            "open": {},
            "ended": {},
            "ends_later": {"valid_until": now + day},
            "past": {"valid_from": now - 10 * day, "valid_until": now - 5 * day},
            "not_started": {"valid_from": now + day},
        }[state]
        try:
            membership = services.membership_start(user=user, institution=institution, role=role, **dates)
        except ValidationError:
            continue  # an open membership in this role is already there: nothing changes
        in_force = MEMBERSHIP_STATES[state]
        if state == "ended":
            try:
                services.membership_end(membership=membership)
            except ValidationError:
                in_force = True  # refused (a doctor's primary institution): still in force
        world.memberships.append(Membership(user.pk, institution.pk, role, in_force))

    for doctor_index, portal in plan.patients:
        doctor = Doctor.objects.get(pk=world.doctors[doctor_index].pk)
        patient = services.patient_register(
            doctor=doctor,
            first_name="Grace",
            last_name=f"Patient{next(_serial)}",
            date_of_birth=datetime.date(1980, 5, 17),
            sex=ref_rows.female,
            portal_email=_email("patient") if portal else None,
            portal_password=PASSWORD if portal else None,
        )
        if portal:
            world.people[patient.user_id] = Person(patient.user)
        world.patients.append(
            PatientRow(patient.pk, str(patient.uuid), doctor_index, doctor.institution_id, patient.user_id)
        )

    if plan.superuser:
        root = User.objects.create_superuser(_email("root"), PASSWORD)
        world.people[root.pk] = Person(root, superuser=True)

    users = list(world.people)
    for operation in plan.operations:
        name = operation[0]
        if name == "grant":
            _, who, patient_index, kind, expiry = operation
            user_pk, patient = users[who % len(users)], world.patients[patient_index]
            row = services.grant_create(
                patient=Patient.objects.get(pk=patient.pk),
                user=world.people[user_pk].user,
                kind=kind,
                granted_by=None,
                reason="Care team",
                expires_at=None if expiry is None else now + day,
            )
            grant = world.open_grant(user_pk, patient.pk, kind, row.pk)
            if expiry == "past":
                _expire(row)
                grant.expired = True
        elif name == "revoke":
            if world.grants:
                grant = world.grants[operation[1] % len(world.grants)]
                services.grant_revoke(grant=PatientUserObjectPermission.objects.get(pk=grant.pk), revoked_by=None)
                grant.revoked = True
        elif name == "transfer":
            _, patient_index, doctor_index = operation
            patient, target = world.patients[patient_index], world.doctors[doctor_index]
            services.patient_transfer(
                patient=Patient.objects.get(pk=patient.pk), doctor=Doctor.objects.get(pk=target.pk)
            )
            patient.doctor, patient.institution = doctor_index, target.institution
        elif name == "break_glass":
            _, who, patient_index, in_the_past = operation
            user_pk, patient = users[who % len(users)], world.patients[patient_index]
            allowed = world.may_break_glass(user_pk)
            if allowed and patient.pk in world.patients_for(user_pk, "view"):
                # Someone who can already see the patient gets no emergency grant.
                with pytest.raises(ValidationError):
                    services.break_glass_open(
                        user=User.objects.get(pk=user_pk),
                        patient=Patient.objects.get(pk=patient.pk),
                        reason="Unconscious in the emergency room",
                    )
                continue
            try:
                row = services.break_glass_open(
                    user=User.objects.get(pk=user_pk),
                    patient=Patient.objects.get(pk=patient.pk),
                    reason="Unconscious in the emergency room",
                )
            except PermissionDenied:
                assert not allowed, "break_glass_open refused a doctor or nurse"
                continue
            assert allowed, "break_glass_open let a user without the break-the-glass role in"
            grant = world.open_grant(user_pk, patient.pk, "view", row.pk, break_glass=True)
            if in_the_past:
                _expire(row)
                grant.expired = True

    for who in plan.deactivate_users:
        user_pk = users[who % len(users)]
        User.objects.filter(pk=user_pk).update(is_active=False)
        world.people[user_pk].active = False
    for doctor_index in plan.retire_doctors:
        Doctor.objects.filter(pk=world.doctors[doctor_index].pk).update(is_active=False)
        world.doctors[doctor_index].active = False
    return world


def in_a_rolled_back_world(plan: Plan, ref_rows, check) -> None:
    """Build the world in a savepoint, run ``check(world)``, and undo everything."""
    try:
        with transaction.atomic():
            check(build(plan, ref_rows))
            raise _Rollback
    except _Rollback:
        pass


# The three answers -----------------------------------------------------------------------------


def fresh(user_pk: int):
    return User.objects.get(pk=user_pk)


def policy_answer(user_pk: int, kind: str) -> set[int]:
    patients = access.patients_visible_to if kind == "view" else access.patients_changeable_by
    return set(patients(fresh(user_pk)).values_list("pk", flat=True))


def api_answer(world: Reference, user_pk: int) -> set[int] | None:
    """The patients the API list shows, every page; None when the token is refused."""
    _, secret = api_token_create(user=fresh(user_pk))
    client = Client(HTTP_AUTHORIZATION=f"Token {secret}")
    pk_by_uuid = {p.uuid: p.pk for p in world.patients}
    url, shown = reverse("v1:patient-list") + "?page_size=200", set()
    while url:
        response = client.get(url)
        if response.status_code == 401:
            return None
        assert response.status_code == 200, response.content
        body = response.json()
        shown |= {pk_by_uuid[row["id"]] for row in body["results"]}
        url = body["next"]
    return shown


def admin_answer(user_pk: int, staff_client_factory) -> tuple[int, set[int]]:
    """The status of the admin change list for a staff user, and the patients it shows (none if refused)."""
    client = staff_client_factory(fresh(user_pk))
    response = client.get(reverse("admin:clinical_patient_changelist"))
    if response.status_code == 403:
        return 403, set()
    assert response.status_code == 200
    changelist = response.context["cl"]
    assert changelist.result_count <= changelist.list_per_page, "keep worlds within one admin page"
    return 200, {patient.pk for patient in changelist.result_list}


def describe(world: Reference, user_pk: int) -> str:
    person = world.people[user_pk]
    return (
        f"user {user_pk} roles={sorted(person.roles)} active={person.active} superuser={person.superuser} "
        f"memberships={[m for m in world.memberships if m.user == user_pk]} "
        f"grants={[g for g in world.grants if g.user == user_pk]}"
    )


# The properties ----------------------------------------------------------------------------------

WORLD_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def _plan(**fields) -> Plan:
    values = {
        "institutions": 1,
        "doctors": [(0, True)],
        "staff": [None],
        "memberships": [],
        "patients": [(0, False)],
        "operations": [],
        "superuser": False,
        "deactivate_users": [],
        "retire_doctors": [],
        **fields,
    }
    return Plan(**values)


# Users are numbered staff first, then doctors, then portal users, then the superuser.
TRANSFER_AWAY_FROM_THE_NURSES_INSTITUTION = _plan(
    institutions=2,
    doctors=[(0, True), (1, True)],
    staff=["Nurse"],
    memberships=[(0, 0, MembershipRole.NURSE, "open")],
    patients=[(0, False), (1, True)],
    operations=[("transfer", 0, 1)],
)
BREAK_THE_GLASS_NOW_AND_IN_THE_PAST = _plan(
    institutions=2,
    doctors=[(0, False)],
    staff=["Nurse", "CMS Editor"],
    memberships=[(0, 1, MembershipRole.NURSE, "open")],
    patients=[(0, False), (0, False)],
    operations=[("break_glass", 0, 0, False), ("break_glass", 0, 1, True), ("break_glass", 1, 0, False)],
)
GRANTS_EXPIRED_REVOKED_AND_SUPERSEDED = _plan(
    staff=["CMS Editor", "Nurse"],
    memberships=[(1, 0, MembershipRole.NURSE, "ended")],
    patients=[(0, True), (0, False), (0, False)],
    operations=[
        ("grant", 0, 0, "view", None),
        ("grant", 0, 1, "change", "past"),
        ("grant", 1, 2, "change", "future"),
        ("revoke", 2),
        ("grant", 0, 0, "view", "past"),
    ],
    superuser=True,
    deactivate_users=[2],
)
# A staff user outside every clinical role who holds a care-team grant.
STAFF_WITHOUT_A_ROLE_HOLDING_A_GRANT = _plan(staff=[None], operations=[("grant", 0, 0, "view", None)])


@settings(max_examples=50, **WORLD_SETTINGS)
@given(plan=plans())
@example(plan=TRANSFER_AWAY_FROM_THE_NURSES_INSTITUTION)
@example(plan=BREAK_THE_GLASS_NOW_AND_IN_THE_PAST)
@example(plan=GRANTS_EXPIRED_REVOKED_AND_SUPERSEDED)
@example(plan=STAFF_WITHOUT_A_ROLE_HOLDING_A_GRANT)
def test_the_policy_and_the_api_list_agree_with_the_reference_for_every_user(plan, ref, roles):
    def check(world: Reference) -> None:
        for user_pk in world.people:
            expected_view = world.patients_for(user_pk, "view")
            expected_change = world.patients_for(user_pk, "change")
            assert policy_answer(user_pk, "view") == expected_view, describe(world, user_pk)
            assert policy_answer(user_pk, "change") == expected_change, describe(world, user_pk)
            shown = api_answer(world, user_pk)
            if world.people[user_pk].active:
                assert shown == expected_view, describe(world, user_pk)
            else:
                assert shown is None, "an inactive user's token was accepted"

    in_a_rolled_back_world(plan, ref, check)


# Each admin example signs every staff user in through MFA, which makes shrinking a
# failure take many minutes: the admin property reports the failing world as found
# (``describe`` names the user), and the explicit examples come first.
@settings(max_examples=15, phases=[Phase.explicit, Phase.reuse, Phase.generate], **WORLD_SETTINGS)
@given(plan=plans())
@example(plan=STAFF_WITHOUT_A_ROLE_HOLDING_A_GRANT)
@example(plan=TRANSFER_AWAY_FROM_THE_NURSES_INSTITUTION)
@example(plan=BREAK_THE_GLASS_NOW_AND_IN_THE_PAST)
def test_the_admin_change_list_agrees_with_the_reference_for_every_staff_user(plan, ref, roles, staff_client_factory):
    def check(world: Reference) -> None:
        for user_pk, person in world.people.items():
            if not (person.user.is_staff and person.active):
                continue
            expected = world.patients_for(user_pk, "view")
            status, shown = admin_answer(user_pk, staff_client_factory)
            assert shown == expected, f"the admin change list answered {status}; {describe(world, user_pk)}"

    in_a_rolled_back_world(plan, ref, check)
