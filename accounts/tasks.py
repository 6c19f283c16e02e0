"""Periodic housekeeping for accounts. Tasks take no PHI and are safe to repeat."""

from __future__ import annotations

from celery import shared_task

from accounts.services import api_tokens_purge


@shared_task(name="accounts.api_tokens_purge")
def api_tokens_purge_task() -> int:
    """Delete API tokens that expired or were revoked long ago; returns how many."""
    return api_tokens_purge()
