"""The persona matrix (issue 3): who gets what from every API route and every admin model.

One world, two institutions (A and B) and one patient P at A, seen by sixteen
personas. The tables below declare, per persona, the answer of every API route
and of the admin's patient pages; the tests walk the URL resolver and the
admin registry and fail when a route or a model is missing from them, so a new
endpoint cannot skip the matrix.

API semantics: outside the policy → 404 (existence not revealed); visible but
not changeable → 403; not signed in → 401. Admin semantics: a hidden object's
change or history page → 302 to the admin index (Django's answer for a missing
object); a page the role does not allow → 403; non-staff → the login page;
staff without MFA → MFA enrolment.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.db.models import Q
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import URLResolver, get_resolver, reverse
from django.utils import timezone

from accounts.models import ApiToken, AuthenticatorApp
from accounts.services import api_token_create
from clinical import appointments, fhir, prescriptions, services
from clinical.models import (
    Appointment,
    BreakGlassReview,
    Country,
    EmailType,
    InstitutionMembership,
    InstitutionType,
    LedgerEntry,
    MedicalCondition,
    MedicalRecord,
    Medication,
    Patient,
    PatientAllergy,
    PatientCondition,
    PatientMedication,
    PatientUserObjectPermission,
    Phone,
    PhoneType,
    Sex,
    Specialty,
)
from tests.conftest import PASSWORD, totp_code

pytestmark = pytest.mark.django_db

# P's identifying strings: no page shown to a persona outside the policy may contain them.
P_LAST_NAME = "Zbyszewska"
P_MRN = "MRN-P-48213"
P_DOCUMENT_BYTES = b"Referral for Ms Zbyszewska: chest X-ray, both views.\n"
FILE_SYSTEM_STORAGE = "django.core.files.storage.FileSystemStorage"

PERSONAS = (
    "primary_doctor",  # P's primary doctor, at A, in the Doctor group
    "nurse_a",  # Nurse with a membership at A
    "doctor_b",  # Doctor of institution B
    "inst_admin_a",  # Institution Admin of A
    "care_team",  # Nurse, no membership at A, an active view grant on P
    "expired_care_team",  # Nurse whose view grant on P expired
    "break_glass",  # Doctor of B who broke the glass on P
    "expired_break_glass",  # Doctor of B whose break-the-glass on P expired
    "ended_membership",  # Nurse whose membership at A was ended
    "no_mfa",  # Doctor of A who never enrolled an MFA device
    "patient_p",  # P's own portal user
    "patient_q",  # another patient's portal user
    "cms_admin",
    "cms_editor",
    "superuser",
    "anonymous",
)
STAFF_WITHOUT_MFA = "no_mfa"

# Status shorthands for the admin: redirects, by where they lead.
TO_INDEX = "302→admin index"
TO_LOGIN = "302→login"
TO_MFA = "302→MFA setup"


# =====================================================================================
# The API matrix
# =====================================================================================

# Patient routes. ``patients`` is (status, whether P is in the list).
# Columns: persona, GET patients/ (status, P listed), GET patients/<P>/, PATCH patients/<P>/,
# GET me/patient/, GET me/.
PATIENT_API_MATRIX = [
    ("primary_doctor", (200, True), 200, 200, 404, 200),
    ("nurse_a", (200, True), 200, 200, 404, 200),
    ("doctor_b", (200, False), 404, 404, 404, 200),
    ("inst_admin_a", (200, True), 200, 200, 404, 200),
    ("care_team", (200, True), 200, 403, 404, 200),
    ("expired_care_team", (200, False), 404, 404, 404, 200),
    ("break_glass", (200, True), 200, 403, 404, 200),
    ("expired_break_glass", (200, False), 404, 404, 404, 200),
    ("ended_membership", (200, False), 404, 404, 404, 200),
    ("no_mfa", (401, False), 401, 401, 401, 401),
    ("patient_p", (200, True), 200, 403, 200, 200),
    ("patient_q", (200, False), 404, 404, 200, 200),
    ("cms_admin", (200, False), 404, 404, 404, 200),
    ("cms_editor", (200, False), 404, 404, 404, 200),
    ("superuser", (200, True), 200, 200, 404, 200),
    ("anonymous", (401, False), 401, 401, 401, 401),
]
PATIENT_API_COLUMNS = ("patients", "patient_detail", "patient_update", "my_patient", "me")

# Medical record routes, on P's record R (a heart rate). Reading follows the patient; adding
# needs the role's add permission and change access to P; amending and entered-in-error need
# change_medicalrecord, verifying verify_medicalrecord (Doctor). Each call runs on a fresh world.
# Columns: persona, GET patients/<P>/records/, GET .../records/<R>/, POST .../records/,
# POST .../<R>/amend/, POST .../<R>/entered-in-error/, POST .../<R>/verify/,
# GET me/records/, GET me/records/<R>/.
RECORD_API_MATRIX = [
    ("primary_doctor", 200, 200, 201, 201, 200, 200, 404, 404),
    ("nurse_a", 200, 200, 201, 403, 403, 403, 404, 404),
    ("doctor_b", 404, 404, 404, 404, 404, 404, 404, 404),
    ("inst_admin_a", 200, 200, 403, 403, 403, 403, 404, 404),
    ("care_team", 200, 200, 403, 403, 403, 403, 404, 404),
    ("expired_care_team", 404, 404, 404, 404, 404, 404, 404, 404),
    ("break_glass", 200, 200, 403, 403, 403, 403, 404, 404),
    ("expired_break_glass", 404, 404, 404, 404, 404, 404, 404, 404),
    ("ended_membership", 404, 404, 404, 404, 404, 404, 404, 404),
    ("no_mfa", 401, 401, 401, 401, 401, 401, 401, 401),
    ("patient_p", 200, 200, 403, 403, 403, 403, 200, 200),
    ("patient_q", 404, 404, 404, 404, 404, 404, 200, 404),
    ("cms_admin", 404, 404, 404, 404, 404, 404, 404, 404),
    ("cms_editor", 404, 404, 404, 404, 404, 404, 404, 404),
    ("superuser", 200, 200, 201, 201, 200, 200, 404, 404),
    ("anonymous", 401, 401, 401, 401, 401, 401, 401, 401),
]
RECORD_API_COLUMNS = (
    "records",
    "record_detail",
    "record_create",
    "record_amend",
    "record_entered_in_error",
    "record_verify",
    "my_records",
    "my_record",
)

# Document routes, on P's document D (a text file) and, for the portal, the caller's own documents.
# Reading and downloading follow the patient; uploading to P needs the role's add_document
# (Doctor, Nurse) and change access to P; a patient uploads to their own record only (me/documents/).
# A refusal leaves nothing in storage or in the database. Each call runs on a fresh world.
# Columns: persona, GET patients/<P>/documents/, POST patients/<P>/documents/,
# GET patients/<P>/documents/<D>/download/, GET me/documents/, POST me/documents/,
# GET me/documents/<D>/download/.
DOCUMENT_API_MATRIX = [
    ("primary_doctor", 200, 201, 200, 404, 404, 404),
    ("nurse_a", 200, 201, 200, 404, 404, 404),
    ("doctor_b", 404, 404, 404, 404, 404, 404),
    ("inst_admin_a", 200, 403, 200, 404, 404, 404),
    ("care_team", 200, 403, 200, 404, 404, 404),
    ("expired_care_team", 404, 404, 404, 404, 404, 404),
    ("break_glass", 200, 403, 200, 404, 404, 404),
    ("expired_break_glass", 404, 404, 404, 404, 404, 404),
    ("ended_membership", 404, 404, 404, 404, 404, 404),
    ("no_mfa", 401, 401, 401, 401, 401, 401),
    ("patient_p", 200, 403, 200, 200, 201, 200),
    ("patient_q", 404, 404, 404, 200, 201, 404),
    ("cms_admin", 404, 404, 404, 404, 404, 404),
    ("cms_editor", 404, 404, 404, 404, 404, 404),
    ("superuser", 200, 201, 200, 404, 404, 404),
    ("anonymous", 401, 401, 401, 401, 401, 401),
]
DOCUMENT_API_COLUMNS = (
    "documents",
    "document_upload",
    "document_download",
    "my_documents",
    "my_document_upload",
    "my_document_download",
)

# Care routes, on P's appointments and prescription. In the world: V, a completed visit of P
# with the primary doctor three days ago, which has prescription RX; O, an open visit that
# began an hour ago (no prescription yet); F, a scheduled visit in three days. Booking and
# changing need the role's appointment permissions (Doctor, Nurse, Institution Admin) and
# change access to P; only O's own doctor (the primary doctor) writes its prescription; a
# signed copy needs add_document. Each call runs on a fresh world.
# Columns: persona, GET patients/<P>/appointments/, GET .../appointments/<V>/, POST .../appointments/,
# POST .../<F>/reschedule/, POST .../<F>/cancel/, POST .../<O>/complete/, POST .../<O>/no-show/,
# GET me/appointments/, GET me/appointments/<V>/, GET patients/<P>/prescriptions/,
# GET .../prescriptions/<RX>/, POST .../prescriptions/ (for O), POST .../<RX>/signed-copy/,
# GET me/prescriptions/, GET me/prescriptions/<RX>/.
CARE_API_MATRIX = [
    ("primary_doctor", 200, 200, 201, 200, 200, 200, 200, 404, 404, 200, 200, 201, 201, 404, 404),
    ("nurse_a", 200, 200, 201, 200, 200, 200, 200, 404, 404, 200, 200, 403, 201, 404, 404),
    ("doctor_b", 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    ("inst_admin_a", 200, 200, 201, 200, 200, 200, 200, 404, 404, 200, 200, 403, 403, 404, 404),
    ("care_team", 200, 200, 403, 403, 403, 403, 403, 404, 404, 200, 200, 403, 403, 404, 404),
    ("expired_care_team", 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    ("break_glass", 200, 200, 403, 403, 403, 403, 403, 404, 404, 200, 200, 403, 403, 404, 404),
    ("expired_break_glass", 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    ("ended_membership", 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    ("no_mfa", 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401),
    ("patient_p", 200, 200, 403, 403, 403, 403, 403, 200, 200, 200, 200, 403, 403, 200, 200),
    ("patient_q", 404, 404, 404, 404, 404, 404, 404, 200, 404, 404, 404, 404, 404, 200, 404),
    ("cms_admin", 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    ("cms_editor", 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404),
    ("superuser", 200, 200, 201, 200, 200, 200, 200, 404, 404, 200, 200, 403, 201, 404, 404),
    ("anonymous", 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401, 401),
]
CARE_API_COLUMNS = (
    "appointments",
    "appointment_detail",
    "appointment_book",
    "appointment_reschedule",
    "appointment_cancel",
    "appointment_complete",
    "appointment_no_show",
    "my_appointments",
    "my_appointment",
    "prescriptions",
    "prescription_detail",
    "prescription_issue",
    "prescription_signed_copy",
    "my_prescriptions",
    "my_prescription",
)

# Account and documentation routes. Staff personas (except ``no_mfa``) hold a
# confirmed TOTP device, so obtaining a token with password + code succeeds for
# them; ``no_mfa`` is refused (403) and falls back to a password-only session,
# which the API does not accept (401). ``revoke other's`` targets a bystander's
# token: the API only ever revokes the caller's own.
# Columns: persona, POST auth/token/, GET auth/tokens/, DELETE own token, DELETE other's token,
# GET /api/schema/, GET /api/docs/.
ACCOUNT_API_MATRIX = [
    ("primary_doctor", 201, 200, 204, 404, 200, 200),
    ("nurse_a", 201, 200, 204, 404, 200, 200),
    ("doctor_b", 201, 200, 204, 404, 200, 200),
    ("inst_admin_a", 201, 200, 204, 404, 200, 200),
    ("care_team", 201, 200, 204, 404, 200, 200),
    ("expired_care_team", 201, 200, 204, 404, 200, 200),
    ("break_glass", 201, 200, 204, 404, 200, 200),
    ("expired_break_glass", 201, 200, 204, 404, 200, 200),
    ("ended_membership", 201, 200, 204, 404, 200, 200),
    ("no_mfa", 403, 401, 401, 401, 200, 200),
    ("patient_p", 201, 200, 204, 404, 200, 200),
    ("patient_q", 201, 200, 204, 404, 200, 200),
    ("cms_admin", 201, 200, 204, 404, 200, 200),
    ("cms_editor", 201, 200, 204, 404, 200, 200),
    ("superuser", 201, 200, 204, 404, 200, 200),
    ("anonymous", 400, 401, 401, 401, 200, 200),
]
ACCOUNT_API_COLUMNS = ("token_obtain", "tokens", "token_revoke_own", "token_revoke_other", "schema", "docs")

# Every route under /api/ that the matrix declares. test_every_api_route_is_in_the_persona_matrix
# fails when the resolver knows a route that is not here.
COVERED_API_ROUTES = {
    "api/v1/patients/",
    "api/v1/patients/<uuid:uuid>/",
    "api/v1/me/patient/",
    "api/v1/me/",
    "api/v1/patients/<uuid:uuid>/records/",
    "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/",
    "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/amend/",
    "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/entered-in-error/",
    "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/verify/",
    "api/v1/me/records/",
    "api/v1/me/records/<uuid:record_uuid>/",
    "api/v1/patients/<uuid:uuid>/documents/",
    "api/v1/patients/<uuid:uuid>/documents/<uuid:document_uuid>/download/",
    "api/v1/me/documents/",
    "api/v1/me/documents/<uuid:document_uuid>/download/",
    "api/v1/patients/<uuid:uuid>/appointments/",
    "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/",
    "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/reschedule/",
    "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/cancel/",
    "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/complete/",
    "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/no-show/",
    "api/v1/me/appointments/",
    "api/v1/me/appointments/<uuid:appointment_uuid>/",
    "api/v1/patients/<uuid:uuid>/prescriptions/",
    "api/v1/patients/<uuid:uuid>/prescriptions/<uuid:prescription_uuid>/",
    "api/v1/patients/<uuid:uuid>/prescriptions/<uuid:prescription_uuid>/signed-copy/",
    "api/v1/me/prescriptions/",
    "api/v1/me/prescriptions/<uuid:prescription_uuid>/",
    "api/v1/auth/token/",
    "api/v1/auth/tokens/",
    "api/v1/auth/tokens/<uuid:token_id>/",
    "api/schema/",
    "api/docs/",
}

# Personas allowed to see P: exactly those the matrix lets read P's detail.
SEES_P = frozenset(row[0] for row in PATIENT_API_MATRIX if row[2] == 200)
CHANGES_P = frozenset(row[0] for row in PATIENT_API_MATRIX if row[3] == 200)


# =====================================================================================
# The admin matrix
# =====================================================================================

# Cells: True / False = 200 and P listed or not; a set = 200 and exactly the rows of
# those institutions (memberships) or patients (grants, break-the-glass reviews);
# otherwise the status or redirect.
# Columns: persona, patient change list, P's change page, P's history page, patient autocomplete,
# break-the-glass page, membership change list, grant change list, break-the-glass review queue,
# role matrix, the page of P's medical record R, the page of P's appointment V, the primary
# doctor's day view on V's day (True / False: V listed or not), the page of P's prescription RX.
ADMIN_MATRIX = [
    ("primary_doctor", True, 200, 200, True, 200, 403, 403, 403, 403, 200, 200, True, 200),
    ("nurse_a", True, 200, 200, True, 200, 403, 403, 403, 403, 200, 200, True, 200),
    ("doctor_b", False, TO_INDEX, TO_INDEX, False, 200, 403, 403, 403, 403, TO_INDEX, TO_INDEX, False, TO_INDEX),
    ("inst_admin_a", True, 200, 200, True, 403, {"A"}, {"P"}, {"P"}, 403, 200, 200, True, 200),
    ("care_team", True, 200, 200, True, 200, 403, 403, 403, 403, 200, 200, True, 200),
    ("expired_care_team", False, TO_INDEX, TO_INDEX, False, 200, *[403] * 4, TO_INDEX, TO_INDEX, False, TO_INDEX),
    ("break_glass", True, 200, 200, True, 200, 403, 403, 403, 403, 200, 200, True, 200),
    ("expired_break_glass", False, TO_INDEX, TO_INDEX, False, 200, *[403] * 4, TO_INDEX, TO_INDEX, False, TO_INDEX),
    ("ended_membership", False, TO_INDEX, TO_INDEX, False, 200, *[403] * 4, TO_INDEX, TO_INDEX, False, TO_INDEX),
    ("no_mfa", *[TO_MFA] * 13),
    ("patient_p", *[TO_LOGIN] * 13),
    ("patient_q", *[TO_LOGIN] * 13),
    ("cms_admin", 403, 403, TO_INDEX, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403),
    ("cms_editor", 403, 403, TO_INDEX, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403),
    ("superuser", True, 200, 200, True, 200, {"A", "B"}, {"P", "Q"}, {"P", "Q"}, 200, 200, 200, True, 200),
    ("anonymous", *[TO_LOGIN] * 13),
]
ADMIN_COLUMNS = (
    "patient_changelist",
    "patient_change",
    "patient_history",
    "patient_autocomplete",
    "break_glass",
    "membership_changelist",
    "grant_changelist",
    "review_changelist",
    "role_matrix",
    "record_change",
    "appointment_change",
    "appointment_day",
    "prescription_change",
)

# Every model registered in the admin, with the lookup from its rows to their patient
# (None: the rows belong to no patient). test_every_admin_model_is_in_the_persona_matrix
# fails when the registry holds a model that is not here; test_every_admin_changelist_*
# runs each one for every persona.
COVERED_ADMIN_MODELS: dict[str, str | None] = {
    "accounts.ApiToken": None,
    "accounts.User": None,
    "auditlog.LogEntry": None,
    "auth.Group": None,
    "axes.AccessAttempt": None,
    "axes.AccessFailureLog": None,
    "axes.AccessLog": None,
    "clinical.Address": "patient",
    "clinical.Appointment": "patient",
    "clinical.BloodCompatibility": None,
    "clinical.BloodType": None,
    "clinical.BreakGlassReview": "grant__content_object",
    "clinical.Country": None,
    "clinical.Doctor": None,
    "clinical.Document": "patient",
    "clinical.Email": "patient",
    "clinical.EmailType": None,
    "clinical.Gender": None,
    "clinical.HealthProfile": "patient",
    "clinical.InstitutionMembership": None,
    "clinical.InstitutionType": None,
    "clinical.MedicalCondition": None,
    "clinical.MedicalInstitution": None,
    "clinical.MedicalRecord": "patient",
    "clinical.Medication": None,
    "clinical.Patient": "pk",
    "clinical.PatientAllergy": "patient",
    "clinical.PatientCondition": "patient",
    "clinical.PatientMedication": "patient",
    "clinical.PatientUserObjectPermission": "content_object",
    "clinical.Phone": "patient",
    "clinical.PhoneType": None,
    "clinical.Prescription": "patient",
    "clinical.Region": None,
    "clinical.Sex": None,
    "clinical.Specialty": None,
    "clinical.SpecialtyCategory": None,
    "cms.SystemSetting": None,
}


# =====================================================================================
# The world
# =====================================================================================


def _add_role(user: Any, role: str) -> Any:
    user.groups.add(Group.objects.get(name=role))
    return get_user_model().objects.get(pk=user.pk)  # fresh: no stale permission cache


class _Maker:
    """The conftest factories, usable outside a test (the world is built once per module)."""

    def __init__(self) -> None:
        self.serial = itertools.count(1)
        self.ref = SimpleNamespace(
            female=Sex.objects.get(code="female"),
            male=Sex.objects.get(code="male"),
            specialty=Specialty.objects.order_by("id").first(),
            institution_type=InstitutionType.objects.order_by("id").first(),
            country=Country.objects.get(alpha2="US"),
            email_type=EmailType.objects.order_by("id").first(),
            phone_type=PhoneType.objects.order_by("id").first(),
        )

    def user(self, **fields: Any) -> Any:
        fields.setdefault("email", f"matrix.persona{next(self.serial)}@example.org")
        return get_user_model().objects.create_user(password=PASSWORD, **fields)

    def institution(self, name: str) -> Any:
        return services.institution_create(
            name=name,
            code=f"matrix-{name.lower().replace(' ', '-')}",
            institution_type=self.ref.institution_type,
            country=self.ref.country,
            time_zone="America/New_York",
        )

    def doctor(self, institution: Any) -> Any:
        """A doctor, in the Doctor group (doctor_register does not add the role)."""
        n = next(self.serial)
        doctor = services.doctor_register(
            email=f"matrix.doctor{n}@example.org",
            first_name="Ada",
            last_name=f"Doctor{n}",
            institution=institution,
            specialty=self.ref.specialty,
            license_number=f"MATRIX-{n:06d}",
            password=PASSWORD,
        )
        doctor.user.groups.add(Group.objects.get(name="Doctor"))
        return doctor

    def patient(self, doctor: Any, **fields: Any) -> Patient:
        values = {
            "first_name": "Grace",
            "last_name": f"Patient{next(self.serial)}",
            "date_of_birth": datetime.date(1980, 5, 17),
            "sex": self.ref.female,
            **fields,
        }
        return services.patient_register(doctor=doctor, **values)

    def staff(self, role: str, institution: Any = None) -> Any:
        user = self.user(is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        if institution is not None:
            membership_role = {"Doctor": "doctor", "Nurse": "nurse", "Institution Admin": "institution_admin"}[role]
            services.membership_start(user=user, institution=institution, role=membership_role)
        return user


def build_world() -> SimpleNamespace:
    """Institutions A and B, patient P at A (with a row in every patient list), patient Q at B,
    and every persona of the matrix."""
    from cms.services import roles_sync

    roles_sync()
    make = _Maker()
    ref = make.ref
    now = timezone.now()
    a, b = make.institution("Clinic A"), make.institution("Clinic B")
    superuser = get_user_model().objects.create_superuser("root.matrix@example.org", PASSWORD)

    primary = make.doctor(a)
    doctor_b = make.doctor(b)

    p = make.patient(
        primary,
        last_name=P_LAST_NAME,
        mrn=P_MRN,
        portal_email="zbyszewska.portal@example.org",
        portal_password=PASSWORD,
        emails=[{"address": "zbyszewska@example.org", "email_type": ref.email_type, "is_primary": True}],
        phones=[{"number": "+14155550123", "phone_type": ref.phone_type, "is_primary": True}],
        addresses=[{"line1": "1 Zbyszewska Lane", "city": "Springfield", "country": ref.country}],
    )
    PatientCondition.objects.create(
        patient=p,
        condition=MedicalCondition.objects.order_by("code").first(),
        onset_date=datetime.date(2020, 1, 1),
        diagnosed_by=primary,
    )
    PatientMedication.objects.create(
        patient=p,
        medication=Medication.objects.order_by("id").first(),
        dose="1 tablet",
        route="oral",
        frequency="daily",
        start_date=datetime.date(2021, 1, 1),
        prescribed_by=primary,
    )
    PatientAllergy.objects.create(patient=p, substance="Peanut", category="food", severity="severe")
    # P's portal account owns a phone too (users own phones; the user table holds none).
    Phone.objects.create(user=p.user, number="+14155550199", phone_type=ref.phone_type, is_primary=True)

    q = make.patient(
        doctor_b,
        first_name="Quentin",
        last_name="Okonkwo",
        sex=ref.male,
        portal_email="okonkwo.portal@example.org",
        portal_password=PASSWORD,
    )

    nurse_a = make.staff("Nurse", a)
    inst_admin_a = make.staff("Institution Admin", a)

    care_team = make.staff("Nurse")  # no membership at A
    services.grant_create(patient=p, user=care_team, kind="view", granted_by=inst_admin_a, reason="Covers nights")

    expired_care_team = make.staff("Nurse")
    old = services.grant_create(
        patient=p,
        user=expired_care_team,
        kind="view",
        granted_by=inst_admin_a,
        reason="Covered a week in March",
        expires_at=now + datetime.timedelta(hours=1),
    )
    PatientUserObjectPermission.objects.filter(pk=old.pk).update(
        created_at=now - datetime.timedelta(days=10), expires_at=now - datetime.timedelta(days=3)
    )

    break_glass = make.doctor(b).user
    services.break_glass_open(user=break_glass, patient=p, reason="Unconscious in the emergency room")

    expired_break_glass = make.doctor(b).user
    old = services.break_glass_open(user=expired_break_glass, patient=p, reason="Night admission last month")
    opened = now - datetime.timedelta(days=30)
    PatientUserObjectPermission.objects.filter(pk=old.pk).update(
        created_at=opened, expires_at=opened + datetime.timedelta(hours=services.BREAK_GLASS_HOURS)
    )

    ended_membership = make.staff("Nurse", a)
    services.membership_end(membership=InstitutionMembership.objects.get(user=ended_membership))

    no_mfa = make.staff("Doctor", a)

    # Rows about Q that A's institution admin must not see: a grant and a break-the-glass at B.
    services.grant_create(patient=q, user=primary.user, kind="view", granted_by=superuser, reason="Second opinion")
    services.break_glass_open(user=nurse_a, patient=q, reason="Collapsed in the lobby")

    users = {
        "primary_doctor": primary.user,
        "nurse_a": nurse_a,
        "doctor_b": doctor_b.user,
        "inst_admin_a": inst_admin_a,
        "care_team": care_team,
        "expired_care_team": expired_care_team,
        "break_glass": break_glass,
        "expired_break_glass": expired_break_glass,
        "ended_membership": ended_membership,
        "no_mfa": no_mfa,
        "patient_p": p.user,
        "patient_q": q.user,
        "cms_admin": make.staff("CMS Admin"),
        "cms_editor": make.staff("CMS Editor"),
        "superuser": superuser,
        "anonymous": None,
    }
    assert list(users) == list(PERSONAS)
    # Every staff persona but one has enrolled an authenticator app.
    for name, user in users.items():
        if user is not None and user.is_staff and name != STAFF_WITHOUT_MFA:
            AuthenticatorApp.objects.create(user=user, name="Phone", confirmed=True)
    foreign_token, _secret = api_token_create(user=make.user(email="bystander@example.org"), name="someone else's")

    # The world is what the personas say it is.
    active = PatientUserObjectPermission.objects.active().filter(content_object=p)
    assert set(active.values_list("user_id", flat=True)) == {care_team.pk, break_glass.pk}
    assert not InstitutionMembership.objects.active().filter(user=ended_membership).exists()
    assert not AuthenticatorApp.objects.filter(user=no_mfa).exists()

    p_record = services.record_create(
        patient=p,
        record_type="vital_signs",
        payload=fhir.build_vital_signs(kind="8867-4", value=72, effective=now, patient_reference=f"Patient/{p.uuid}"),
        author=primary.user,
    )

    p_document = services.document_upload(
        patient=p,
        upload=SimpleUploadedFile("zbyszewska-referral.txt", P_DOCUMENT_BYTES),
        kind="lab_report",
        uploaded_by=primary.user,
        medical_record=p_record,
    )

    # P's care: V (completed, with prescription RX), O (begun an hour ago), F (in three days).
    def visit(starts_at: datetime.datetime, **fields: Any) -> Appointment:
        (row,) = Appointment.objects.bulk_create(
            [
                Appointment(
                    patient=p,
                    doctor=primary,
                    institution=a,
                    starts_at=starts_at,
                    ends_at=starts_at + datetime.timedelta(minutes=30),
                    **fields,
                )
            ]
        )
        return row

    p_visit = visit(
        now - datetime.timedelta(days=3), status="completed", outcome_recorded_by=primary.user, outcome_recorded_at=now
    )
    p_open_visit = visit(now - datetime.timedelta(hours=1))
    p_future_visit = appointments.appointment_book(
        patient=p,
        doctor=primary,
        institution=a,
        starts_at=now + datetime.timedelta(days=3),
        ends_at=now + datetime.timedelta(days=3, minutes=30),
        reason="Follow-up for Ms Zbyszewska",
        booked_by=nurse_a,
    )
    p_prescription = prescriptions.prescription_issue(
        appointment=p_visit,
        items=[
            {
                "medication": Medication.objects.order_by("id").first(),
                "dose": "1 tablet",
                "frequency": "once_daily",
                "duration_days": 30,
                "quantity": 30,
            }
        ],
        issued_by=primary.user,
    )

    return SimpleNamespace(
        A=a,
        B=b,
        P=p,
        Q=q,
        p_record=p_record.uuid,
        p_document=p_document.uuid,
        p_visit=p_visit.uuid,
        p_open_visit=p_open_visit.uuid,
        p_future_visit=p_future_visit.uuid,
        p_prescription=p_prescription.uuid,
        p_record_count=MedicalRecord.objects.filter(patient=p).count(),
        ledger_count=LedgerEntry.objects.count(),
        doctors={"primary_doctor": primary, "doctor_b": doctor_b},
        user_ids={name: (user.pk if user is not None else None) for name, user in users.items()},
        own_patient={"patient_p": p, "patient_q": q},
        foreign_token=foreign_token,
        institutions={"A": a, "B": b},
        patients={"P": p, "Q": q},
    )


@pytest.fixture(scope="module")
def _media_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The default storage in a folder of this module's own, so its documents' files go with it."""
    root = tmp_path_factory.mktemp("matrix-media")
    storages = {**settings.STORAGES, "default": {"BACKEND": FILE_SYSTEM_STORAGE, "OPTIONS": {"location": str(root)}}}
    with override_settings(STORAGES=storages):
        yield root


