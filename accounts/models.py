"""Users, API tokens and the abstract base every Caretrail model builds on."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.contrib.postgres.functions import RandomUUID
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac


class PublicModel(models.Model):
    """A big-integer key for joins and a UUID, made in Python, for the outside world.

    The UUID exists before the INSERT, which the encrypted fields need: their
    ciphertexts are bound to it.
    """

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)

    class Meta:
        abstract = True

    @classmethod
    def from_db(cls, db: str | None, field_names: Any, values: Any) -> Any:
        instance = super().from_db(db, field_names, values)
        # Encrypted values read with this row are bound to this UUID, even if
        # the instance is later given a new one (copied as a new row).
        instance.__dict__["_sealed_row_id"] = instance.__dict__.get("uuid")
        return instance


class TimestampedModel(PublicModel):
    """``updated_at`` is also kept by a database trigger, so ``QuerySet.update`` moves it."""

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email__iexact=username)

    def _create(self, email: str, password: str | None, **fields: Any) -> User:
        if not email:
            raise ValueError("Users need an e-mail address.")
        user = self.model(email=self.normalize_email(email).strip(), **fields)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields: Any) -> User:
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email: str, password: str | None = None, **fields: Any) -> User:
        fields.update(is_staff=True, is_superuser=True)
        return self._create(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin, TimestampedModel):
    """Every person who signs in: patients, doctors, institution staff, CMS users.

    What kind of user someone is follows from what points at them (a
    ``clinical.Patient``, a ``clinical.Doctor``, memberships, groups), not from
    a type column. Phone numbers live in ``clinical.Phone``.
    """

    email = models.EmailField("e-mail address", max_length=254)
    first_name = models.CharField(max_length=150, blank=True)
    last_name = models.CharField(max_length=150, blank=True)
    preferred_language = models.CharField(max_length=8, choices=settings.LANGUAGES, default=settings.LANGUAGE_CODE)
    email_verified = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="Designates whether the user can sign in to the admin.")
    date_joined = models.DateTimeField(default=timezone.now)
    security_stamp = models.UUIDField(
        default=uuid.uuid4,
        db_default=RandomUUID(),
        editable=False,
        help_text="Changing it ends every session and API token of the user at their next request.",
    )

    objects = UserManager()

    EMAIL_FIELD = "email"
    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        verbose_name = "user"
        ordering = ["email"]
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                name="accounts_user_email_ci_unique",
                violation_error_message="A user with this e-mail address already exists.",
            ),
        ]

    def __str__(self) -> str:
        return self.get_full_name() or self.email

    def get_full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def get_short_name(self) -> str:
        return self.first_name or self.email

    def clean(self) -> None:
        super().clean()
        self.email = type(self).objects.normalize_email(self.email).strip()

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        # Django checks this HMAC on every request of a session: mixing in the
        # security stamp lets ``user_sessions_revoke`` end all sessions at once,
        # as a password change already does. Overriding the private method keeps
        # SECRET_KEY_FALLBACKS working, since both public methods call it.
        key_salt = "accounts.User.get_session_auth_hash"
        value = f"{self.password}|{self.security_stamp}"
        return salted_hmac(key_salt, value, secret=secret, algorithm="sha256").hexdigest()


class ApiToken(PublicModel):
    """A bearer token for API clients. Only a SHA-256 of the secret is stored."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="Shown to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    security_stamp = models.UUIDField(
        editable=False, help_text="The user's security stamp when the token was issued; it must still match."
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("created_at")),
                name="accounts_apitoken_expires_after_creation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()


class PasswordResetRequest(models.Model):
    """One request for a password-reset e-mail, kept only while it counts towards the limit.

    Rows live in the database rather than the cache so that the limit holds
    across every web process, with or without Redis.
    """

    id = models.BigAutoField(primary_key=True)
    ip_address = models.GenericIPAddressField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["ip_address", "created_at"], name="accounts_pwreset_ip_time"),
            models.Index(fields=["created_at"], name="accounts_pwreset_time"),
        ]

    def __str__(self) -> str:
        return f"{self.ip_address} at {self.created_at:%Y-%m-%d %H:%M}"
