from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts.audit import audit_register
        from accounts.models import User

        audit_register(User, exclude_fields=["password", "last_login"])