@pytest.fixture(scope="module")
def _world_once(django_db_setup: Any, django_db_blocker: Any, _media_once: Path) -> Iterator[SimpleNamespace]:
    """Built once for the module inside a transaction that is rolled back at the end; every test
    runs in a savepoint of it (pytest-django's per-test atomic), so no test sees another's writes."""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            built = build_world()
        except BaseException:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            raise
    yield built
    with django_db_blocker.unblock():
        transaction.set_rollback(True)
        outer.__exit__(None, None, None)


@pytest.fixture
def world(_world_once: SimpleNamespace, _media_once: Path, db: Any) -> SimpleNamespace:
    """One test's view of the world: rows re-read, so no test inherits another's in-memory state."""
    users_by_pk = get_user_model().objects.in_bulk([pk for pk in _world_once.user_ids.values() if pk])
    fresh = SimpleNamespace(**vars(_world_once))
    fresh.media = _media_once
    fresh.users = {name: users_by_pk.get(pk) for name, pk in _world_once.user_ids.items()}
    owners = {pk: name for name, pk in _world_once.user_ids.items() if pk}
    fresh.devices = {owners[d.user_id]: d for d in AuthenticatorApp.objects.filter(user_id__in=owners, confirmed=True)}
    for name in ("A", "B", "P", "Q", "foreign_token"):
        setattr(fresh, name, type(getattr(fresh, name)).objects.get(pk=getattr(fresh, name).pk))
    fresh.institutions = {"A": fresh.A, "B": fresh.B}
    fresh.patients = {"P": fresh.P, "Q": fresh.Q}
    fresh.own_patient = {"patient_p": fresh.P, "patient_q": fresh.Q}
    fresh.doctors = {name: type(d).objects.get(pk=d.pk) for name, d in _world_once.doctors.items()}
    return fresh


