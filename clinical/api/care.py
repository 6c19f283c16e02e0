"""Appointment and prescription endpoints, for staff (``patients/{uuid}/...``) and patients (``me/...``).

As in ``clinical.api.views``: every query starts from ``clinical.access``, a
patient or object outside the policy answers 404, a visible one with a
forbidden action 403, and every read is recorded as an access entry.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clinical import access, appointments, prescriptions
from clinical.api.serializers import (
    AppointmentBookSerializer,
    AppointmentCancelSerializer,
    AppointmentSerializer,
    AppointmentTimesSerializer,
    DocumentSerializer,
    PrescriptionIssueSerializer,
    PrescriptionSerializer,
    SignedCopySerializer,
)
from clinical.api.views import PURPOSE_PARAMETER, PatientDocumentsMixin, _client_address, _purpose
from clinical.audit import care_access_record, purpose_for
from clinical.models import (
    Appointment,
    AppointmentStatus,
    Doctor,
    MedicalInstitution,
    Medication,
    Patient,
    Prescription,
)
from clinical.selectors import appointment_list, prescription_list
from config.pagination import KeysetPagination


class NewestFirst(KeysetPagination):
    descending = True


class StartsLatestFirst(KeysetPagination):
    """Appointments by start time, latest first, then id (the keyset order of ``appointment_list``)."""

    descending = True
    fields = ("starts_at", "id")


APPOINTMENT_FILTERS = [
    OpenApiParameter("status", str, description="scheduled, completed, cancelled or no_show."),
    OpenApiParameter("from", OpenApiTypes.DATETIME, description="Starting at or after this time (with offset)."),
    OpenApiParameter("to", OpenApiTypes.DATETIME, description="Starting before this time (with offset)."),
]


def _appointment_filters(request: Request, appointments_: QuerySet[Appointment]) -> QuerySet[Appointment]:
    params = request.query_params
    errors: dict[str, list[str]] = {}
    status = params.get("status")
    if status:
        if status in AppointmentStatus.values:
            appointments_ = appointments_.filter(status=status)
        else:
            errors["status"] = [f"Must be one of: {', '.join(AppointmentStatus.values)}."]
    for name, lookup in (("from", "starts_at__gte"), ("to", "starts_at__lt")):
        raw = params.get(name)
        if not raw:
            continue
        try:
            moment = datetime.datetime.fromisoformat(raw)
        except ValueError:
            errors[name] = ["Give a date and time in ISO 8601 with its offset."]
            continue
        if moment.tzinfo is None:
            errors[name] = ["Give the time with its time zone or UTC offset."]
            continue
        appointments_ = appointments_.filter(**{lookup: moment})
    if errors:
        raise ValidationError(errors)
    return appointments_


class CareMixin(PatientDocumentsMixin):
    """Finding a patient's appointments and prescriptions, and recording their reads."""

    def audit_care(
        self,
        patient: Patient,
        objects: list[Any],
        model: type[Appointment] | type[Prescription],
        view: str,
        purpose: str | None = None,
    ) -> None:
        care_access_record(
            user=self.request.user,
            patient=patient,
            objects=objects,
            model=model,
            purpose=purpose or _purpose(self.request),
            view=view,
            remote_addr=_client_address(self.request),
            scope=self.scope,
        )

    def visible_appointment(self, patient: Patient, appointment_uuid: Any) -> Appointment:
        appointment = appointment_list(patient=patient).filter(uuid=appointment_uuid).first()
        if appointment is None:
            raise Http404
        return appointment

    def visible_prescription(self, patient: Patient, prescription_uuid: Any) -> Prescription:
        prescription = prescription_list(patient=patient).filter(uuid=prescription_uuid).first()
        if prescription is None:
            raise Http404
        return prescription


def _one(rows: QuerySet[Any], uuid: Any, field: str, label: str) -> Any:
    found = rows.filter(uuid=uuid).first()
    if found is None:
        raise ValidationError({field: [f"No {label} has this id."]})
    return found


# Appointments ------------------------------------------------------------------------------


