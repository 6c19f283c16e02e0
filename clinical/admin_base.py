"""The base of every clinical admin: history pages that respect the access policy and are audited."""

from __future__ import annotations

from typing import Any

from auditlog.mixins import AuditlogHistoryAdminMixin
from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse

from clinical import access
from clinical import models as m
from clinical.audit import patient_access_record, patient_list_access_record, purpose_for, record_access_record


class CaretrailAdmin(AuditlogHistoryAdminMixin, admin.ModelAdmin):
    show_auditlog_history_link = True
    list_per_page = 50

    def auditlog_history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The mixin would render an empty page (and fail) for a row that
        # get_queryset hides; answer like the change page does instead.
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if isinstance(obj, m.Patient):
            patient_access_record(user=request.user, patient=obj, purpose=purpose_for(request.user))
        elif isinstance(obj, m.MedicalRecord):
            record_access_record(
                user=request.user,
                patient=obj.patient,
                records=[obj],
                purpose=purpose_for(request.user),
                view="admin record history",
                remote_addr=request.META.get("REMOTE_ADDR"),
            )
        return super().auditlog_history_view(request, object_id, extra_context)


class PatientScopedAdmin(CaretrailAdmin):
    """An admin over rows that belong to a patient: only visible patients' rows show."""

    patient_field = "patient"

    def visible_rows(self, request: HttpRequest) -> Q:
        return Q(**{f"{self.patient_field}__in": access.patients_visible_to(request.user)})

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(self.visible_rows(request))

    def _patient_of(self, obj: Any) -> m.Patient | None:
        return getattr(obj, self.patient_field, None)

    # Read auditing: every list page writes one access entry naming the patients whose rows it showed.
    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            self.audit_list(request, list(changelist.result_list))
        return response

    def audit_list(self, request: HttpRequest, rows: list[Any], view: str | None = None) -> None:
        """Write the access entry of a page listing ``rows``; ``view`` defaults to "admin <model> list"."""
        patients = (self._patient_of(row) for row in rows)
        patient_list_access_record(
            user=request.user,
            patients=list(dict.fromkeys(patient for patient in patients if patient is not None)),
            purpose=purpose_for(request.user),
            view=view or f"admin {self.opts.verbose_name} list",
            remote_addr=request.META.get("REMOTE_ADDR"),
        )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        patient = self._patient_of(obj) if obj is not None else None
        allowed = super().has_view_permission(request, obj)
        return allowed and (patient is None or access.can_view_patient(request.user, patient))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        patient = self._patient_of(obj) if obj is not None else None
        allowed = super().has_change_permission(request, obj)
        return allowed and (patient is None or access.can_change_patient(request.user, patient))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "patient":
            kwargs["queryset"] = access.patients_changeable_by(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def service_errors_on(form: forms.Form, exc: ValidationError, aliases: dict[str, str] | None = None) -> None:
    """A service's ValidationError on ``form``: each field's errors on the form field that shows it, else on top."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc.messages)
        return
    for field, errors in exc.message_dict.items():
        target = (aliases or {}).get(field, field)
        form.add_error(target if target in form.fields else None, errors)
