"""Medical records: the write path and a page of 50 decrypted records, each against plain storage.

Write path: ``clinical.services.record_create`` of a lab-result Observation as
a laboratory interface sends it (LOINC code, UCUM value and reference range,
identifier, issued, performer, specimen; about 1 kB), one write per
transaction in autocommit, the actor bound with auditlog's ``set_actor`` as
the middleware binds it for a request, so every write is validated (FHIR R4B),
hashed (RFC 8785 + SHA-256), encrypted (AES-256-GCM), chained into the ledger
and audited. Against it, in the same process and interleaved write for write:
``PlainRecord.objects.create`` of the same JSON into a bench-only table with a
JSONB column, no validation, encryption, ledger or audit; and
``ShapedRecord.objects.create`` of the same JSON and the same searched metadata
into a copy of the record table itself (every column, index, check and foreign
key; the payload as JSONB), which is what the four features cost on top of
storing a record at all.

Read path: a patient with 200 records (lab results, vital signs, diagnoses,
vaccinations), first page of 50, newest first, through Django's full request
path with token authentication (``/api/v1/patients/<uuid>/records/``), against
the same 50 rows copied unencrypted into the bench table and served by a view
with the same serializer fields and the same keyset pagination, and against the
real view's query and serializer without the access policy and the audit entry
(which separates decryption from policy and audit).

The parts of a write are timed alone too, so the README can say where the time goes.
"""

from __future__ import annotations

import contextlib
import cProfile
import datetime
import json
import os
import pstats
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from django.conf import settings
from django.db import models

from clinical.models import MedicalInstitution, Patient

WARM_UP_READS = 5
REQUESTS_PER_ROUND = 20
ROUNDS = 3
PAGE = 50

# (LOINC code, display, UCUM unit, reference low, reference high, decimals)
LAB_TESTS = [
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 16.0, 1),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145, 0),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 1),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 56, 0),
    ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.4, 4.0, 2),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", None, 200, 0),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0, 1),
]
BLOOD_PRESSURE = "85354-9"
# LOINC code of a vital sign -> (plausible low, high, decimals) in the sign's first unit
VITALS = {"8867-4": (55, 100, 0), "8310-5": (36.2, 37.8, 1), "59408-5": (93, 100, 0), "29463-7": (50, 110, 1)}
DIAGNOSES = [
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I10", "Essential (primary) hypertension"),
    ("E78.5", "Hyperlipidemia, unspecified"),
    ("J06.9", "Acute upper respiratory infection, unspecified"),
]
VACCINES = [
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"),
    ("115", "Tdap"),
    ("33", "Pneumococcal polysaccharide PPV23"),
]


