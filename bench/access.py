"""The doctor's patient list, first page of 50, through the API with token auth.

Data: 20 institutions, 400 doctors (each the primary doctor of an equal share
of the patients), 5 nurses per institution with memberships, 50 care-team
grants per doctor. Measured at 2,000 and then 200,000 patients, three rounds
each, medians reported, against two references in the same run:

- the same view with no permission filtering (the policy may cost at most 1.5x);
- the common idiom it replaces: every patient visible to every doctor granted in
  guardian's generic object-permission table, ``get_objects_for_user`` and page-number
  pagination (the policy must be at least 5x faster at 200,000).

Requests go through Django's full request path in-process (middleware, token
authentication, DRF, serialisation) with the test client; no HTTP server. The
three variants take turns request by request, so a slower spell of the machine
hits all three alike.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REQUESTS_PER_ROUND = 20
ROUNDS = 3


def _grants(doctors: list[Any], per_doctor: int, rng: random.Random) -> None:
    from django.contrib.auth.models import Permission

    from clinical.models import Patient, PatientUserObjectPermission

    view = Permission.objects.get(content_type__app_label="clinical", codename="view_patient")
    rows = []
    for doctor in doctors:
        others = list(Patient.objects.exclude(institution_id=doctor.institution_id).values_list("pk", flat=True)[:5000])
        for patient_id in rng.sample(others, k=min(per_doctor, len(others))):
            rows.append(
                PatientUserObjectPermission(
                    user_id=doctor.user_id, permission=view, content_object_id=patient_id, reason="care team"
                )
            )
    PatientUserObjectPermission.objects.bulk_create(rows, batch_size=5000)


def _stock_rows() -> int:
    """What the idiom maintains: every patient each doctor may see, as a row of guardian's generic table.

    Built in SQL for every doctor (their institution's patients, which include
    their own, plus their care-team grants); returns the number of rows.
    """
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection

    from clinical.models import Patient

    view = Permission.objects.get(content_type__app_label="clinical", codename="view_patient")
    content_type = ContentType.objects.get_for_model(Patient)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE guardian_userobjectpermission")
        cursor.execute(
            """
            INSERT INTO guardian_userobjectpermission (object_pk, content_type_id, permission_id, user_id)
            SELECT p.id::text, %(ct)s, %(perm)s, d.user_id
            FROM clinical_doctor d JOIN clinical_patient p ON p.institution_id = d.institution_id
            UNION
            SELECT g.content_object_id::text, %(ct)s, %(perm)s, g.user_id
            FROM clinical_patientuserobjectpermission g
            """,
            {"ct": content_type.pk, "perm": view.pk},
        )
        return cursor.rowcount


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _get(client: Any, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    response = client.get(url, **headers)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.content[:200]!r}")
    return elapsed


@contextmanager
def _generic_table_only() -> Iterator[None]:
    """guardian picks a direct-FK table when one exists; switch it off so the stock
    variant really uses the generic table, as the idiom does."""
    from clinical.models import PatientUserObjectPermission

    PatientUserObjectPermission.enabled = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        PatientUserObjectPermission.enabled = True  # type: ignore[attr-defined]


def _measure(client: Any, headers: dict[str, str]) -> dict[str, float]:
    """Median of per-round medians; the variants take turns request by request, so drift on the
    machine (other load, autovacuum) hits all of them alike."""
    urls = {
        "policy (api)": "/api/v1/patients/",
        "unfiltered": "/bench/unfiltered/",
        "stock guardian idiom": "/bench/guardian/",
    }

    def one(name: str) -> float:
        if name == "stock guardian idiom":
            with _generic_table_only():
                return _get(client, urls[name], headers)
        return _get(client, urls[name], headers)

    for name in urls:  # warm-up
        one(name)
    rounds: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(ROUNDS):
        samples: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(REQUESTS_PER_ROUND):
            for name in urls:
                samples[name].append(one(name))
        for name in urls:
            rounds[name].append(statistics.median(samples[name]))
    return {name: statistics.median(values) for name, values in rounds.items()}


def run(small: int = 2_000, large: int = 200_000) -> None:
    from django.conf import settings
    from django.contrib.auth.hashers import make_password
    from django.test import Client

    from accounts.services import api_token_create
    from clinical.access import patients_visible_to
    from clinical.demo import Counts, DemoBuilder

    settings.ROOT_URLCONF = "bench.urls"
    settings.ALLOWED_HOSTS = ["testserver"]
    rng = random.Random(42)
    builder = DemoBuilder(seed=42, password_hash=make_password("bench-only-password"))
    institutions = builder.institutions(20)
    doctors, _ = builder.staff(institutions, 20, 5)
    doctor = doctors[0]
    _, secret = api_token_create(user=doctor.user)
    headers = {"HTTP_AUTHORIZATION": f"Token {secret}"}
    client = Client()
    results: dict[int, dict[str, float]] = {}
    counts = Counts()
    for size in (small, large):
        started = time.perf_counter()
        # The access benchmark reads patients only; records would just slow the build.
        builder.patients(doctors, size - counts.patients, counts, lambda n: None, records=False)
        if size == small:
            _grants(doctors, 50, rng)
        stock_rows = _stock_rows()
        _analyze()
        visible = patients_visible_to(doctor.user).count()
        print(
            f"{size:>7} patients built in {time.perf_counter() - started:.0f} s; the doctor sees {visible}; "
            f"{stock_rows} rows in guardian's generic table for the idiom"
        )
        results[size] = _measure(client, headers)
        for name, ms in results[size].items():
            print(f"        {name:<22} {ms:8.2f} ms (median of {ROUNDS} rounds x {REQUESTS_PER_ROUND}, interleaved)")
    s, big = results[small], results[large]
    print("\nratios")
    print(f"  policy {large} / {small}:             {big['policy (api)'] / s['policy (api)']:.2f}  (target <= 1.2)")
    print(f"  policy / unfiltered at {large}:     {big['policy (api)'] / big['unfiltered']:.2f}  (target <= 1.5)")
    print(
        f"  stock idiom / policy at {large}:    {big['stock guardian idiom'] / big['policy (api)']:.1f}  (target >= 5)"
    )
    print(f"  policy / unfiltered at {small}:       {s['policy (api)'] / s['unfiltered']:.2f}")
