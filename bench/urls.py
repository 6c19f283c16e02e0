"""The real URLs plus two comparison views used only by the access benchmark."""

from typing import Any

from django.db.models import QuerySet
from django.urls import path
from guardian.shortcuts import get_objects_for_user
from rest_framework import generics
from rest_framework.pagination import PageNumberPagination

from clinical.api.serializers import PatientSerializer
from clinical.models import Patient
from config.pagination import KeysetPagination
from config.urls import urlpatterns as real_urlpatterns


class UnfilteredPatientList(generics.ListAPIView[Patient]):
    """The same page with no permission filtering at all."""

    serializer_class = PatientSerializer
    pagination_class = KeysetPagination

    def get_queryset(self) -> QuerySet[Patient]:
        return Patient.objects.select_related("institution", "doctor__user", "sex", "gender")


class FiftyPerPage(PageNumberPagination):
    page_size = 50


class StockGuardianPatientList(generics.ListAPIView[Patient]):
    """The common idiom: guardian's generic table, get_objects_for_user, page numbers."""

    serializer_class = PatientSerializer
    pagination_class = FiftyPerPage

    def get_queryset(self) -> QuerySet[Any]:
        visible = get_objects_for_user(
            self.request.user, "clinical.view_patient", klass=Patient, accept_global_perms=False
        )
        return visible.select_related("institution", "doctor__user", "sex", "gender").order_by("created_at", "id")


urlpatterns = [
    *real_urlpatterns,
    path("bench/unfiltered/", UnfilteredPatientList.as_view()),
    path("bench/guardian/", StockGuardianPatientList.as_view()),
]
