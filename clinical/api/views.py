"""Patient endpoints. Every query starts from ``clinical.access``; every read is audited.

An object outside the policy answers 404 (its existence is not revealed); a
visible object with a forbidden action answers 403.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.core.files.storage import default_storage
from django.http import Http404, StreamingHttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from clinical import access, services
from clinical.api.serializers import (
    DocumentSerializer,
    DocumentUploadSerializer,
    PatientDetailSerializer,
    PatientSerializer,
    PatientUpdateSerializer,
    RecordAmendSerializer,
    RecordCreateSerializer,
    RecordReasonSerializer,
    RecordSerializer,
)
from clinical.audit import (
    document_access_record,
    patient_access_record,
    patient_list_access_record,
    purpose_for,
    record_access_record,
)
from clinical.fhir import SYSTEM_ALIASES, system_uri
from clinical.files import open_plaintext
from clinical.models import (
    Appointment,
    Document,
    MedicalRecord,
    Patient,
    Prescription,
    RecordStatus,
    RecordType,
    ValidationStatus,
)
from clinical.selectors import (
    PATIENT_LIST_RELATED,
    document_list,
    patient_list,
    patient_page_parts,
    record_list,
    with_record_details,
)
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
            urgent={patient.pk for patient in page if patient.break_glass_only},  # VisiblePatients marks them
        )
        return response


class PatientDetailView(APIView):
    """One patient. Staff with change access may PATCH it."""

    def get_object(self, uuid: str) -> Patient:
        # The scope is read once and kept for the access entry's break-the-glass flag.
        self.scope = access.scope_of(self.request.user, access.VIEW)
        patient = access.patients_in(self.scope).select_related(*PATIENT_LIST_RELATED).filter(uuid=uuid).first()
        if patient is None:
            raise Http404
        return patient

    @extend_schema(parameters=[PURPOSE_PARAMETER], responses=PatientDetailSerializer)
    def get(self, request: Request, uuid: str) -> Response:
        patient = self.get_object(uuid)
        patient_access_record(
            user=request.user,
            patient=patient,
            purpose=_purpose(request),
            remote_addr=_client_address(request),
            scope=self.scope,
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


# Medical records ------------------------------------------------------------------------


class RecordPagination(KeysetPagination):
    """Newest first, by (created_at, id)."""

    descending = True


def _record_filters(request: Request) -> dict[str, Any]:
    """The list filters from the query string; a malformed one answers 400 naming it."""
    params = request.query_params
    errors: dict[str, list[str]] = {}
    filters: dict[str, Any] = {}
    record_type = params.get("type")
    if record_type:
        if record_type not in RecordType.values:
            errors["type"] = [f"Must be one of: {', '.join(RecordType.values)}."]
        filters["record_type"] = record_type
    status = params.get("status", RecordStatus.CURRENT)
    if status == "all":
        filters["status"] = None
    elif status in RecordStatus.values:
        filters["status"] = status
    else:
        errors["status"] = [f"Must be one of: {', '.join(RecordStatus.values)}, all."]
    for name, key in (("effective_from", "effective_from"), ("effective_to", "effective_to")):
        raw = params.get(name)
        if raw:
            try:
                filters[key] = datetime.date.fromisoformat(raw)
            except ValueError:
                errors[name] = ["Give a date as YYYY-MM-DD."]
    system, code = params.get("system"), params.get("code")
    if system:
        try:
            filters["system"] = system_uri(system)
        except ValueError:
            errors["system"] = [f"Give a coding system URI or one of: {', '.join(SYSTEM_ALIASES)}."]
    if code:
        filters["code"] = code
    if errors:
        raise ValidationError(errors)
    return filters


RECORD_FILTER_PARAMETERS = [
    OpenApiParameter("type", str, description="Record type, e.g. lab_result."),
    OpenApiParameter("status", str, description="current (default), superseded, entered_in_error or all."),
    OpenApiParameter("effective_from", OpenApiTypes.DATE),
    OpenApiParameter("effective_to", OpenApiTypes.DATE),
    OpenApiParameter("system", str, description="Coding system: a URI or loinc, snomed, icd-10-cm, rxnorm, cvx, atc."),
    OpenApiParameter("code", str, description="A code in that system (or in any system)."),
    PURPOSE_PARAMETER,
]


class PatientRecordsMixin:
    request: Request

    scope: access.Scope | None = None

    def visible_patient(self, uuid: Any) -> Patient:
        # The scope is read once and kept for the access entry's break-the-glass flag.
        self.scope = access.scope_of(self.request.user, access.VIEW)
        patient = access.patients_in(self.scope).filter(uuid=uuid).select_related("institution").first()
        if patient is None:
            raise Http404
        return patient

    def own_patient(self) -> Patient:
        """The caller's own patient record (the portal's ``me/`` routes), through the same policy."""
        self.scope = access.scope_of(self.request.user, access.VIEW)
        patient = access.patients_in(self.scope).filter(user_id=self.request.user.pk).first()
        if patient is None:
            raise Http404("You have no patient record.")
        return patient

    def visible_record(self, patient: Patient, record_uuid: Any) -> MedicalRecord:
        record = with_record_details(MedicalRecord.objects.filter(patient=patient, uuid=record_uuid)).first()
        if record is None:
            raise Http404
        return record

    def audit(self, patient: Patient, records: list[MedicalRecord], view: str, purpose: str | None = None) -> None:
        record_access_record(
            user=self.request.user,
            patient=patient,
            records=records,
            purpose=purpose or _purpose(self.request),
            view=view,
            remote_addr=_client_address(self.request),
            scope=self.scope,
        )


class PatientRecordListView(PatientRecordsMixin, generics.GenericAPIView[MedicalRecord]):
    """A patient's medical records, newest first. Staff with write access add records by POST."""

    serializer_class = RecordSerializer
    pagination_class = RecordPagination

    @extend_schema(parameters=RECORD_FILTER_PARAMETERS, responses=RecordSerializer(many=True))
    def get(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        records = record_list(patient=patient, **_record_filters(request))
        page = self.paginate_queryset(records) or []
        self.audit(patient, page, "api record list")
        return self.get_paginated_response(RecordSerializer(page, many=True).data)

    @extend_schema(request=RecordCreateSerializer, responses={201: RecordSerializer})
    def post(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        if not access.can_add_record(request.user, patient):
            raise PermissionDenied("You may see this patient but not add records.")
        serializer = RecordCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        record = services.record_create(patient=patient, author=request.user, **serializer.validated_data)
        created = self.visible_record(patient, record.uuid)
        return Response(RecordSerializer(created).data, status=201)


class PatientRecordDetailView(PatientRecordsMixin, APIView):
    """One version of a record (superseded and entered-in-error versions stay readable)."""

    @extend_schema(parameters=[PURPOSE_PARAMETER], responses=RecordSerializer)
    def get(self, request: Request, uuid: Any, record_uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        record = self.visible_record(patient, record_uuid)
        self.audit(patient, [record], "api record detail")
        return Response(RecordSerializer(record).data)


class RecordActionView(PatientRecordsMixin, APIView):
    """Base for the POST actions on one record."""

    allowed = staticmethod(access.can_amend_record)
    refusal = "You may see this record but not change it."

    def target(self, uuid: Any, record_uuid: Any) -> tuple[Patient, MedicalRecord]:
        patient = self.visible_patient(uuid)
        record = self.visible_record(patient, record_uuid)
        if not self.allowed(self.request.user, patient):
            raise PermissionDenied(self.refusal)
        return patient, record


class RecordAmendView(RecordActionView):
    """Write a new version that supersedes this one; answers the new version."""

    @extend_schema(request=RecordAmendSerializer, responses={201: RecordSerializer})
    def post(self, request: Request, uuid: Any, record_uuid: Any) -> Response:
        patient, record = self.target(uuid, record_uuid)
        serializer = RecordAmendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        amended = services.record_amend(record=record, author=request.user, **serializer.validated_data)
        return Response(RecordSerializer(self.visible_record(patient, amended.uuid)).data, status=201)


class RecordEnteredInErrorView(RecordActionView):
    """Mark this version entered in error, with a reason."""

    @extend_schema(request=RecordReasonSerializer, responses=RecordSerializer)
    def post(self, request: Request, uuid: Any, record_uuid: Any) -> Response:
        patient, record = self.target(uuid, record_uuid)
        serializer = RecordReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.record_mark_entered_in_error(
            record=record, by=request.user, reason=serializer.validated_data["reason"]
        )
        return Response(RecordSerializer(self.visible_record(patient, record.uuid)).data)


class RecordVerifyView(RecordActionView):
    """Confirm this version."""

    allowed = staticmethod(access.can_verify_record)
    refusal = "You may see this record but not verify it."

    @extend_schema(request=None, responses=RecordSerializer)
    def post(self, request: Request, uuid: Any, record_uuid: Any) -> Response:
        patient, record = self.target(uuid, record_uuid)
        services.record_verify(record=record, by=request.user)
        return Response(RecordSerializer(self.visible_record(patient, record.uuid)).data)


class MyRecordListView(PatientRecordsMixin, generics.GenericAPIView[MedicalRecord]):
    """The caller's own medical records (patients using the portal), newest first."""

    serializer_class = RecordSerializer
    pagination_class = RecordPagination

    @extend_schema(parameters=RECORD_FILTER_PARAMETERS[:-1], responses=RecordSerializer(many=True))
    def get(self, request: Request) -> Response:
        patient = self.own_patient()
        records = record_list(patient=patient, **_record_filters(request))
        page = self.paginate_queryset(records) or []
        self.audit(patient, page, "api my records", purpose=purpose_for(request.user, "PATRQT"))
        return self.get_paginated_response(RecordSerializer(page, many=True).data)


class MyRecordDetailView(MyRecordListView):
    @extend_schema(responses=RecordSerializer)
    def get(self, request: Request, record_uuid: Any) -> Response:  # type: ignore[override]
        patient = self.own_patient()
        record = self.visible_record(patient, record_uuid)
        self.audit(patient, [record], "api my record", purpose=purpose_for(request.user, "PATRQT"))
        return Response(RecordSerializer(record).data)


# Documents ------------------------------------------------------------------------------


def _linked(patient: Patient, data: dict[str, Any]) -> dict[str, Any]:
    """The record, appointment and prescription named by UUID, among ``patient``'s own; else 400 naming the field."""
    links: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, model in (
        ("medical_record", MedicalRecord),
        ("appointment", Appointment),
        ("prescription", Prescription),
    ):
        wanted = data.get(name)
        if wanted is None:
            continue
        found = model.objects.filter(patient=patient, uuid=wanted).first()  # type: ignore[attr-defined]
        if found is None:
            errors[name] = [f"This patient has no {name.replace('_', ' ')} with this id."]
        links[name] = found
    if errors:
        raise ValidationError(errors)
    return links


def document_download_response(document: Document) -> StreamingHttpResponse:
    """The decrypted bytes, streamed, as an attachment the browser must not render or keep.

    The stored file is opened (and its header checked) before any byte is sent.
    """
    stream = open_plaintext(default_storage, document.storage_key, document_uuid=document.uuid)
    content_type = f"{document.content_type}; charset=utf-8" if document.content_type == "text/plain" else None
    response = StreamingHttpResponse(stream, content_type=content_type or document.content_type)
    response["Content-Disposition"] = content_disposition_header(True, document.original_name)
    response["Content-Length"] = str(document.size)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "no-store"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


class PatientDocumentsMixin(PatientRecordsMixin):
    def visible_document(self, patient: Patient, document_uuid: Any) -> Document:
        document = document_list(patient=patient).filter(uuid=document_uuid).first()
        if document is None:
            raise Http404
        return document

    def audit_documents(
        self, patient: Patient, documents: list[Document], view: str, purpose: str | None = None
    ) -> None:
        document_access_record(
            user=self.request.user,
            patient=patient,
            documents=documents,
            purpose=purpose or _purpose(self.request),
            view=view,
            remote_addr=_client_address(self.request),
            scope=self.scope,
        )

    def upload(self, patient: Patient, *, by_patient: bool = False) -> Response:
        serializer = DocumentUploadSerializer(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if by_patient and data.get("prescription"):
            # A prescription's files are its PDF and the copies its prescriber's side signed.
            raise ValidationError({"prescription": ["Only staff attach files to a prescription."]})
        document = services.document_upload(
            patient=patient,
            upload=data["file"],
            kind=data["kind"],
            uploaded_by=self.request.user,
            **_linked(patient, data),
        )
        return Response(DocumentSerializer(self.visible_document(patient, document.uuid)).data, status=201)


class PatientDocumentListView(PatientDocumentsMixin, generics.GenericAPIView[Document]):
    """A patient's documents, newest first. Staff with change access and the role's permission upload by POST."""

    serializer_class = DocumentSerializer
    pagination_class = RecordPagination
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(parameters=[PURPOSE_PARAMETER], responses=DocumentSerializer(many=True))
    def get(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        page = self.paginate_queryset(document_list(patient=patient)) or []
        self.audit_documents(patient, page, "api document list")
        return self.get_paginated_response(DocumentSerializer(page, many=True).data)

    @extend_schema(request={"multipart/form-data": DocumentUploadSerializer}, responses={201: DocumentSerializer})
    def post(self, request: Request, uuid: Any) -> Response:
        patient = self.visible_patient(uuid)
        if not access.can_add_document(request.user, patient):
            raise PermissionDenied("You may see this patient but not add documents.")
        return self.upload(patient)


class PatientDocumentDownloadView(PatientDocumentsMixin, APIView):
    """A document's file, decrypted; every download is recorded in the access log.

    No HEAD: it would decrypt the file and log a download that sent nothing.
    """

    http_method_names = ["get", "options"]

    @extend_schema(parameters=[PURPOSE_PARAMETER], responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, uuid: Any, document_uuid: Any) -> StreamingHttpResponse:
        patient = self.visible_patient(uuid)
        document = self.visible_document(patient, document_uuid)
        response = document_download_response(document)
        self.audit_documents(patient, [document], "api document download")
        return response


class MyDocumentListView(PatientDocumentsMixin, generics.GenericAPIView[Document]):
    """The caller's own documents (patients using the portal), newest first; POST adds one."""

    serializer_class = DocumentSerializer
    pagination_class = RecordPagination
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(responses=DocumentSerializer(many=True))
    def get(self, request: Request) -> Response:
        patient = self.own_patient()
        page = self.paginate_queryset(document_list(patient=patient)) or []
        self.audit_documents(patient, page, "api my documents", purpose=purpose_for(request.user, "PATRQT"))
        return self.get_paginated_response(DocumentSerializer(page, many=True).data)

    @extend_schema(request={"multipart/form-data": DocumentUploadSerializer}, responses={201: DocumentSerializer})
    def post(self, request: Request) -> Response:
        return self.upload(self.own_patient(), by_patient=True)  # a patient may add documents to their own record


class MyDocumentDownloadView(MyDocumentListView):
    http_method_names = ["get", "options"]  # no HEAD, as for staff downloads

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, document_uuid: Any) -> StreamingHttpResponse:  # type: ignore[override]
        patient = self.own_patient()
        document = self.visible_document(patient, document_uuid)
        response = document_download_response(document)
        self.audit_documents(
            patient, [document], "api my document download", purpose=purpose_for(request.user, "PATRQT")
        )
        return response
