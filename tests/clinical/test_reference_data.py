"""The reference catalogs, checked row by row against their sources.

ISO 3166 comes from ``pycountry``, ICD-10-CM descriptions from
``simple_icd_10_cm``, everything else from ``clinical/reference/*.csv``. The
blood compatibility matrix is also checked against an independent statement
of the red-cell rule.
"""

import itertools
import re

import pycountry
import pytest
import simple_icd_10_cm as icd

from clinical.catalog_loader import load_reference_data, read_csv
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
from clinical.models.catalogs import ADMINISTRATIVE_GENDER, ICD_10_CM, SNOMED_CT

pytestmark = pytest.mark.django_db

# WHO ATC, level 5: anatomical main group, two-digit therapeutic subgroup,
# pharmacological and chemical subgroup letters, two-digit substance.
ATC_MAIN_GROUPS = set("ABCDGHJLMNPRSV")
ATC_PATTERN = re.compile(r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$")


def test_every_iso_3166_1_country_is_loaded_with_its_codes_and_name(ref):
    loaded = {c.alpha2: c for c in Country.objects.only("alpha2", "alpha3", "numeric", "name", "official_name")}
    source = list(pycountry.countries)
    assert len(loaded) == len(source)
    for country in source:
        row = loaded[country.alpha_2]
        assert (row.alpha3, row.numeric, row.name) == (country.alpha_3, country.numeric, country.name), country.alpha_2
        assert row.official_name == getattr(country, "official_name", ""), country.alpha_2


def test_every_iso_3166_2_subdivision_is_loaded_with_its_country_and_parent(ref):
    loaded = {
        code: (name, category, country, parent)
        for code, name, category, country, parent in Region.objects.values_list(
            "code", "name", "category", "country__alpha2", "parent__code"
        )
    }
    source = list(pycountry.subdivisions)
    assert len(loaded) == len(source)
    for subdivision in source:
        assert loaded[subdivision.code] == (
            subdivision.name,
            subdivision.type,
            subdivision.country_code,
            subdivision.parent_code,
        ), subdivision.code
    # The hierarchy is really used: a good share of subdivisions have a parent.
    assert sum(1 for s in source if s.parent_code) > 1000


def test_every_condition_is_an_icd_10_cm_code_with_the_cdc_description(ref):
    rows = read_csv("conditions.csv")
    assert len(rows) >= 300
    loaded = {
        code: (name, category)
        for code, name, category in MedicalCondition.objects.filter(code_system=ICD_10_CM).values_list(
            "code", "name", "category"
        )
    }
    assert MedicalCondition.objects.count() == len(rows)
    assert len(loaded) == len(rows)
    for row in rows:
        code = row["code"]
        assert icd.is_valid_item(code), code
        assert loaded[code] == (icd.get_description(code), row["category"]), code


def test_every_medication_row_is_loaded_with_identical_fields(ref):
    rows = read_csv("medications.csv")
    assert len(rows) >= 100
    fields = ("generic_name", "form", "strength", "atc_code", "rxnorm_code")
    loaded = set(Medication.objects.values_list(*fields))
    source = {tuple(row[f] for f in fields) for row in rows}
    assert len(source) == len(rows), "medications.csv repeats a row"
    assert loaded == source


def test_medication_atc_codes_follow_the_who_format(ref):
    codes = [row["atc_code"] for row in read_csv("medications.csv")]
    coded = [code for code in codes if code]
    assert len(coded) >= 100
    for code in coded:
        assert ATC_PATTERN.match(code), code
        assert code[0] in ATC_MAIN_GROUPS, code
    for code in Medication.objects.exclude(atc_code="").values_list("atc_code", flat=True):
        assert ATC_PATTERN.match(code) and code[0] in ATC_MAIN_GROUPS, code
    rxnorm = Medication.objects.exclude(rxnorm_code="").values_list("rxnorm_code", flat=True)
    assert all(code.isdigit() for code in rxnorm)


def test_specialties_and_their_categories_match_the_csv(ref):
    categories = read_csv("specialty_categories.csv")
    assert set(SpecialtyCategory.objects.values_list("code", "name")) == {(r["code"], r["name"]) for r in categories}
    rows = read_csv("specialties.csv")
    assert len(rows) >= 40
    loaded = set(Specialty.objects.values_list("code", "name", "category__code", "snomed_code", "code_system"))
    assert loaded == {(r["code"], r["name"], r["category_code"], r["snomed_code"], SNOMED_CT) for r in rows}
    assert len(loaded) >= 40


def test_sexes_are_exactly_the_four_hl7_administrative_gender_codes(ref):
    assert sorted(Sex.objects.values_list("code_system", "code")) == sorted(
        (ADMINISTRATIVE_GENDER, code) for code in ("male", "female", "other", "unknown")
    )
    assert ADMINISTRATIVE_GENDER == "http://hl7.org/fhir/administrative-gender"
    assert set(Sex.objects.values_list("code", "display", "code_system")) == {
        (r["code"], r["display"], r["system"]) for r in read_csv("sexes.csv")
    }


@pytest.mark.parametrize(
    ("model", "filename", "columns"),
    [
        (Gender, "genders.csv", ("code", "name", "snomed_code")),
        (EmailType, "email_types.csv", ("code", "name")),
        (PhoneType, "phone_types.csv", ("code", "name")),
        (InstitutionType, "institution_types.csv", ("code", "name", "description")),
    ],
    ids=["genders", "email-types", "phone-types", "institution-types"],
)
def test_simple_catalog_matches_its_csv(ref, model, filename, columns):
    rows = read_csv(filename)
    assert rows
    assert model.objects.count() == len(rows)
    assert set(model.objects.values_list(*columns)) == {tuple(r[c] for c in columns) for r in rows}


# Blood -------------------------------------------------------------------------------

ABO_ANTIGENS = {"O": frozenset(), "A": frozenset("A"), "B": frozenset("B"), "AB": frozenset("AB")}


def red_cells_compatible(donor: tuple[str, str], recipient: tuple[str, str]) -> bool:
    """The red-cell rule, stated independently of the CSV.

    The recipient must not carry antibodies against any ABO antigen on the
    donor's cells, i.e. the donor's antigens are a subset of the recipient's;
    RhD-negative cells may go to anyone, RhD-positive cells only to RhD-positive
    recipients.
    """
    (donor_abo, donor_rh), (recipient_abo, recipient_rh) = donor, recipient
    abo_ok = ABO_ANTIGENS[donor_abo] <= ABO_ANTIGENS[recipient_abo]
    rh_ok = donor_rh == "-" or recipient_rh == "+"
    return abo_ok and rh_ok


def test_there_are_exactly_the_eight_abo_rh_blood_types(ref):
    types = set(BloodType.objects.values_list("code", "abo", "rh"))
    expected = {(f"{abo}{rh}", abo, rh) for abo in ABO_ANTIGENS for rh in "+-"}
    assert types == expected
    assert BloodType.objects.count() == 8
    assert types == {(r["code"], r["abo"], r["rh"]) for r in read_csv("blood_types.csv")}


def test_blood_compatibility_matrix_follows_the_red_cell_rule_for_all_64_pairs(ref):
    types = {t.code: t for t in BloodType.objects.prefetch_related("can_donate_to", "can_receive_from")}
    stored = set(BloodCompatibility.objects.values_list("donor__code", "recipient__code"))
    pairs = list(itertools.product(types.values(), repeat=2))
    assert len(pairs) == 64
    for donor, recipient in pairs:
        expected = red_cells_compatible((donor.abo, donor.rh), (recipient.abo, recipient.rh))
        label = f"{donor.code} → {recipient.code}"
        assert ((donor.code, recipient.code) in stored) == expected, label
        # ... and seen from both ends of the relation.
        assert (recipient in donor.can_donate_to.all()) == expected, label
        assert (donor in recipient.can_receive_from.all()) == expected, label
    # Textbook anchors: O- is the universal donor, AB+ the universal recipient.
    assert {t.code for t in types["O-"].can_donate_to.all()} == set(types)
    assert {t.code for t in types["AB+"].can_receive_from.all()} == set(types)
    assert {t.code for t in types["AB+"].can_donate_to.all()} == {"AB+"}
    assert {t.code for t in types["O-"].can_receive_from.all()} == {"O-"}
    assert stored == {(r["donor"], r["recipient"]) for r in read_csv("blood_type_compatibility.csv")}


# Loader --------------------------------------------------------------------------------


def test_loading_the_reference_data_again_changes_nothing(ref):
    result = load_reference_data()
    assert (result.created, result.updated) == (0, 0)
    assert all(counts == (0, 0) for counts in result.counts.values()), result.counts


def test_reloading_restores_a_changed_row(ref):
    medication = Medication.objects.exclude(atc_code="").order_by("id").first()
    original = medication.atc_code
    replacement = "A01AA01" if original != "A01AA01" else "A01AA02"
    Medication.objects.filter(pk=medication.pk).update(atc_code=replacement)

    result = load_reference_data()

    assert (result.created, result.updated) == (0, 1)
    medication.refresh_from_db()
    assert medication.atc_code == original


def test_reloading_restores_a_region_hierarchy(ref):
    region = Region.objects.filter(parent__isnull=False).order_by("code").first()
    parent_id = region.parent_id
    Region.objects.filter(pk=region.pk).update(parent=None)

    load_reference_data()

    region.refresh_from_db()
    assert region.parent_id == parent_id
