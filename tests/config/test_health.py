import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db

UNREACHABLE_REDIS = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    }
}


def test_healthz_reports_every_service_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "up"
    assert set(body["checks"]) == {"database", "cache", "broker", "storage"}
    assert all(check["status"] == "up" for check in body["checks"].values())


def test_healthz_answers_503_and_names_the_service_that_is_down(client):
    with override_settings(CACHES=UNREACHABLE_REDIS):
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["checks"]["cache"]["status"] == "down"
    assert body["checks"]["database"]["status"] == "up"
    assert "127.0.0.1:1" not in response.content.decode()  # no connection details leak


def test_healthz_reports_a_broker_that_cannot_be_reached(client, settings):
    from config.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = False
    saved = app.conf.get("CELERY_BROKER_URL")
    app.conf.update(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    try:
        response = client.get("/healthz")
    finally:
        app.conf.update(CELERY_BROKER_URL=saved)
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "down"


def test_healthz_refuses_other_methods(client):
    assert client.post("/healthz").status_code == 405
