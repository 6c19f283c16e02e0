"""Admin screens for documents (imported at the end of ``clinical.admin``).

Documents are read here, never edited: the change page is read-only and links
to a download view that applies the access policy, records the access and
streams the decrypted file as an attachment. Files are added by the upload
page (the "add" page), through ``services.document_upload`` like the API, by
staff whom ``access.can_add_document`` allows. The patient page lists the
patient's documents in a read-only inline.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET

from clinical import access, services
from clinical import models as m
from clinical.admin import PatientAdmin
from clinical.admin_base import PatientScopedAdmin, service_errors_on
from clinical.api.views import document_download_response
from clinical.audit import document_access_record, purpose_for
from clinical.care_admin import CARE_FORM_TEMPLATE, autocomplete_field


def _download_link(document: m.Document) -> str:
    url = reverse("admin:clinical_document_download", args=[document.pk])
    return format_html("<a href='{}'>Download</a>", url)


def _audit(request: HttpRequest, patient: m.Patient, documents: list[m.Document], view: str) -> None:
    document_access_record(
        user=request.user,
        patient=patient,
        documents=documents,
        purpose=purpose_for(request.user, request.GET.get("purpose")),
        view=view,
        remote_addr=request.META.get("REMOTE_ADDR"),
    )


class DocumentUploadForm(forms.Form):
    """A file for a patient the user may change; optionally tied to one of that patient's record,
    appointment or prescription (the service refuses another patient's)."""

    patient = forms.ModelChoiceField(queryset=m.Patient.objects.none())
    # Chat attachments arrive through the chat.
    kind = forms.ChoiceField(choices=[c for c in m.DocumentKind.choices if c[0] != m.DocumentKind.CHAT_ATTACHMENT])
    file = forms.FileField(help_text="PDF, PNG, JPEG or plain text.")
    medical_record = forms.ModelChoiceField(queryset=m.MedicalRecord.objects.none(), required=False)
    appointment = forms.ModelChoiceField(queryset=m.Appointment.objects.none(), required=False)
    prescription = forms.ModelChoiceField(queryset=m.Prescription.objects.none(), required=False)

    def __init__(self, *args: Any, user: Any, admin_site: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        changeable = access.patients_changeable_by(user)
        autocomplete_field(self, "patient", m.Document, changeable, admin_site)
        for name, model in (
            ("medical_record", m.MedicalRecord),
            ("appointment", m.Appointment),
            ("prescription", m.Prescription),
        ):
            autocomplete_field(self, name, m.Document, model.objects.filter(patient__in=changeable), admin_site)


class DocumentInline(admin.TabularInline):
    """The patient's documents, newest first, read only; each links to its page and its file."""

    model = m.Document
    fk_name = "patient"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("kind", "original_name", "content_type", "size", "created_at", "download")
    readonly_fields = fields
    ordering = ("-created_at", "-id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="file")
    def download(self, obj: m.Document) -> str:
        return _download_link(obj)


PatientAdmin.change_inlines = [*PatientAdmin.change_inlines, DocumentInline]


def _extraction_of(document: m.Document) -> m.DocumentExtraction | None:
    """The document's extraction row, read once per page (two fields show it)."""
    if "_extraction" not in document.__dict__:
        document.__dict__["_extraction"] = m.DocumentExtraction.objects.filter(document=document).first()
    return document.__dict__["_extraction"]  # type: ignore[no-any-return]


@admin.register(m.Document)
class DocumentAdmin(PatientScopedAdmin):
    list_display = ("patient", "kind", "original_name", "content_type", "size", "uploaded_by", "created_at")
    list_filter = ("kind", "content_type")
    search_fields = ("patient__mrn", "patient__last_name")
    list_select_related = ("patient", "uploaded_by")
    show_full_result_count = False
    readonly_fields = (
        "uuid",
        "patient",
        "kind",
        "original_name",
        "content_type",
        "size",
        "sha256",
        "record",
        "appointment_uuid",
        "uploaded_by",
        "created_at",
        "expires_at",
        "download",
        "extraction_status",
        "extracted_text",
    )
    fields = readonly_fields

    # Access (PatientScopedAdmin: only visible patients' documents) ----------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[m.Document]:
        return (
            super()
            .get_queryset(request)
            .annotate(medical_record_uuid=F("medical_record__uuid"), appointment_uuid=F("appointment__uuid"))
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("clinical.add_document")  # and, per patient, access.can_add_document

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deletion is a retention decision

    # Fields ------------------------------------------------------------------------------
    @admin.display(description="text extraction")
    def extraction_status(self, obj: m.Document) -> str:
        extraction = _extraction_of(obj)
        if extraction is None:
            return "—"
        details = [extraction.get_status_display()]
        if extraction.engine:
            details.append(f"engine {extraction.engine}")
        if extraction.page_count:
            details.append(f"{extraction.page_count} page(s)")
        if extraction.confidence is not None:
            details.append(f"confidence {extraction.confidence:.0%}")
        if extraction.error:
            details.append(extraction.error)
        return ", ".join(details)

    @admin.display(description="extracted text")
    def extracted_text(self, obj: m.Document) -> str:
        extraction = _extraction_of(obj)
        if extraction is None or not extraction.text:
            return "—"
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", extraction.text)

    @admin.display(description="medical record")
    def record(self, obj: m.Document) -> str:
        if obj.medical_record_id is None:
            return "—"
        url = reverse("admin:clinical_medicalrecord_change", args=[obj.medical_record_id])
        return format_html("<a href='{}'>{}</a>", url, getattr(obj, "medical_record_uuid", "") or obj.medical_record_id)

    @admin.display(description="appointment")
    def appointment_uuid(self, obj: m.Document) -> str:
        return str(getattr(obj, "appointment_uuid", None) or "—")

    @admin.display(description="file")
    def download(self, obj: m.Document) -> str:
        return _download_link(obj)

    # Read auditing -------------------------------------------------------------------------
    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        document = self.get_object(request, object_id)
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and document is not None and getattr(response, "status_code", 0) == 200:
            _audit(request, document.patient, [document], "admin document")
        return response

    def auditlog_history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        document = self.get_object(request, object_id)
        response = super().auditlog_history_view(request, object_id, extra_context)
        if document is not None and getattr(response, "status_code", 0) == 200:
            _audit(request, document.patient, [document], "admin document history")
        return response

    # Upload -----------------------------------------------------------------------------------
    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        """Upload a file through ``services.document_upload`` (outside a transaction: a refused file
        leaves nothing in storage, see the service)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        links = ("patient", "medical_record", "appointment", "prescription")
        initial = {name: request.GET[name] for name in links if request.GET.get(name)}
        form = DocumentUploadForm(
            request.POST or None, request.FILES or None, initial=initial, user=request.user, admin_site=self.admin_site
        )
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            if not access.can_add_document(request.user, data["patient"]):
                raise PermissionDenied
            try:
                document = services.document_upload(
                    patient=data["patient"],
                    upload=data["file"],
                    kind=data["kind"],
                    uploaded_by=request.user,
                    medical_record=data["medical_record"],
                    appointment=data["appointment"],
                    prescription=data["prescription"],
                )
            except ValidationError as exc:
                service_errors_on(form, exc)
            else:
                self.message_user(request, f"{document.get_kind_display()} uploaded.", messages.SUCCESS)
                return redirect(reverse("admin:clinical_document_change", args=[document.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Upload a document",
            "opts": self.model._meta,
            "form": form,
            "media": self.media + form.media,
            "submit_label": "Upload",
            "cancel_url": reverse("admin:clinical_document_changelist"),
        }
        return TemplateResponse(request, CARE_FORM_TEMPLATE, context)

    # The file ---------------------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        # GET only: a HEAD would decrypt the file and log a download that sent nothing.
        download = view(require_GET(self.download_view))
        extra = [path("<int:pk>/download/", download, name="clinical_document_download")]
        return extra + super().get_urls()

    def download_view(self, request: HttpRequest, pk: int) -> StreamingHttpResponse:
        document = self.get_queryset(request).select_related("patient").filter(pk=pk).first()
        if document is None or not self.has_view_permission(request, document):
            raise Http404
        response = document_download_response(document)
        _audit(request, document.patient, [document], "admin document download")
        return response
