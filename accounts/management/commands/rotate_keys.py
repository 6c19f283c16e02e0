"""``manage.py rotate_keys``: re-seal every encrypted value under the primary key."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from accounts.rotation import RotationReport, count_outdated, rotate_keys


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted value that is not under the primary key (the first key of "
        "FIELD_ENCRYPTION_KEYS); keep the old keys in the list until this has finished. Each batch is "
        "committed on its own: an interrupted run (Ctrl-C) keeps its finished batches, and running the "
        "command again continues where it stopped; once everything is current, a run changes nothing. "
        "Values are rewritten with SQL, not through the models: no audit log entries, updated_at keeps "
        "its value, and a value the application changes during the run is left as written. Exits "
        "non-zero when a value cannot be opened (unknown key id or tampering); the summary names its "
        "table, column and id. Remove an old key only after --dry-run reports no outdated values."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=positive_int, default=500, help="Rows per transaction (default 500).")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count, per column, the values under the primary key and under an old one.",
        )

    def handle(self, *args: Any, batch_size: int, dry_run: bool, **options: Any) -> None:
        if dry_run:
            self.dry_run()
            return
        try:
            report = rotate_keys(batch_size=batch_size, progress=self.progress_bar)
        except KeyboardInterrupt:
            raise CommandError(
                "Interrupted. Finished batches are committed; run rotate_keys again to continue.", returncode=130
            ) from None
        self.summarise(report)
        if not report.ok:
            raise CommandError(
                f"{len(report.failures)} value(s) could not be opened and were left as they are (listed above)."
            )

    def progress_bar(self, label: str, total: int) -> Any:
        # tqdm redraws with "\r"; Django's OutputWrapper would end every write with a newline.
        return tqdm(total=total, desc=label, unit="row", file=self.stderr._out, dynamic_ncols=True)

    def dry_run(self) -> None:
        tallies = count_outdated()
        for tally in tallies:
            self.stdout.write(f"{tally.table}.{tally.column}: {tally.outdated} outdated, {tally.current} current")
        outdated = sum(t.outdated for t in tallies)
        self.stdout.write(f"Columns: {len(tallies)}")
        self.stdout.write(f"Rows to re-seal: {outdated}")
        self.stdout.write(f"Rows already current: {sum(t.current for t in tallies)}")
        self.stdout.write("Dry run: nothing was changed.")

    def summarise(self, report: RotationReport) -> None:
        self.stdout.write(f"Primary key: {report.primary_key_id}")
        self.stdout.write(f"Columns: {len(report.targets)}")
        self.stdout.write(f"Rows re-sealed: {report.resealed}")
        self.stdout.write(f"Rows already current: {report.current}")
        if report.changed:
            self.stdout.write(
                f"Rows changed by the application during the run: {report.changed} (left as written; "
                "run again to re-seal any still under an old key)"
            )
        failures = report.failures
        self.stdout.write(f"Failures: {len(failures)}")
        for failure in failures:
            self.stdout.write(self.style.ERROR(f"  {failure.table}.{failure.column} pk={failure.pk}: {failure.reason}"))
        if report.ok and not report.changed:
            self.stdout.write(self.style.SUCCESS("Every encrypted value is under the primary key."))