# =====================================================================================
# Clients
# =====================================================================================


def bearer(secret: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {secret}")


def password_only_session(user: Any) -> Client:
    """A staff user who typed their password in the admin form and stopped at the MFA step."""
    client = Client()
    response = client.post(
        reverse("admin:login"), {"username": user.email, "password": PASSWORD, "next": reverse("admin:index")}
    )
    assert response.status_code == 302, "the admin login form refused the password"
    return client


def api_client(world: SimpleNamespace, persona: str) -> Client:
    """How the persona reaches the API: a token, except anonymous (nothing) and the staff member
    without MFA, who cannot obtain a token and has only a session that never passed MFA."""
    user = world.users[persona]
    if user is None:
        return Client()
    if persona == STAFF_WITHOUT_MFA:
        return password_only_session(user)
    _token, secret = api_token_create(user=user)
    return bearer(secret)


def admin_client(world: SimpleNamespace, persona: str, staff_client_factory: Callable[..., Client]) -> Client:
    """Staff sign in through the real login + TOTP path; others as they can."""
    user = world.users[persona]
    if user is None:
        return Client()
    if persona == STAFF_WITHOUT_MFA:
        return password_only_session(user)
    if not user.is_staff:
        client = Client()
        client.force_login(user)
        return client
    return staff_client_factory(user)


# =====================================================================================
# API endpoints and checks
# =====================================================================================


def detail_url(patient: Patient) -> str:
    return reverse("v1:patient-detail", args=[patient.uuid])


def mentions_p(response: Any) -> bool:
    body = response.content.decode().lower()
    return P_LAST_NAME.lower() in body or P_MRN.lower() in body


@dataclass(frozen=True)
class Endpoint:
    route: str
    call: Callable[[SimpleNamespace, str], Any]
    check: Callable[[SimpleNamespace, str, Any, Any], None]


def _status(response: Any) -> int:
    return response.status_code


# Patient routes -----------------------------------------------------------------------


def call_patients(world, persona):
    return api_client(world, persona).get(reverse("v1:patient-list"), {"page_size": 200})


def check_patients(world, persona, response, expected):
    status, listed = expected
    assert _status(response) == status, response.content
    if status == 200:
        ids = [row["id"] for row in response.json()["results"]]
        assert (str(world.P.uuid) in ids) is listed
        if not listed:
            assert not mentions_p(response)
        if persona in world.own_patient:  # a patient's list holds their own record and nothing else
            assert ids == [str(world.own_patient[persona].uuid)]


def call_patient_detail(world, persona):
    return api_client(world, persona).get(detail_url(world.P))


def check_patient_detail(world, persona, response, expected):
    assert _status(response) == expected, response.content
    if expected == 200:
        assert response.json()["id"] == str(world.P.uuid)
        assert response.json()["last_name"] == P_LAST_NAME
    else:
        assert not mentions_p(response)


def call_patient_update(world, persona):
    return api_client(world, persona).patch(detail_url(world.P), {"first_name": "X"}, content_type="application/json")


def check_patient_update(world, persona, response, expected):
    assert _status(response) == expected, response.content
    world.P.refresh_from_db()
    if expected == 200:
        assert response.json()["first_name"] == "X"
        assert world.P.first_name == "X"
    else:
        assert world.P.first_name == "Grace"
        if expected != 403:
            assert not mentions_p(response)


def call_my_patient(world, persona):
    return api_client(world, persona).get(reverse("v1:my-patient"))


def check_my_patient(world, persona, response, expected):
    assert _status(response) == expected, response.content
    if expected == 200:
        assert response.json()["id"] == str(world.own_patient[persona].uuid)
    elif persona != "patient_p":
        assert not mentions_p(response)


def call_me(world, persona):
    return api_client(world, persona).get(reverse("v1:me"))


def check_me(world, persona, response, expected):
    assert _status(response) == expected, response.content
    if expected == 200:
        assert response.json()["email"] == world.users[persona].email


# Medical record routes -------------------------------------------------------------------


def _record_url(world: SimpleNamespace, name: str) -> str:
    return reverse(f"v1:{name}", args=[world.P.uuid, world.p_record])


def _heart_rate(world: SimpleNamespace, bpm: int) -> dict[str, Any]:
    return fhir.build_vital_signs(
        kind="8867-4", value=bpm, effective=timezone.now(), patient_reference=f"Patient/{world.P.uuid}"
    )


def _post(world, persona, url, body):
    return api_client(world, persona).post(url, body, content_type="application/json")


def call_records(world, persona):
    return api_client(world, persona).get(reverse("v1:record-list", args=[world.P.uuid]))


def call_record_detail(world, persona):
    return api_client(world, persona).get(_record_url(world, "record-detail"))


def call_record_create(world, persona):
    body = {"record_type": "vital_signs", "payload": _heart_rate(world, 80)}
    return _post(world, persona, reverse("v1:record-list", args=[world.P.uuid]), body)


def call_record_amend(world, persona):
    body = {"payload": _heart_rate(world, 75), "reason": "Re-measured at rest"}
    return _post(world, persona, _record_url(world, "record-amend"), body)


def call_record_entered_in_error(world, persona):
    return _post(world, persona, _record_url(world, "record-entered-in-error"), {"reason": "Wrong patient"})


def call_record_verify(world, persona):
    return _post(world, persona, _record_url(world, "record-verify"), {})


def call_my_records(world, persona):
    return api_client(world, persona).get(reverse("v1:my-record-list"))


def call_my_record(world, persona):
    return api_client(world, persona).get(reverse("v1:my-record-detail", args=[world.p_record]))


def check_record_call(world, persona, response, expected):
    """The status; a refusal reveals nothing of P and changes nothing; a success shows R or its successor."""
    from clinical.models import LedgerEntry, MedicalRecord

    assert _status(response) == expected, response.content
    if expected in (200, 201):
        body = response.json()
        rows = body.get("results", [body])
        if persona == "patient_q" and "results" in body:
            assert rows == []
            return
        assert all(row["patient"] == str(world.P.uuid) for row in rows)
        assert all(row["ledger_entry"] for row in rows)
        return
    assert not mentions_p(response)
    assert str(world.p_record) not in response.content.decode()
    assert MedicalRecord.objects.filter(patient=world.P).count() == world.p_record_count
    assert MedicalRecord.objects.get(uuid=world.p_record).status == "current"
    assert LedgerEntry.objects.count() == world.ledger_count


# Document routes ----------------------------------------------------------------------------

UPLOADED_BYTES = b"Blood pressure 120/80 mmHg, measured at home.\n"


def _stored_files(world: SimpleNamespace) -> set[str]:
    return {str(path.relative_to(world.media)) for path in world.media.rglob("*") if path.is_file()}


def _upload(world, persona, url):
    world.files_before = _stored_files(world)
    body = {"file": SimpleUploadedFile("home-reading.txt", UPLOADED_BYTES), "kind": "other"}
    return api_client(world, persona).post(url, body)


def call_documents(world, persona):
    return api_client(world, persona).get(reverse("v1:document-list", args=[world.P.uuid]))


def call_document_upload(world, persona):
    return _upload(world, persona, reverse("v1:document-list", args=[world.P.uuid]))


def call_document_download(world, persona):
    return api_client(world, persona).get(reverse("v1:document-download", args=[world.P.uuid, world.p_document]))


def call_my_documents(world, persona):
    return api_client(world, persona).get(reverse("v1:my-document-list"))


def call_my_document_upload(world, persona):
    return _upload(world, persona, reverse("v1:my-document-list"))


def call_my_document_download(world, persona):
    return api_client(world, persona).get(reverse("v1:my-document-download", args=[world.p_document]))


def check_document_call(world, persona, response, expected):
    """The status; a download is P's file; an upload lands on the right patient and its file can be
    fetched back; a refusal reveals nothing of P and leaves storage and database as they were."""
    from clinical.files import discard, open_plaintext
    from clinical.models import Document

    assert _status(response) == expected, getattr(response, "content", b"")
    if expected == 200 and "download" in response.request["PATH_INFO"]:
        assert b"".join(response.streaming_content) == P_DOCUMENT_BYTES
        assert response["Content-Disposition"] == 'attachment; filename="zbyszewska-referral.txt"'
        assert response["X-Content-Type-Options"] == "nosniff"
        return
    if expected == 200:
        rows = response.json()["results"]
        owner = world.own_patient.get(persona, world.P) if "/me/" in response.request["PATH_INFO"] else world.P
        owned = Document.objects.filter(patient=owner).order_by("-created_at", "-id").values_list("uuid", flat=True)
        assert [row["id"] for row in rows] == [str(uuid) for uuid in owned]
        if owner == world.P:
            assert rows[0]["id"] == str(world.p_document)
        assert all("storage_key" not in row for row in rows)
        return
    if expected == 201:
        body = response.json()
        owner = world.own_patient.get(persona, world.P) if "/me/" in response.request["PATH_INFO"] else world.P
        assert body["patient"] == str(owner.uuid)
        assert "storage_key" not in body
        document = Document.objects.get(uuid=body["id"])
        from django.core.files.storage import default_storage

        with open_plaintext(default_storage, document.storage_key, document_uuid=document.uuid) as stream:
            assert b"".join(stream) == UPLOADED_BYTES
        discard(default_storage, document.storage_key)  # the world's transaction forgets the row, not the file
        return
    assert not mentions_p(response)
    assert str(world.p_document) not in response.content.decode()
    assert Document.objects.count() == 1
    if hasattr(world, "files_before"):
        assert _stored_files(world) == world.files_before


# Care routes ---------------------------------------------------------------------------------


def _care_url(world: SimpleNamespace, name: str, target: str) -> str:
    return reverse(f"v1:{name}", args=[world.P.uuid, getattr(world, target)])


def call_appointments(world, persona):
    return api_client(world, persona).get(reverse("v1:appointment-list", args=[world.P.uuid]))


def call_appointment_detail(world, persona):
    return api_client(world, persona).get(_care_url(world, "appointment-detail", "p_visit"))


def call_appointment_book(world, persona):
    start = (timezone.now() + datetime.timedelta(days=5)).replace(microsecond=0)
    body = {
        "doctor": str(world.doctors["primary_doctor"].uuid),
        "starts_at": start.isoformat(),
        "ends_at": (start + datetime.timedelta(minutes=20)).isoformat(),
        "reason": "Cough",
    }
    return _post(world, persona, reverse("v1:appointment-list", args=[world.P.uuid]), body)


def call_appointment_reschedule(world, persona):
    start = (timezone.now() + datetime.timedelta(days=4)).replace(microsecond=0)
    body = {"starts_at": start.isoformat(), "ends_at": (start + datetime.timedelta(minutes=30)).isoformat()}
    return _post(world, persona, _care_url(world, "appointment-reschedule", "p_future_visit"), body)


def call_appointment_cancel(world, persona):
    return _post(world, persona, _care_url(world, "appointment-cancel", "p_future_visit"), {"reason": "Feels better"})


def call_appointment_complete(world, persona):
    return _post(world, persona, _care_url(world, "appointment-complete", "p_open_visit"), {})


def call_appointment_no_show(world, persona):
    return _post(world, persona, _care_url(world, "appointment-no-show", "p_open_visit"), {})


def call_my_appointments(world, persona):
    return api_client(world, persona).get(reverse("v1:my-appointment-list"))


def call_my_appointment(world, persona):
    return api_client(world, persona).get(reverse("v1:my-appointment-detail", args=[world.p_visit]))


def call_prescriptions(world, persona):
    return api_client(world, persona).get(reverse("v1:prescription-list", args=[world.P.uuid]))


def call_prescription_detail(world, persona):
    return api_client(world, persona).get(_care_url(world, "prescription-detail", "p_prescription"))


def call_prescription_issue(world, persona):
    body = {
        "appointment": str(world.p_open_visit),
        "items": [
            {
                "medication": str(Medication.objects.order_by("id").first().uuid),
                "dose": "2 tablets",
                "frequency": "twice_daily",
                "duration_days": 5,
                "quantity": 20,
            }
        ],
    }
    return _post(world, persona, reverse("v1:prescription-list", args=[world.P.uuid]), body)


def call_prescription_signed_copy(world, persona):
    world.files_before = _stored_files(world)
    body = {"file": SimpleUploadedFile("signed.txt", b"Signed by Dr Doctor on paper.\n")}
    return api_client(world, persona).post(_care_url(world, "prescription-signed-copy", "p_prescription"), body)


def call_my_prescriptions(world, persona):
    return api_client(world, persona).get(reverse("v1:my-prescription-list"))


def call_my_prescription(world, persona):
    return api_client(world, persona).get(reverse("v1:my-prescription-detail", args=[world.p_prescription]))


def _care_state(world: SimpleNamespace) -> tuple[Any, ...]:
    from clinical.models import Document, Prescription

    visits = Appointment.objects.filter(patient=world.P).order_by("id")
    return (
        list(visits.values_list("uuid", "status", "starts_at", "ends_at")),
        list(Prescription.objects.values_list("uuid", flat=True)),
        Document.objects.count(),
        _stored_files(world),
    )


def check_care_call(world, persona, response, expected):
    """The status; a success shows only the right patient's rows; a refusal reveals nothing of P
    and changes nothing (appointments, prescriptions, documents, stored files)."""
    from clinical.models import Document, Prescription

    assert _status(response) == expected, response.content
    path = response.request["PATH_INFO"]
    if expected == 200:
        body = response.json()
        rows = body.get("results", [body])
        if "/me/" in path and persona == "patient_q":
            assert rows == []
            return
        assert rows and all(row["patient"] == str(world.P.uuid) for row in rows)
        if path.endswith("/cancel/"):
            assert rows[0]["status"] == "cancelled"
        if path.endswith("/complete/"):
            assert rows[0]["status"] == "completed"
        if path.endswith("/no-show/"):
            assert rows[0]["status"] == "no_show"
        return
    if expected == 201:
        body = response.json()
        assert body["patient"] == str(world.P.uuid)
        if path.endswith("/signed-copy/"):
            document = Document.objects.get(uuid=body["id"])
            assert document.prescription.uuid == world.p_prescription
            from django.core.files.storage import default_storage

            from clinical.files import discard

            discard(default_storage, document.storage_key)  # the world's transaction forgets the row, not the file
        elif "/prescriptions/" in path:
            assert Prescription.objects.get(uuid=body["id"]).appointment.uuid == world.p_open_visit
            assert len(body["items"]) == 1 and body["items"][0]["medical_record"]
        else:
            assert body["status"] == "scheduled" and body["reason"] == "Cough"
        return
    assert not mentions_p(response)
    assert "Zbyszewska" not in response.content.decode()
    visits = Appointment.objects.filter(patient=world.P)
    assert visits.count() == 3
    assert set(visits.values_list("status", flat=True)) == {"completed", "scheduled"}
    assert list(Prescription.objects.values_list("uuid", flat=True)) == [world.p_prescription]
    if hasattr(world, "files_before"):
        assert _stored_files(world) == world.files_before


# Account and documentation routes ---------------------------------------------------------


def call_token_obtain(world, persona):
    user = world.users[persona]
    if user is None:
        body = {"email": "nobody@example.org", "password": PASSWORD}
    else:
        body = {"email": user.email, "password": PASSWORD}
        if persona in world.devices:
            body["otp"] = totp_code(world.devices[persona])
    return Client().post(reverse("v1:auth-token"), body, content_type="application/json")


def check_token_obtain(world, persona, response, expected):
    assert _status(response) == expected, response.content
    if expected == 201:
        secret = response.json()["token"]
        assert bearer(secret).get(reverse("v1:me")).json()["email"] == world.users[persona].email
    user = world.users[persona]
    if expected != 201 and user is not None:
        assert not ApiToken.objects.filter(user=user).exists()


def call_tokens(world, persona):
    return api_client(world, persona).get(reverse("v1:auth-tokens"))


def check_tokens(world, persona, response, expected):
    assert _status(response) == expected, response.content
    if expected == 200:
        mine = set(ApiToken.objects.filter(user=world.users[persona]).values_list("prefix", flat=True))
        listed = {row["prefix"] for row in response.json()}
        assert listed and listed <= mine
        assert world.foreign_token.prefix not in listed


def call_token_revoke_own(world, persona):
    user = world.users[persona] or get_user_model().objects.get(email="bystander@example.org")
    spare, _secret = api_token_create(user=user, name="spare")
    world.spare_token = spare
    return api_client(world, persona).delete(reverse("v1:auth-token-detail", args=[spare.uuid]))


def check_token_revoke_own(world, persona, response, expected):
    assert _status(response) == expected, response.content
    world.spare_token.refresh_from_db()
    assert (world.spare_token.revoked_at is not None) is (expected == 204)


def call_token_revoke_other(world, persona):
    return api_client(world, persona).delete(reverse("v1:auth-token-detail", args=[world.foreign_token.uuid]))


def check_token_revoke_other(world, persona, response, expected):
    assert _status(response) == expected, response.content
    world.foreign_token.refresh_from_db()
    assert world.foreign_token.revoked_at is None


def call_schema(world, persona):
    return api_client(world, persona).get(reverse("schema"))


def call_docs(world, persona):
    return api_client(world, persona).get(reverse("api-docs"))


def check_status_only(world, persona, response, expected):
    assert _status(response) == expected


API_ENDPOINTS = {
    "patients": Endpoint("api/v1/patients/", call_patients, check_patients),
    "patient_detail": Endpoint("api/v1/patients/<uuid:uuid>/", call_patient_detail, check_patient_detail),
    "patient_update": Endpoint("api/v1/patients/<uuid:uuid>/", call_patient_update, check_patient_update),
    "my_patient": Endpoint("api/v1/me/patient/", call_my_patient, check_my_patient),
    "me": Endpoint("api/v1/me/", call_me, check_me),
    "records": Endpoint("api/v1/patients/<uuid:uuid>/records/", call_records, check_record_call),
    "record_detail": Endpoint(
        "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/", call_record_detail, check_record_call
    ),
    "record_create": Endpoint("api/v1/patients/<uuid:uuid>/records/", call_record_create, check_record_call),
    "record_amend": Endpoint(
        "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/amend/", call_record_amend, check_record_call
    ),
    "record_entered_in_error": Endpoint(
        "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/entered-in-error/",
        call_record_entered_in_error,
        check_record_call,
    ),
    "record_verify": Endpoint(
        "api/v1/patients/<uuid:uuid>/records/<uuid:record_uuid>/verify/", call_record_verify, check_record_call
    ),
    "my_records": Endpoint("api/v1/me/records/", call_my_records, check_record_call),
    "my_record": Endpoint("api/v1/me/records/<uuid:record_uuid>/", call_my_record, check_record_call),
    "documents": Endpoint("api/v1/patients/<uuid:uuid>/documents/", call_documents, check_document_call),
    "document_upload": Endpoint("api/v1/patients/<uuid:uuid>/documents/", call_document_upload, check_document_call),
    "document_download": Endpoint(
        "api/v1/patients/<uuid:uuid>/documents/<uuid:document_uuid>/download/",
        call_document_download,
        check_document_call,
    ),
    "my_documents": Endpoint("api/v1/me/documents/", call_my_documents, check_document_call),
    "my_document_upload": Endpoint("api/v1/me/documents/", call_my_document_upload, check_document_call),
    "my_document_download": Endpoint(
        "api/v1/me/documents/<uuid:document_uuid>/download/", call_my_document_download, check_document_call
    ),
    "appointments": Endpoint("api/v1/patients/<uuid:uuid>/appointments/", call_appointments, check_care_call),
    "appointment_detail": Endpoint(
        "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/", call_appointment_detail, check_care_call
    ),
    "appointment_book": Endpoint("api/v1/patients/<uuid:uuid>/appointments/", call_appointment_book, check_care_call),
    "appointment_reschedule": Endpoint(
        "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/reschedule/",
        call_appointment_reschedule,
        check_care_call,
    ),
    "appointment_cancel": Endpoint(
        "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/cancel/",
        call_appointment_cancel,
        check_care_call,
    ),
    "appointment_complete": Endpoint(
        "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/complete/",
        call_appointment_complete,
        check_care_call,
    ),
    "appointment_no_show": Endpoint(
        "api/v1/patients/<uuid:uuid>/appointments/<uuid:appointment_uuid>/no-show/",
        call_appointment_no_show,
        check_care_call,
    ),
    "my_appointments": Endpoint("api/v1/me/appointments/", call_my_appointments, check_care_call),
    "my_appointment": Endpoint("api/v1/me/appointments/<uuid:appointment_uuid>/", call_my_appointment, check_care_call),
    "prescriptions": Endpoint("api/v1/patients/<uuid:uuid>/prescriptions/", call_prescriptions, check_care_call),
    "prescription_detail": Endpoint(
        "api/v1/patients/<uuid:uuid>/prescriptions/<uuid:prescription_uuid>/", call_prescription_detail, check_care_call
    ),
    "prescription_issue": Endpoint(
        "api/v1/patients/<uuid:uuid>/prescriptions/", call_prescription_issue, check_care_call
    ),
    "prescription_signed_copy": Endpoint(
        "api/v1/patients/<uuid:uuid>/prescriptions/<uuid:prescription_uuid>/signed-copy/",
        call_prescription_signed_copy,
        check_care_call,
    ),
    "my_prescriptions": Endpoint("api/v1/me/prescriptions/", call_my_prescriptions, check_care_call),
    "my_prescription": Endpoint(
        "api/v1/me/prescriptions/<uuid:prescription_uuid>/", call_my_prescription, check_care_call
    ),
    "token_obtain": Endpoint("api/v1/auth/token/", call_token_obtain, check_token_obtain),
    "tokens": Endpoint("api/v1/auth/tokens/", call_tokens, check_tokens),
    "token_revoke_own": Endpoint("api/v1/auth/tokens/<uuid:token_id>/", call_token_revoke_own, check_token_revoke_own),
    "token_revoke_other": Endpoint(
        "api/v1/auth/tokens/<uuid:token_id>/", call_token_revoke_other, check_token_revoke_other
    ),
    "schema": Endpoint("api/schema/", call_schema, check_status_only),
    "docs": Endpoint("api/docs/", call_docs, check_status_only),
}


def _cases(matrix: list[tuple[Any, ...]], columns: tuple[str, ...]) -> list[Any]:
    return [
        pytest.param(row[0], column, expected, id=f"{row[0]}-{column}")
        for row in matrix
        for column, expected in zip(columns, row[1:], strict=True)
    ]


API_CASES = (
    _cases(PATIENT_API_MATRIX, PATIENT_API_COLUMNS)
    + _cases(RECORD_API_MATRIX, RECORD_API_COLUMNS)
    + _cases(DOCUMENT_API_MATRIX, DOCUMENT_API_COLUMNS)
    + _cases(CARE_API_MATRIX, CARE_API_COLUMNS)
    + _cases(ACCOUNT_API_MATRIX, ACCOUNT_API_COLUMNS)
)


@pytest.mark.parametrize(("persona", "endpoint", "expected"), API_CASES)
def test_api_persona_matrix(world, persona, endpoint, expected):
    spec = API_ENDPOINTS[endpoint]
    response = spec.call(world, persona)
    spec.check(world, persona, response, expected)


# =====================================================================================
# Admin pages and checks
# =====================================================================================


def admin_url(model: Any, view: str, *args: Any) -> str:
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


ADMIN_PAGES: dict[str, Callable[[SimpleNamespace], tuple[str, dict[str, str]]]] = {
    "patient_changelist": lambda w: (admin_url(Patient, "changelist"), {}),
    "patient_change": lambda w: (admin_url(Patient, "change", w.P.pk), {}),
    "patient_history": lambda w: (admin_url(Patient, "auditlog", w.P.pk), {}),
    "patient_autocomplete": lambda w: (
        reverse("admin:autocomplete"),
        {"app_label": "clinical", "model_name": "patientcondition", "field_name": "patient", "term": P_LAST_NAME},
    ),
    "break_glass": lambda w: (reverse("admin:clinical_patient_break_glass"), {}),
    "membership_changelist": lambda w: (admin_url(InstitutionMembership, "changelist"), {}),
    "grant_changelist": lambda w: (admin_url(PatientUserObjectPermission, "changelist"), {}),
    "review_changelist": lambda w: (admin_url(BreakGlassReview, "changelist"), {}),
    "role_matrix": lambda w: (reverse("admin:cms_role_matrix"), {}),
    "record_change": lambda w: (
        admin_url(MedicalRecord, "change", MedicalRecord.objects.get(uuid=w.p_record).pk),
        {},
    ),
    "appointment_change": lambda w: (admin_url(Appointment, "change", _p_visit(w).pk), {}),
    "appointment_day": lambda w: (
        reverse("admin:clinical_appointment_day"),
        {"doctor": str(w.doctors["primary_doctor"].pk), "date": _p_visit(w).local_starts_at.date().isoformat()},
    ),
    "prescription_change": lambda w: (
        reverse("admin:clinical_prescription_change", args=[_p_prescription(w).pk]),
        {},
    ),
}
assert tuple(ADMIN_PAGES) == ADMIN_COLUMNS


def _p_visit(world: SimpleNamespace) -> Appointment:
    return Appointment.objects.select_related("institution").get(uuid=world.p_visit)


def _p_prescription(world: SimpleNamespace) -> Any:
    from clinical.models import Prescription

    return Prescription.objects.get(uuid=world.p_prescription)


def assert_answer(response: Any, expected: Any, path: str) -> None:
    """``expected`` is a status, a redirect shorthand, or (for list cells) 200."""
    if expected == TO_INDEX:
        assert response.status_code == 302, response.status_code
        assert response["Location"] == reverse("admin:index")
    elif expected == TO_LOGIN:
        assert response.status_code == 302, response.status_code
        assert response["Location"].startswith(reverse("admin:login"))
    elif expected == TO_MFA:
        assert response.status_code == 302, response.status_code
        assert response["Location"].startswith(reverse("accounts:mfa-setup"))
    else:
        assert response.status_code == expected, f"{path}: {response.status_code}"


def _labels(world: SimpleNamespace, objects: Any, kind: str) -> set[str]:
    names = {v.pk: k for k, v in (world.institutions if kind == "institution" else world.patients).items()}
    return {names.get(pk, f"other:{pk}") for pk in objects}


def check_admin_page(world, persona, column, response, expected):
    path = ADMIN_PAGES[column](world)[0]
    if isinstance(expected, bool):  # 200, and P listed or not
        assert_answer(response, 200, path)
        if column == "patient_autocomplete":
            offered = {row["id"] for row in response.json()["results"]}
            assert (str(world.P.pk) in offered) is expected
        elif column == "appointment_day":
            listed = {appointment.uuid for appointment in response.context["appointments"]}
            assert (world.p_visit in listed) is expected
        else:
            shown = list(response.context["cl"].result_list)
            assert (world.P in shown) is expected
        if not expected:
            assert not mentions_p(response)
        return
    if isinstance(expected, set):  # 200, and exactly the rows of these institutions / patients
        assert_answer(response, 200, path)
        rows = list(response.context["cl"].result_list)
        if column == "membership_changelist":
            assert _labels(world, {m.institution_id for m in rows}, "institution") == expected
        elif column == "grant_changelist":
            assert _labels(world, {g.content_object_id for g in rows}, "patient") == expected
        else:
            assert _labels(world, {r.grant.content_object_id for r in rows}, "patient") == expected
        return
    assert_answer(response, expected, path)
    if column == "patient_change" and expected == 200:
        editable = response.context["has_change_permission"]
        assert editable is (persona in CHANGES_P), "the change page's editability disagrees with the API's PATCH"
    if persona not in SEES_P:
        assert not mentions_p(response)


ADMIN_CASES = _cases(ADMIN_MATRIX, ADMIN_COLUMNS)


@pytest.mark.parametrize(("persona", "column", "expected"), ADMIN_CASES)
def test_admin_persona_matrix(world, staff_client_factory, persona, column, expected):
    client = admin_client(world, persona, staff_client_factory)
    path, params = ADMIN_PAGES[column](world)
    response = client.get(path, params)
    check_admin_page(world, persona, column, response, expected)


# Every admin model, every persona --------------------------------------------------------


def _model(label: str) -> Any:
    return next(model for model in admin.site._registry if model._meta.label == label)


@pytest.mark.parametrize("label", sorted(COVERED_ADMIN_MODELS))
def test_every_admin_changelist_answers_every_persona_without_revealing_p(world, staff_client_factory, label):
    """200 when the role may view or change the model, else 403 (staff without MFA: enrolment;
    non-staff: login). Pages shown to a persona outside P's policy never hold P's name or MRN;
    pages of P's rows shown to a persona inside it do list them."""
    model = _model(label)
    patient_lookup = COVERED_ADMIN_MODELS[label]
    url = admin_url(model, "changelist")
    failures = []
    for persona in PERSONAS:
        user = world.users[persona]
        response = admin_client(world, persona, staff_client_factory).get(url)
        if user is None or not user.is_staff:
            expected: Any = TO_LOGIN
        elif persona == STAFF_WITHOUT_MFA:
            expected = TO_MFA
        else:
            fresh = get_user_model().objects.get(pk=user.pk)
            opts = model._meta
            may = any(fresh.has_perm(f"{opts.app_label}.{verb}_{opts.model_name}") for verb in ("view", "change"))
            expected = 200 if may else 403
        try:
            assert_answer(response, expected, url)
        except AssertionError as exc:
            failures.append(f"{persona}: expected {expected}, got {response.status_code} ({exc})")
            continue
        if persona not in SEES_P and mentions_p(response):
            failures.append(f"{persona}: the page shows P ({P_LAST_NAME} / {P_MRN}) outside the policy")
        if persona in SEES_P and expected == 200 and patient_lookup is not None:
            shown = [obj.pk for obj in response.context["cl"].result_list]
            if not model.objects.filter(pk__in=shown, **{patient_lookup: world.P.pk}).exists():
                failures.append(f"{persona}: P's rows are missing although the persona may see P")
    assert not failures, f"{label} change list:\n" + "\n".join(failures)


# =====================================================================================
# The matrix covers every route and every admin model
# =====================================================================================


def _routes(resolver: URLResolver, prefix: str = "") -> Iterator[str]:
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern).lstrip("^").rstrip("$")
        if isinstance(entry, URLResolver):
            yield from _routes(entry, route)
        else:
            yield route


