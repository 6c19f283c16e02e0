import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from clinical import fhir
from clinical.demo import seed_population
from clinical.models import (
    Doctor,
    HealthProfile,
    InstitutionMembership,
    LedgerEntry,
    MedicalInstitution,
    MedicalRecord,
    Patient,
    PatientAllergy,
    PatientCondition,
    PatientMedication,
    RecordType,
)

pytestmark = pytest.mark.django_db


class Rollback(Exception):
    pass


def snapshot():
    return list(
        Patient.objects.order_by("id").values_list("first_name", "last_name", "date_of_birth", "mrn", "sex__code")
    )


def test_seed_population_creates_a_realistic_directory():
    counts = seed_population(patients=120, seed=3, password_hash="!")
    assert counts.patients == Patient.objects.count() == 120
    assert HealthProfile.objects.count() == 120  # every patient has exactly one
    assert counts.doctors == Doctor.objects.count()
    assert PatientCondition.objects.count() == counts.conditions > 0
    assert PatientMedication.objects.count() == counts.medications > 0
    assert PatientAllergy.objects.count() == counts.allergies > 0
    assert all(p.institution_id == p.doctor.institution_id for p in Patient.objects.select_related("doctor"))
    doctor_users = Doctor.objects.values_list("user_id", flat=True)
    assert InstitutionMembership.objects.active().filter(user_id__in=doctor_users, role="doctor").count() == len(
        doctor_users
    )


def test_seeded_records_cover_every_type_validate_and_pass_the_integrity_check():
    counts = seed_population(patients=60, seed=5, password_hash="!")
    # The chart's records, plus one PRESCRIPTION record per item of the seeded prescriptions.
    chart = MedicalRecord.objects.filter(prescription_item__isnull=True)
    assert chart.count() == counts.records >= 60  # every patient has at least vital signs
    assert set(MedicalRecord.objects.values_list("record_type", flat=True)) == set(RecordType.values)
    assert not Patient.objects.filter(records__isnull=True).exists()
    for record in MedicalRecord.objects.all():
        fhir.validate(record.record_type, record.payload)
        assert record.payload["subject" if "subject" in record.payload else "patient"]["reference"].endswith(
            str(record.patient.uuid)
        )
    assert LedgerEntry.objects.count() == MedicalRecord.objects.count()
    out = io.StringIO()
    call_command("verify_integrity", no_progress=True, stdout=out)
    assert "Integrity verified" in out.getvalue()


def test_the_same_seed_gives_the_same_patients():
    try:
        with transaction.atomic():
            seed_population(patients=40, seed=11, password_hash="!")
            first = snapshot()
            raise Rollback
    except Rollback:
        pass
    seed_population(patients=40, seed=11, password_hash="!")
    assert snapshot() == first


def test_demo_users_share_one_password_hash():
    seed_population(patients=60, seed=4, password_hash="pbkdf2_sha256$1$salt$hash")
    hashes = set(get_user_model().objects.filter(email__endswith=".example.org").values_list("password", flat=True))
    assert hashes == {"pbkdf2_sha256$1$salt$hash"}


def test_seed_demo_once_adds_nothing_the_second_time(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    out = io.StringIO()
    call_command("seed_demo", patients=30, seed=1, once=True, no_progress=True, stdout=out)
    counts = (Patient.objects.count(), get_user_model().objects.count(), MedicalInstitution.objects.count())
    call_command("seed_demo", patients=30, seed=1, once=True, no_progress=True, stdout=out)
    assert (
        Patient.objects.count(),
        get_user_model().objects.count(),
        MedicalInstitution.objects.count(),
    ) == counts
    assert "already present" in out.getvalue()


def test_seed_demo_generates_the_admin_password_once_and_keeps_it_out_of_the_code(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    out = io.StringIO()
    call_command("seed_demo", patients=0, stdout=out)
    credentials = (tmp_path / "demo-credentials.json").read_text()
    assert oct((tmp_path / "demo-credentials.json").stat().st_mode & 0o777) == "0o600"
    admin = get_user_model().objects.get(email="admin@caretrail.local")
    import json

    password = json.loads(credentials)["admin_password"]
    assert admin.is_superuser and admin.check_password(password)
    assert password in out.getvalue()
    call_command("seed_demo", patients=0, stdout=io.StringIO())
    assert (tmp_path / "demo-credentials.json").read_text() == credentials


def test_seed_population_adds_past_and_future_appointments_prescriptions_and_documents(
    django_capture_on_commit_callbacks,
):
    from clinical.demo_care import CARE_PATIENTS, LAB_REPORTS
    from clinical.models import Appointment, Document, Prescription, PrescriptionItem

    with django_capture_on_commit_callbacks(execute=True):
        counts = seed_population(patients=80, seed=7, password_hash="!")
    now = timezone.now()
    visits = Appointment.objects.all()
    assert visits.count() == counts.appointments > 0
    assert visits.filter(starts_at__lt=now, status="completed").exists()
    assert visits.filter(starts_at__lt=now, status__in=["cancelled", "no_show"]).exists()
    assert visits.filter(starts_at__gt=now, status="scheduled").exists()
    assert not visits.filter(starts_at__lt=now, status="scheduled").exists()
    assert visits.values("patient").distinct().count() <= CARE_PATIENTS
    # Prescriptions on completed visits only, each item a PRESCRIPTION record, each with its PDF.
    issued = Prescription.objects.select_related("appointment")
    assert issued.count() == counts.prescriptions > 0
    assert {p.appointment.status for p in issued} == {"completed"}
    items = PrescriptionItem.objects.select_related("medical_record")
    assert items.exists() and {item.medical_record.record_type for item in items} == {"prescription"}
    assert not issued.filter(printable__isnull=True).exists()
    assert Document.objects.filter(kind="lab_report").count() == counts.documents == LAB_REPORTS
    out = io.StringIO()
    call_command("verify_integrity", no_progress=True, stdout=out)
    assert "Integrity verified" in out.getvalue()
