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
from django.test import Client

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

PASSWORD = "correct-horse-battery-staple"
_serial = itertools.count(1)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> None:
    with django_db_blocker.unblock():
        load_reference_data()


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
    client = Client()
    client.force_login(superuser)
    return client


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
