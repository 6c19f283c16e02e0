"""The base of every clinical admin: history pages that respect the access policy and are audited."""

from __future__ import annotations

from typing import Any

from auditlog.mixins import AuditlogHistoryAdminMixin
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.http import HttpRequest, HttpResponse

from clinical import models as m
from clinical.audit import patient_access_record, purpose_for, record_access_record


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