class PatientAppointmentListView(CareMixin, generics.GenericAPIView[Appointment]):
    """A patient's appointments, latest start first. Staff with the booking permission book by POST."""

    serializer_class = AppointmentSerializer
    pagination_class = StartsLatestFirst

    @extend_schema(parameters=[*APPOINTMENT_FILTERS, PURPOSE_PARAMETER], responses=AppointmentSerializer(many=True))
    def get(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        page = self.paginate_queryset(_appointment_filters(request, appointment_list(patient=patient))) or []
        self.audit_care(patient, page, Appointment, "api appointment list")
        return self.get_paginated_response(AppointmentSerializer(page, many=True).data)

    @extend_schema(request=AppointmentBookSerializer, responses={201: AppointmentSerializer})
    def post(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        if not access.can_book_appointment(request.user, patient):
            raise PermissionDenied("You may see this patient but not book appointments.")
        serializer = AppointmentBookSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        doctor = _one(Doctor.objects.select_related("institution"), data["doctor"], "doctor", "doctor")
        institution = (
            _one(MedicalInstitution.objects.all(), data["institution"], "institution", "institution")
            if data.get("institution")
            else doctor.institution
        )
        appointment = appointments.appointment_book(
            patient=patient,
            doctor=doctor,
            institution=institution,
            starts_at=data["starts_at"],
            ends_at=data["ends_at"],
            reason=data.get("reason"),
            booked_by=request.user,
        )
        return Response(AppointmentSerializer(self.visible_appointment(patient, appointment.uuid)).data, status=201)


class PatientAppointmentDetailView(CareMixin, APIView):
    @extend_schema(parameters=[PURPOSE_PARAMETER], responses=AppointmentSerializer)
    def get(self, request: Request, uuid: Any, appointment_uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        appointment = self.visible_appointment(patient, appointment_uuid)
        self.audit_care(patient, [appointment], Appointment, "api appointment detail")
        return Response(AppointmentSerializer(appointment).data)


class AppointmentActionView(CareMixin, APIView):
    """Base of the POST actions on one appointment; each answers the appointment as it now is."""

    def target(self, uuid: Any, appointment_uuid: Any) -> tuple[Patient, Appointment]:
        patient = self.visible_patient(uuid)
        appointment = self.visible_appointment(patient, appointment_uuid)
        if not access.can_change_appointment(self.request.user, patient):
            raise PermissionDenied("You may see this appointment but not change it.")
        return patient, appointment

    def done(self, patient: Patient, appointment: Appointment) -> Response:
        return Response(AppointmentSerializer(self.visible_appointment(patient, appointment.uuid)).data)


class AppointmentRescheduleView(AppointmentActionView):
    @extend_schema(request=AppointmentTimesSerializer, responses=AppointmentSerializer)
    def post(self, request: Request, uuid: Any, appointment_uuid: Any) -> Response:
        patient, appointment = self.target(uuid, appointment_uuid)
        serializer = AppointmentTimesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        appointments.appointment_reschedule(appointment=appointment, by=request.user, **serializer.validated_data)
        return self.done(patient, appointment)


class AppointmentCancelView(AppointmentActionView):
    @extend_schema(request=AppointmentCancelSerializer, responses=AppointmentSerializer)
    def post(self, request: Request, uuid: Any, appointment_uuid: Any) -> Response:
        patient, appointment = self.target(uuid, appointment_uuid)
        serializer = AppointmentCancelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        appointments.appointment_cancel(
            appointment=appointment, by=request.user, reason=serializer.validated_data["reason"]
        )
        return self.done(patient, appointment)


class AppointmentCompleteView(AppointmentActionView):
    @extend_schema(request=None, responses=AppointmentSerializer)
    def post(self, request: Request, uuid: Any, appointment_uuid: Any) -> Response:
        patient, appointment = self.target(uuid, appointment_uuid)
        appointments.appointment_complete(appointment=appointment, by=request.user)
        return self.done(patient, appointment)


class AppointmentNoShowView(AppointmentActionView):
    @extend_schema(request=None, responses=AppointmentSerializer)
    def post(self, request: Request, uuid: Any, appointment_uuid: Any) -> Response:
        patient, appointment = self.target(uuid, appointment_uuid)
        appointments.appointment_mark_no_show(appointment=appointment, by=request.user)
        return self.done(patient, appointment)


class MyAppointmentListView(CareMixin, generics.GenericAPIView[Appointment]):
    """The caller's own appointments (patients using the portal), latest start first."""

    serializer_class = AppointmentSerializer
    pagination_class = StartsLatestFirst

    @extend_schema(parameters=APPOINTMENT_FILTERS, responses=AppointmentSerializer(many=True))
    def get(self, request: Request) -> Response:
        patient = self.own_patient()
        page = self.paginate_queryset(_appointment_filters(request, appointment_list(patient=patient))) or []
        self.audit_care(patient, page, Appointment, "api my appointments", purpose_for(request.user, "PATRQT"))
        return self.get_paginated_response(AppointmentSerializer(page, many=True).data)


class MyAppointmentDetailView(CareMixin, APIView):
    @extend_schema(responses=AppointmentSerializer)
    def get(self, request: Request, appointment_uuid: Any) -> Response:
        patient = self.own_patient()
        appointment = self.visible_appointment(patient, appointment_uuid)
        self.audit_care(patient, [appointment], Appointment, "api my appointment", purpose_for(request.user, "PATRQT"))
        return Response(AppointmentSerializer(appointment).data)


# Prescriptions -----------------------------------------------------------------------------


class PatientPrescriptionListView(CareMixin, generics.GenericAPIView[Prescription]):
    """A patient's prescriptions, newest first. The appointment's own doctor issues one by POST."""

    serializer_class = PrescriptionSerializer
    pagination_class = NewestFirst

    @extend_schema(parameters=[PURPOSE_PARAMETER], responses=PrescriptionSerializer(many=True))
    def get(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        page = self.paginate_queryset(prescription_list(patient=patient)) or []
        self.audit_care(patient, page, Prescription, "api prescription list")
        return self.get_paginated_response(PrescriptionSerializer(page, many=True).data)

    @extend_schema(request=PrescriptionIssueSerializer, responses={201: PrescriptionSerializer})
    def post(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        if not access.can_prescribe_for(request.user, patient):
            raise PermissionDenied("You may see this patient but not write prescriptions.")
        serializer = PrescriptionIssueSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        appointment = (
            Appointment.objects.filter(patient=patient, uuid=data["appointment"])
            .select_related("doctor", "patient")
            .first()
        )
        if appointment is None:
            raise ValidationError({"appointment": ["This patient has no appointment with this id."]})
        if not access.can_issue_prescription(request.user, appointment):
            raise PermissionDenied("Only the appointment's doctor writes its prescription.")
        wanted = {item["medication"] for item in data["items"]}
        catalog = {medication.uuid: medication for medication in Medication.objects.filter(uuid__in=wanted)}
        missing = [
            {"medication": ["No medication of the catalog has this id."]} if item["medication"] not in catalog else {}
            for item in data["items"]
        ]
        if any(missing):
            raise ValidationError({"items": missing})
        items = [{**item, "medication": catalog[item["medication"]]} for item in data["items"]]
        prescription = prescriptions.prescription_issue(
            appointment=appointment, items=items, issued_by=request.user, notes=data.get("notes")
        )
        created = self.visible_prescription(patient, prescription.uuid)
        return Response(PrescriptionSerializer(created).data, status=201)


class PatientPrescriptionDetailView(CareMixin, APIView):
    @extend_schema(parameters=[PURPOSE_PARAMETER], responses=PrescriptionSerializer)
    def get(self, request: Request, uuid: Any, prescription_uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        prescription = self.visible_prescription(patient, prescription_uuid)
        self.audit_care(patient, [prescription], Prescription, "api prescription detail")
        return Response(PrescriptionSerializer(prescription).data)


class PrescriptionSignedCopyView(CareMixin, APIView):
    """Upload a signed copy (scan or photo) of a prescription; answers the new document."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(request={"multipart/form-data": SignedCopySerializer}, responses={201: DocumentSerializer})
    def post(self, request: Request, uuid: Any, prescription_uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        prescription = self.visible_prescription(patient, prescription_uuid)
        if not access.can_add_document(request.user, patient):
            raise PermissionDenied("You may see this prescription but not add documents.")
        serializer = SignedCopySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        document = prescriptions.prescription_signed_copy_upload(
            prescription=prescription, upload=serializer.validated_data["file"], uploaded_by=request.user
        )
        return Response(DocumentSerializer(self.visible_document(patient, document.uuid)).data, status=201)


class MyPrescriptionListView(CareMixin, generics.GenericAPIView[Prescription]):
    """The caller's own prescriptions, newest first."""

    serializer_class = PrescriptionSerializer
    pagination_class = NewestFirst

    @extend_schema(responses=PrescriptionSerializer(many=True))
    def get(self, request: Request) -> Response:
        patient = self.own_patient()
        page = self.paginate_queryset(prescription_list(patient=patient)) or []
        self.audit_care(patient, page, Prescription, "api my prescriptions", purpose_for(request.user, "PATRQT"))
        return self.get_paginated_response(PrescriptionSerializer(page, many=True).data)


class MyPrescriptionDetailView(CareMixin, APIView):
    @extend_schema(responses=PrescriptionSerializer)
    def get(self, request: Request, prescription_uuid: Any) -> Response:
        patient = self.own_patient()
        prescription = self.visible_prescription(patient, prescription_uuid)
        self.audit_care(
            patient, [prescription], Prescription, "api my prescription", purpose_for(request.user, "PATRQT")
        )
        return Response(PrescriptionSerializer(prescription).data)
