from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts import checks  # noqa: F401 - registers the system checks
        from accounts.api import schema  # noqa: F401 - registers the OpenAPI extension
        from accounts.audit import audit_register
        from accounts.models import AuthenticatorApp, BackupCode, BackupCodes, User

        audit_register(User, exclude_fields=["password", "last_login"])
        # Enrolment, confirmation, reset and each used backup code are logged; the bookkeeping
        # of every sign-in (last step, drift, throttling) is not. The secret is masked as encrypted.
        bookkeeping = ["throttling_failure_timestamp", "throttling_failure_count"]
        audit_register(AuthenticatorApp, exclude_fields=[*bookkeeping, "drift", "last_t", "last_used_at"])
        audit_register(BackupCodes, exclude_fields=bookkeeping)
        audit_register(BackupCode, exclude_fields=["code_hash"])
