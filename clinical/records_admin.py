"""Admin screens for medical records (imported by ``clinical.admin``).

Staff read a decrypted, human-readable summary (``clinical.fhir.summarize``),
never raw JSON. Records are not edited in a change form: they are added with
forms that build valid FHIR for the common kinds (vital signs, lab result,
diagnosis, vaccination; any other resource as FHIR JSON), and changed only by
the actions that keep their history: verify, amend (a new version) and
entered-in-error. Every page starts from ``clinical.access``; reads are
audited like patient reads.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from clinical import access, fhir, services
from clinical import models as m
from clinical.admin_base import PatientScopedAdmin, service_errors_on
from clinical.audit import purpose_for, record_access_record, record_list_access_record
from clinical.selectors import with_record_details

# Form kinds ------------------------------------------------------------------------------


class RecordFormBase(forms.Form):
    """The patient (autocomplete over the patients the user may change) and the record's scales."""

    record_type: str = ""
    title = ""
    patient = forms.ModelChoiceField(queryset=m.Patient.objects.none())
    severity = forms.IntegerField(min_value=1, max_value=10, required=False, help_text="1 (mild) to 10 (critical).")

    def __init__(self, *args: Any, user: Any, admin_site: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["patient"]
        assert isinstance(field, forms.ModelChoiceField)
        field.widget = AutocompleteSelect(m.MedicalRecord._meta.get_field("patient"), admin_site)
        field.queryset = access.patients_changeable_by(user)  # after the widget: it binds the widget's choices

    def payload(self, patient: m.Patient) -> dict[str, Any]:
        raise NotImplementedError

    def chosen_record_type(self) -> str:
        return self.record_type


def _when(field: str) -> forms.Field:
    return forms.DateTimeField(label=field, initial=timezone.now)


class VitalSignsForm(RecordFormBase):
    record_type = m.RecordType.VITAL_SIGNS
    title = "Vital signs"
    # The common measurements: one blood pressure (both components), no separate components, no duplicates.
    kind = forms.ChoiceField(
        choices=[
            (code, fhir.VITAL_SIGNS[code].name)
            for code in ("85354-9", "8867-4", "9279-1", "8310-5", "59408-5", "8302-2", "29463-7", "39156-5")
        ]
    )
    value = forms.DecimalField(required=False, help_text="For every measurement except blood pressure.")
    systolic = forms.DecimalField(required=False, help_text="Blood pressure only (mm[Hg]).")
    diastolic = forms.DecimalField(required=False, help_text="Blood pressure only (mm[Hg]).")
    unit = forms.CharField(required=False, help_text="UCUM code; empty for the usual unit (e.g. /min, Cel, kg).")
    effective = _when("Measured at")

    def payload(self, patient: m.Patient) -> dict[str, Any]:
        data = self.cleaned_data
        return fhir.build_vital_signs(
            kind=data["kind"],
            value=data["value"],
            systolic=data["systolic"],
            diastolic=data["diastolic"],
            unit=data["unit"] or None,
            effective=data["effective"],
            patient_reference=f"Patient/{patient.uuid}",
        )


class LabResultForm(RecordFormBase):
    record_type = m.RecordType.LAB_RESULT
    title = "Lab result"
    loinc_code = forms.CharField(label="LOINC code", max_length=20, help_text="e.g. 2345-7 for glucose.")
    display = forms.CharField(label="Test", max_length=200)
    value = forms.DecimalField()
    unit = forms.CharField(help_text="UCUM code, e.g. mg/dL, mmol/L, 10*3/uL.")
    low = forms.DecimalField(label="Reference low", required=False)
    high = forms.DecimalField(label="Reference high", required=False)
    effective = _when("Collected at")

    def payload(self, patient: m.Patient) -> dict[str, Any]:
        data = self.cleaned_data
        return fhir.build_lab_result(
            loinc_code=data["loinc_code"].strip(),
            display=data["display"],
            value=data["value"],
            unit=data["unit"].strip(),
            low=data["low"],
            high=data["high"],
            effective=data["effective"],
            patient_reference=f"Patient/{patient.uuid}",
        )


class DiagnosisForm(RecordFormBase):
    record_type = m.RecordType.DIAGNOSIS
    title = "Diagnosis"
    icd10_code = forms.CharField(label="ICD-10-CM code", max_length=10, help_text="e.g. E11.9")
    display = forms.CharField(label="Diagnosis", max_length=200)
    onset = forms.DateField(initial=timezone.localdate)
    clinical_status = forms.ChoiceField(
        choices=[(s, s.capitalize()) for s in ("active", "recurrence", "relapse", "inactive", "remission", "resolved")]
    )

    def clean_icd10_code(self) -> str:
        import simple_icd_10_cm as icd

        code = self.cleaned_data["icd10_code"].strip().upper()
        if not icd.is_valid_item(code):
            raise ValidationError("Not an ICD-10-CM code.")
        return code

    def payload(self, patient: m.Patient) -> dict[str, Any]:
        data = self.cleaned_data
        return fhir.build_diagnosis(
            icd10_code=data["icd10_code"],
            display=data["display"],
            onset=data["onset"],
            patient_reference=f"Patient/{patient.uuid}",
            clinical_status=data["clinical_status"],
        )


class VaccinationForm(RecordFormBase):
    record_type = m.RecordType.VACCINATION
    title = "Vaccination"
    cvx_code = forms.CharField(label="CVX code", max_length=10, help_text="e.g. 140 for seasonal influenza.")
    display = forms.CharField(label="Vaccine", max_length=200)
    occurrence = forms.DateField(label="Given on", initial=timezone.localdate)
    lot_number = forms.CharField(max_length=50, required=False)

    def payload(self, patient: m.Patient) -> dict[str, Any]:
        data = self.cleaned_data
        return fhir.build_vaccination(
            cvx_code=data["cvx_code"].strip(),
            display=data["display"],
            occurrence=data["occurrence"],
            patient_reference=f"Patient/{patient.uuid}",
            lot_number=data["lot_number"] or None,
        )


class FhirJsonForm(RecordFormBase):
    title = "Any record, as FHIR R4 JSON"
    type = forms.ChoiceField(label="Record type", choices=m.RecordType.choices)
    fhir_json = forms.JSONField(label="FHIR resource (JSON)", widget=forms.Textarea(attrs={"rows": 20, "cols": 90}))

    def chosen_record_type(self) -> str:
        return str(self.cleaned_data["type"])

    def payload(self, patient: m.Patient) -> dict[str, Any]:
        value = self.cleaned_data["fhir_json"]
        if not isinstance(value, dict):
            raise ValidationError({"fhir_json": "A FHIR resource is a JSON object."})
        return value


FORM_KINDS: dict[str, type[RecordFormBase]] = {
    "vital-signs": VitalSignsForm,
    "lab-result": LabResultForm,
    "diagnosis": DiagnosisForm,
    "vaccination": VaccinationForm,
    "fhir": FhirJsonForm,
}


class AmendForm(forms.Form):
    fhir_json = forms.JSONField(
        label="Corrected FHIR resource (JSON)", widget=forms.Textarea(attrs={"rows": 20, "cols": 90})
    )
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2, "cols": 90}))


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 90}))


