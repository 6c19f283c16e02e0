"""Users, API tokens, MFA devices and the abstract base every Caretrail model builds on."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.contrib.postgres.functions import RandomUUID
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django_otp.models import Device, ThrottlingMixin, TimestampMixin
from django_otp.oath import TOTP
from django_otp.util import random_hex

from accounts.fields import EncryptedTextField


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


# MFA devices -----------------------------------------------------------------------------------
# django-otp's own TOTP and static devices keep the authenticator secret and the backup
# codes as plain text, so anyone who can read those tables can pass anyone's second
# factor. These keep the secret encrypted (like PHI) and only a keyed hash of each code.


# After n failed codes in a row a device accepts none for 2**(n-1) seconds (django-otp's throttling).
THROTTLE_FACTOR = 1


def new_totp_secret() -> str:
    """20 random bytes as hex: the shared secret of an authenticator app (RFC 4226 suggests 160 bits)."""
    return random_hex(20)


class AuthenticatorApp(TimestampMixin, ThrottlingMixin, Device):
    """An authenticator app (TOTP, RFC 6238) whose shared secret is encrypted at rest.

    Every app is set up with what authenticator apps assume: SHA-1, six digits,
    a 30-second step from the Unix epoch. One step either way is accepted, and
    each step only once (``last_t``), so a code seen over someone's shoulder
    cannot be used again.
    """

    step = 30
    t0 = 0
    digits = 6
    tolerance = 1

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    key = EncryptedTextField(default=new_totp_secret, help_text="The shared secret (hex), encrypted.")
    drift = models.SmallIntegerField(default=0, help_text="Time steps the app's clock is known to be off by.")
    last_t = models.BigIntegerField(default=-1, help_text="The time step of the last accepted code.")

    class Meta(Device.Meta):
        verbose_name = "authenticator app"

    def get_throttle_factor(self) -> int:
        return THROTTLE_FACTOR

    @property
    def bin_key(self) -> bytes:
        return bytes.fromhex(self.key)

    def verify_token(self, token: Any) -> bool:
        """Accept the code of the current step (or one either side) once; failures slow further tries."""
        allowed, _ = self.verify_is_allowed()
        if not allowed:
            return False
        totp = TOTP(self.bin_key, self.step, self.t0, self.digits, self.drift)
        totp.time = time.time()
        try:
            verified = totp.verify(int(token), self.tolerance, self.last_t + 1)
        except (TypeError, ValueError):
            verified = False
        if not verified:
            self.throttle_increment(commit=True)
            return False
        self.last_t = totp.t()
        self.drift = totp.drift
        self.throttle_reset(commit=False)
        self.set_last_used_timestamp(commit=False)
        # Only the bookkeeping columns change on a sign-in.
        self.save(
            update_fields=[
                "last_t",
                "drift",
                "throttling_failure_count",
                "throttling_failure_timestamp",
                "last_used_at",
            ]
        )
        return True

    @property
    def config_url(self) -> str:
        """The otpauth:// URI an authenticator app scans (Google's key URI format)."""
        issuer = str(getattr(settings, "OTP_TOTP_ISSUER", "") or "").replace(":", "")
        label = f"{issuer}:{self.user.get_username()}" if issuer else self.user.get_username()
        params = urlencode(
            {
                "secret": base64.b32encode(self.bin_key).decode(),
                "algorithm": "SHA1",
                "digits": self.digits,
                "period": self.step,
            }
        )
        if issuer:
            params += f"&issuer={quote(issuer)}"
        return f"otpauth://totp/{quote(label)}?{params}"


BACKUP_CODE_SALT = "accounts.BackupCode"


def backup_code_hashes(code: str) -> list[str]:
    """The hashes ``code`` may be stored under: HMAC-SHA256 with SECRET_KEY, then each fallback key.

    Keyed, so that the table alone does not let anyone try all 2**40 codes
    offline; the fallbacks keep codes working across a SECRET_KEY rotation.
    """
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [salted_hmac(BACKUP_CODE_SALT, code, secret=secret, algorithm="sha256").hexdigest() for secret in secrets]


class BackupCodes(ThrottlingMixin, Device):
    """A user's single-use backup codes, for when the authenticator app is out of reach."""

    class Meta(Device.Meta):
        verbose_name = "backup codes"
        verbose_name_plural = "backup codes"

    def get_throttle_factor(self) -> int:
        return THROTTLE_FACTOR

    def verify_token(self, token: Any) -> bool:
        """Use up the code if it is one of this set's; failures slow further tries."""
        allowed, _ = self.verify_is_allowed()
        if not allowed:
            return False
        code = "".join(str(token).split()).lower()
        used, _ = self.codes.filter(code_hash__in=backup_code_hashes(code)).delete() if code else (0, None)
        if not used:
            self.throttle_increment(commit=True)
            return False
        self.throttle_reset(commit=True)
        return True


class BackupCode(models.Model):
    """One unused backup code, stored only as a keyed hash (``backup_code_hashes``)."""

    id = models.BigAutoField(primary_key=True)
    device = models.ForeignKey(BackupCodes, on_delete=models.CASCADE, related_name="codes")
    code_hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "code_hash"], name="accounts_backupcode_unique_per_set"),
        ]

    def __str__(self) -> str:
        return f"backup code {self.pk} of {self.device_id}"