class PlainRecord(models.Model):
    """The same columns as a medical record with the payload as plain JSONB; bench database only."""

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField()
    patient = models.ForeignKey(Patient, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    record_type = models.CharField(max_length=20)
    resource_type = models.CharField(max_length=40)
    payload = models.JSONField()
    record_metadata = models.JSONField(default=dict)
    effective_date = models.DateField(null=True)
    interpretation = models.CharField(max_length=10, null=True)
    data_hash = models.CharField(max_length=64, default="")
    ledger_entry_uuid = models.UUIDField(null=True)
    series = models.UUIDField()
    version = models.PositiveIntegerField(default=1)
    supersedes_uuid = models.UUIDField(null=True)
    status = models.CharField(max_length=20, default="current")
    source = models.CharField(max_length=16, default="manual")
    severity = models.PositiveSmallIntegerField(null=True)
    confidence = models.DecimalField(max_digits=3, decimal_places=2, null=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )
    institution = models.ForeignKey(
        MedicalInstitution, on_delete=models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )
    verified_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        app_label = "bench"
        managed = False
        db_table = "bench_plainrecord"
        indexes = [models.Index(fields=["patient", "created_at", "id"], name="bench_plainrecord_patient")]

    def __str__(self) -> str:
        return f"{self.record_type} {self.uuid}"


class ShapedRecord(models.Model):
    """A medical record's row with the payload as plain JSONB, in a copy of the record table; bench only.

    ``create_shaped_table`` copies ``clinical_medicalrecord`` with its indexes,
    checks and foreign keys, so an insert here pays the same database work as a
    record's INSERT, and none of validation, encryption, ledger or audit.
    """

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    patient = models.ForeignKey(Patient, on_delete=models.DO_NOTHING, related_name="+")
    record_type = models.CharField(max_length=20)
    resource_type = models.CharField(max_length=40)
    payload = models.JSONField()
    record_metadata = models.JSONField(default=dict)
    effective_date = models.DateField(null=True)
    data_hash = models.CharField(max_length=64)
    series = models.UUIDField()
    version = models.PositiveIntegerField(default=1)
    supersedes = models.ForeignKey("self", on_delete=models.DO_NOTHING, null=True, related_name="+")
    status = models.CharField(max_length=20, default="current")
    amendment_reason = models.TextField(null=True)
    error_reason = models.TextField(null=True)
    marked_in_error_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, null=True, related_name="+"
    )
    marked_in_error_at = models.DateTimeField(null=True)
    source = models.CharField(max_length=16, default="manual")
    severity = models.PositiveSmallIntegerField(null=True)
    confidence = models.DecimalField(max_digits=3, decimal_places=2, null=True)
    interpretation = models.CharField(max_length=10, null=True)
    verified_at = models.DateTimeField(null=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, null=True, related_name="+")
    institution = models.ForeignKey(MedicalInstitution, on_delete=models.DO_NOTHING, null=True, related_name="+")
    verified_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, null=True, related_name="+")

    class Meta:
        app_label = "bench"
        managed = False
        db_table = "bench_shapedrecord"

    def __str__(self) -> str:
        return f"{self.record_type} {self.uuid}"


# Payloads -------------------------------------------------------------------------------


def lab_result(rng: random.Random, patient: Patient, effective: datetime.datetime) -> dict[str, Any]:
    """A laboratory Observation as an interface delivers it: built and validated by ``clinical.fhir``."""
    from clinical.fhir import build_lab_result

    code, display, unit, low, high, decimals = rng.choice(LAB_TESTS)
    low_end = low if low is not None else high * 0.6
    value = round(rng.gauss((low_end + high) / 2, (high - low_end) / 3), decimals)
    resource = build_lab_result(
        loinc_code=code,
        display=display,
        value=max(value, 0) if decimals else int(max(value, 0)),
        unit=unit,
        low=low,
        high=high,
        effective=effective,
        patient_reference=f"Patient/{patient.uuid}",
    )
    resource["identifier"] = [
        {"system": "urn:oid:2.16.840.1.113883.19.5.1", "value": f"LAB-{rng.randrange(10**8):08d}"}
    ]
    resource["issued"] = (effective + datetime.timedelta(hours=3)).isoformat()
    resource["performer"] = [{"reference": "Organization/riverside-lab", "display": "Riverside Clinical Laboratory"}]
    resource["specimen"] = {"display": "Venous blood specimen"}
    return resource


def record_mix(rng: random.Random, patient: Patient, index: int, effective: datetime.datetime) -> tuple[str, Any]:
    """A chart's mix: six lab results, two vital signs, a diagnosis and a vaccination in every ten records."""
    from clinical import fhir

    reference = f"Patient/{patient.uuid}"
    slot = index % 10
    if slot < 6:
        return fhir.LAB_RESULT, lab_result(rng, patient, effective)
    if slot < 8:
        kind = rng.choice([BLOOD_PRESSURE, *VITALS])
        if kind == BLOOD_PRESSURE:
            reading: dict[str, Any] = {"systolic": rng.randint(105, 150), "diastolic": rng.randint(65, 95)}
        else:
            low, high, decimals = VITALS[kind]
            reading = {"value": round(rng.uniform(low, high), decimals)}
        return fhir.VITAL_SIGNS_RECORD, fhir.build_vital_signs(
            kind=kind, effective=effective, patient_reference=reference, **reading
        )
    if slot == 8:
        code, display = rng.choice(DIAGNOSES)
        return fhir.DIAGNOSIS, fhir.build_diagnosis(
            icd10_code=code, display=display, onset=effective.date(), patient_reference=reference
        )
    code, display = rng.choice(VACCINES)
    return fhir.VACCINATION, fhir.build_vaccination(
        cvx_code=code,
        display=display,
        occurrence=effective.date(),
        patient_reference=reference,
        lot_number=f"LOT{rng.randrange(10**5):05d}",
    )


