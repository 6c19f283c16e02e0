"""Settings behind ``make run``: everything embedded unless the environment says otherwise."""

from config.embedded import embedded_database_url, local_secret, new_field_key, new_secret_key
from config.settings.base import *  # noqa: F403
from config.settings.base import VAR_DIR, database_from_url, env

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="") or local_secret(VAR_DIR / "secret-key", new_secret_key)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
FIELD_ENCRYPTION_KEYS = env.str("FIELD_ENCRYPTION_KEYS", default="") or local_secret(
    VAR_DIR / "field-encryption-keys", new_field_key
)
DATABASES = {"default": database_from_url(env.str("DATABASE_URL", default="") or embedded_database_url(VAR_DIR))}

# Login hardening (accounts): MFA_REQUIRED=false relaxes MFA for staff (a system
# check warns at start); e-mails are printed unless EMAIL_URL is set.
MFA_REQUIRED = env.bool("MFA_REQUIRED", default=True)
if not env.str("EMAIL_URL", default=""):
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
