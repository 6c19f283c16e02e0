"""The real URLs plus comparison views used only by the benchmarks (``bench.access``, ``bench.records``)."""

from typing import Any

from django.db.models import QuerySet
from django.urls import path
from guardian.shortcuts import get_objects_for_user
from rest_framework import generics, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from bench.records import PlainRecord
from clinical.api.serializers import RecordSerializer
from clinical.api.views import PatientListView, PatientRecordsMixin, RecordPagination
from clinical.models import MedicalRecord, Patient
from clinical.selectors import patient_rows, record_list
from config.urls import urlpatterns as real_urlpatterns


class UnfilteredPatientList(PatientListView):
    """The same view (pages, serializer, access entry) with no permission filtering at all."""

    def get_queryset(self) -> QuerySet[Patient]:  # type: ignore[override]
        return patient_rows(Patient.objects.all())


class FiftyPerPage(PageNumberPagination):
    page_size = 50


class StockGuardianPatientList(PatientListView):
    """The common idiom in the same view: guardian's generic table, get_objects_for_user, page numbers.

    The access entry is written as in the real view: auditing is not what the idiom replaces.
    """

    pagination_class = FiftyPerPage  # type: ignore[assignment]

    def get_queryset(self) -> QuerySet[Any]:
        visible = get_objects_for_user(
            self.request.user, "clinical.view_patient", klass=Patient, accept_global_perms=False
        )
        return patient_rows(visible).order_by("created_at", "id")


class PlainRecordSerializer(serializers.ModelSerializer[PlainRecord]):
    """``RecordSerializer``'s fields, read from plain columns (no decryption, no ledger subquery)."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    patient = serializers.UUIDField(source="patient.uuid", read_only=True)
    payload = serializers.JSONField(read_only=True)
    metadata = serializers.JSONField(source="record_metadata", read_only=True)
    ledger_entry = serializers.UUIDField(source="ledger_entry_uuid", read_only=True, allow_null=True)
    supersedes = serializers.UUIDField(source="supersedes_uuid", read_only=True, allow_null=True)
    author = serializers.SerializerMethodField()
    verified_by = serializers.SerializerMethodField()
    institution = serializers.UUIDField(source="institution.uuid", read_only=True, allow_null=True)

    class Meta:
        model = PlainRecord
        fields = RecordSerializer.Meta.fields
        read_only_fields = fields

    def get_author(self, record: PlainRecord) -> str | None:
        return record.author.get_full_name() or None if record.author_id else None

    def get_verified_by(self, record: PlainRecord) -> str | None:
        return record.verified_by.get_full_name() or None if record.verified_by_id else None


class PlainRecordList(generics.ListAPIView[PlainRecord]):
    """A patient's page of records stored unencrypted: no policy, no audit, same serializer shape and pages."""

    serializer_class = PlainRecordSerializer
    pagination_class = RecordPagination

    def get_queryset(self) -> QuerySet[PlainRecord]:
        return PlainRecord.objects.filter(patient__uuid=self.kwargs["uuid"], status="current").select_related(
            "patient", "institution", "author", "verified_by"
        )


class PlainRecordPolicyList(PatientRecordsMixin, generics.GenericAPIView[PlainRecord]):
    """The record list API exactly, access policy and access entry included, over the unencrypted table."""

    serializer_class = PlainRecordSerializer
    pagination_class = RecordPagination

    def get(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        rows = PlainRecord.objects.filter(patient=patient, status="current").select_related(
            "patient", "institution", "author", "verified_by"
        )
        page = self.paginate_queryset(rows) or []
        self.audit(patient, page, "api record list")  # type: ignore[arg-type]
        return self.get_paginated_response(PlainRecordSerializer(page, many=True).data)


class UnauditedRecordList(generics.GenericAPIView[MedicalRecord]):
    """The record list API's query, decryption and serializer, without the access policy and the audit entry."""

    serializer_class = RecordSerializer
    pagination_class = RecordPagination

    def get(self, request: Request, uuid: Any) -> Response:
        patient = Patient.objects.get(uuid=uuid)
        page = self.paginate_queryset(record_list(patient=patient)) or []
        return self.get_paginated_response(RecordSerializer(page, many=True).data)


urlpatterns = [
    *real_urlpatterns,
    path("bench/unfiltered/", UnfilteredPatientList.as_view()),
    path("bench/guardian/", StockGuardianPatientList.as_view()),
    path("bench/plain-records/<uuid:uuid>/", PlainRecordList.as_view()),
    path("bench/plain-records-policy/<uuid:uuid>/", PlainRecordPolicyList.as_view()),
    path("bench/records-unaudited/<uuid:uuid>/", UnauditedRecordList.as_view()),
]