def test_every_api_route_is_in_the_persona_matrix():
    found = {route for route in _routes(get_resolver()) if route.startswith("api/")}
    assert found, "the resolver walk found no API route"
    missing = found - COVERED_API_ROUTES
    assert not missing, f"API routes without a row in the persona matrix: {sorted(missing)}"
    stale = COVERED_API_ROUTES - found
    assert not stale, f"the persona matrix declares routes that no longer exist: {sorted(stale)}"
    exercised = {endpoint.route for endpoint in API_ENDPOINTS.values()}
    assert exercised == COVERED_API_ROUTES, "a declared route has no endpoint column in the matrix"


def test_every_admin_model_is_in_the_persona_matrix():
    registered = {model._meta.label for model in admin.site._registry}
    missing = registered - set(COVERED_ADMIN_MODELS)
    assert not missing, f"admin models missing from the persona matrix: {sorted(missing)}"
    stale = set(COVERED_ADMIN_MODELS) - registered
    assert not stale, f"the persona matrix declares models no longer in the admin: {sorted(stale)}"


def test_every_matrix_has_one_row_per_persona():
    for matrix in (PATIENT_API_MATRIX, RECORD_API_MATRIX, DOCUMENT_API_MATRIX, ACCOUNT_API_MATRIX, ADMIN_MATRIX):
        assert [row[0] for row in matrix] == list(PERSONAS)


