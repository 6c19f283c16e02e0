"""Scheduled work for the clinical app. Tasks take ids, never PHI, and are safe to repeat."""

from __future__ import annotations

from celery import shared_task

from clinical import ledger


@shared_task(name="clinical.ledger_head_publish")
def ledger_head_publish_task() -> int | None:
    """Publish the ledger's head (``LEDGER_HEAD_PUBLISHER``) and keep a checkpoint; returns its sequence number."""
    checkpoint = ledger.publish_head()
    return checkpoint.seq if checkpoint else None