# Measuring ------------------------------------------------------------------------------


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[94]


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def per_call(action: Callable[[Any], Any], items: list[Any], calls: int) -> list[float]:
    """Milliseconds per call of ``action`` over ``items`` in turn, ``calls`` times."""
    samples = []
    for i in range(calls):
        item = items[i % len(items)]
        started = time.perf_counter()
        action(item)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextmanager
def profiled(title: str, enabled: bool, lines: int = 25) -> Iterator[None]:
    """cProfile the block when ``enabled``; print the top functions by own time and by cumulative time."""
    if not enabled:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        print(f"\n--- profile: {title} ---")
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(lines)
        stats.sort_stats("cumulative").print_stats(lines)


def create_plain_table() -> None:
    from django.db import connection

    with connection.schema_editor() as editor:
        editor.create_model(PlainRecord)
        for index in PlainRecord._meta.indexes:  # create_model leaves them out for an unmanaged model
            editor.add_index(PlainRecord, index)


def create_shaped_table() -> None:
    """``bench_shapedrecord``: the record table's columns, defaults, checks, indexes and foreign keys."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_shapedrecord (LIKE clinical_medicalrecord INCLUDING ALL)")
        cursor.execute("ALTER TABLE bench_shapedrecord ALTER COLUMN payload TYPE jsonb USING payload::jsonb")
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'clinical_medicalrecord'::regclass AND contype = 'f' ORDER BY conname"
        )
        for number, (_, definition) in enumerate(cursor.fetchall()):
            definition = definition.replace("REFERENCES clinical_medicalrecord(", "REFERENCES bench_shapedrecord(")
            cursor.execute(f"ALTER TABLE bench_shapedrecord ADD CONSTRAINT bench_shaped_fk_{number} {definition}")


def table_shape(table: str) -> tuple[int, int]:
    """The number of indexes and of foreign keys of ``table``."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass),"
            " (SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f')",
            [table, table],
        )
        indexes, foreign_keys = cursor.fetchone()
    return indexes, foreign_keys


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def sql_of(action: Callable[[], Any]) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        action()
    return [query["sql"] for query in captured.captured_queries]


def statement_heads(statements: list[str]) -> str:
    heads = []
    for sql in statements:
        words = sql.split()
        head = " ".join(words[:3]) if words and words[0] in ("INSERT", "UPDATE", "DELETE") else " ".join(words[:2])
        heads.append(head.replace('"', "")[:40])
    return "; ".join(heads)


# The write path -------------------------------------------------------------------------


class Stopwatch:
    """Wraps a callable and keeps the milliseconds of each call made while it is switched on."""

    def __init__(self, target: Callable[..., Any]) -> None:
        self.target = target
        self.on = False
        self.samples: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.on:
            return self.target(*args, **kwargs)
        started = time.perf_counter()
        try:
            return self.target(*args, **kwargs)
        finally:
            self.samples.append((time.perf_counter() - started) * 1000)


