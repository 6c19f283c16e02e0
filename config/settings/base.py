"""Settings shared by every environment. Values come only from the environment."""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()
VAR_DIR = Path(env("CARETRAIL_VAR_DIR", default=str(BASE_DIR / "var")))


def required(name: str) -> str:
    """Read a variable that has no default, naming it when it is missing."""
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(f"The environment variable {name} must be set.")
    return value


DEBUG = False
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=[])
# Earlier SECRET_KEYs, still accepted for sessions, signed values and MFA backup codes.
SECRET_KEY_FALLBACKS: list[str] = env.list("SECRET_KEY_FALLBACKS", default=[])

DJANGO_APPS = [
    "cms.apps.CaretrailAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
]
THIRD_PARTY_APPS = [
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "auditlog",
]
LOCAL_APPS = [
    "accounts",
    "clinical",
    "chat",
    "cms",
]
INSTALLED_APPS = DJANGO_APPS + THIRD_PARTY_APPS + LOCAL_APPS

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "auditlog.middleware.AuditlogMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database ---------------------------------------------------------------
# DATABASE_URL is read by each environment's module: local and test fall back
# to the embedded server, production requires it.
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def database_from_url(url: str) -> dict:
    config = environ.Env.db_url_config(url)
    config.setdefault("OPTIONS", {})
    config["ATOMIC_REQUESTS"] = False
    config["CONN_HEALTH_CHECKS"] = True
    return config


# Authentication ---------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "accounts.backends.EmailBackend",
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
# guardian: anonymous users are never granted anything.
ANONYMOUS_USER_NAME = None
GUARDIAN_MONKEY_PATCH_USER = False

# Internationalisation ---------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("es", "Spanish"), ("hi", "Hindi"), ("fr", "French")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static and uploaded files ---------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
AWS_STORAGE_BUCKET_NAME = env.str("AWS_STORAGE_BUCKET_NAME", default="")
if AWS_STORAGE_BUCKET_NAME:
    DEFAULT_STORAGE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "default_acl": "private",
            "file_overwrite": False,
            "querystring_expire": 60,
        },
    }
else:
    DEFAULT_STORAGE = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "media"), "base_url": None},
    }
STORAGES = {
    "default": DEFAULT_STORAGE,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Uploaded documents: larger files are refused (clinical.files.inspection).
DOCUMENT_MAX_BYTES = env.int("DOCUMENT_MAX_BYTES", default=20 * 1024 * 1024)

# Cache and sessions -----------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# Celery -------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
if env.str("CELERY_RESULT_BACKEND", default=""):
    CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"

# Field encryption -------------------------------------------------------
# "id:base64key,id:base64key": the first key encrypts, every key decrypts.
FIELD_ENCRYPTION_KEYS = env.str("FIELD_ENCRYPTION_KEYS", default="")

# REST framework -----------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Caretrail API",
    "DESCRIPTION": "Patient records portal. Objects are identified by UUID only.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI is served from the installed package: nothing loads from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
API_TOKEN_TTL_HOURS = env.int("API_TOKEN_TTL_HOURS", default=12)

# Audit ---------------------------------------------------------------------
AUDITLOG_INCLUDE_ALL_MODELS = False
AUDITLOG_DISABLE_REMOTE_ADDR = False

# Security headers common to every environment.
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SECURE_REFERRER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

SILENCED_SYSTEM_CHECKS = [
    # E-mail is unique case-insensitively (a Lower() unique index), which the
    # check cannot see; accounts.backends.EmailBackend looks it up that way.
    "auth.W004",
    # guardian's ObjectPermissionBackend ignores grant expiry, so access is
    # answered by clinical.access and the backend is deliberately not installed.
    "guardian.W001",
]

CELERY_BEAT_SCHEDULE = {
    "purge-stale-api-tokens": {"task": "accounts.api_tokens_purge", "schedule": 6 * 60 * 60},
    "publish-ledger-head": {"task": "clinical.ledger_head_publish", "schedule": 60 * 60},
    "sweep-orphan-document-files": {"task": "clinical.document_orphans_sweep", "schedule": 24 * 60 * 60},
}
# Medical records' integrity ledger: where the chain head is published each hour.
# A dotted path to a callable (seq, entry_hash) -> (published_to, receipt); the
# default keeps the checkpoint in the database only.
LEDGER_HEAD_PUBLISHER = env.str("LEDGER_HEAD_PUBLISHER", default="clinical.ledger.record_in_database")

# Login hardening (accounts) --------------------------------------------------
# Argon2 first, every login path under lockout, TOTP MFA for staff, staff session
# limits. Kept in one block so the rest of this file stays as it was.
from datetime import timedelta  # noqa: E402

INSTALLED_APPS += [
    "axes",
    # Only django-otp's core: its TOTP and static plugins store secrets in plain text, so the
    # devices are accounts.AuthenticatorApp and accounts.BackupCodes.
    "django_otp",
]
# After authentication and messages (an ended session says why).
_after_auth = MIDDLEWARE.index("django.contrib.messages.middleware.MessageMiddleware") + 1
MIDDLEWARE[_after_auth:_after_auth] = [
    "accounts.middleware.StaffSessionLimitsMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "accounts.middleware.MfaRequiredMiddleware",
]
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # last, as django-axes requires
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", *AUTHENTICATION_BACKENDS]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher", *PASSWORD_HASHERS]
# Session-authenticated API calls by staff count only once the session passed MFA.
REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] = [
    "accounts.authentication.ApiTokenAuthentication",
    "accounts.authentication.MfaSessionAuthentication",
]

# Lockout: 5 failures per (user, IP) lock that pair for 15 minutes; a superuser
# unlocks by deleting the access attempt in the admin.
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_USERNAME_FORM_FIELD = "username"
AXES_USERNAME_CALLABLE = "accounts.lockout.lockout_username"
AXES_CLIENT_IP_CALLABLE = "accounts.lockout.client_ip"
AXES_LOCKOUT_CALLABLE = "accounts.lockout.lockout_response"
AXES_RESET_ON_SUCCESS = False  # reset only after the whole login (MFA included) succeeded
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False  # the lock lasts 15 minutes, not longer
AXES_ENABLE_ACCESS_FAILURE_LOG = True
# Kept out of axes' log lines and stored form data (usernames are e-mail addresses).
AXES_SENSITIVE_PARAMETERS = ["username", "email", "ip_address", "password", "otp", "code", "token"]
AXES_VERBOSE = False  # no start-up banner, and log lines name only the lockout parameters
# Behind N reverse proxies, the client is the Nth address from the right of X-Forwarded-For.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
PASSWORD_RESET_LIMIT = 5  # reset e-mails per client address per window
PASSWORD_RESET_WINDOW = timedelta(minutes=15)

# MFA: required for staff. Only local settings may relax it (MFA_REQUIRED=false).
MFA_REQUIRED = True
OTP_TOTP_ISSUER = "Caretrail"
MFA_BACKUP_CODES = 10

# Staff sessions end after 15 minutes without a request and 12 hours after sign-in.
STAFF_SESSION_IDLE_TIMEOUT = timedelta(minutes=15)
STAFF_SESSION_MAX_AGE = timedelta(hours=12)

# E-mail (password reset): EMAIL_URL, e.g. smtp+tls://user:pw@mail.example.org:587
vars().update(env.email_url("EMAIL_URL", default="smtp://localhost:25"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Caretrail <no-reply@localhost>")
