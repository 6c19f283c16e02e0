"""Patient endpoints. Every query starts from ``clinical.access``; every read is audited.

An object outside the policy answers 404 (its existence is not revealed); a
visible object with a forbidden action answers 403.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import PermissionDenied
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clinical import access, services
from clinical.api.serializers import PatientDetailSerializer, PatientSerializer, PatientUpdateSerializer
from clinical.audit import patient_access_record, patient_list_access_record, purpose_for
from clinical.models import Patient
from clinical.selectors import patient_list

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


class PatientCursorPagination(CursorPagination):
    """Keyset pagination: a page costs the same at 2,000 and at 200,000 patients (no COUNT)."""

    ordering = ("created_at", "id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class PatientListView(generics.ListAPIView[Patient]):
    """Patients the caller may see, oldest registration first."""

    serializer_class = PatientSerializer
    pagination_class = PatientCursorPagination

    def get_queryset(self) -> QuerySet[Patient]:
        queryset = patient_list(user=self.request.user)
        status = self.request.query_params.get("validation_status")
        if status:
            queryset = queryset.filter(validation_status=status)
        return queryset

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
