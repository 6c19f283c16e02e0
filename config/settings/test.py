"""Settings for the test suite: real PostgreSQL (DATABASE_URL or the embedded server)."""

import os

from config.embedded import embedded_database_url, local_secret, new_field_key
from config.settings.base import *  # noqa: F403
from config.settings.base import VAR_DIR, database_from_url, env

DEBUG = False
SECRET_KEY = "test-only-not-secret"  # noqa: S105 - tests never hold real data
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
FIELD_ENCRYPTION_KEYS = env.str("FIELD_ENCRYPTION_KEYS", default="") or local_secret(
    VAR_DIR / "field-encryption-keys", new_field_key
)
DATABASES = {"default": database_from_url(env.str("DATABASE_URL", default="") or embedded_database_url(VAR_DIR))}
# One test database per test process, so parallel runs on one server do not
# drop each other's database.
DATABASES["default"]["TEST"] = {"NAME": f"test_caretrail_{os.getpid()}"}
# A fast hasher keeps fixtures cheap; the production list is tested separately.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    **STORAGES,
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "test-media")},
    },
}
CELERY_TASK_ALWAYS_EAGER = True

# Login hardening (accounts): the real MFA path in tests; mail stays in memory.
MFA_REQUIRED = True
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
