"""The Celery application.

With no ``CELERY_BROKER_URL`` the settings make every task run in-process
(``task_always_eager``), so a laptop needs no broker. Production runs separate
worker and beat processes against Redis or RabbitMQ.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("caretrail")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
