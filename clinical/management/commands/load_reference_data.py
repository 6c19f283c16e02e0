from typing import Any

from django.core.management.base import BaseCommand

from clinical.catalog_loader import load_reference_data


class Command(BaseCommand):
    help = "Load or refresh the reference catalogs (countries, regions, specialties, ICD-10-CM, …)."

    def handle(self, *args: Any, **options: Any) -> None:
        result = load_reference_data()
        for name, (created, updated) in result.counts.items():
            if created or updated:
                self.stdout.write(f"  {name}: {created} created, {updated} updated")
        self.stdout.write(
            self.style.SUCCESS(f"Reference data loaded: {result.created} created, {result.updated} updated.")
        )
