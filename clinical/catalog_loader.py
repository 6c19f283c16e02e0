"""Loads the reference catalogs. Idempotent: rows are matched by code and updated.

Sources: ISO 3166 from ``pycountry``; ICD-10-CM descriptions from
``simple_icd_10_cm`` (the CDC code set); everything else from the CSV files in
``clinical/reference/``, which are reviewed data shipped with the code.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycountry
import simple_icd_10_cm as icd
from django.db import models, transaction

from clinical.models import (
    BloodCompatibility,
    BloodType,
    Country,
    EmailType,
    Gender,
    InstitutionType,
    MedicalCondition,
    Medication,
    PhoneType,
    Region,
    Sex,
    Specialty,
    SpecialtyCategory,
)
from clinical.models.catalogs import ICD_10_CM

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def read_csv(name: str) -> list[dict[str, str]]:
    with (REFERENCE_DIR / name).open(newline="", encoding="utf-8") as handle:
        return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]


def sync(
    model: type[models.Model],
    key: str | tuple[str, ...],
    rows: Iterable[dict[str, Any]],
    result: SyncResult,
) -> dict[Any, Any]:
    """Create missing rows and update changed ones; return every row by key."""
    keys = (key,) if isinstance(key, str) else key

    def key_of(values: Any, get: Callable[[Any, str], Any]) -> Any:
        return tuple(get(values, k) for k in keys) if len(keys) > 1 else get(values, keys[0])

    existing = {key_of(obj, getattr): obj for obj in model.objects.all()}  # type: ignore[attr-defined]
    to_create, to_update, fields_changed = [], [], set()
    for row in rows:
        obj = existing.get(key_of(row, dict.__getitem__))
        if obj is None:
            obj = model(**row)
            obj.full_clean(validate_unique=False, validate_constraints=False)
            to_create.append(obj)
            existing[key_of(row, dict.__getitem__)] = obj
            continue
        changed = [name for name, value in row.items() if not _same(obj, name, value)]
        if changed:
            for name in changed:
                setattr(obj, name, row[name])
            fields_changed.update(changed)
            to_update.append(obj)
    model.objects.bulk_create(to_create, batch_size=1000)  # type: ignore[attr-defined]
    if to_update:
        model.objects.bulk_update(to_update, sorted(fields_changed), batch_size=1000)  # type: ignore[attr-defined]
    result.created += len(to_create)
    result.updated += len(to_update)
    result.counts[model._meta.verbose_name_plural] = (len(to_create), len(to_update))
    return existing


def _same(obj: models.Model, name: str, value: Any) -> bool:
    if isinstance(value, models.Model):  # compare keys, without fetching the related row
        return getattr(obj, f"{name}_id") == value.pk  # type: ignore[no-any-return]
    return getattr(obj, name) == value  # type: ignore[no-any-return]


def load_geography(result: SyncResult) -> None:
    countries = sync(
        Country,
        "alpha2",
        (
            {
                "alpha2": c.alpha_2,
                "alpha3": c.alpha_3,
                "numeric": c.numeric,
                "name": c.name,
                "official_name": getattr(c, "official_name", ""),
            }
            for c in pycountry.countries
        ),
        result,
    )
    subdivisions = list(pycountry.subdivisions)
    regions = sync(
        Region,
        "code",
        (
            {
                "code": s.code,
                "name": s.name,
                "category": s.type,
                "country": countries[s.country_code],
            }
            for s in subdivisions
        ),
        result,
    )
    with_parent = []
    for s in subdivisions:
        parent = regions.get(s.parent_code) if s.parent_code else None
        region = regions[s.code]
        if region.parent_id != (parent.pk if parent else None):
            region.parent = parent
            with_parent.append(region)
    Region.objects.bulk_update(with_parent, ["parent"], batch_size=1000)


def load_catalogs(result: SyncResult) -> None:
    sync(InstitutionType, "code", read_csv("institution_types.csv"), result)
    categories = sync(SpecialtyCategory, "code", read_csv("specialty_categories.csv"), result)
    sync(
        Specialty,
        "code",
        (
            {
                "code": r["code"],
                "name": r["name"],
                "category": categories[r["category_code"]],
                "snomed_code": r["snomed_code"],
            }
            for r in read_csv("specialties.csv")
        ),
        result,
    )
    sync(
        Sex,
        ("code_system", "code"),
        ({"code_system": r["system"], "code": r["code"], "display": r["display"]} for r in read_csv("sexes.csv")),
        result,
    )
    sync(Gender, "code", read_csv("genders.csv"), result)
    sync(EmailType, "code", read_csv("email_types.csv"), result)
    sync(PhoneType, "code", read_csv("phone_types.csv"), result)
    blood = sync(BloodType, "code", read_csv("blood_types.csv"), result)
    sync(
        BloodCompatibility,
        ("donor", "recipient"),
        (
            {"donor": blood[r["donor"]], "recipient": blood[r["recipient"]]}
            for r in read_csv("blood_type_compatibility.csv")
        ),
        result,
    )
    sync(
        MedicalCondition,
        ("code_system", "code"),
        (
            {
                "code_system": ICD_10_CM,
                "code": r["code"],
                "name": icd.get_description(r["code"]),
                "category": r["category"],
            }
            for r in read_csv("conditions.csv")
        ),
        result,
    )
    sync(Medication, ("generic_name", "form", "strength"), read_csv("medications.csv"), result)


@transaction.atomic
def load_reference_data() -> SyncResult:
    result = SyncResult()
    load_geography(result)
    load_catalogs(result)
    return result
