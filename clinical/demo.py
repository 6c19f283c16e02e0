"""Realistic demo data for ``manage.py seed_demo``.

The bulk path builds rows in Python, runs each model's field validation
(``full_clean`` without the per-row uniqueness queries) and inserts in batches;
the database constraints and triggers still check every row. Demo users share
one precomputed password hash, so 10,000 patients do not cost 10,000 hashes.
Bulk inserts are not seen by auditlog (it listens to ``save()``): seeding is
an operator action, not a clinical change. Medical records are the exception
to "bulk means unchecked": each payload is validated as FHIR and every record
is appended to the integrity ledger (``clinical.demo_records``).
"""

from __future__ import annotations

import datetime
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.utils import timezone
from faker import Faker

from accounts.fields import encrypted_field_names
from clinical import ledger
from clinical import models as m
from clinical.demo_care import seed_care
from clinical.demo_records import DemoRecords
from clinical.models.catalogs import SNOMED_CT

User = get_user_model()
T = TypeVar("T", bound=models.Model)
BATCH = 1000
DEMO_CODE_PREFIX = "demo-"

# Rough adult prevalence weights for the commonest chronic codes; the rest of
# the catalog gets weight 1.
COMMON_CONDITIONS = {
    "I10": 30,
    "E78.5": 22,
    "E11.9": 12,
    "E66.9": 14,
    "F32.9": 8,
    "F41.1": 7,
    "J45.909": 8,
    "K21.9": 9,
    "M54.50": 8,
    "E03.9": 6,
    "G43.909": 5,
    "N39.0": 3,
    "M17.9": 5,
    "J30.9": 7,
    "I25.10": 4,
    "I48.91": 3,
    "N18.3": 3,
    "J44.9": 4,
    "D64.9": 4,
    "G47.33": 4,
}
ALLERGENS = [
    ("Penicillin", "medication", "91936005"),
    ("Peanut", "food", "91935009"),
    ("Shellfish", "food", "300913006"),
    ("Latex", "environment", "300916003"),
    ("Sulfonamide", "medication", "91939003"),
    ("House dust mite", "environment", "232347008"),
    ("Grass pollen", "environment", "418689008"),
    ("Egg", "food", "91930004"),
    ("Aspirin", "medication", "293586001"),
    ("Bee venom", "biologic", "424213003"),
]
REACTIONS = ["Hives", "Rash and itching", "Wheezing", "Swelling of lips", "Anaphylaxis", "Nausea"]
RELATIONSHIPS = ["Spouse", "Parent", "Sibling", "Child", "Friend", "Partner"]
LOCALES = {"US": "en_US", "MX": "es_MX", "IN": "en_IN", "ES": "es_ES", "GB": "en_GB"}
CITIES = [
    ("US", "America/New_York", "New York"),
    ("US", "America/Chicago", "Chicago"),
    ("MX", "America/Mexico_City", "Ciudad de México"),
    ("IN", "Asia/Kolkata", "Pune"),
    ("ES", "Europe/Madrid", "Madrid"),
    ("GB", "Europe/London", "Leeds"),
    ("US", "America/Los_Angeles", "San Diego"),
    ("IN", "Asia/Kolkata", "Chennai"),
]


@dataclass
class Counts:
    institutions: int = 0
    doctors: int = 0
    nurses: int = 0
    patients: int = 0
    conditions: int = 0
    medications: int = 0
    allergies: int = 0
    records: int = 0
    appointments: int = 0
    prescriptions: int = 0
    documents: int = 0


def ascii_slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return "".join(ch for ch in plain if ch.isalnum()) or "x"


def checked(objs: Sequence[T]) -> Sequence[T]:
    """Field-level validation of each row, as a form or service would run it.

    Left to the database, which checks them on insert anyway: uniqueness,
    constraints and foreign keys (Django would spend one query per key).
    """
    if not objs:
        return objs
    model = type(objs[0])
    exclude = [
        *encrypted_field_names(model),
        *(f.name for f in model._meta.concrete_fields if f.is_relation),
    ]
    for obj in objs:
        obj.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    return objs


def bulk_insert(model: type[T], objs: Sequence[T]) -> list[T]:
    return model.objects.bulk_create(checked(objs), batch_size=BATCH)  # type: ignore[attr-defined,no-any-return]


def chunks(total: int, size: int) -> Iterator[range]:
    for start in range(0, total, size):
        yield range(start, min(total, start + size))


