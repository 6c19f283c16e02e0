from __future__ import annotations

from typing import Any

from auditlog.mixins import AuditlogHistoryAdminMixin
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import ApiToken, User
from accounts.services import mfa_reset, user_sessions_revoke


class UserCreateForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "first_name", "last_name")


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(AuditlogHistoryAdminMixin, DjangoUserAdmin):
    form = UserEditForm
    add_form = UserCreateForm
    show_auditlog_history_link = True
    ordering = ("email",)
    list_display = ("email", "first_name", "last_name", "is_staff", "is_active", "email_verified")
    list_filter = ("is_staff", "is_superuser", "is_active", "email_verified", "groups")
    search_fields = ("email", "first_name", "last_name")
    readonly_fields = ("uuid", "last_login", "date_joined", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("uuid", "email", "password")}),
        ("Personal", {"fields": ("first_name", "last_name", "preferred_language", "email_verified")}),
        ("Access", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined", "created_at", "updated_at")}),
    )
    add_fieldsets = (
        (
            None,
            {"classes": ("wide",), "fields": ("email", "first_name", "last_name", "password1", "password2")},
        ),
    )
    filter_horizontal = ("groups", "user_permissions")
    actions = ("end_sessions", "reset_mfa")

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        # Patients' portal accounts are PHI: only superusers list them here.
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(is_staff=True)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        user = form.instance
        before = (
            set(user.groups.values_list("pk", flat=True)),
            set(user.user_permissions.values_list("pk", flat=True)),
        )
        super().save_related(request, form, formsets, change)
        after = (set(user.groups.values_list("pk", flat=True)), set(user.user_permissions.values_list("pk", flat=True)))
        if change and (before[0] - after[0] or before[1] - after[1]):
            # A role taken away takes effect at once: the user signs in again under what is left.
            user_sessions_revoke(user=user)

    @admin.action(description="End all sessions and API tokens of the selected users", permissions=["change"])
    def end_sessions(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            user_sessions_revoke(user=user)
        self.message_user(request, f"Ended the sessions and API tokens of {len(queryset)} user(s).")

    @admin.action(
        description="Reset two-factor authentication (they enrol again at their next sign-in)",
        permissions=["change"],
    )
    def reset_mfa(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            mfa_reset(user=user)
        self.message_user(request, f"Reset two-factor authentication of {len(queryset)} user(s).")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "user__email", "name")
    autocomplete_fields = ("user",)
    readonly_fields = ("uuid", "prefix", "key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Secrets are shown once, by the API; the admin can only revoke.
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return (*self.readonly_fields, "user", "expires_at")
