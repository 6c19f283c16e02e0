from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from clinical.demo import DEMO_CODE_PREFIX, seed_population
from clinical.models import MedicalInstitution

ADMIN_EMAIL = "admin@caretrail.local"


def demo_credentials() -> dict[str, str]:
    """Passwords made on first use and kept in var/ (owner-only), never in code."""
    path = settings.VAR_DIR / "demo-credentials.json"
    if path.exists():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    creds = {
        "admin_email": ADMIN_EMAIL,
        "admin_password": secrets.token_urlsafe(12),
        "demo_user_password": secrets.token_urlsafe(12),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(creds, handle, indent=2)
    return creds


class Command(BaseCommand):
    help = "Create demo institutions, staff and patients (reproducible with --seed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patients", type=int, default=200, help="How many patients to add.")
        parser.add_argument("--seed", type=int, default=1, help="Random seed; the same seed gives the same data.")
        parser.add_argument(
            "--once",
            action="store_true",
            help="Do nothing if demo data already exists (what `make run` uses).",
        )
        parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")

    def handle(self, *args: Any, **options: Any) -> None:
        creds = demo_credentials()
        user_model = get_user_model()
        if not user_model.objects.filter(email__iexact=creds["admin_email"]).exists():
            user_model.objects.create_superuser(
                creds["admin_email"], creds["admin_password"], first_name="Demo", last_name="Administrator"
            )
        already = MedicalInstitution.objects.filter(code__startswith=DEMO_CODE_PREFIX).exists()
        if options["once"] and already:
            self.stdout.write("Demo data already present; nothing added.")
        elif options["patients"] > 0:
            started = time.monotonic()
            with tqdm(
                total=options["patients"], unit="patient", disable=options["no_progress"], file=self.stderr
            ) as bar:
                counts = seed_population(
                    patients=options["patients"],
                    seed=options["seed"],
                    password_hash=make_password(creds["demo_user_password"]),
                    tick=bar.update,
                )
            self.stdout.write(
                self.style.SUCCESS(
                    f"Added {counts.institutions} institutions, {counts.doctors} doctors, "
                    f"{counts.nurses} nurses, {counts.patients} patients, {counts.conditions} conditions, "
                    f"{counts.medications} medications, {counts.allergies} allergies, "
                    f"{counts.records} medical records, {counts.appointments} appointments, "
                    f"{counts.prescriptions} prescriptions (their PDFs are made by a task), "
                    f"{counts.documents} lab reports "
                    f"in {time.monotonic() - started:.1f} s."
                )
            )
        self.stdout.write(
            "\nCaretrail demo\n"
            "  Admin:     http://127.0.0.1:8000/admin/\n"
            f"  Sign in:   {creds['admin_email']} / {creds['admin_password']}\n"
            "  Other demo users (doctors, nurses, patients) share the password "
            f"{creds['demo_user_password']}\n"
            f"  (kept in {settings.VAR_DIR / 'demo-credentials.json'})\n"
        )
