"""FHIR R4 validation and metadata: the shared HL7 and Synthea samples, bad payloads, builders.

No database: these are pure functions. Each sample file is parsed once (``_load``).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.medicationrequest import MedicationRequest as R5MedicationRequest
from fhir.resources.R4B.medicationrequest import MedicationRequest as R4BMedicationRequest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clinical import fhir
from clinical.canonical import canonical_json
from clinical.fhir import (
    CONDITION_CATEGORY,
    DIAGNOSIS,
    IMAGING,
    LAB_RESULT,
    LOINC,
    MEDICAL_HISTORY,
    OBSERVATION_CATEGORY,
    PRESCRIPTION,
    SNOMED_CT,
    SYMPTOM,
    TREATMENT_PLAN,
    UCUM,
    VACCINATION,
    VITAL_SIGNS,
    VITAL_SIGNS_RECORD,
    FhirValidationError,
    Quantity,
)
from tests.samples import SAMPLES_DIR

PATIENT = "Patient/9a628ccd-2a55-4331-8e68-bb58458fd674"
WHEN = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)


@functools.cache
def _load(name: str) -> Any:
    """A sample file, parsed once per test run. Callers copy before changing it."""
    return json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))


def _sample(name: str) -> dict[str, Any]:
    return copy.deepcopy(_load(name))


def _names(resource_types: set[str] | None) -> list[str]:
    """Sample files whose top-level resourceType is in ``resource_types`` (None: every non-bundle).

    A missing directory yields one impossible name, so that each test using
    the list fails on it instead of being skipped for want of parameters.
    """
    names = sorted(path.name for path in SAMPLES_DIR.glob("*.json"))
    if not names:
        return [f"missing: {SAMPLES_DIR}"]
    if resource_types is None:
        return [name for name in names if _load(name)["resourceType"] != "Bundle"]
    return [name for name in names if _load(name)["resourceType"] in resource_types]


EXAMPLES = _names(set(fhir.SUPPORTED_RESOURCES))
BUNDLES = _names({"Bundle"})
SYNTHEA_TYPES = {"Observation", "Condition", "MedicationRequest", "Immunization", "AllergyIntolerance", "Procedure"}


def _errors(record_type: str, payload: Any) -> list[dict[str, str]]:
    with pytest.raises(FhirValidationError) as caught:
        fhir.validate(record_type, payload)
    return caught.value.errors


def _paths(record_type: str, payload: Any) -> list[str]:
    return [error["path"] for error in _errors(record_type, payload)]


def _entries(bundle: str, resource_type: str) -> list[dict[str, Any]]:
    return [
        copy.deepcopy(entry["resource"])
        for entry in _load(bundle)["entry"]
        if entry["resource"]["resourceType"] == resource_type
    ]


# --- The shared samples ---------------------------------------------------------------


def test_the_samples_directory_holds_the_hl7_examples_and_the_synthea_bundles() -> None:
    assert SAMPLES_DIR.is_dir(), f"{SAMPLES_DIR} is missing: the FHIR tests need the shared samples"
    assert len(BUNDLES) == 8
    assert {"Condition-example.json", "MedicationRequest-medrx0302.json", "Observation-blood-pressure.json"} <= set(
        EXAMPLES
    )
    assert len(EXAMPLES) == 18  # every HL7 example but Patient and Encounter


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_hl7_example_validates_under_its_suggested_record_type(name: str) -> None:
    payload = _sample(name)
    record_type = fhir.suggest_record_type(payload)
    assert record_type is not None

    result = fhir.validate(record_type, payload)

    assert result.resource_type == payload["resourceType"]
    assert type(result.resource).__module__.startswith("fhir.resources.R4B.")
    assert json.loads(json.dumps(result.metadata, allow_nan=False)) == result.metadata


@pytest.mark.parametrize("name", BUNDLES)
def test_every_synthea_entry_a_record_stores_validates_under_its_suggested_record_type(name: str) -> None:
    failures, seen = [], set()
    for entry in _load(name)["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] not in fhir.SUPPORTED_RESOURCES:
            continue
        record_type = fhir.suggest_record_type(resource)
        try:
            result = fhir.validate(record_type or "none suggested", resource)
        except (FhirValidationError, ValueError) as exc:
            failures.append((resource["resourceType"], resource["id"], record_type, str(exc)))
            continue
        json.dumps(result.metadata, allow_nan=False)
        seen.add(resource["resourceType"])

    assert failures == []
    assert seen >= SYNTHEA_TYPES  # the loop did check every kind of entry the brief names


def test_resources_no_record_stores_get_no_suggestion() -> None:
    assert fhir.suggest_record_type(_sample("Patient-example.json")) is None
    assert fhir.suggest_record_type(_sample("Encounter-example.json")) is None
    claims = _entries(BUNDLES[0], "Claim")
    assert claims
    assert fhir.suggest_record_type(claims[0]) is None
    assert fhir.suggest_record_type(["not", "a", "resource"]) is None
    assert fhir.suggest_record_type({"resourceType": 7}) is None


def test_synthea_conditions_carry_no_category_and_count_as_diagnoses() -> None:
    conditions = _entries("Stevie_Cormier_7f4c7519-5b22-4855-812f-9e937c5a8d2f.json", "Condition")
    assert all("category" not in condition for condition in conditions)
    assert {fhir.suggest_record_type(condition) for condition in conditions} == {DIAGNOSIS}
    # Without a category either record type may hold one; only a contradicting category is refused.
    fhir.validate(MEDICAL_HISTORY, conditions[0])


def test_synthea_observations_are_sorted_by_their_category() -> None:
    observations = _entries("Dennis_Durgan_78f005f3-7b33-4a5b-84d9-28417b36dbab.json", "Observation")
    by_category: dict[str, set[str | None]] = {}
    for observation in observations:
        code = observation["category"][0]["coding"][0]["code"]
        by_category.setdefault(code, set()).add(fhir.suggest_record_type(observation))
    assert by_category == {
        "laboratory": {LAB_RESULT},
        "vital-signs": {VITAL_SIGNS_RECORD},
        "survey": {SYMPTOM},
        "imaging": {SYMPTOM},
        "vital-sign": {SYMPTOM},  # Synthea's misspelling is not the vital-signs category
    }


def test_synthea_s_misspelt_vital_sign_category_is_refused_as_a_vital_sign() -> None:
    observations = _entries("Dennis_Durgan_78f005f3-7b33-4a5b-84d9-28417b36dbab.json", "Observation")
    quirk = next(o for o in observations if o["category"][0]["coding"][0]["code"] == "vital-sign")

    assert _paths(VITAL_SIGNS_RECORD, quirk) == ["Observation.category"]


def test_synthea_blood_pressures_use_the_older_panel_code_which_the_table_checks_too() -> None:
    observations = _entries("Kermit_Trantow_f1a650a5-737e-4fd7-828e-03c3348b9524.json", "Observation")
    pressure = next(o for o in observations if o["code"]["coding"][0]["code"] == "55284-4")
    fhir.validate(VITAL_SIGNS_RECORD, pressure)
    pressure["component"] = [c for c in pressure["component"] if c["code"]["coding"][0]["code"] != "8462-4"]

    assert _paths(VITAL_SIGNS_RECORD, pressure) == ["Observation.component"]


def test_synthea_diagnostic_reports_and_care_plans_and_imaging_studies_are_suggested_sensibly() -> None:
    bundle = "Dennis_Durgan_78f005f3-7b33-4a5b-84d9-28417b36dbab.json"
    assert {fhir.suggest_record_type(r) for r in _entries(bundle, "DiagnosticReport")} == {LAB_RESULT}
    assert {fhir.suggest_record_type(r) for r in _entries(bundle, "CarePlan")} == {TREATMENT_PLAN}
    assert {fhir.suggest_record_type(r) for r in _entries(bundle, "ImagingStudy")} == {IMAGING}


# --- R4, not R5 -------------------------------------------------------------------------


def test_an_r4_medication_request_with_a_medication_codeable_concept_is_accepted() -> None:
    payload = _sample("MedicationRequest-medrx0320.json")
    assert "medicationCodeableConcept" in payload

    result = fhir.validate(PRESCRIPTION, payload)

    assert isinstance(result.resource, R4BMedicationRequest)
    assert result.metadata["codings"] == [{"system": fhir.RXNORM, "code": "285018"}]
    # The reason this module never uses the top-level models: R5 refuses the same payload.
    with pytest.raises(ValidationError):
        R5MedicationRequest.model_validate(payload)


# --- Errors and their paths -------------------------------------------------------------


def test_a_field_of_the_wrong_type_is_named_by_its_full_path() -> None:
    payload = _sample("Observation-heart-rate.json")
    payload["category"][0]["coding"][0]["code"] = 5
    payload["valueQuantity"]["value"] = "fast"

    assert sorted(_paths(VITAL_SIGNS_RECORD, payload)) == [
        "Observation.category[0].coding[0].code",
        "Observation.valueQuantity.value",
    ]


def test_an_unknown_element_is_named() -> None:
    payload = _sample("Condition-example.json")
    payload["code"]["coding"][0]["colour"] = "red"

    assert _errors(DIAGNOSIS, payload) == [{"path": "Condition.code.coding[0].colour", "message": "unknown element"}]


@pytest.mark.parametrize(
    ("name", "record_type", "element", "path"),
    [
        ("Observation-heart-rate.json", VITAL_SIGNS_RECORD, "status", "Observation.status"),
        ("Observation-heart-rate.json", VITAL_SIGNS_RECORD, "code", "Observation.code"),
        ("Condition-example.json", DIAGNOSIS, "subject", "Condition.subject"),
        ("Immunization-example.json", VACCINATION, "vaccineCode", "Immunization.vaccineCode"),
    ],
)
def test_a_missing_required_element_is_named(name: str, record_type: str, element: str, path: str) -> None:
    payload = _sample(name)
    del payload[element]

    assert _errors(record_type, payload) == [{"path": path, "message": "required element is missing"}]


def test_a_status_outside_its_value_set_is_refused() -> None:
    payload = _sample("Observation-heart-rate.json")
    payload["status"] = "done"

    assert _paths(VITAL_SIGNS_RECORD, payload) == ["Observation.status"]


@pytest.mark.parametrize(
    ("record_type", "name"),
    [
        (PRESCRIPTION, "Observation-heart-rate.json"),
        (DIAGNOSIS, "AllergyIntolerance-example.json"),
        (LAB_RESULT, "Patient-example.json"),
        (VACCINATION, BUNDLES[0]),
    ],
)
def test_a_resource_the_record_type_does_not_take_is_refused(record_type: str, name: str) -> None:
    errors = _errors(record_type, _sample(name))

    assert [error["path"] for error in errors] == ["resourceType"]
    assert record_type in errors[0]["message"]


@pytest.mark.parametrize("payload", [None, [], "Observation", 42, b"{}"])
def test_a_payload_that_is_not_an_object_is_refused(payload: Any) -> None:
    assert _paths(SYMPTOM, payload) == [""]


@pytest.mark.parametrize("resource_type", [None, "", 5, "Foo", "Quantity"])
def test_a_missing_or_unknown_resource_type_is_refused(resource_type: Any) -> None:
    payload = _sample("Observation-heart-rate.json")
    if resource_type is None:
        del payload["resourceType"]
    else:
        payload["resourceType"] = resource_type

    assert _paths(VITAL_SIGNS_RECORD, payload) == ["resourceType"]


def test_an_unknown_record_type_is_the_caller_s_mistake() -> None:
    with pytest.raises(ValueError, match="unknown record type"):
        fhir.validate("x-ray", _sample("Observation-heart-rate.json"))


def test_an_observation_of_another_category_is_refused_as_a_vital_sign_or_lab_result() -> None:
    vital = _sample("Observation-heart-rate.json")
    assert _paths(LAB_RESULT, vital) == ["Observation.category"]
    lab = _entries(BUNDLES[0], "Observation")
    lab = [o for o in lab if fhir.suggest_record_type(o) == LAB_RESULT]
    assert _paths(VITAL_SIGNS_RECORD, lab[0]) == ["Observation.category"]
    # An observation without any category is not a lab result either: it is a symptom.
    uncategorised = _sample("Observation-f001.json")
    assert _paths(LAB_RESULT, uncategorised) == ["Observation.category"]
    fhir.validate(SYMPTOM, uncategorised)


def test_a_condition_is_refused_when_its_category_contradicts_the_record_type() -> None:
    diagnosis = _sample("Condition-example.json")  # encounter-diagnosis
    assert _paths(MEDICAL_HISTORY, diagnosis) == ["Condition.category"]
    fhir.validate(SYMPTOM, diagnosis)

    problem = _sample("Condition-example.json")
    problem["category"] = [{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}]
    assert _paths(DIAGNOSIS, problem) == ["Condition.category"]
    assert fhir.suggest_record_type(problem) == MEDICAL_HISTORY
    fhir.validate(MEDICAL_HISTORY, problem)


def test_a_radiology_report_is_imaging_and_not_a_lab_result() -> None:
    report = _entries(BUNDLES[0], "DiagnosticReport")[0]
    fhir.validate(LAB_RESULT, report)
    assert _paths(IMAGING, report) == ["DiagnosticReport.category"]

    report["category"][0]["coding"][0]["code"] = "RAD"
    assert fhir.suggest_record_type(report) == IMAGING
    fhir.validate(IMAGING, report)
    assert _paths(LAB_RESULT, report) == ["DiagnosticReport.category"]


@pytest.mark.parametrize("record_type", [VITAL_SIGNS_RECORD, LAB_RESULT])
def test_a_quantity_outside_ucum_is_refused_for_vital_signs_and_lab_results(record_type: str) -> None:
    payload = _sample("Observation-heart-rate.json")
    payload["category"][0]["coding"][0]["code"] = "laboratory" if record_type == LAB_RESULT else "vital-signs"
    payload["valueQuantity"]["system"] = "http://example.org/units"

    assert _paths(record_type, payload) == ["Observation.valueQuantity.system"]
    # Any other record type keeps whatever units it was given.
    fhir.validate(SYMPTOM, payload)


def test_a_unit_code_without_its_system_is_refused() -> None:
    payload = _sample("Observation-heart-rate.json")
    del payload["valueQuantity"]["system"]

    assert _paths(VITAL_SIGNS_RECORD, payload) == ["Observation.valueQuantity.system"]


@pytest.mark.parametrize(
    ("name", "wrong_unit"),
    [
        ("Observation-heart-rate.json", "/s"),
        ("Observation-body-temperature.json", "K"),
        ("Observation-body-height.json", "m"),
        ("Observation-example.json", "[oz_av]"),  # body weight
        ("Observation-bmi.json", "kg"),
        ("Observation-satO2.json", "1"),
    ],
)
def test_a_vital_sign_in_the_table_must_use_one_of_its_units(name: str, wrong_unit: str) -> None:
    payload = _sample(name)
    payload["valueQuantity"]["code"] = wrong_unit
    payload.pop("referenceRange", None)

    errors = _errors(VITAL_SIGNS_RECORD, payload)

    assert [error["path"] for error in errors] == ["Observation.valueQuantity.code"]
    assert repr(wrong_unit) in errors[0]["message"]


def test_a_vital_sign_outside_the_table_is_accepted_with_any_ucum_unit() -> None:
    pain = next(
        o
        for o in _entries(BUNDLES[0], "Observation")
        if o["code"]["coding"][0]["code"] == "72514-3"  # pain severity, not in the table
    )
    assert "72514-3" not in VITAL_SIGNS
    pain["valueQuantity"]["code"] = pain["valueQuantity"]["unit"] = "{anything}"

    fhir.validate(VITAL_SIGNS_RECORD, pain)


def test_a_blood_pressure_without_a_diastolic_component_is_refused() -> None:
    payload = _sample("Observation-blood-pressure.json")
    payload["component"] = payload["component"][:1]

    errors = _errors(VITAL_SIGNS_RECORD, payload)

    assert [error["path"] for error in errors] == ["Observation.component"]
    assert "8462-4" in errors[0]["message"]


def test_a_blood_pressure_component_in_the_wrong_unit_is_named() -> None:
    payload = _sample("Observation-blood-pressure.json")
    payload["component"][1]["valueQuantity"]["code"] = "kPa"

    assert _paths(VITAL_SIGNS_RECORD, payload) == ["Observation.component[1].valueQuantity.code"]


def test_a_vital_sign_without_a_value_needs_a_data_absent_reason() -> None:
    payload = _sample("Observation-heart-rate.json")
    del payload["valueQuantity"]
    assert _paths(VITAL_SIGNS_RECORD, payload) == ["Observation.valueQuantity"]

    payload["dataAbsentReason"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}]
    }
    fhir.validate(VITAL_SIGNS_RECORD, payload)


def test_a_lab_result_s_reference_range_must_share_the_value_s_unit_and_be_ordered() -> None:
    payload = _lab_glucose()
    payload["referenceRange"][0]["low"]["code"] = "mg/dL"
    payload["referenceRange"][0]["low"]["value"] = 70
    assert _paths(LAB_RESULT, payload) == ["Observation.referenceRange[0].low.code", "Observation.referenceRange[0]"]


def test_a_lab_value_written_as_a_string_is_refused() -> None:
    payload = _lab_glucose()
    payload["valueQuantity"]["value"] = "6.3"  # the models accept this; FHIR JSON does not

    assert _paths(LAB_RESULT, payload) == ["Observation.valueQuantity.value"]


def test_the_exception_names_paths_but_not_submitted_text() -> None:
    payload = _sample("Condition-example.json")
    payload["code"]["text"] = {"secret": "Jane Doe has HIV"}

    with pytest.raises(FhirValidationError) as caught:
        fhir.validate(DIAGNOSIS, payload)

    assert "Condition.code.text" in str(caught.value)
    assert "Jane" not in str(caught.value)
    assert "Jane" not in json.dumps(caught.value.errors)


# --- Metadata ------------------------------------------------------------------------------


def _lab_glucose() -> dict[str, Any]:
    """Observation-f001 (glucose 6.3 mmol/L, range 3.1-6.2) with the laboratory category it lacks."""
    payload = _sample("Observation-f001.json")
    payload["category"] = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}]
    return payload


def test_metadata_of_the_hl7_condition_example() -> None:
    metadata = fhir.validate(DIAGNOSIS, _sample("Condition-example.json")).metadata

    assert metadata == {
        "resource_type": "Condition",
        "codings": [{"system": SNOMED_CT, "code": "39065001"}],
        "systems": ["snomed"],
        "categories": ["encounter-diagnosis", "439401001"],
        "effective": "2012-05-24",
        "quantity": None,
        "interpretation": None,
    }


def test_metadata_of_a_blood_pressure_keeps_panel_and_component_codes_without_displays() -> None:
    metadata = fhir.validate(VITAL_SIGNS_RECORD, _sample("Observation-blood-pressure.json")).metadata

    loinc = [c["code"] for c in metadata["codings"] if c["system"] == LOINC]
    assert loinc == ["85354-9", "8480-6", "8462-4"]
    assert metadata["systems"] == ["loinc", "snomed"]
    assert all(set(coding) == {"system", "code"} for coding in metadata["codings"])
    assert metadata["effective"] == "2012-09-17"
    assert metadata["quantity"] is None  # the values sit in the components


def test_metadata_of_a_lab_result_holds_the_quantity_and_its_interpretation() -> None:
    metadata = fhir.validate(LAB_RESULT, _lab_glucose()).metadata

    assert metadata["quantity"] == {"value": 6.3, "unit": "mmol/L", "low": 3.1, "high": 6.2}
    assert metadata["interpretation"] == "high"
    assert metadata["effective"] == "2013-04-02"  # effectivePeriod.start
    assert metadata["categories"] == ["laboratory"]


def test_metadata_of_a_vital_sign_with_a_range() -> None:
    metadata = fhir.validate(VITAL_SIGNS_RECORD, _sample("Observation-satO2.json")).metadata

    assert metadata["quantity"] == {"value": 95.0, "unit": "%", "low": 90.0, "high": 99.0}
    assert metadata["interpretation"] == "normal"
    assert [c["code"] for c in metadata["codings"] if c["system"] == LOINC] == ["2708-6", "59408-5"]


def test_a_value_with_a_comparator_gets_no_interpretation() -> None:
    payload = _lab_glucose()
    payload["valueQuantity"]["comparator"] = ">"

    assert fhir.validate(LAB_RESULT, payload).metadata["interpretation"] is None


def test_metadata_follows_a_prescription_to_its_contained_medication() -> None:
    metadata = fhir.validate(PRESCRIPTION, _sample("MedicationRequest-medrx0302.json")).metadata

    assert metadata["codings"] == [{"system": SNOMED_CT, "code": "324252006"}]
    assert metadata["effective"] == "2015-01-15"


def test_metadata_of_synthea_entries() -> None:
    bundle = "Carla_Echevarría_9a628ccd-2a55-4331-8e68-bb58458fd674.json"
    condition = _entries(bundle, "Condition")[0]
    immunization = _entries(bundle, "Immunization")[0]
    prescription = _entries(bundle, "MedicationRequest")[0]

    condition_meta = fhir.validate(DIAGNOSIS, condition).metadata
    assert condition_meta["codings"] == [{"system": SNOMED_CT, "code": condition["code"]["coding"][0]["code"]}]
    assert condition_meta["effective"] == condition["onsetDateTime"][:10]
    assert fhir.validate(VACCINATION, immunization).metadata["systems"] == ["cvx"]
    assert fhir.validate(PRESCRIPTION, prescription).metadata["systems"] == ["rxnorm"]


def test_the_effective_date_is_the_date_as_written_and_skips_partial_dates() -> None:
    allergy = _sample("AllergyIntolerance-example.json")  # onsetDateTime "2004", recordedDate 2014-10-09T14:58+11:00
    assert fhir.validate(MEDICAL_HISTORY, allergy).metadata["effective"] == "2014-10-09"  # not 03:58 UTC that day

    condition = _sample("Condition-example.json")
    condition["onsetDateTime"] = "2004"
    condition["recordedDate"] = "2004-06-30T23:30:00-05:00"
    assert fhir.validate(DIAGNOSIS, condition).metadata["effective"] == "2004-06-30"

    del condition["onsetDateTime"], condition["recordedDate"]
    assert fhir.validate(DIAGNOSIS, condition).metadata["effective"] is None


def test_metadata_of_a_family_member_history_and_an_imaging_study() -> None:
    history = {
        "resourceType": "FamilyMemberHistory",
        "status": "completed",
        "patient": {"reference": PATIENT},
        "date": "2020-03-04",
        "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]},
        "condition": [{"code": {"coding": [{"system": SNOMED_CT, "code": "22298006", "display": "Heart attack"}]}}],
    }
    assert fhir.suggest_record_type(history) == MEDICAL_HISTORY
    history_meta = fhir.validate(MEDICAL_HISTORY, history).metadata
    assert history_meta["codings"] == [{"system": SNOMED_CT, "code": "22298006"}]
    assert history_meta["effective"] == "2020-03-04"

    study = _entries("Dennis_Durgan_78f005f3-7b33-4a5b-84d9-28417b36dbab.json", "ImagingStudy")[0]
    study_meta = fhir.validate(IMAGING, study).metadata
    assert {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "US"} in study_meta["codings"]
    assert study_meta["effective"] == study["started"][:10]


def test_system_uri_resolves_aliases_and_passes_uris_through() -> None:
    assert fhir.system_uri("loinc") == LOINC
    assert fhir.system_uri("ICD-10-CM") == "http://hl7.org/fhir/sid/icd-10-cm"
    assert fhir.system_uri("http://example.org/codes") == "http://example.org/codes"
    assert fhir.system_uri("urn:oid:1.2.36.1.2001.1005.17") == "urn:oid:1.2.36.1.2001.1005.17"
    with pytest.raises(ValueError, match="unknown code system"):
        fhir.system_uri("lonic")


def test_the_system_aliases_name_the_same_systems_as_the_catalogs() -> None:
    from clinical.models.catalogs import CODE_SYSTEM_CHOICES

    assert set(fhir.SYSTEM_ALIASES.values()) == {uri for uri, _ in CODE_SYSTEM_CHOICES}


# --- quantity() and interpret() ---------------------------------------------------------------


def test_quantity_reads_value_unit_and_first_reference_range() -> None:
    assert fhir.quantity(_sample("Observation-f001.json")) == Quantity(6.3, "mmol/L", 3.1, 6.2)
    assert fhir.quantity(_sample("Observation-heart-rate.json")) == Quantity(44.0, "/min", None, None)


def test_quantity_is_none_without_a_numeric_value_and_unit_none_outside_ucum() -> None:
    assert fhir.quantity(_sample("Observation-blood-pressure.json")) is None
    assert fhir.quantity(_sample("Condition-example.json")) is None
    assert fhir.quantity("not even a dict") is None
    payload = _sample("Observation-heart-rate.json")
    payload["valueQuantity"]["system"] = "http://example.org/units"
    assert fhir.quantity(payload) == Quantity(44.0, None, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10, "normal"),  # the bounds belong to the range
        (20, "normal"),
        (15, "normal"),
        (9.99, "low"),
        (0, "low"),  # exactly one range width below: still only low
        (-0.01, "critical"),
        (20.01, "high"),
        (30, "high"),
        (30.01, "critical"),
    ],
)
def test_interpret_against_a_range_of_10_to_20(value: float, expected: str) -> None:
    assert fhir.interpret(value, 10, 20) == expected


def test_interpret_without_a_range_or_with_one_bound() -> None:
    assert fhir.interpret(5, None, None) is None
    assert fhir.interpret(-1000, 5, None) == "low"  # no width, so never critical
    assert fhir.interpret(5, 5, None) == "normal"
    assert fhir.interpret(1000, None, 200) == "high"
    assert fhir.interpret(199, None, 200) == "normal"


def test_interpret_refuses_an_inverted_range() -> None:
    with pytest.raises(ValueError, match="above"):
        fhir.interpret(5, 10, 1)


# --- Builders ---------------------------------------------------------------------------------------


def _round_trips(record_type: str, built: dict[str, Any]) -> fhir.ValidatedResource:
    """``built`` validates, and its model writes back exactly the same JSON."""
    result = fhir.validate(record_type, built)
    assert json.loads(result.resource.model_dump_json()) == built
    assert fhir.suggest_record_type(built) == record_type
    canonical_json(built)  # hashable as stored
    return result


@pytest.mark.parametrize(("kind", "unit"), [(k, u) for k, spec in VITAL_SIGNS.items() for u in spec.units])
def test_build_vital_signs_for_every_kind_and_unit(kind: str, unit: str) -> None:
    built = fhir.build_vital_signs(
        kind=kind, value=Decimal("36.6"), unit=unit, effective=WHEN, patient_reference=PATIENT
    )

    metadata = _round_trips(VITAL_SIGNS_RECORD, built).metadata

    assert metadata["codings"][0] == {"system": LOINC, "code": kind}
    assert metadata["quantity"] == {"value": 36.6, "unit": unit, "low": None, "high": None}
    assert metadata["effective"] == "2024-05-01"
    assert built["effectiveDateTime"] == "2024-05-01T09:30:00Z"
    assert built["subject"] == {"reference": PATIENT}


@pytest.mark.parametrize("kind", [k for k, spec in VITAL_SIGNS.items() if spec.components])
def test_build_vital_signs_for_a_blood_pressure(kind: str) -> None:
    built = fhir.build_vital_signs(kind=kind, systolic=128, diastolic=82, effective=WHEN, patient_reference=PATIENT)

    _round_trips(VITAL_SIGNS_RECORD, built)

    assert [(c["code"]["coding"][0]["code"], c["valueQuantity"]["value"]) for c in built["component"]] == [
        ("8480-6", 128),
        ("8462-4", 82),
    ]
    assert "valueQuantity" not in built


def test_build_vital_signs_uses_the_kind_s_first_unit_by_default() -> None:
    built = fhir.build_vital_signs(kind="8310-5", value=37.2, effective=WHEN, patient_reference=PATIENT)

    assert built["valueQuantity"] == {"value": 37.2, "unit": "Cel", "system": UCUM, "code": "Cel"}


def test_build_vital_signs_refuses_a_unit_the_kind_does_not_allow() -> None:
    with pytest.raises(FhirValidationError) as caught:
        fhir.build_vital_signs(kind="8867-4", value=72, unit="Cel", effective=WHEN, patient_reference=PATIENT)

    assert [error["path"] for error in caught.value.errors] == ["Observation.valueQuantity.code"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"kind": "85354-9", "value": 120},
        {"kind": "85354-9", "systolic": 120},
        {"kind": "8867-4", "systolic": 120, "diastolic": 80},
        {"kind": "8867-4"},
        {"kind": "heart rate", "value": 72},
        {"kind": "8867-4", "value": 72, "effective": WHEN.replace(tzinfo=None)},
        {"kind": "8867-4", "value": 72, "patient_reference": " "},
        {"kind": "8867-4", "value": float("nan")},
    ],
)
def test_build_vital_signs_refuses_arguments_that_do_not_fit(arguments: dict[str, Any]) -> None:
    arguments = {"effective": WHEN, "patient_reference": PATIENT} | arguments
    with pytest.raises(ValueError):
        fhir.build_vital_signs(**arguments)


def test_build_lab_result_with_a_reference_range() -> None:
    built = fhir.build_lab_result(
        loinc_code="2339-0",
        display="Glucose",
        value=115.5,
        unit="mg/dL",
        low=70,
        high=99,
        effective=WHEN.astimezone(dt.timezone(dt.timedelta(hours=-5))),
        patient_reference=PATIENT,
    )

    metadata = _round_trips(LAB_RESULT, built).metadata

    assert metadata["quantity"] == {"value": 115.5, "unit": "mg/dL", "low": 70.0, "high": 99.0}
    assert metadata["interpretation"] == "high"
    assert metadata["effective"] == "2024-05-01"
    assert built["effectiveDateTime"] == "2024-05-01T04:30:00-05:00"


def test_build_lab_result_without_a_range() -> None:
    built = fhir.build_lab_result(
        loinc_code="4548-4", display="Hemoglobin A1c", value=5, unit="%", effective=WHEN, patient_reference=PATIENT
    )

    assert "referenceRange" not in built
    assert _round_trips(LAB_RESULT, built).metadata["interpretation"] is None


def test_build_diagnosis() -> None:
    built = fhir.build_diagnosis(
        icd10_code="E11.9", display="Type 2 diabetes mellitus", onset=dt.date(2023, 2, 14), patient_reference=PATIENT
    )

    metadata = _round_trips(DIAGNOSIS, built).metadata

    assert metadata["codings"] == [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]
    assert metadata["systems"] == ["icd-10-cm"]
    assert metadata["categories"] == ["encounter-diagnosis"]
    assert metadata["effective"] == "2023-02-14"
    assert built["clinicalStatus"]["coding"][0]["code"] == "active"


def test_build_diagnosis_takes_a_clinical_status_from_its_value_set() -> None:
    built = fhir.build_diagnosis(
        icd10_code="J45.909",
        display="Asthma",
        onset=dt.date(2010, 1, 1),
        patient_reference=PATIENT,
        clinical_status="remission",
    )
    assert built["clinicalStatus"]["coding"][0]["code"] == "remission"
    with pytest.raises(ValueError, match="clinical_status"):
        fhir.build_diagnosis(
            icd10_code="J45.909",
            display="Asthma",
            onset=dt.date(2010, 1, 1),
            patient_reference=PATIENT,
            clinical_status="cured",
        )


def test_build_vaccination() -> None:
    built = fhir.build_vaccination(
        cvx_code="140",
        display="Influenza, seasonal, injectable, preservative free",
        occurrence=dt.date(2024, 10, 3),
        patient_reference=PATIENT,
        lot_number="FL1234",
    )

    metadata = _round_trips(VACCINATION, built).metadata

    assert built["status"] == "completed"
    assert built["lotNumber"] == "FL1234"
    assert metadata["codings"] == [{"system": fhir.CVX, "code": "140"}]
    assert metadata["effective"] == "2024-10-03"
    assert "lotNumber" not in fhir.build_vaccination(
        cvx_code="140", display="Influenza", occurrence=dt.date(2024, 10, 3), patient_reference=PATIENT
    )


# --- Nothing but FhirValidationError -----------------------------------------------------------------

_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _locations(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        found += _locations(child, (*prefix, key))
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(EXAMPLES),
    pick=st.integers(min_value=0),
    replacement=_ANY_JSON,
    record_type=st.sampled_from(fhir.RECORD_TYPES),
)
def test_a_damaged_sample_raises_nothing_but_fhir_validation_error(
    name: str, pick: int, replacement: Any, record_type: str
) -> None:
    payload = _sample(name)
    locations = _locations(payload)
    *parents, last = locations[pick % len(locations)]
    node = payload
    for key in parents:
        node = node[key]
    node[last] = replacement

    fhir.suggest_record_type(payload)
    fhir.quantity(payload)
    try:
        result = fhir.validate(record_type, payload)
    except FhirValidationError as exc:
        assert exc.errors
        assert all(set(error) == {"path", "message"} for error in exc.errors)
    else:
        json.dumps(result.metadata, allow_nan=False)
