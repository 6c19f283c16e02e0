"""Admin for cms: system settings, and the role matrix (roles × permissions) for superusers."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path

from cms.models import SystemSetting
from cms.roles import ROLES
from cms.services import roles_sync


@admin.register(SystemSetting)
class SystemSettingAdmin(admin.ModelAdmin):
    list_display = ("key", "description", "updated_at")
    search_fields = ("key", "description")
    readonly_fields = ("uuid", "created_at", "updated_at")

    def get_urls(self) -> list[Any]:
        return [
            path("roles/", self.admin_site.admin_view(self.role_matrix_view), name="cms_role_matrix"),
            *super().get_urls(),
        ]

    def role_matrix_view(self, request: HttpRequest) -> TemplateResponse:
        if not (request.user.is_superuser or request.user.has_perm("cms.manage_roles")):
            raise PermissionDenied
        permissions = sorted(set().union(*(role.permissions() for role in ROLES)))
        members = {
            group.name: group.user_set.count() for group in Group.objects.filter(name__in=[r.name for r in ROLES])
        }
        rows = [{"permission": perm, "cells": [perm in role.permissions() for role in ROLES]} for perm in permissions]
        drift = [line for d in roles_sync(apply=False) for line in d.lines()]
        context = {
            **self.admin_site.each_context(request),
            "title": "Role matrix",
            "roles": [{"name": r.name, "description": r.description, "members": members.get(r.name, 0)} for r in ROLES],
            "rows": rows,
            "drift": drift,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/cms/role_matrix.html", context)