def write_path(
    *, doctor: Any, patient: Patient, writes: int, warm_up: int, rng: random.Random, profile: bool
) -> dict[str, Any]:
    from unittest import mock

    from auditlog.context import disable_auditlog, set_actor
    from auditlog.models import LogEntry
    from django.utils import timezone

    from clinical import fhir, record_writer, services
    from clinical.models import LedgerEntry, MedicalRecord

    user = doctor.user
    start = timezone.now() - datetime.timedelta(days=400)
    payloads = [lab_result(rng, patient, start + datetime.timedelta(hours=7 * i)) for i in range(100)]

    def real(payload: dict[str, Any]) -> None:
        with set_actor(user, remote_addr="127.0.0.1"):
            services.record_create(patient=patient, record_type=fhir.LAB_RESULT, payload=payload, author=user)

    def unaudited(payload: dict[str, Any]) -> None:
        with disable_auditlog():
            services.record_create(patient=patient, record_type=fhir.LAB_RESULT, payload=payload, author=user)

    # What a record stores besides its payload, worked out before the clock: the shaped insert
    # stores the same, so its indexes do the same work, but validates and hashes nothing.
    searched = {
        id(payload): services.record_searched_metadata(fhir.validate(fhir.LAB_RESULT, payload))[0]
        for payload in payloads
    }
    unhashed = "0" * 64

    def shaped(payload: dict[str, Any]) -> None:
        metadata = searched[id(payload)]
        now = timezone.now()
        ShapedRecord.objects.create(
            uuid=_uuid(rng),
            series=_uuid(rng),
            created_at=now,
            updated_at=now,
            patient=patient,
            record_type=fhir.LAB_RESULT,
            resource_type="Observation",
            payload=payload,
            record_metadata=metadata,
            effective_date=datetime.date.fromisoformat(metadata["effective"][:10]),
            data_hash=unhashed,
            author=user,
            institution_id=patient.institution_id,
        )

    def plain(payload: dict[str, Any]) -> None:
        PlainRecord.objects.create(
            uuid=_uuid(rng),
            series=_uuid(rng),
            patient=patient,
            record_type=fhir.LAB_RESULT,
            resource_type="Observation",
            payload=payload,
            author=user,
            institution_id=patient.institution_id,
            created_at=timezone.now(),
        )

    for i in range(warm_up):
        for write in (real, unaudited, shaped, plain):
            write(payloads[i % len(payloads)])
    records_before = MedicalRecord.objects.filter(patient=patient).count()
    audits_before = LogEntry.objects.filter(actor=user, action=LogEntry.Action.CREATE).count()
    # In-situ clocks inside the audited writes: the whole store, its column values (encryption
    # included) and its audit entry; what is left of the store is the one statement's round trip.
    clocks = {name: Stopwatch(getattr(record_writer, name)) for name in ("insert", "_values", "_audit_entry")}
    times: dict[str, list[float]] = {"real": [], "unaudited": [], "shaped": [], "plain": []}
    with contextlib.ExitStack() as patches:
        for name, clock in clocks.items():
            patches.enter_context(mock.patch.object(record_writer, name, clock))
        # Interleaved write for write, so drift on the server (autovacuum, checkpoints) hits all alike.
        for i in range(writes):
            payload = payloads[i % len(payloads)]
            for clock in clocks.values():
                clock.on = True
            times["real"].append(timed(partial(real, payload)))
            for clock in clocks.values():
                clock.on = False
            times["unaudited"].append(timed(partial(unaudited, payload)))
            times["shaped"].append(timed(partial(shaped, payload)))
            times["plain"].append(timed(partial(plain, payload)))
    written = MedicalRecord.objects.filter(patient=patient).count() - records_before
    audited = LogEntry.objects.filter(actor=user, action=LogEntry.Action.CREATE).count() - audits_before
    if written != 2 * writes or audited != writes:
        raise RuntimeError(f"expected {2 * writes} records and {writes} audit entries, found {written} and {audited}")

    record_sql = sql_of(lambda: real(payloads[0]))
    plain_sql = sql_of(lambda: plain(payloads[0]))
    shaped_sql = sql_of(lambda: shaped(payloads[0]))
    with profiled(f"{min(writes, 200)} record_create calls", profile):
        for i in range(min(writes, 200) if profile else 0):
            real(payloads[i % len(payloads)])

    return {
        "payload_bytes": statistics.median(len(json.dumps(p, separators=(",", ":")).encode()) for p in payloads),
        **times,
        "breakdown": write_breakdown(payloads, writes),
        "insert": clocks["insert"].samples,
        "values": _per_write(clocks["_values"].samples, 2),  # the record's and the audit entry's
        "audit_entry": clocks["_audit_entry"].samples,
        "record_sql": record_sql,
        "plain_sql": plain_sql,
        "shaped_sql": shaped_sql,
        "shapes": {
            table: table_shape(table) for table in ("clinical_medicalrecord", "bench_shapedrecord", "bench_plainrecord")
        },
        "ledger_entries": LedgerEntry.objects.count(),
        "audited": audited,
    }


