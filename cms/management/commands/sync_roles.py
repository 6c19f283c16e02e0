from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cms.services import roles_sync


class Command(BaseCommand):
    help = "Make the Django groups match the role matrix in cms/roles.py (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true", help="Change nothing; exit 1 and list the drift if any.")

    def handle(self, *args: Any, **options: Any) -> None:
        drifts = roles_sync(apply=not options["check"])
        lines = [line for drift in drifts for line in drift.lines()]
        if options["check"]:
            if lines:
                self.stdout.write("\n".join(lines))
                raise CommandError(f"The groups differ from the role matrix ({len(lines)} difference(s)).")
            self.stdout.write(self.style.SUCCESS("The groups match the role matrix."))
            return
        for line in lines:
            self.stdout.write(f"  fixed: {line}")
        self.stdout.write(self.style.SUCCESS("Roles synchronised."))
