"""Scheduled work for the clinical app. Tasks take ids, never PHI, and are safe to repeat."""

from __future__ import annotations

from celery import shared_task

from clinical import ledger


@shared_task(name="clinical.ledger_head_publish")
def ledger_head_publish_task() -> int | None:
    """Publish the ledger's head (``LEDGER_HEAD_PUBLISHER``) and keep a checkpoint; returns its sequence number."""
    checkpoint = ledger.publish_head()
    return checkpoint.seq if checkpoint else None


@shared_task(name="clinical.document_extract", soft_time_limit=300, time_limit=330)
def document_extract_task(document_id: int) -> str:
    """Extract a document's text (by id; no PHI in the arguments); returns the extraction status."""
    from clinical.models import Document
    from clinical.services import document_extract

    document = Document.objects.filter(pk=document_id).first()
    if document is None:  # deleted before the task ran
        return "missing"
    return str(document_extract(document=document).status)


@shared_task(name="clinical.prescription_pdf", soft_time_limit=120, time_limit=150)
def prescription_pdf_task(prescription_id: int) -> str:
    """Make a prescription's printable PDF (by id; no PHI in the arguments); returns the document's UUID."""
    from clinical.models import Prescription
    from clinical.prescriptions import prescription_pdf

    prescription = Prescription.objects.filter(pk=prescription_id).first()
    if prescription is None:  # rolled back or removed before the task ran
        return "missing"
    return str(prescription_pdf(prescription=prescription).uuid)


@shared_task(name="clinical.document_orphans_sweep")
def document_orphans_sweep_task() -> int:
    """Delete stored files that no document names, a day after they were written; returns how many."""
    from clinical.services import document_orphans_sweep

    return document_orphans_sweep()