def _per_write(samples: list[float], calls_per_write: int) -> list[float]:
    return [sum(samples[i : i + calls_per_write]) for i in range(0, len(samples), calls_per_write)]


def _uuid(rng: random.Random) -> Any:
    import uuid

    return uuid.UUID(int=rng.getrandbits(128), version=4)


def write_breakdown(payloads: list[dict[str, Any]], calls: int) -> dict[str, list[float]]:
    """Each CPU step of a write alone, per call, over the same payloads."""
    from accounts.encryption import associated_data, keyring
    from clinical import fhir
    from clinical.canonical import sha256_hex
    from clinical.models import MedicalRecord

    field = MedicalRecord._meta.get_field("payload")
    aad = associated_data("clinical.medicalrecord", "payload", _uuid(random.Random(1)))
    ring = keyring()
    encoded = [field.encode(p) for p in payloads]  # type: ignore[attr-defined]
    return {
        "FHIR validation (fhir.validate)": per_call(lambda p: fhir.validate(fhir.LAB_RESULT, p), payloads, calls),
        "canonical hash (sha256_hex)": per_call(sha256_hex, payloads, calls),
        "JSON encode for sealing (json.dumps)": per_call(field.encode, payloads, calls),  # type: ignore[attr-defined]
        "seal (AES-256-GCM + base64)": per_call(lambda raw: ring.seal(raw, aad), encoded, calls),
    }


# The read path --------------------------------------------------------------------------


def read_setup(*, doctor: Any, patient: Patient, records: int, rng: random.Random) -> None:
    """Write ``records`` records for ``patient`` through the service, then copy them into the plain table."""
    from auditlog.context import set_actor
    from django.utils import timezone

    from clinical import services
    from clinical.models import MedicalRecord
    from clinical.selectors import with_record_details

    start = timezone.now() - datetime.timedelta(days=3 * records)
    with set_actor(doctor.user):
        for i in range(records):
            record_type, payload = record_mix(rng, patient, i, start + datetime.timedelta(days=3 * i))
            services.record_create(patient=patient, record_type=record_type, payload=payload, author=doctor.user)
    copies = [
        PlainRecord(
            uuid=r.uuid,
            patient_id=r.patient_id,
            record_type=r.record_type,
            resource_type=r.resource_type,
            payload=r.payload,
            record_metadata=r.record_metadata,
            effective_date=r.effective_date,
            interpretation=r.interpretation,
            data_hash=r.data_hash,
            ledger_entry_uuid=r.ledger_entry_uuid,  # type: ignore[attr-defined]
            series=r.series,
            version=r.version,
            supersedes_uuid=r.supersedes_uuid,  # type: ignore[attr-defined]
            status=r.status,
            source=r.source,
            severity=r.severity,
            confidence=r.confidence,
            author_id=r.author_id,
            institution_id=r.institution_id,
            verified_by_id=r.verified_by_id,
            verified_at=r.verified_at,
            created_at=r.created_at,
        )
        for r in with_record_details(MedicalRecord.objects.filter(patient=patient)).order_by("created_at", "id")
    ]
    PlainRecord.objects.bulk_create(copies)