@pytest.fixture
def inst_admin_b(world):
    """An institution admin of B (P is at A), with an enrolled authenticator app."""
    user = get_user_model().objects.create_user(email="matrix.admin.b@example.org", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Institution Admin"))
    services.membership_start(user=user, institution=world.B, role="institution_admin")
    AuthenticatorApp.objects.create(user=user, name="Phone", confirmed=True)
    return get_user_model().objects.get(pk=user.pk)


@pytest.mark.parametrize(
    ("persona", "expected"),
    [("inst_admin_a", 200), ("superuser", 200), ("inst_admin_b", TO_INDEX), ("doctor_b", 403), ("cms_admin", 403)],
)
def test_grant_and_review_pages_of_p_are_for_superusers_and_admins_of_ps_institution(
    world, staff_client_factory, inst_admin_b, persona, expected
):
    user = inst_admin_b if persona == "inst_admin_b" else world.users[persona]
    client = staff_client_factory(user)
    grant = PatientUserObjectPermission.objects.get(content_object=world.P, user=world.users["care_team"])
    review = BreakGlassReview.objects.get(grant__content_object=world.P, grant__user=world.users["break_glass"])

    pages = (
        admin_url(PatientUserObjectPermission, "change", grant.pk),
        admin_url(BreakGlassReview, "change", review.pk),
    )
    for url in pages:
        response = client.get(url)
        assert_answer(response, expected, url)
        if expected != 200:
            assert not mentions_p(response)

    if persona in ("inst_admin_a", "inst_admin_b"):  # a new grant may name only their institution's patients
        form = client.get(admin_url(PatientUserObjectPermission, "add")).context["adminform"].form
        offered = set(form.fields["content_object"].queryset)
        assert offered == ({world.P} if persona == "inst_admin_a" else {world.Q})


# =====================================================================================
# Query counts: a list page costs the same for 5 and for 50 visible patients
# =====================================================================================


@pytest.fixture
def crowd(ref, roles, make_institution, make_doctor, make_patient, superuser):
    """A doctor (Doctor group) whose visible patients are their own plus one granted; patients
    they must not see exist too (except for the superuser, who sees everyone)."""

    def build(persona: str) -> SimpleNamespace:
        home, elsewhere = make_institution(), make_institution()
        doctor = make_doctor(institution=home)
        user = _add_role(doctor.user, "Doctor")
        other = make_doctor(institution=elsewhere)
        granted = make_patient(doctor=other)
        services.grant_create(patient=granted, user=user, kind="view", granted_by=superuser, reason="Consult")

        if persona == "doctor":
            make_patient(doctor=other)  # a patient the doctor must not see

            def visible() -> int:
                return Patient.objects.filter(Q(doctor=doctor) | Q(pk=granted.pk)).count()

        else:

            def visible() -> int:
                return Patient.objects.count()  # the superuser sees everyone, other tests' rows too

        def grow(n: int) -> None:
            for _ in range(n):
                make_patient(doctor=doctor)

        grow(5 - visible())
        return SimpleNamespace(viewer=user if persona == "doctor" else superuser, visible=visible, grow=grow)

    return build


@pytest.mark.parametrize("persona", ["doctor", "superuser"])
@pytest.mark.parametrize("page", ["api", "admin"])
def test_a_list_page_costs_the_same_for_5_and_for_50_patients(
    crowd, staff_client_factory, django_assert_num_queries, persona, page
):
    scene = crowd(persona)
    if page == "api":
        _token, secret = api_token_create(user=scene.viewer)
        client, url = bearer(secret), reverse("v1:patient-list")
    else:
        AuthenticatorApp.objects.create(user=scene.viewer, name="Phone", confirmed=True)
        client, url = staff_client_factory(scene.viewer), admin_url(Patient, "changelist")

    def rows(response: Any) -> int:
        assert response.status_code == 200
        return len(response.json()["results"]) if page == "api" else len(response.context["cl"].result_list)

    rows(client.get(url))  # warm-up: token last-used stamp, content types, session
    assert scene.visible() == 5
    with CaptureQueriesContext(connection) as at_five:
        assert rows(client.get(url)) == 5

    scene.grow(45)
    assert scene.visible() == 50
    with django_assert_num_queries(len(at_five.captured_queries)):
        assert rows(client.get(url)) == 50


# =====================================================================================
# Read auditing
# =====================================================================================


def access_entries() -> Any:
    return LogEntry.objects.filter(action=LogEntry.Action.ACCESS)


# Columns: persona, purpose recorded by default, break-the-glass flag.
DETAIL_READERS = [
    ("primary_doctor", "TREAT", False),
    ("nurse_a", "TREAT", False),
    ("inst_admin_a", "TREAT", False),
    ("care_team", "TREAT", False),
    ("break_glass", "ETREAT", True),
    ("patient_p", "PATRQT", False),
    ("superuser", "TREAT", False),
]


def test_the_detail_readers_are_those_the_matrix_lets_see_p():
    assert {row[0] for row in DETAIL_READERS} == SEES_P


@pytest.mark.parametrize(("persona", "purpose", "flagged"), DETAIL_READERS)
def test_an_api_detail_read_writes_exactly_one_access_entry(world, persona, purpose, flagged):
    client = api_client(world, persona)
    before = set(LogEntry.objects.values_list("pk", flat=True))

    response = client.get(detail_url(world.P))

    assert response.status_code == 200
    new = LogEntry.objects.exclude(pk__in=before)
    assert new.count() == 1, list(new.values("action", "object_repr"))
    entry = new.get()
    assert entry.action == LogEntry.Action.ACCESS
    assert entry.actor_id == world.users[persona].pk
    assert entry.object_pk == str(world.P.pk)
    assert entry.content_type.model_class() is Patient
    assert entry.additional_data["purpose_of_use"] == purpose
    assert entry.additional_data["break_glass"] is flagged


@pytest.mark.parametrize("persona", ["doctor_b", "expired_care_team", "expired_break_glass", "cms_admin", "anonymous"])
def test_a_refused_detail_read_writes_no_access_entry_for_p(world, persona):
    client = api_client(world, persona)
    before = access_entries().count()
    assert client.get(detail_url(world.P)).status_code in (401, 404)
    assert access_entries().count() == before


def test_an_api_list_page_writes_one_entry_per_request_naming_the_patients_shown(world):
    client = api_client(world, "primary_doctor")  # sees P (own patient) and Q (care-team grant)
    before = set(LogEntry.objects.values_list("pk", flat=True))

    first = client.get(reverse("v1:patient-list"))
    second = client.get(reverse("v1:patient-list"))

    shown = [row["id"] for row in first.json()["results"]]
    assert sorted(shown) == sorted([str(world.P.uuid), str(world.Q.uuid)])
    assert [row["id"] for row in second.json()["results"]] == shown
    new = LogEntry.objects.exclude(pk__in=before).order_by("pk")
    assert new.count() == 2, "one entry per request, not one per row"
    for entry in new:
        assert entry.action == LogEntry.Action.ACCESS
        assert entry.actor_id == world.users["primary_doctor"].pk
        assert entry.additional_data["patients"] == shown
        assert entry.additional_data["purpose_of_use"] == "TREAT"
        assert entry.additional_data["break_glass"] is False


@pytest.mark.parametrize(
    ("persona", "header", "recorded"),
    [
        ("primary_doctor", "HOPERAT", "HOPERAT"),
        ("primary_doctor", "hresch", "HRESCH"),
        ("primary_doctor", "NOT-A-CODE", "TREAT"),
        ("patient_p", "NOT-A-CODE", "PATRQT"),
        ("break_glass", "TREAT", "ETREAT"),  # an emergency opening is always emergency treatment
    ],
)
def test_the_purpose_of_use_header_is_recorded(world, persona, header, recorded):
    client = api_client(world, persona)
    before = set(access_entries().values_list("pk", flat=True))

    detail = client.get(detail_url(world.P), HTTP_X_PURPOSE_OF_USE=header)
    listing = client.get(reverse("v1:patient-list"), HTTP_X_PURPOSE_OF_USE=header)

    assert detail.status_code == listing.status_code == 200
    detail_entry, list_entry = access_entries().exclude(pk__in=before).order_by("pk")
    assert detail_entry.additional_data["purpose_of_use"] == recorded
    assert list_entry.additional_data["list"] == "api patient list"
    # A page with a patient reached only by breaking the glass is flagged and names that patient.
    assert list_entry.additional_data["purpose_of_use"] == recorded
    assert list_entry.additional_data["break_glass"] is (persona == "break_glass")
    assert list_entry.additional_data["break_glass_patients"] == (
        [str(world.P.uuid)] if persona == "break_glass" else []
    )


@pytest.mark.parametrize(("persona", "purpose", "flagged"), [row for row in DETAIL_READERS if row[0] != "patient_p"])
def test_an_admin_change_page_and_history_page_each_write_one_access_entry(
    world, staff_client_factory, persona, purpose, flagged
):
    client = admin_client(world, persona, staff_client_factory)
    for view in ("change", "auditlog"):
        before = set(LogEntry.objects.values_list("pk", flat=True))
        assert client.get(admin_url(Patient, view, world.P.pk)).status_code == 200
        new = LogEntry.objects.exclude(pk__in=before)
        assert new.count() == 1, (view, list(new.values("action", "object_repr")))
        entry = new.get()
        assert entry.action == LogEntry.Action.ACCESS
        assert entry.actor_id == world.users[persona].pk
        assert entry.object_pk == str(world.P.pk)
        assert entry.additional_data == {"purpose_of_use": purpose, "break_glass": flagged}


@pytest.mark.parametrize(
    ("model", "persona", "flagged"),
    [
        (Patient, "break_glass", True),
        (MedicalRecord, "break_glass", True),
        (Patient, "primary_doctor", False),
        (MedicalRecord, "primary_doctor", False),
    ],
)
def test_an_admin_list_reached_by_breaking_the_glass_is_flagged(world, staff_client_factory, model, persona, flagged):
    if model is MedicalRecord:
        services.record_create(
            patient=world.P,
            record_type=fhir.VITAL_SIGNS_RECORD,
            payload=fhir.build_vital_signs(
                kind="8867-4", value=72, effective=timezone.now(), patient_reference=f"Patient/{world.P.uuid}"
            ),
        )
    client = admin_client(world, persona, staff_client_factory)
    before = set(access_entries().values_list("pk", flat=True))
    assert client.get(admin_url(model, "changelist")).status_code == 200
    entry = access_entries().exclude(pk__in=before).get()
    assert str(world.P.uuid) in entry.additional_data["patients"]
    assert entry.additional_data["break_glass"] is flagged
    assert entry.additional_data["break_glass_patients"] == ([str(world.P.uuid)] if flagged else [])
    assert entry.additional_data["purpose_of_use"] == ("ETREAT" if flagged else "TREAT")
    assert entry.additional_data.get("declared_purpose") == ("TREAT" if flagged else None)


@pytest.mark.parametrize(
    "model_name",
    [
        "HealthProfile",
        "PatientCondition",
        "PatientMedication",
        "PatientAllergy",
        "Document",
        "Email",
        "Phone",
        "Address",
    ],
)
def test_every_patient_scoped_admin_list_writes_one_access_entry(world, staff_client_factory, model_name):
    from django.apps import apps

    model = apps.get_model("clinical", model_name)
    client = admin_client(world, "primary_doctor", staff_client_factory)
    before = set(access_entries().values_list("pk", flat=True))
    assert client.get(admin_url(model, "changelist")).status_code == 200
    entry = access_entries().exclude(pk__in=before).get()
    assert entry.actor_id == world.users["primary_doctor"].pk
    assert entry.additional_data["list"] == f"admin {model._meta.verbose_name} list"
    assert entry.additional_data["break_glass"] is False
    shown = {str(row.patient.uuid) for row in model.objects.filter(patient__isnull=False).select_related("patient")}
    assert set(entry.additional_data["patients"]) <= shown
    if model_name == "HealthProfile":  # every patient has one: the doctor's own patients are on the page
        assert str(world.P.uuid) in entry.additional_data["patients"]


def test_the_admin_change_list_writes_one_entry_per_request(world, staff_client_factory):
    client = admin_client(world, "primary_doctor", staff_client_factory)
    before = access_entries().count()
    response = client.get(admin_url(Patient, "changelist"))
    assert response.status_code == 200
    assert access_entries().count() == before + 1
    entry = access_entries().latest("pk")
    assert entry.actor_id == world.users["primary_doctor"].pk
    assert sorted(entry.additional_data["patients"]) == sorted([str(world.P.uuid), str(world.Q.uuid)])


@pytest.mark.parametrize("view", ["changelist", "change"])
def test_the_admin_records_a_declared_purpose_of_use(world, staff_client_factory, view):
    client = admin_client(world, "primary_doctor", staff_client_factory)
    before = access_entries().count()
    url = admin_url(Patient, "changelist") if view == "changelist" else admin_url(Patient, "change", world.P.pk)

    response = client.get(url, {"purpose": "HOPERAT"})

    assert response.status_code == 200, response.get("Location")
    assert access_entries().count() == before + 1
    assert access_entries().latest("pk").additional_data["purpose_of_use"] == "HOPERAT"


# =====================================================================================
# Changes take effect at once
# =====================================================================================


def test_after_a_transfer_the_old_doctor_loses_p_at_once_and_the_new_one_sees_p(world, staff_client_factory):
    old_doctor = world.users["primary_doctor"]
    old_api, new_api = api_client(world, "primary_doctor"), api_client(world, "doctor_b")
    old_admin = admin_client(world, "primary_doctor", staff_client_factory)
    assert old_api.get(detail_url(world.P)).status_code == 200
    assert new_api.get(detail_url(world.P)).status_code == 404
    assert not InstitutionMembership.objects.active().filter(user=old_doctor, institution=world.B).exists()

    services.patient_transfer(patient=world.P, doctor=world.doctors["doctor_b"])

    # The old doctor, with the same token and session: P is gone everywhere.
    assert old_api.get(detail_url(world.P)).status_code == 404
    assert old_api.patch(detail_url(world.P), {"first_name": "X"}, content_type="application/json").status_code == 404
    listed = [row["id"] for row in old_api.get(reverse("v1:patient-list")).json()["results"]]
    assert str(world.P.uuid) not in listed
    changelist = old_admin.get(admin_url(Patient, "changelist"))
    assert world.P not in list(changelist.context["cl"].result_list)
    assert_answer(old_admin.get(admin_url(Patient, "change", world.P.pk)), TO_INDEX, "change")
    # The new doctor sees and may change P.
    assert new_api.get(detail_url(world.P)).status_code == 200
    listed = [row["id"] for row in new_api.get(reverse("v1:patient-list")).json()["results"]]
    assert str(world.P.uuid) in listed
    assert new_api.patch(detail_url(world.P), {"first_name": "X"}, content_type="application/json").status_code == 200
    # A's staff lose P with the old doctor; B's institution is P's now.
    assert api_client(world, "nurse_a").get(detail_url(world.P)).status_code == 404
    assert Patient.objects.get(pk=world.P.pk).institution_id == world.B.pk


def test_ending_a_membership_ends_the_members_sessions_and_tokens_at_once(world, staff_client_factory):
    """DESIGN.md, "Access policy": ending a membership takes effect at once, "their sessions
    and API tokens stop working on the next request" (as removing a role does)."""
    nurse = world.users["nurse_a"]
    token = api_client(world, "nurse_a")
    session = admin_client(world, "nurse_a", staff_client_factory)
    assert token.get(detail_url(world.P)).status_code == 200
    assert session.get(reverse("admin:index")).status_code == 200

    services.membership_end(membership=InstitutionMembership.objects.get(user=nurse, institution=world.A))

    assert token.get(detail_url(world.P)).status_code in (401, 404)  # the policy part: P is gone
    assert token.get(reverse("v1:me")).status_code == 401
    assert_answer(session.get(reverse("admin:index")), TO_LOGIN, "index")
