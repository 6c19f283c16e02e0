"""Run a benchmark in a throw-away database on the configured server.

    python -m bench seed [--patients 10000] [--rounds 1]
    python -m bench access [--small 2000] [--large 200000]
    python -m bench records [--writes 500] [--warm-up 50] [--records 200] [--profile]

Uses the test settings (DATABASE_URL or the embedded PostgreSQL), creates a
fresh database, migrates it, loads the reference data, measures, and drops it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def setup_database() -> tuple[object, str]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    import django

    django.setup()
    from django.db import connection

    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    from clinical.catalog_loader import load_reference_data

    load_reference_data()
    return connection, name


def bench_seed(patients: int, rounds: int) -> None:
    from django.contrib.auth.hashers import make_password

    from clinical.demo import seed_population
    from clinical.models import Patient

    password_hash = make_password("bench-only-password")
    timings = []
    for round_no in range(rounds):
        started = time.perf_counter()
        counts = seed_population(patients=patients, seed=100 + round_no, password_hash=password_hash)
        timings.append(time.perf_counter() - started)
        print(
            f"round {round_no + 1}: {counts.patients} patients, {counts.conditions} conditions, "
            f"{counts.medications} medications, {counts.allergies} allergies, {counts.records} records "
            f"in {timings[-1]:.1f} s"
        )
    median = statistics.median(timings)
    target = 90.0 * patients / 10_000
    print(f"\nseed_demo --patients {patients}: median {median:.1f} s over {rounds} round(s)")
    print(f"throughput: {patients / median:.0f} patients/s; total patients now {Patient.objects.count()}")
    print(f"ratio to the target ({target:.0f} s for {patients}): {median / target:.2f} (must be <= 1.00)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="name", required=True)
    seed = sub.add_parser("seed", help="seed_demo's bulk path (target: 10,000 patients in 90 s)")
    seed.add_argument("--patients", type=int, default=10_000)
    seed.add_argument("--rounds", type=int, default=1)
    access = sub.add_parser("access", help="the doctor's patient list at 2,000 and 200,000 patients")
    access.add_argument("--small", type=int, default=2_000)
    access.add_argument("--large", type=int, default=200_000)
    records = sub.add_parser(
        "records", help="record writes and a page of 50 decrypted records, each against plain JSONB storage"
    )
    records.add_argument("--writes", type=int, default=500, help="timed writes of each kind")
    records.add_argument("--warm-up", type=int, default=50, help="untimed writes of each kind first")
    records.add_argument("--records", type=int, default=200, help="records of the patient whose page is read")
    records.add_argument("--profile", action="store_true", help="also cProfile the write path and the read path")
    args = parser.parse_args(argv)

    connection, name = setup_database()
    try:
        if args.name == "seed":
            bench_seed(args.patients, args.rounds)
        elif args.name == "access":
            from bench.access import run

            run(args.small, args.large)
        elif args.name == "records":
            from bench.records import run as run_records

            run_records(writes=args.writes, warm_up=args.warm_up, records=args.records, profile=args.profile)
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