def read_path(*, doctor: Any, patient: Patient, profile: bool) -> dict[str, Any]:
    from django.test import Client

    from accounts.services import api_token_create

    _, secret = api_token_create(user=doctor.user)
    headers = {"Authorization": f"Token {secret}"}
    client = Client()
    urls = {
        "API (policy, decrypt, audit)": f"/api/v1/patients/{patient.uuid}/records/",
        "plain JSONB, same policy/audit": f"/bench/plain-records-policy/{patient.uuid}/",
        "same view, no policy/audit": f"/bench/records-unaudited/{patient.uuid}/",
        "plain JSONB table": f"/bench/plain-records/{patient.uuid}/",
    }

    def get(url: str) -> dict[str, Any]:
        response = client.get(url, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.content[:200]!r}")
        body: dict[str, Any] = response.json()
        return body

    bodies = {name: get(url) for name, url in urls.items()}
    first = bodies["API (policy, decrypt, audit)"]["results"]
    if len(first) != PAGE or any(body["results"] != first for body in bodies.values()):
        raise RuntimeError("the variants do not serve the same page of 50 records")
    for url in urls.values():
        for _ in range(WARM_UP_READS):
            get(url)
    rounds: dict[str, list[float]] = {name: [] for name in urls}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(ROUNDS):
        # The variants take turns request by request, so drift on the machine hits all alike.
        times: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(REQUESTS_PER_ROUND):
            for name, url in urls.items():
                times[name].append(timed(partial(get, url)))
        for name in urls:
            rounds[name].append(statistics.median(times[name]))
            samples[name].extend(times[name])
    statements = {name: len(sql_of(partial(get, url))) for name, url in urls.items()}
    with profiled(f"{REQUESTS_PER_ROUND} GETs of the record list API", profile):
        for _ in range(REQUESTS_PER_ROUND if profile else 0):
            get(urls["API (policy, decrypt, audit)"])
    return {
        "median": {name: statistics.median(values) for name, values in rounds.items()},
        "p95": {name: p95(values) for name, values in samples.items()},
        "statements": statements,
        "breakdown": read_breakdown(patient),
        "page_bytes": len(json.dumps(first, separators=(",", ":")).encode()),
    }


def read_breakdown(patient: Patient) -> dict[str, float]:
    """Opening one page of sealed payloads, alone, against parsing the same JSON (which plain JSONB also pays)."""
    from accounts.encryption import associated_data, keyring
    from clinical.models import MedicalRecord

    rows = list(MedicalRecord.objects.filter(patient=patient).order_by("-created_at", "-id")[:PAGE])
    sealed = [(r.__dict__["payload"], associated_data("clinical.medicalrecord", "payload", r.uuid)) for r in rows]
    ring = keyring()
    plaintexts = [ring.open(token, aad) for token, aad in sealed]
    repeats = ROUNDS * REQUESTS_PER_ROUND

    def open_page() -> None:
        for token, aad in sealed:
            ring.open(token, aad)

    def parse_page() -> None:
        for raw in plaintexts:
            json.loads(raw)

    return {
        "open 50 payloads (base64 + AES-256-GCM)": statistics.median(timed(open_page) for _ in range(repeats)),
        "json.loads of 50 payloads (plain JSONB pays it too)": statistics.median(
            timed(parse_page) for _ in range(repeats)
        ),
    }


# Report ---------------------------------------------------------------------------------


def report_writes(w: dict[str, Any], writes: int, warm_up: int) -> dict[str, float]:
    real, unaudited, shaped, plain = w["real"], w["unaudited"], w["shaped"], w["plain"]
    print(
        f"\nwrite path: {writes} writes of each kind after {warm_up} warm-up, interleaved, one transaction per write, "
        f"a lab-result Observation of {w['payload_bytes']:.0f} bytes"
    )
    for name, samples in (
        ("record_create (validate, hash, seal, ledger, audit)", real),
        ("record_create with auditlog disabled", unaudited),
        ("plain ORM insert into a copy of the record table", shaped),
        ("plain ORM insert into a minimal table", plain),
    ):
        print(f"        {name:<52} p50 {statistics.median(samples):6.2f} ms  p95 {p95(samples):6.2f} ms")
    print(f"    SQL per record_create: {len(w['record_sql'])} statements ({statement_heads(w['record_sql'])})")
    print(f"    SQL per plain insert: {len(w['plain_sql'])} and {len(w['shaped_sql'])} statement (autocommit)")
    for table, (indexes, foreign_keys) in w["shapes"].items():
        print(f"    {table}: {indexes} indexes, {foreign_keys} foreign keys")
    print(f"    ledger entries now {w['ledger_entries']}; {w['audited']} audit entries from the timed audited writes")
    print(f"  breakdown of one record_create (p50 of {writes} each):")
    print("    the CPU steps, each timed alone:")
    for name, samples in w["breakdown"].items():
        print(f"        {name:<60} {statistics.median(samples):6.3f} ms")
    insert, values, audit = (statistics.median(w[key]) for key in ("insert", "values", "audit_entry"))
    print("    timed inside the audited writes:")
    for name, ms in (
        ("before the store: validate, hash, metadata (record_create)", statistics.median(real) - insert),
        ("record_writer.insert, all of it", insert),
        ("  column values, the payload's encryption included", values),
        ("  the audit entry (diff, signals, set_actor's receiver)", audit),
        ("  the one statement's round trip and the rest", insert - values - audit),
        ("audit entry, full - auditlog disabled", statistics.median(real) - statistics.median(unaudited)),
    ):
        print(f"        {name:<60} {ms:6.3f} ms")
    return {
        "p50": statistics.median(real) / statistics.median(plain),
        "p95": p95(real) / p95(plain),
        "shaped p50": statistics.median(real) / statistics.median(shaped),
        "shaped p95": p95(real) / p95(shaped),
    }


