"""A real task on a real worker: Redis when REDIS_URL is set, Celery's in-memory transport otherwise."""

import os
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import api_token_create
from accounts.tasks import api_tokens_purge_task
from config.celery import app

pytestmark = pytest.mark.django_db


def forget_cached_connections():
    """Celery caches its broker pool, AMQP helpers and result backend; a reconfigured app needs new ones."""
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.__dict__.pop("amqp", None)
    app._backend_cache = None
    if hasattr(app._local, "backend"):
        del app._local.backend


@pytest.fixture
def real_worker():
    redis_url = os.environ.get("REDIS_URL", "")
    # Django-namespaced keys, as config.celery loads them from settings.
    keys = ("CELERY_TASK_ALWAYS_EAGER", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
    saved = {key: app.conf.get(key) for key in keys}
    app.conf.update(
        CELERY_TASK_ALWAYS_EAGER=False,
        CELERY_BROKER_URL=redis_url or "memory://",
        CELERY_RESULT_BACKEND="rpc://",  # results travel back over the same broker
    )
    forget_cached_connections()
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as worker:
            yield worker
    finally:
        app.conf.update(saved)
        forget_cached_connections()


@pytest.mark.django_db(transaction=True)
def test_a_task_runs_end_to_end_on_a_real_worker(real_worker, make_user):
    user = make_user()
    stale, _ = api_token_create(user=user, name="old")
    api_token_create(user=user, name="current")
    long_ago = timezone.now() - timedelta(days=60)
    ApiToken.objects.filter(pk=stale.pk).update(created_at=long_ago - timedelta(hours=1), expires_at=long_ago)

    result = api_tokens_purge_task.delay()

    assert result.get(timeout=30) == 1
    assert list(ApiToken.objects.values_list("name", flat=True)) == ["current"]
    assert result.status == "SUCCESS"


def test_tasks_run_in_process_when_no_broker_is_configured():
    assert app.conf.task_always_eager is True
    assert api_tokens_purge_task.delay().get() == 0