# The admin -------------------------------------------------------------------------------


def summary_html(record: m.MedicalRecord) -> str:
    lines = fhir.summarize(record.payload)
    return format_html("<dl class='record-summary'>{}</dl>", format_html_join("", "<dt>{}</dt><dd>{}</dd>", lines))


def summary_line(record: m.MedicalRecord) -> str:
    lines = dict(fhir.summarize(record.payload))
    parts = [lines.get("What"), lines.get("Value")]
    return " — ".join(p for p in parts if p) or record.resource_type


class MedicalRecordInline(admin.TabularInline):
    """The patient's current records, newest first, read only; each links to its page."""

    model = m.MedicalRecord
    fk_name = "patient"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("record_type", "summary", "effective_date", "interpretation", "version", "verified_at")
    readonly_fields = fields
    ordering = ("-created_at",)
    verbose_name_plural = "medical records (current versions)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[m.MedicalRecord]:
        return super().get_queryset(request).filter(status=m.RecordStatus.CURRENT).order_by("-created_at", "-id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="summary")
    def summary(self, obj: m.MedicalRecord) -> str:
        return summary_line(obj)


@admin.register(m.MedicalRecord)
class MedicalRecordAdmin(PatientScopedAdmin):
    list_display = (
        "patient",
        "record_type",
        "summary",
        "effective_date",
        "interpretation",
        "status",
        "version",
        "source",
        "verified",
        "created_at",
    )
    list_filter = ("record_type", "status", "source", "interpretation")
    search_fields = ("patient__mrn", "patient__last_name")
    list_select_related = ("patient",)
    show_full_result_count = False
    readonly_fields = (
        "uuid",
        "patient",
        "record_type",
        "resource_type",
        "summary_block",
        "effective_date",
        "interpretation",
        "status",
        "version",
        "versions",
        "source",
        "severity",
        "confidence",
        "author",
        "institution",
        "verified_by",
        "verified_at",
        "amendment_reason",
        "error_reason",
        "marked_in_error_by",
        "marked_in_error_at",
        "data_hash",
        "ledger_entry",
        "created_at",
    )
    fieldsets = (
        (None, {"fields": ("uuid", "patient", ("record_type", "resource_type"), "summary_block")}),
        ("Clinical", {"fields": ("effective_date", "interpretation", ("severity", "confidence"), "source")}),
        ("History", {"fields": ("status", "version", "versions", "amendment_reason")}),
        ("Entered in error", {"fields": ("error_reason", "marked_in_error_by", "marked_in_error_at")}),
        ("Provenance", {"fields": ("author", "institution", ("verified_by", "verified_at"), "created_at")}),
        ("Integrity", {"fields": ("data_hash", "ledger_entry"), "classes": ("collapse",)}),
    )

    # Access (PatientScopedAdmin: only visible patients' records) ------------------------------
    def get_queryset(self, request: HttpRequest) -> QuerySet[m.MedicalRecord]:
        return with_record_details(super().get_queryset(request))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # records change only through the actions below

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deletion is a retention or erasure decision, with a ledger tombstone

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("clinical.add_medicalrecord")

    # Columns and fields -----------------------------------------------------------------------
    @admin.display(description="summary")
    def summary(self, obj: m.MedicalRecord) -> str:
        return summary_line(obj)

    @admin.display(description="record", boolean=False)
    def summary_block(self, obj: m.MedicalRecord) -> str:
        return summary_html(obj)

    @admin.display(boolean=True)
    def verified(self, obj: m.MedicalRecord) -> bool:
        return obj.verified_at is not None

    @admin.display(description="ledger entry")
    def ledger_entry(self, obj: m.MedicalRecord) -> str:
        return str(getattr(obj, "ledger_entry_uuid", "") or "—")

    @admin.display(description="all versions")
    def versions(self, obj: m.MedicalRecord) -> str:
        rows = (
            m.MedicalRecord.objects.filter(series=obj.series).order_by("version").values_list("pk", "version", "status")
        )
        return format_html_join(
            ", ",
            "<a href='{}'>v{} ({})</a>",
            (
                (reverse("admin:clinical_medicalrecord_change", args=[pk]), version, status)
                for pk, version, status in rows
            ),
        )

    # Read auditing -------------------------------------------------------------------------------
    def audit_list(self, request: HttpRequest, rows: list[Any], view: str | None = None) -> None:
        record_list_access_record(
            user=request.user,
            records=rows,
            purpose=purpose_for(request.user),
            view=view or "admin record list",
            remote_addr=request.META.get("REMOTE_ADDR"),
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        record = self.get_object(request, object_id)
        extra = {**(extra_context or {}), "record_actions": self._actions_for(request, record) if record else []}
        response = super().change_view(request, object_id, form_url, extra)
        if request.method == "GET" and record is not None and getattr(response, "status_code", 0) == 200:
            record_access_record(
                user=request.user,
                patient=record.patient,
                records=[record],
                purpose=purpose_for(request.user, request.GET.get("purpose")),
                view="admin record",
                remote_addr=request.META.get("REMOTE_ADDR"),
            )
        return response

    def _actions_for(self, request: HttpRequest, record: m.MedicalRecord) -> list[tuple[str, str]]:
        if record.status != m.RecordStatus.CURRENT:
            return []
        user, patient, actions = request.user, record.patient, []
        if record.verified_at is None and access.can_verify_record(user, patient):
            actions.append(("Verify", reverse("admin:clinical_medicalrecord_verify", args=[record.pk])))
        if access.can_amend_record(user, patient):
            actions.append(("Amend", reverse("admin:clinical_medicalrecord_amend", args=[record.pk])))
            actions.append(
                ("Mark entered in error", reverse("admin:clinical_medicalrecord_entered_in_error", args=[record.pk]))
            )
        return actions

    # Pages -----------------------------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        extra = [
            path("add/<slug:kind>/", view(self.add_kind_view), name="clinical_medicalrecord_add_kind"),
            path("<int:pk>/verify/", view(self.verify_view), name="clinical_medicalrecord_verify"),
            path("<int:pk>/amend/", view(self.amend_view), name="clinical_medicalrecord_amend"),
            path(
                "<int:pk>/entered-in-error/",
                view(self.entered_in_error_view),
                name="clinical_medicalrecord_entered_in_error",
            ),
        ]
        return extra + super().get_urls()

    def _page(self, request: HttpRequest, template: str, title: str, **context: Any) -> TemplateResponse:
        return TemplateResponse(
            request,
            f"admin/clinical/medicalrecord/{template}",
            {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta, **context},
        )

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        if not self.has_add_permission(request):
            raise PermissionDenied
        patient = request.GET.get("patient", "")
        kinds = [
            (form.title, reverse("admin:clinical_medicalrecord_add_kind", args=[slug]) + f"?patient={patient}")
            for slug, form in FORM_KINDS.items()
        ]
        return self._page(request, "add_choose.html", "Add a medical record", kinds=kinds)

    def add_kind_view(self, request: HttpRequest, kind: str) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form_class = FORM_KINDS.get(kind)
        if form_class is None:
            raise Http404
        initial = {"patient": request.GET.get("patient")} if request.GET.get("patient") else {}
        form = form_class(request.POST or None, initial=initial, user=request.user, admin_site=self.admin_site)
        if request.method == "POST" and form.is_valid():
            patient = form.cleaned_data["patient"]
            if not access.can_add_record(request.user, patient):
                raise PermissionDenied
            try:
                record = services.record_create(
                    patient=patient,
                    record_type=form.chosen_record_type(),
                    payload=form.payload(patient),
                    author=request.user,
                    severity=form.cleaned_data.get("severity"),
                )
            except fhir.FhirValidationError as exc:
                form.add_error(None, [f"{e['path']}: {e['message']}" for e in exc.errors])
            except ValidationError as exc:
                service_errors_on(form, exc, {"payload": "fhir_json"} if kind == "fhir" else None)
            else:
                self.message_user(request, f"{record} added for {patient}.", messages.SUCCESS)
                return redirect(reverse("admin:clinical_medicalrecord_change", args=[record.pk]))
        return self._page(request, "add_form.html", f"Add: {form_class.title}", form=form, media=form.media)

    def _current_record(self, request: HttpRequest, pk: int, allowed: Any) -> m.MedicalRecord:
        record = self.get_queryset(request).filter(pk=pk).first()
        if record is None:
            raise Http404
        if not allowed(request.user, record.patient):
            raise PermissionDenied
        return record

    def verify_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = self._current_record(request, pk, access.can_verify_record)
        if request.method == "POST":
            try:
                services.record_verify(record=record, by=request.user)
                self.message_user(request, "Record verified.", messages.SUCCESS)
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
            return redirect(reverse("admin:clinical_medicalrecord_change", args=[record.pk]))
        return self._page(request, "confirm.html", "Verify this record", record=record, summary=summary_html(record))

    def amend_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = self._current_record(request, pk, access.can_amend_record)
        initial = {"fhir_json": json.dumps(record.payload, indent=2, ensure_ascii=False)}
        form = AmendForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                amended = services.record_amend(
                    record=record,
                    payload=form.cleaned_data["fhir_json"],
                    author=request.user,
                    reason=form.cleaned_data["reason"],
                )
            except ValidationError as exc:
                service_errors_on(form, exc, {"payload": "fhir_json"})
            else:
                self.message_user(request, f"Amended: version {amended.version} is now current.", messages.SUCCESS)
                return redirect(reverse("admin:clinical_medicalrecord_change", args=[amended.pk]))
        return self._page(request, "reason_form.html", "Amend this record", form=form, summary=summary_html(record))

    def entered_in_error_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        record = self._current_record(request, pk, access.can_amend_record)
        form = ReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                services.record_mark_entered_in_error(
                    record=record, by=request.user, reason=form.cleaned_data["reason"]
                )
            except ValidationError as exc:
                service_errors_on(form, exc)
            else:
                self.message_user(request, "Marked entered in error; it stays readable.", messages.WARNING)
                return redirect(reverse("admin:clinical_medicalrecord_change", args=[record.pk]))
        title = "Mark this record entered in error"
        return self._page(request, "reason_form.html", title, form=form, summary=summary_html(record))