def report_reads(r: dict[str, Any], records: int) -> float:
    print(
        f"\nread path: first page of {PAGE} of {records} records, newest first, token auth, "
        f"{r['page_bytes'] / 1024:.0f} kB of results"
    )
    for name, median in r["median"].items():
        print(
            f"        {name:<30} {median:7.2f} ms  p95 {r['p95'][name]:7.2f} ms  {r['statements'][name]:>2} statements"
            f"  (median of {ROUNDS} rounds x {REQUESTS_PER_ROUND}, interleaved)"
        )
    api, plain = r["median"]["API (policy, decrypt, audit)"], r["median"]["plain JSONB table"]
    unaudited = r["median"]["same view, no policy/audit"]
    print(f"  breakdown of one page (medians; the first three timed alone, {ROUNDS * REQUESTS_PER_ROUND} times):")
    for name, ms in r["breakdown"].items():
        print(f"        {name:<52} {ms:6.3f} ms")
    same_policy = r["median"]["plain JSONB, same policy/audit"]
    print(f"        {'encrypted storage: sealed rows, ledger id, decryption':<52} {api - same_policy:6.3f} ms")
    print(f"        {'access policy and audit entry':<52} {api - unaudited:6.3f} ms")
    print(f"  page of 50 decrypted / bare plain page (no policy, no audit): {api / plain:.2f}")
    return api / same_policy


def run(*, writes: int = 500, warm_up: int = 50, records: int = 200, profile: bool = False) -> None:
    from django.contrib.auth.hashers import make_password

    from clinical.demo import Counts, DemoBuilder
    from clinical.models import Patient

    settings.ROOT_URLCONF = "bench.urls"
    settings.ALLOWED_HOSTS = ["testserver"]
    rng = random.Random(42)
    builder = DemoBuilder(seed=42, password_hash=make_password("bench-only-password"))
    institutions = builder.institutions(2)
    doctors, _ = builder.staff(institutions, 2, 2)
    doctor = doctors[0]
    builder.patients(doctors, 40, Counts(), lambda n: None)
    writer, reader = Patient.objects.filter(doctor=doctor).order_by("id")[:2]
    create_plain_table()
    create_shaped_table()
    print(
        "Medical records: the write path and a page of 50 decrypted records, each against plain JSONB storage "
        f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)"
    )

    w = write_path(doctor=doctor, patient=writer, writes=writes, warm_up=warm_up, rng=rng, profile=profile)
    read_setup(doctor=doctor, patient=reader, records=records, rng=rng)
    analyze()
    r = read_path(doctor=doctor, patient=reader, profile=profile)

    write = report_writes(w, writes, warm_up)
    read_ratio = report_reads(r, records)
    api, plain = "API (policy, decrypt, audit)", "plain JSONB, same policy/audit"
    print("\nratios")
    print(f"  write p50 / plain insert p50, minimal table:         {write['p50']:.2f}  (target <= 3)")
    print(f"  write p95 / plain insert p95, minimal table:         {write['p95']:.2f}")
    print(f"  write p50 / plain insert p50, copy of record table:  {write['shaped p50']:.2f}  (target <= 3)")
    print(f"  write p95 / plain insert p95, copy of record table:  {write['shaped p95']:.2f}")
    print(f"  page of 50 decrypted / same page stored plain (same view), median: {read_ratio:.2f}  (target <= 1.5)")
    print(f"  page of 50 decrypted / same page stored plain (same view), p95:    {r['p95'][api] / r['p95'][plain]:.2f}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
