"""Patient endpoints. Every query starts from ``clinical.access``; every read is audited.

An object outside the policy answers 404 (its existence is not revealed); a
visible object with a forbidden action answers 403.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clinical import access, services
from clinical.api.serializers import PatientDetailSerializer, PatientSerializer, PatientUpdateSerializer
from clinical.audit import patient_access_record, patient_list_access_record, purpose_for
from clinical.models import Patient, ValidationStatus
from clinical.selectors import patient_list, patient_page_parts
from config.pagination import KeysetPagination

PURPOSE_HEADER = "X-Purpose-Of-Use"
PURPOSE_PARAMETER = OpenApiParameter(
    PURPOSE_HEADER,
    str,
    OpenApiParameter.HEADER,
    description="HL7 PurposeOfUse code (TREAT, ETREAT, HOPERAT, PATRQT, …); recorded in the access log.",
)


def _purpose(request: Request) -> str:
    return purpose_for(request.user, request.headers.get(PURPOSE_HEADER))


def _client_address(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR")


class PatientListView(generics.ListAPIView[Patient]):
    """Patients the caller may see, oldest registration first, in keyset pages (no total)."""

    serializer_class = PatientSerializer
    pagination_class = KeysetPagination

    def get_queryset(self) -> Any:
        parts = patient_page_parts(user=self.request.user)
        status = self.request.query_params.get("validation_status")
        if status:
            if status not in ValidationStatus.values:
                raise ValidationError({"validation_status": [f"Must be one of: {', '.join(ValidationStatus.values)}."]})
            parts = parts.filter(validation_status=status)
        return parts

    @extend_schema(parameters=[PURPOSE_PARAMETER])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().get(request, *args, **kwargs)
        page = getattr(self.paginator, "page", None) or []
        patient_list_access_record(
            user=request.user,
            patients=page,
            purpose=_purpose(request),
            view="api patient list",
            remote_addr=_client_address(request),
        )
        return response


class PatientDetailView(APIView):
    """One patient. Staff with change access may PATCH it."""

    def get_object(self, uuid: str) -> Patient:
        patient = patient_list(user=self.request.user).filter(uuid=uuid).first()
        if patient is None:
            raise Http404
        return patient

    @extend_schema(parameters=[PURPOSE_PARAMETER], responses=PatientDetailSerializer)
    def get(self, request: Request, uuid: str) -> Response:
        patient = self.get_object(uuid)
        patient_access_record(
            user=request.user, patient=patient, purpose=_purpose(request), remote_addr=_client_address(request)
        )
        return Response(PatientDetailSerializer(patient).data)

    @extend_schema(request=PatientUpdateSerializer, responses=PatientDetailSerializer)
    def patch(self, request: Request, uuid: str) -> Response:
        patient = self.get_object(uuid)
        if not access.can_change_patient(request.user, patient):
            raise PermissionDenied("You may see this patient but not change them.")
        serializer = PatientUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        updated = services.patient_update(patient=patient, **serializer.validated_data)
        return Response(PatientDetailSerializer(patient_list(user=request.user).get(pk=updated.pk)).data)


class MyPatientView(APIView):
    """The caller's own patient record (patients using the portal)."""

    @extend_schema(responses=PatientDetailSerializer)
    def get(self, request: Request) -> Response:
        patient = patient_list(user=request.user).filter(user_id=request.user.pk).first()
        if patient is None:
            raise Http404("You have no patient record.")
        patient_access_record(
            user=request.user,
            patient=patient,
            purpose=purpose_for(request.user, "PATRQT"),
            remote_addr=_client_address(request),
        )
        return Response(PatientDetailSerializer(patient).data)