class DemoBuilder:
    def __init__(self, *, seed: int, password_hash: str) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible demo data, not secrets
        # One generator per locale, each seeded: a multi-locale Faker picks its
        # locale with the global random module, which would break --seed.
        self.fakers = {country: Faker(locale) for country, locale in LOCALES.items()}
        for offset, faker in enumerate(self.fakers.values()):
            faker.seed_instance(seed + offset)
        self.password_hash = password_hash
        self.today = timezone.localdate()
        self.records = DemoRecords(self.rng, self.today)
        self.serial = self.rng.randrange(10**6)
        self.sexes = {s.code: s for s in m.Sex.objects.all()}
        self.genders = list(m.Gender.objects.all())
        self.blood_types = list(m.BloodType.objects.all())
        self.email_type = m.EmailType.objects.order_by("id").first()
        self.phone_type = m.PhoneType.objects.order_by("id").first()
        conditions = list(m.MedicalCondition.objects.all())
        self.conditions = conditions
        self.condition_weights = [COMMON_CONDITIONS.get(c.code, 1) for c in conditions]
        self.medications = list(m.Medication.objects.all())
        self.specialties = list(m.Specialty.objects.all())
        self.countries = {c.alpha2: c for c in m.Country.objects.filter(alpha2__in={c for c, _, _ in CITIES})}
        self.institution_type = m.InstitutionType.objects.order_by("id").first()
        if not (self.sexes and self.conditions and self.medications and self.specialties and self.institution_type):
            raise RuntimeError("Load the reference data first: manage.py load_reference_data")

    # Identity -----------------------------------------------------------------------
    def unique_email(self, first: str, last: str, domain: str) -> str:
        self.serial += 1
        return f"{ascii_slug(first)}.{ascii_slug(last)}.{self.serial}@{domain}"

    def phone_number(self, country: str) -> str:
        prefix = {"US": "1", "MX": "52", "IN": "91", "ES": "34", "GB": "44"}[country]
        return f"+{prefix}{self.rng.randrange(2_000_000_000, 9_999_999_999)}"

    def new_user(self, first: str, last: str, *, staff: bool, domain: str) -> Any:
        return User(
            email=self.unique_email(first, last, domain),
            first_name=first,
            last_name=last,
            is_staff=staff,
            password=self.password_hash,
            email_verified=True,
        )

    # Institutions and staff --------------------------------------------------------
    def institutions(self, count: int) -> list[m.MedicalInstitution]:
        start = m.MedicalInstitution.objects.filter(code__startswith=DEMO_CODE_PREFIX).count()
        rows = []
        for i in range(start, start + count):
            country, tz, city = CITIES[i % len(CITIES)]
            kind = self.rng.choice(["Clinic", "Medical Center", "Community Hospital", "Health Centre"])
            rows.append(
                m.MedicalInstitution(
                    name=f"{city} {kind} {i + 1}",
                    code=f"{DEMO_CODE_PREFIX}{i + 1:03d}",
                    institution_type=self.institution_type,
                    time_zone=tz,
                    country=self.countries[country],
                )
            )
        return bulk_insert(m.MedicalInstitution, rows)

    def staff(
        self, institutions: list[m.MedicalInstitution], doctors_each: int, nurses_each: int
    ) -> tuple[list[m.Doctor], int]:
        users, memberships, doctor_rows = [], [], []
        now = timezone.now() - datetime.timedelta(days=30)
        for inst in institutions:
            fake = self.fakers[inst.country.alpha2]
            for role, n in ((m.MembershipRole.DOCTOR, doctors_each), (m.MembershipRole.NURSE, nurses_each)):
                for _ in range(n):
                    user = self.new_user(fake.first_name(), fake.last_name(), staff=True, domain="staff.example.org")
                    users.append((user, inst, role))
        created = bulk_insert(User, [u for u, _, _ in users])
        for user, (_, inst, role) in zip(created, users, strict=True):
            memberships.append(m.InstitutionMembership(user=user, institution=inst, role=role, valid_from=now))
            if role == m.MembershipRole.DOCTOR:
                self.serial += 1
                doctor_rows.append(
                    m.Doctor(
                        user=user,
                        institution=inst,
                        specialty=self.rng.choice(self.specialties),
                        license_number=f"LIC-{self.serial:08d}",
                    )
                )
        bulk_insert(m.InstitutionMembership, memberships)
        doctors = bulk_insert(m.Doctor, doctor_rows)
        # The role groups come from cms's matrix (by name: clinical does not import cms).
        for role, group_name in ((m.MembershipRole.DOCTOR, "Doctor"), (m.MembershipRole.NURSE, "Nurse")):
            group = Group.objects.filter(name=group_name).first()
            if group is not None:
                group.user_set.add(*[user.pk for user, (_, _, r) in zip(created, users, strict=True) if r == role])
        return doctors, len(users) - len(doctors)

    # Patients -------------------------------------------------------------------------
    def _birth_date(self) -> datetime.date:
        age_days = int(self.rng.triangular(0, 95, 45) * 365.25)
        return self.today - datetime.timedelta(days=max(age_days, 1))

    def _profile(self, patient: m.Patient, country: str) -> m.HealthProfile:
        rng = self.rng
        age = (self.today - patient.date_of_birth).days / 365.25
        adult = age >= 18
        height = Decimal(str(round(rng.gauss(168, 10) if adult else 50 + age * 6.5, 1)))
        height = min(max(height, Decimal("45.0")), Decimal("210.0"))
        bmi = rng.gauss(26, 4.5) if adult else rng.gauss(17, 2)
        weight = Decimal(str(round(max(bmi, 14) * float(height / 100) ** 2, 2)))
        smoker = adult and rng.random() < 0.14
        drinks = adult and rng.random() < 0.5
        contact = rng.random() < 0.7
        return m.HealthProfile(
            patient=patient,
            height_cm=height,
            weight_kg=max(weight, Decimal("2.00")),
            blood_type=rng.choice(self.blood_types) if self.blood_types and rng.random() < 0.8 else None,
            is_smoker=smoker,
            cigarettes_per_day=rng.randint(1, 30) if smoker else None,
            consumes_alcohol=drinks,
            drinks_per_week=rng.randint(1, 14) if drinks else None,
            physical_activity_minutes_per_week=rng.choice([0, 30, 60, 90, 150, 210, 300]),
            emergency_contact_name=self.fakers[country].name() if contact else "",
            emergency_contact_phone=self.phone_number(country) if contact else "",
            emergency_contact_relationship=rng.choice(RELATIONSHIPS) if contact else "",
        )

    def _lists(self, patient: m.Patient, doctor: m.Doctor) -> tuple[list[Any], list[Any], list[Any]]:
        rng = self.rng
        age = (self.today - patient.date_of_birth).days / 365.25
        n_conditions = min(len(self.conditions), int(rng.expovariate(1 / (0.4 + age / 35))))
        chosen: dict[int, m.MedicalCondition] = {}
        for cond in rng.choices(self.conditions, weights=self.condition_weights, k=n_conditions):
            chosen[cond.pk] = cond
        conditions = []
        for cond in chosen.values():
            onset = patient.date_of_birth + datetime.timedelta(
                days=rng.randint(0, max((self.today - patient.date_of_birth).days - 1, 0))
            )
            resolved = rng.random() < 0.2
            conditions.append(
                m.PatientCondition(
                    patient=patient,
                    condition=cond,
                    status=m.ConditionStatus.RESOLVED if resolved else m.ConditionStatus.ACTIVE,
                    onset_date=onset,
                    resolved_date=min(onset + datetime.timedelta(days=rng.randint(7, 400)), self.today)
                    if resolved
                    else None,
                    diagnosed_by=doctor,
                    notes="Reviewed at last visit." if rng.random() < 0.1 else None,
                )
            )
        medications = []
        for med in rng.sample(self.medications, k=min(len(self.medications), int(len(chosen) * rng.uniform(0.5, 1.3)))):
            start = self.today - datetime.timedelta(days=rng.randint(0, 2000))
            ended = rng.random() < 0.25
            medications.append(
                m.PatientMedication(
                    patient=patient,
                    medication=med,
                    dose="1 " + ("tablet" if "tablet" in med.form else "dose"),
                    route="oral" if med.form in {"tablet", "capsule", "oral solution", "oral suspension"} else "",
                    frequency=rng.choice(["once a day", "twice a day", "three times a day", "as needed"]),
                    start_date=start,
                    end_date=start + datetime.timedelta(days=rng.randint(5, 120)) if ended else None,
                    prescribed_by=doctor,
                )
            )
        allergies = []
        if rng.random() < 0.25:
            for substance, category, code in rng.sample(ALLERGENS, k=rng.choice([1, 1, 1, 2])):
                allergies.append(
                    m.PatientAllergy(
                        patient=patient,
                        substance=substance,
                        code_system=SNOMED_CT,
                        code=code,
                        category=category,
                        criticality=rng.choice(["low", "low", "high"]),
                        severity=rng.choice(["mild", "moderate", "severe"]),
                        reaction=rng.choice(REACTIONS),
                    )
                )
        return conditions, medications, allergies

    def patients(
        self,
        doctors: list[m.Doctor],
        total: int,
        counts: Counts,
        tick: Callable[[int], None],
        *,
        records: bool = True,
    ) -> None:
        """Add ``total`` patients with their profiles, lists and (with ``records``) medical records."""
        next_mrn = {
            inst.pk: inst.next_mrn
            for inst in m.MedicalInstitution.objects.filter(pk__in={d.institution_id for d in doctors})
        }
        inst_country = {
            inst.pk: inst.country.alpha2
            for inst in m.MedicalInstitution.objects.select_related("country").filter(pk__in=next_mrn)
        }
        sexes = [self.sexes.get("female"), self.sexes.get("male")]
        for block in chunks(total, BATCH):
            with transaction.atomic():
                portal_users, patients = [], []
                for _ in block:
                    doctor = self.rng.choice(doctors)
                    fake = self.fakers[inst_country[doctor.institution_id]]
                    sex = self.rng.choice(sexes) if self.rng.random() < 0.98 else self.sexes.get("unknown")
                    female = sex is not None and sex.code == "female"
                    first = fake.first_name_female() if female else fake.first_name_male()
                    last = fake.last_name()
                    mrn = next_mrn[doctor.institution_id]
                    next_mrn[doctor.institution_id] += 1
                    status = self.rng.choices(["validated", "pending", "rejected"], weights=[85, 13, 2])[0]
                    patient = m.Patient(
                        institution_id=doctor.institution_id,
                        doctor=doctor,
                        mrn=f"{mrn:08d}",
                        first_name=first,
                        last_name=last,
                        date_of_birth=self._birth_date(),
                        sex=sex,
                        gender=self.rng.choice(self.genders) if self.genders and self.rng.random() < 0.3 else None,
                        validation_status=status,
                        reviewed_by=doctor.user if status != "pending" else None,
                        reviewed_at=timezone.now() if status != "pending" else None,
                        rejection_reason="Identity documents did not match." if status == "rejected" else None,
                    )
                    if self.rng.random() < 0.35:
                        portal_users.append(
                            (
                                len(patients),
                                self.new_user(first, last, staff=False, domain="patients.example.org"),
                            )
                        )
                    patients.append(patient)
                for index, user in zip(
                    [i for i, _ in portal_users], bulk_insert(User, [u for _, u in portal_users]), strict=True
                ):
                    patients[index].user = user
                bulk_insert(m.Patient, patients)
                profiles, conditions, medications, allergies, phones, chart = [], [], [], [], [], []
                for patient in patients:
                    country = inst_country[patient.institution_id]
                    profiles.append(self._profile(patient, country))
                    c, md, a = self._lists(patient, patient.doctor)
                    conditions += c
                    medications += md
                    allergies += a
                    if records:
                        chart += self.records.for_patient(patient, c, md, a)
                    if self.rng.random() < 0.8:
                        phones.append(
                            m.Phone(
                                patient=patient,
                                number=self.phone_number(country),
                                phone_type=self.phone_type,
                                is_primary=True,
                            )
                        )
                bulk_insert(m.HealthProfile, profiles)
                bulk_insert(m.PatientCondition, conditions)
                bulk_insert(m.PatientMedication, medications)
                bulk_insert(m.PatientAllergy, allergies)
                bulk_insert(m.Phone, phones)
                ledger.append_many(bulk_insert(m.MedicalRecord, chart))
                counts.records += len(chart)
                counts.patients += len(patients)
                counts.conditions += len(conditions)
                counts.medications += len(medications)
                counts.allergies += len(allergies)
            tick(len(block))
        for inst_id, value in next_mrn.items():
            m.MedicalInstitution.objects.filter(pk=inst_id, next_mrn__lt=value).update(next_mrn=value)


