"""Read auditing: every look at PHI leaves an auditlog ACCESS entry.

Writes are logged by auditlog itself (signals); reads are not, so the views
call these functions. Each entry carries the actor, the purpose of use (HL7
PurposeOfUse codes) and the break-the-glass flag in ``additional_data``.
A list page writes one entry per request, naming the patients shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType

from clinical import access
from clinical.models import Appointment, Document, MedicalRecord, Patient, Prescription

TREATMENT = "TREAT"
EMERGENCY_TREATMENT = "ETREAT"
OPERATIONS = "HOPERAT"
PATIENT_REQUEST = "PATRQT"
PURPOSES = {
    TREATMENT: "treatment",
    EMERGENCY_TREATMENT: "emergency treatment",
    OPERATIONS: "healthcare operations",
    PATIENT_REQUEST: "patient request",
    "HPAYMT": "payment",
    "HRESCH": "research",
    "PUBHLTH": "public health",
}


def purpose_for(user: Any, requested: str | None = None) -> str:
    """The declared purpose if it is a known code, else the default for this user."""
    if requested and requested.upper() in PURPOSES:
        return requested.upper()
    return PATIENT_REQUEST if not getattr(user, "is_staff", False) else TREATMENT


def patient_access_record(
    *, user: Any, patient: Patient, purpose: str, remote_addr: str | None = None, scope: access.Scope | None = None
) -> LogEntry:
    """One ACCESS entry for a detail read of ``patient`` (``scope``: the reader's, if already read)."""
    break_glass = access.is_break_glass_access(user, patient, scope)
    entry: LogEntry = LogEntry.objects.log_create(
        patient,
        force_log=True,
        action=LogEntry.Action.ACCESS,
        changes=None,
        actor=user if getattr(user, "is_authenticated", False) else None,
        remote_addr=remote_addr,
        additional_data={
            "purpose_of_use": EMERGENCY_TREATMENT if break_glass else purpose,
            "break_glass": break_glass,
        },
    )
    return entry


def _access_entry(
    *, model: Any, user: Any, object_pk: str, label: str, remote_addr: str | None, data: dict[str, Any]
) -> LogEntry:
    """An ACCESS entry with no object row of its own (list pages, reads of a patient's objects)."""
    entry: LogEntry = LogEntry.objects.create(
        content_type=ContentType.objects.get_for_model(model),
        object_pk=object_pk,
        object_id=None,
        object_repr=label,
        action=LogEntry.Action.ACCESS,
        changes=None,
        actor=user if getattr(user, "is_authenticated", False) else None,
        remote_addr=remote_addr,
        additional_data=data,
    )
    return entry


def _list_flags(user: Any, patients: dict[int, str], purpose: str, urgent: set[int] | None = None) -> dict[str, Any]:
    """The purpose and break-the-glass fields of a list page's entry; ``patients``: id -> uuid text.

    A page flags break the glass when any patient on it is reached only
    through a break-the-glass grant, and names those patients. ``urgent``:
    those patients' ids, if the page already worked them out.
    """
    if urgent is None:
        urgent = access.break_glass_only(user, patients)
    flags = {
        "purpose_of_use": EMERGENCY_TREATMENT if urgent else purpose,
        "break_glass": bool(urgent),
        "break_glass_patients": [uuid for pk, uuid in patients.items() if pk in urgent],
    }
    if urgent:  # the rest of the page was read for the purpose the reader declared
        flags["declared_purpose"] = purpose
    return flags


def patient_list_access_record(
    *,
    user: Any,
    patients: Iterable[Patient],
    purpose: str,
    view: str,
    remote_addr: str | None = None,
    urgent: set[int] | None = None,
) -> LogEntry:
    """One ACCESS entry for a list page, naming the patients it showed.

    ``urgent``: the ids of those seen only through break-the-glass, if the page
    already worked them out (``access.VisiblePatients`` does); else worked out here.
    """
    shown = {p.pk: str(p.uuid) for p in patients}
    return _access_entry(
        model=Patient,
        user=user,
        object_pk="",
        label=f"{view}: {len(shown)} patient(s)",
        remote_addr=remote_addr,
        data={**_list_flags(user, shown, purpose, urgent), "list": view, "patients": list(shown.values())},
    )


def _patient_objects_access_record(
    *,
    model: Any,
    plural: str,
    user: Any,
    patient: Patient,
    objects: Iterable[Any],
    purpose: str,
    view: str,
    remote_addr: str | None,
    scope: access.Scope | None,
) -> LogEntry:
    """One ACCESS entry for a read of some of ``patient``'s records or documents (a page, or one)."""
    shown = [str(obj.uuid) for obj in objects]
    break_glass = access.is_break_glass_access(user, patient, scope)
    return _access_entry(
        model=model,
        user=user,
        object_pk=shown[0] if len(shown) == 1 else "",
        label=f"{view}: {len(shown)} {plural[:-1]}(s)",
        remote_addr=remote_addr,
        data={
            "purpose_of_use": EMERGENCY_TREATMENT if break_glass else purpose,
            "break_glass": break_glass,
            "view": view,
            "patient": str(patient.uuid),
            plural: shown,
        },
    )


def record_access_record(
    *,
    user: Any,
    patient: Patient,
    records: Iterable[MedicalRecord],
    purpose: str,
    view: str,
    remote_addr: str | None = None,
    scope: access.Scope | None = None,
) -> LogEntry:
    """One ACCESS entry for a read of ``patient``'s medical records (a list page or one record)."""
    return _patient_objects_access_record(
        model=MedicalRecord,
        plural="records",
        user=user,
        patient=patient,
        objects=records,
        purpose=purpose,
        view=view,
        remote_addr=remote_addr,
        scope=scope,
    )


def record_list_access_record(
    *, user: Any, records: Iterable[MedicalRecord], purpose: str, view: str, remote_addr: str | None = None
) -> LogEntry:
    """One ACCESS entry for a page of records that may span patients (the admin's record list)."""
    rows = list(records)
    patients = {record.patient_id: str(record.patient.uuid) for record in rows}
    return _access_entry(
        model=MedicalRecord,
        user=user,
        object_pk="",
        label=f"{view}: {len(rows)} record(s)",
        remote_addr=remote_addr,
        data={
            **_list_flags(user, patients, purpose),
            "view": view,
            "records": [str(record.uuid) for record in rows],
            "patients": list(patients.values()),
        },
    )


def document_access_record(
    *,
    user: Any,
    patient: Patient,
    documents: Iterable[Document],
    purpose: str,
    view: str,
    remote_addr: str | None = None,
    scope: access.Scope | None = None,
) -> LogEntry:
    """One ACCESS entry for a read of ``patient``'s documents (a list page, or one file downloaded)."""
    return _patient_objects_access_record(
        model=Document,
        plural="documents",
        user=user,
        patient=patient,
        objects=documents,
        purpose=purpose,
        view=view,
        remote_addr=remote_addr,
        scope=scope,
    )


def care_access_record(
    *,
    user: Any,
    patient: Patient,
    objects: Iterable[Appointment | Prescription],
    model: type[Appointment] | type[Prescription],
    purpose: str,
    view: str,
    remote_addr: str | None = None,
    scope: access.Scope | None = None,
) -> LogEntry:
    """One ACCESS entry for a read of ``patient``'s appointments or prescriptions (a list page, or one)."""
    return _patient_objects_access_record(
        model=model,
        plural="appointments" if model is Appointment else "prescriptions",
        user=user,
        patient=patient,
        objects=objects,
        purpose=purpose,
        view=view,
        remote_addr=remote_addr,
        scope=scope,
    )
