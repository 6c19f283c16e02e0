from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts import checks  # noqa: F401 - registers the system checks
        from accounts.api import schema  # noqa: F401 - registers the OpenAPI extension
        from accounts.audit import audit_register
        from accounts.models import User

        audit_register(User, exclude_fields=["password", "last_login"])
