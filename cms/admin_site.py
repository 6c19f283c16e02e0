from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from accounts.mfa import mfa_satisfied


class CaretrailAdminSite(admin.AdminSite):
    site_header = "Caretrail"
    site_title = "Caretrail admin"
    index_title = "Clinic administration"

    def has_permission(self, request: HttpRequest) -> bool:
        # Staff also need a session that passed MFA (accounts owns the rule).
        return super().has_permission(request) and mfa_satisfied(request)

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        from clinical.selectors import headline_counts

        context = {"headline_counts": headline_counts(user=request.user), **(extra_context or {})}
        return super().index(request, extra_context=context)
