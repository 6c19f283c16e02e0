"""System settings, and the home of the CMS-side named actions."""

from __future__ import annotations

from django.db import models

from accounts.models import TimestampedModel


class SystemSetting(TimestampedModel):
    """A runtime setting an administrator may change (PredictHealth's system_settings)."""

    key = models.SlugField(max_length=100, unique=True)
    value = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["key"]
        permissions = [
            ("manage_settings", "Can manage system settings"),
            ("manage_roles", "Can assign roles and see the role matrix"),
            ("view_audit_log", "Can read the audit log"),
        ]

    def __str__(self) -> str:
        return self.key
