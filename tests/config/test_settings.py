"""Production settings refuse to start without their secrets and pass Django's deploy checks."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS", "FIELD_ENCRYPTION_KEYS")


def production_env(**overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in REQUIRED and not key.startswith(("DJANGO_", "CELERY_", "AWS_", "REDIS_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        SECRET_KEY=base64.b64encode(os.urandom(48)).decode(),
        DATABASE_URL="postgres://caretrail@127.0.0.1:5432/caretrail",
        ALLOWED_HOSTS="caretrail.example.org",
        FIELD_ENCRYPTION_KEYS="k1:" + base64.b64encode(os.urandom(32)).decode(),
    )
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("missing", REQUIRED)
def test_production_refuses_to_start_and_names_the_missing_variable(missing):
    env = production_env()
    del env[missing]
    result = manage("check", env=env)
    assert result.returncode != 0
    assert f"The environment variable {missing} must be set." in result.stderr


def test_production_passes_the_deploy_checks_without_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_refuses_a_malformed_encryption_key():
    result = manage("check", env=production_env(FIELD_ENCRYPTION_KEYS="k1:not-base64!"))
    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS" in result.stderr
