"""``manage.py verify_integrity``: decrypt and re-hash every medical record and walk the ledger."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from clinical import ledger
from clinical.models import LedgerEntry, MedicalRecord


class Command(BaseCommand):
    help = (
        "Recompute every medical record's hash and the integrity ledger's chain. Exits 1 and names the "
        "first broken link when a payload, hash or ledger entry was changed, deleted, inserted or reordered."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--chunk-size", type=int, default=2000)
        parser.add_argument("--no-progress", action="store_true", help="Do not draw progress bars.")
        parser.add_argument("--all", action="store_true", help="List every problem, not only the first ten.")

    def handle(self, *args: Any, **options: Any) -> None:
        bars: dict[str, Any] = {}
        totals = {"ledger": LedgerEntry.objects.count(), "records": MedicalRecord.objects.count()}

        def progress(stage: str, step: int) -> None:
            if options["no_progress"]:
                return
            if stage not in bars:
                bars[stage] = tqdm(total=totals[stage], desc=stage, unit="row", file=sys.stderr, leave=False)
            bars[stage].update(step)

        report = ledger.verify(chunk_size=options["chunk_size"], progress=progress)
        for bar in bars.values():
            bar.close()
        summary = f"{report.entries} ledger entries, {report.records} records, {report.checkpoints} checkpoints"
        if report.ok:
            self.stdout.write(self.style.SUCCESS(f"Integrity verified: {summary}."))
            return
        problems = report.problems or []
        self.stdout.write(f"Checked {summary}.")
        self.stdout.write(self.style.ERROR(f"First broken link: {problems[0]}"))
        shown = problems if options["all"] else problems[:10]
        for problem in shown:
            self.stdout.write(f"  {problem}")
        if len(shown) < len(problems):
            self.stdout.write(f"  ... and {len(problems) - len(shown)} more (--all lists them)")
        raise CommandError(f"integrity check failed: {len(problems)} problem(s); first: {problems[0]}", returncode=1)
