"""Shared fixtures. Tests run against real PostgreSQL (DATABASE_URL or the embedded server).

Reference catalogs are loaded once into the test database. Transactional tests
flush the database when they end; pytest-django runs them after the others, and
the ``ref`` fixture reloads the catalogs when it finds them gone.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP

from accounts.models import AuthenticatorApp
from clinical import services
from clinical.catalog_loader import load_reference_data
from clinical.models import (
    BloodType,
    Country,
    Doctor,
    EmailType,
    InstitutionType,
    MedicalInstitution,
    Patient,
    PhoneType,
    Sex,
    Specialty,
)
from tests.db import drop_stale_test_databases

PASSWORD = "correct-horse-battery-staple"
_serial = itertools.count(1)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> None:
    with django_db_blocker.unblock():
        load_reference_data()
        drop_stale_test_databases(connection)


@pytest.fixture
def ref(db: Any) -> SimpleNamespace:
    """Handy catalog rows."""
    if not Sex.objects.exists():
        load_reference_data()
    return SimpleNamespace(
        female=Sex.objects.get(code="female"),
        male=Sex.objects.get(code="male"),
        specialty=Specialty.objects.order_by("id").first(),
        institution_type=InstitutionType.objects.order_by("id").first(),
        country=Country.objects.get(alpha2="US"),
        blood_type=BloodType.objects.get(code="O+"),
        email_type=EmailType.objects.order_by("id").first(),
        phone_type=PhoneType.objects.order_by("id").first(),
    )


@pytest.fixture
def make_user(db: Any) -> Callable[..., Any]:
    def make(**fields: Any) -> Any:
        n = next(_serial)
        fields.setdefault("email", f"user{n}@example.org")
        return get_user_model().objects.create_user(password=PASSWORD, **fields)

    return make


@pytest.fixture
def superuser(db: Any) -> Any:
    return get_user_model().objects.create_superuser(f"root{next(_serial)}@example.org", PASSWORD)


@pytest.fixture
def superuser_client(superuser: Any) -> Client:
    # Superusers are staff: signed in through the admin form and MFA (see the end of this file).
    return login_with_mfa(Client(), superuser)


@pytest.fixture
def make_institution(ref: SimpleNamespace) -> Callable[..., MedicalInstitution]:
    def make(**fields: Any) -> MedicalInstitution:
        n = next(_serial)
        values = {
            "name": f"Clinic {n}",
            "code": f"clinic-{n}",
            "institution_type": ref.institution_type,
            "country": ref.country,
            "time_zone": "America/New_York",
            **fields,
        }
        return services.institution_create(**values)

    return make


@pytest.fixture
def institution(make_institution: Callable[..., MedicalInstitution]) -> MedicalInstitution:
    return make_institution()


@pytest.fixture
def make_doctor(ref: SimpleNamespace, institution: MedicalInstitution) -> Callable[..., Doctor]:
    def make(**fields: Any) -> Doctor:
        n = next(_serial)
        values = {
            "email": f"doctor{n}@example.org",
            "first_name": "Ada",
            "last_name": f"Doctor{n}",
            "institution": institution,
            "specialty": ref.specialty,
            "license_number": f"LIC-{n:06d}",
            "password": PASSWORD,
            **fields,
        }
        return services.doctor_register(**values)

    return make


@pytest.fixture
def doctor(make_doctor: Callable[..., Doctor]) -> Doctor:
    return make_doctor()


@pytest.fixture
def make_patient(ref: SimpleNamespace, doctor: Doctor) -> Callable[..., Patient]:
    def make(**fields: Any) -> Patient:
        n = next(_serial)
        values = {
            "doctor": doctor,
            "first_name": "Grace",
            "last_name": f"Patient{n}",
            "date_of_birth": datetime.date(1980, 5, 17),
            "sex": ref.female,
            **fields,
        }
        return services.patient_register(**values)

    return make


@pytest.fixture
def patient(make_patient: Callable[..., Patient]) -> Patient:
    return make_patient()


# Roles and personas (access policy) ---------------------------------------------------


@pytest.fixture
def roles(db: Any) -> None:
    """Groups as the role matrix declares them (a transactional test may have flushed them)."""
    from cms.services import roles_sync

    roles_sync()


@pytest.fixture
def make_staff(roles: None, make_user: Callable[..., Any]) -> Callable[..., Any]:
    """``make_staff(role, institution=None, membership_role=None)``: a staff user holding a role.

    With ``institution`` the user also gets an active membership there
    (``membership_role`` defaults to the role's natural one).
    """
    from clinical.models import MembershipRole

    natural = {
        "Doctor": MembershipRole.DOCTOR,
        "Nurse": MembershipRole.NURSE,
        "Institution Admin": MembershipRole.INSTITUTION_ADMIN,
    }

    def make(role: str, institution: Any = None, membership_role: str | None = None, **fields: Any) -> Any:
        from django.contrib.auth.models import Group

        user = make_user(is_staff=True, **fields)
        user.groups.add(Group.objects.get(name=role))
        if institution is not None:
            services.membership_start(
                user=user, institution=institution, role=membership_role or natural.get(role, MembershipRole.STAFF)
            )
        return user

    return make


# MFA-aware staff logins (accounts) -----------------------------------------------------
# Staff reach the admin only with a session that passed MFA. These helpers sign a
# staff user in the way a person does: the admin login form, then enrolment (first
# time) or verification with a code computed from the device's own key. A
# ``client.force_login`` session is NOT verified, so admin pages refuse it.


def totp_code(device: Any) -> str:
    """The code the user's authenticator app would show now for ``device``.

    A device accepts each time step once (replay protection). When this test
    already used the current and the next step for this device, a person would
    wait 30 seconds; tests do not sleep, so the device forgets its last step.
    """
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    step = max(totp.t(), device.last_t + 1)
    if step > totp.t() + device.tolerance:
        AuthenticatorApp.objects.filter(pk=device.pk).update(last_t=-1)
        step = totp.t()
    totp.time = (step - device.drift) * device.step + device.t0
    return f"{totp.token():0{device.digits}d}"


def login_with_mfa(client: Client, user: Any, password: str = PASSWORD) -> Client:
    """Sign ``user`` (staff) in through the admin login form and the real MFA pages."""
    login = client.post(
        reverse("admin:login"), {"username": user.email, "password": password, "next": reverse("admin:index")}
    )
    assert login.status_code == 302, f"the admin login form refused {user.email} ({login.status_code})"
    device = AuthenticatorApp.objects.filter(user=user, confirmed=True).first()
    if device is not None:
        verified = client.post(reverse("accounts:mfa-verify"), {"code": totp_code(device)})
        assert verified.status_code == 302, f"MFA verification failed ({verified.status_code})"
    else:
        assert client.get(reverse("accounts:mfa-setup")).status_code == 200
        device = AuthenticatorApp.objects.get(user=user, confirmed=False)
        enrolled = client.post(reverse("accounts:mfa-setup"), {"code": totp_code(device)})
        assert enrolled.status_code == 200 and b"backup-codes" in enrolled.content, "MFA enrolment failed"
    assert client.session.get(DEVICE_ID_SESSION_KEY), "the session did not pass MFA"
    return client


@pytest.fixture
def otp_login(db: Any) -> Callable[..., Client]:
    """``otp_login(client, user)`` signs a staff user in on ``client`` through MFA."""
    return login_with_mfa


@pytest.fixture
def staff_client_factory(db: Any) -> Callable[..., Client]:
    """``staff_client_factory(user)``: a new client with ``user`` signed in through MFA."""

    def make(user: Any, password: str = PASSWORD) -> Client:
        return login_with_mfa(Client(), user, password)

    return make
