from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse

from accounts.mfa import mfa_satisfied


class CaretrailAdminSite(admin.AdminSite):
    site_header = "Caretrail"
    site_title = "Caretrail admin"
    index_title = "Clinic administration"

    def has_permission(self, request: HttpRequest) -> bool:
        # Staff also need a session that passed MFA (accounts owns the rule).
        return super().has_permission(request) and mfa_satisfied(request)

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        from clinical.access import can_break_glass
        from clinical.selectors import headline_counts

        shortcuts = []
        if can_break_glass(request.user):
            shortcuts.append(("Emergency access (break the glass)", reverse("admin:clinical_patient_break_glass")))
        if request.user.is_superuser or request.user.has_perm("cms.manage_roles"):
            shortcuts.append(("Role matrix", reverse("admin:cms_role_matrix")))
        context = {
            "headline_counts": headline_counts(user=request.user),
            "shortcuts": shortcuts,
            **(extra_context or {}),
        }
        return super().index(request, extra_context=context)
