"""Who else may see a patient: care-team and break-the-glass grants.

Grants are guardian object permissions on a direct foreign-key table (not the
generic one, whose text-cast keys no index can serve). Caretrail adds what
guardian lacks: expiry, a reason, who granted, revocation, and the
break-the-glass flag. Expired and revoked grants stay as history; only
``clinical.access`` decides whether a grant counts, never guardian's backend.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from guardian.models import UserObjectPermissionBase

from accounts.models import PublicModel
from clinical.models.directory import Patient


class GrantQuerySet(models.QuerySet["PatientUserObjectPermission"]):
    def active(self) -> GrantQuerySet:
        now = timezone.now()
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)


class PatientUserObjectPermission(UserObjectPermissionBase, PublicModel):
    # PROTECT, not guardian's CASCADE: who could see a patient, and when, is history that
    # deleting the user must not erase. Deactivate the user instead.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    content_object = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="grants")
    reason = models.CharField(max_length=500)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    is_break_glass = models.BooleanField("break-the-glass", default=False)

    objects = GrantQuerySet.as_manager()

    class Meta(UserObjectPermissionBase.Meta):
        verbose_name = "patient access grant"
        unique_together = ()  # history rows repeat the triple; one open grant at a time instead
        constraints = [
            models.UniqueConstraint(
                fields=["user", "permission", "content_object"],
                condition=Q(revoked_at__isnull=True),
                name="clinical_grant_one_open_per_user_permission_patient",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=models.F("created_at")),
                name="clinical_grant_expires_after_creation",
            ),
            models.CheckConstraint(
                condition=Q(is_break_glass=False) | Q(expires_at__isnull=False),
                name="clinical_grant_break_glass_is_time_boxed",
            ),
            models.CheckConstraint(condition=~Q(reason=""), name="clinical_grant_has_reason"),
        ]
        indexes = [
            models.Index(fields=["user", "content_object"], name="clinical_grant_user_patient"),
        ]

    def __str__(self) -> str:
        kind = "Break-the-glass" if self.is_break_glass else "Grant"
        return f"{kind}: {self.user} → {self.content_object_id} ({self.permission.codename})"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ReviewOutcome(models.TextChoices):
    PENDING = "pending", "Pending review"
    APPROPRIATE = "appropriate", "Appropriate"
    INAPPROPRIATE = "inappropriate", "Inappropriate"


class BreakGlassReview(PublicModel):
    """One item in the institution admins' queue for each break-the-glass opening."""

    grant = models.OneToOneField(PatientUserObjectPermission, on_delete=models.PROTECT, related_name="review")
    institution = models.ForeignKey(
        "clinical.MedicalInstitution", on_delete=models.PROTECT, related_name="break_glass_reviews"
    )
    outcome = models.CharField(max_length=16, choices=ReviewOutcome.choices, default=ReviewOutcome.PENDING)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["outcome", "-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(outcome="pending", reviewed_by__isnull=True, reviewed_at__isnull=True)
                | (~Q(outcome="pending") & Q(reviewed_by__isnull=False, reviewed_at__isnull=False)),
                name="clinical_breakglassreview_reviewed_consistently",
            ),
        ]
        indexes = [
            models.Index(fields=["institution"], condition=Q(outcome="pending"), name="clinical_bg_pending"),
        ]

    def __str__(self) -> str:
        return f"Break-the-glass review #{self.pk} ({self.get_outcome_display()})"
