"""Production settings: every secret comes from the environment, with no default."""

from accounts.encryption import parse_keys
from config.settings.base import *  # noqa: F403
from config.settings.base import database_from_url, env, required

DEBUG = False
SECRET_KEY = required("SECRET_KEY")
FIELD_ENCRYPTION_KEYS = required("FIELD_ENCRYPTION_KEYS")
parse_keys(FIELD_ENCRYPTION_KEYS)  # refuse to start with a malformed key, not at the first read
ALLOWED_HOSTS = [h.strip() for h in required("ALLOWED_HOSTS").split(",") if h.strip()]
DATABASES = {"default": database_from_url(required("DATABASE_URL"))}
# Django's own pool (psycopg_pool); connections are pooled, so no persistent ones.
DATABASES["default"]["OPTIONS"]["pool"] = {
    "min_size": env.int("DATABASE_POOL_MIN", default=2),
    "max_size": env.int("DATABASE_POOL_MAX", default=10),
}
DATABASES["default"]["CONN_MAX_AGE"] = 0

SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
STATIC_ROOT = env.str("STATIC_ROOT", default=str(STATIC_ROOT))

# Login hardening (accounts): MFA for staff cannot be switched off in production,
# whatever MFA_REQUIRED says.
MFA_REQUIRED = True