def seed_population(
    *,
    patients: int,
    seed: int,
    password_hash: str,
    tick: Callable[[int], None] = lambda n: None,
    institutions: int | None = None,
    doctors_per_institution: int | None = None,
    nurses_per_institution: int | None = None,
) -> Counts:
    """Create institutions, staff and ``patients`` patients with their lists.

    Without explicit sizes the directory grows with the number of patients
    (up to 20 institutions of 20 doctors).
    """
    builder = DemoBuilder(seed=seed, password_hash=password_hash)
    counts = Counts()
    n_institutions = institutions or min(20, max(2, patients // 500))
    doctors_each = doctors_per_institution or max(2, min(20, patients // (n_institutions * 25) or 1))
    nurses_each = nurses_per_institution if nurses_per_institution is not None else max(1, doctors_each // 2)
    with transaction.atomic():
        created = builder.institutions(n_institutions)
        doctors, nurses = builder.staff(created, doctors_each, nurses_each)
    counts.institutions, counts.doctors, counts.nurses = len(created), len(doctors), nurses
    builder.patients(doctors, patients, counts, tick)
    if patients:
        care = seed_care(builder.rng, doctors)
        counts.appointments, counts.prescriptions, counts.documents = (
            care.appointments,
            care.prescriptions,
            care.documents,
        )
    return counts
