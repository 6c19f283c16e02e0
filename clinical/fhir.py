"""FHIR R4 validation of medical record payloads, and the metadata searched on.

A medical record holds one FHIR R4 resource as JSON, filed under a record type
(``diagnosis``, ``lab_result``, ...). ``validate(record_type, payload)`` accepts
it or raises ``FhirValidationError`` listing every problem with a FHIR-style
path (``Observation.category[0].coding[0].code``).

What is validated
-----------------
1. The payload is a JSON object whose ``resourceType`` the record type accepts,
   with the category the record type requires (``ACCEPTED_RESOURCES``).
2. The resource is structurally valid FHIR R4: element names, cardinalities,
   data types and formats (dates, decimals, choice types), through the
   ``fhir.resources`` models; and its ``status`` is a code of the status value
   set (a required binding, which those models do not check).
3. Lab results and vital signs: quantities carry UCUM units (a unit code
   always with ``system`` http://unitsofmeasure.org); the reference range is in
   the value's unit, with low <= high. A vital sign whose LOINC code is in
   ``VITAL_SIGNS`` must use one of the units listed there, and a blood pressure
   needs its systolic and diastolic components. Vital signs whose codes are not
   in the table (pain score, head circumference, panels) are accepted with the
   UCUM rule only: the table is a safety net for the common measurements, not
   a closed list.

Not checked: whether codes exist in their terminology, whether references
resolve (``subject`` pointing at the record's own patient is the caller's
business), and profiles such as US Core.

Why R4B
-------
``fhir.resources`` 8 exposes FHIR R5 at the top level, and R5 rejects R4 data:
an R4 ``MedicationRequest.medicationCodeableConcept`` became R5's
``medication`` (a CodeableReference), for example. Caretrail's inputs are R4
(Synthea exports, the HL7 R4 examples, R4 EHR APIs). FHIR R4B (4.3) is
wire-compatible with R4 for the resources stored here, and every shared R4
sample validates with its models; so everything here imports
``fhir.resources.R4B``, never the top-level models.

What metadata holds
-------------------
``ValidatedResource.metadata`` is plain JSON, what the record is searched and
listed by; it holds no free text, since displays and notes can carry PHI:

- ``resource_type``: ``"Observation"``;
- ``codings``: ``[{"system", "code"}]`` from the resource's main code elements
  (``CODE_ELEMENTS``), deduplicated, in document order; codings without a
  system or a code are left out;
- ``systems``: short names (``SYSTEM_ALIASES``) of the known systems among them;
- ``categories``: the category codes, of any system;
- ``effective``: ``YYYY-MM-DD`` of the clinically relevant date
  (``EFFECTIVE_ELEMENTS``: the first element holding a full date, as written,
  without conversion to UTC; year-only or year-month values are skipped rather
  than padded with an invented day) or ``None``;
- ``quantity`` (``{"value", "unit", "low", "high"}``) and ``interpretation``
  (see ``interpret``) for lab results and vital signs with a numeric value,
  otherwise ``None``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

# --- Record types -----------------------------------------------------------

DIAGNOSIS: Final = "diagnosis"
LAB_RESULT: Final = "lab_result"
PRESCRIPTION: Final = "prescription"
TREATMENT_PLAN: Final = "treatment_plan"
MEDICAL_HISTORY: Final = "medical_history"
VITAL_SIGNS_RECORD: Final = "vital_signs"  # VITAL_SIGNS is the table of vital-sign codes below
IMAGING: Final = "imaging"
VACCINATION: Final = "vaccination"
SYMPTOM: Final = "symptom"

RECORD_TYPES: Final[tuple[str, ...]] = (
    DIAGNOSIS,
    LAB_RESULT,
    PRESCRIPTION,
    TREATMENT_PLAN,
    MEDICAL_HISTORY,
    VITAL_SIGNS_RECORD,
    IMAGING,
    VACCINATION,
    SYMPTOM,
)

# --- Code systems -----------------------------------------------------------

ICD_10_CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED_CT: Final = "http://snomed.info/sct"
LOINC: Final = "http://loinc.org"
RXNORM: Final = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX: Final = "http://hl7.org/fhir/sid/cvx"
ATC: Final = "http://www.whocc.no/atc"
UCUM: Final = "http://unitsofmeasure.org"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE_SECTION: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"

SYSTEM_ALIASES: Final[Mapping[str, str]] = {
    "icd-10-cm": ICD_10_CM,
    "snomed": SNOMED_CT,
    "loinc": LOINC,
    "rxnorm": RXNORM,
    "cvx": CVX,
    "atc": ATC,
}
_ALIAS_BY_URI: Final = {uri: alias for alias, uri in SYSTEM_ALIASES.items()}


def system_uri(alias_or_uri: str) -> str:
    """The code system URI for a short alias (``"loinc"``, any case); a URI is returned as is.

    Raises ``ValueError`` for anything else, so that a mistyped alias is not
    taken for a system that matches nothing.
    """
    uri = SYSTEM_ALIASES.get(alias_or_uri.strip().lower())
    if uri is not None:
        return uri
    if re.match(r"^(https?|urn):\S+$", alias_or_uri):
        return alias_or_uri
    raise ValueError(f"unknown code system {alias_or_uri!r}; use a URI or one of {', '.join(SYSTEM_ALIASES)}")


# --- Which resources each record type accepts --------------------------------

Coding = tuple[str | None, str]  # (system, code)


@dataclass(frozen=True)
class CategoryRule:
    """The ``category`` codings a resource needs to be filed under a record type.

    A resource passes when it carries none of ``none_of`` and, if ``any_of`` is
    not empty, one of ``any_of``; with ``uncategorised`` it also passes when it
    carries no category coding at all in the systems ``any_of`` draws from.
    """

    description: str
    any_of: frozenset[Coding] = frozenset()
    none_of: frozenset[Coding] = frozenset()
    uncategorised: bool = False

    def accepts(self, categories: Iterable[Coding]) -> bool:
        present = set(categories)
        if present & self.none_of:
            return False
        if not self.any_of or present & self.any_of:
            return True
        systems = {system for system, _ in self.any_of}
        return self.uncategorised and not any(system in systems for system, _ in present)


# DiagnosticReport categories that make it an imaging report: the imaging
# sections of HL7 v2 table 0074, and LOINC "Radiology" as US Core uses it.
IMAGING_SECTIONS: Final = frozenset(
    (DIAGNOSTIC_SERVICE_SECTION, code) for code in ("RAD", "CT", "MR", "NMR", "NMS", "RX", "RUS", "CUS", "OUS", "VUS")
) | {(LOINC, "LP29684-5")}

# Conditions without any condition-category coding are common (every Synthea
# Condition; category is 0..* in R4) and are encounter diagnoses or history
# items alike, so both record types take them; only an explicit category that
# says otherwise is refused.
_ENCOUNTER_DIAGNOSIS = CategoryRule(
    "category encounter-diagnosis (or no condition-category coding)",
    any_of=frozenset({(CONDITION_CATEGORY, "encounter-diagnosis")}),
    uncategorised=True,
)
_PROBLEM_LIST_ITEM = CategoryRule(
    "category problem-list-item (or no condition-category coding)",
    any_of=frozenset({(CONDITION_CATEGORY, "problem-list-item")}),
    uncategorised=True,
)

ACCEPTED_RESOURCES: Final[Mapping[str, Mapping[str, CategoryRule | None]]] = {
    DIAGNOSIS: {"Condition": _ENCOUNTER_DIAGNOSIS},
    LAB_RESULT: {
        "Observation": CategoryRule("category laboratory", any_of=frozenset({(OBSERVATION_CATEGORY, "laboratory")})),
        "DiagnosticReport": CategoryRule("no imaging category", none_of=IMAGING_SECTIONS),
    },
    PRESCRIPTION: {"MedicationRequest": None},
    TREATMENT_PLAN: {"CarePlan": None},
    MEDICAL_HISTORY: {
        "Condition": _PROBLEM_LIST_ITEM,
        "AllergyIntolerance": None,
        "Procedure": None,
        "FamilyMemberHistory": None,
    },
    VITAL_SIGNS_RECORD: {
        "Observation": CategoryRule("category vital-signs", any_of=frozenset({(OBSERVATION_CATEGORY, "vital-signs")})),
    },
    IMAGING: {
        "ImagingStudy": None,
        "DiagnosticReport": CategoryRule(
            "an imaging category such as v2-0074 RAD (or no v2-0074 / LOINC category)",
            any_of=IMAGING_SECTIONS,
            uncategorised=True,
        ),
    },
    VACCINATION: {"Immunization": None},
    SYMPTOM: {"Observation": None, "Condition": None},
}
"""record type -> {resource type -> category rule, or None for any category}."""

SUPPORTED_RESOURCES: Final = frozenset(rt for rules in ACCEPTED_RESOURCES.values() for rt in rules)

# Required bindings of ``status``; the fhir.resources models accept any code.
_STATUS_CODES: Final[Mapping[str, frozenset[str]]] = {
    "Observation": frozenset(
        ["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"]
    ),
    "DiagnosticReport": frozenset(
        [
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]
    ),
    "MedicationRequest": frozenset(
        ["active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"]
    ),
    "CarePlan": frozenset(["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"]),
    "Procedure": frozenset(
        ["preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown"]
    ),
    "FamilyMemberHistory": frozenset(["partial", "completed", "entered-in-error", "health-unknown"]),
    "ImagingStudy": frozenset(["registered", "available", "cancelled", "entered-in-error", "unknown"]),
    "Immunization": frozenset(["completed", "entered-in-error", "not-done"]),
}
_CONDITION_CLINICAL_STATUSES: Final = ("active", "recurrence", "relapse", "inactive", "remission", "resolved")

# --- Where metadata comes from ------------------------------------------------

CODE_ELEMENTS: Final[Mapping[str, tuple[str, ...]]] = {
    "Condition": ("code",),
    "Observation": ("code", "component.code"),
    "MedicationRequest": ("medicationCodeableConcept",),  # plus a contained Medication's code
    "Immunization": ("vaccineCode",),
    "AllergyIntolerance": ("code",),
    "Procedure": ("code",),
    "DiagnosticReport": ("code",),
    "CarePlan": ("category",),
    "FamilyMemberHistory": ("condition.code",),
    "ImagingStudy": ("procedureCode", "modality", "series.modality"),
}
"""resource type -> dotted paths of the CodeableConcepts (or Codings) whose codings metadata keeps."""

EFFECTIVE_ELEMENTS: Final[Mapping[str, tuple[str, ...]]] = {
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "Immunization": ("occurrenceDateTime",),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime", "onsetPeriod.start"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "CarePlan": ("period.start", "created"),
    "ImagingStudy": ("started",),
    "FamilyMemberHistory": ("date",),
}
"""resource type -> elements tried in order for ``metadata["effective"]``."""

_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")

# --- Vital signs --------------------------------------------------------------


class VitalSign(NamedTuple):
    name: str
    units: tuple[str, ...]  # allowed UCUM codes; the first is the default of build_vital_signs
    components: tuple[str, ...] = ()  # LOINC codes of components the observation must carry


_BLOOD_PRESSURE_COMPONENTS: Final = ("8480-6", "8462-4")

VITAL_SIGNS: Final[Mapping[str, VitalSign]] = {
    "85354-9": VitalSign("Blood pressure panel", (), _BLOOD_PRESSURE_COMPONENTS),
    # Synthea codes its blood pressures with this older panel code.
    "55284-4": VitalSign("Blood pressure systolic and diastolic", (), _BLOOD_PRESSURE_COMPONENTS),
    "8480-6": VitalSign("Systolic blood pressure", ("mm[Hg]",)),
    "8462-4": VitalSign("Diastolic blood pressure", ("mm[Hg]",)),
    "8867-4": VitalSign("Heart rate", ("/min",)),
    "9279-1": VitalSign("Respiratory rate", ("/min",)),
    "8310-5": VitalSign("Body temperature", ("Cel", "[degF]")),
    "8331-1": VitalSign("Oral temperature", ("Cel", "[degF]")),
    "2708-6": VitalSign("Oxygen saturation in Arterial blood", ("%",)),
    "59408-5": VitalSign("Oxygen saturation in Arterial blood by Pulse oximetry", ("%",)),
    "8302-2": VitalSign("Body height", ("cm", "[in_i]")),
    "29463-7": VitalSign("Body weight", ("kg", "g", "[lb_av]")),
    "39156-5": VitalSign("Body mass index (BMI) [Ratio]", ("kg/m2",)),
}
"""LOINC code -> vital sign: its name, the UCUM units it may be recorded in, required components."""

# --- Results ----------------------------------------------------------------

ErrorList = list[dict[str, str]]


class FhirValidationError(Exception):
    """A payload that is not a valid FHIR resource for its record type.

    ``errors`` lists ``{"path": "Observation.valueQuantity.value", "message": ...}``;
    the path is ``""`` when the payload is not a JSON object at all. Messages
    quote back at most a resource type, a unit code or a system URI, never
    free text, since payloads carry PHI.
    """

    def __init__(self, errors: ErrorList) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '(payload)'}: {e['message']}" for e in errors))


@dataclass(frozen=True)
class ValidatedResource:
    """A payload that passed ``validate``: its resource type, R4B model and search metadata."""

    resource_type: str
    resource: FHIRAbstractModel
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Quantity:
    """A numeric observation: its value, UCUM unit code, and first reference range."""

    value: float
    unit: str | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Interpretation = Literal["low", "normal", "high", "critical"]

# --- Public API ---------------------------------------------------------------


def validate(record_type: str, payload: Any) -> ValidatedResource:
    """Validate ``payload`` as a FHIR R4 resource filed under ``record_type``; extract its metadata.

    Raises ``FhirValidationError`` for anything wrong with the payload, and
    ``ValueError`` for a ``record_type`` that is not one of ``RECORD_TYPES``
    (a caller's mistake, not the submitter's).
    """
    if record_type not in ACCEPTED_RESOURCES:
        raise ValueError(f"unknown record type {record_type!r}")
    if not isinstance(payload, Mapping):
        raise FhirValidationError([_error("", "a FHIR resource must be a JSON object")])
    accepted = ACCEPTED_RESOURCES[record_type]
    resource_type = payload.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirValidationError([_error("resourceType", "resourceType is missing")])
    if resource_type not in accepted:
        expected = " or ".join(accepted)
        message = f"a {record_type} record takes {expected}, not {_quoted(resource_type)}"
        raise FhirValidationError([_error("resourceType", message)])
    # The binding checks read the raw JSON defensively, so they are reported
    # together with the structural errors; the measurement checks need a valid structure.
    errors = _binding_errors(record_type, resource_type, payload, accepted[resource_type])
    try:
        resource = _parse(resource_type, payload)
    except FhirValidationError as exc:
        # A category that is itself malformed needs no second error saying it is not the right one.
        broken = [error["path"] for error in exc.errors]
        errors = [e for e in errors if not any(path.startswith(e["path"]) for path in broken)]
        raise FhirValidationError(exc.errors + errors) from None
    if resource_type == "Observation" and record_type in (LAB_RESULT, VITAL_SIGNS_RECORD):
        errors += _quantity_errors(payload)
        if record_type == VITAL_SIGNS_RECORD:
            errors += _vital_sign_errors(payload)
    if errors:
        raise FhirValidationError(errors)
    return ValidatedResource(resource_type, resource, _metadata(record_type, resource_type, payload))


_SINGLE_RECORD_TYPE: Final = {
    "MedicationRequest": PRESCRIPTION,
    "Immunization": VACCINATION,
    "AllergyIntolerance": MEDICAL_HISTORY,
    "Procedure": MEDICAL_HISTORY,
    "FamilyMemberHistory": MEDICAL_HISTORY,
    "CarePlan": TREATMENT_PLAN,
    "ImagingStudy": IMAGING,
}


def suggest_record_type(payload: Any) -> str | None:
    """The record type a resource fits best, for imports; ``None`` for resources no record stores.

    Conditions: encounter-diagnosis or no category -> diagnosis, problem-list-item
    -> medical history, any other category (e.g. health-concern) -> symptom.
    Observations: laboratory -> lab result, vital-signs -> vital signs, anything
    else (survey, exam, imaging, procedure, none, Synthea's misspelt
    ``vital-sign``) -> symptom, the record type for other observations.
    DiagnosticReports: imaging when categorised as imaging, otherwise lab result.
    The suggestion is a classification; the payload may still fail ``validate``.
    """
    if not isinstance(payload, Mapping):
        return None
    resource_type = payload.get("resourceType")
    categories = set(_category_codings(payload))
    if resource_type == "Condition":
        if (CONDITION_CATEGORY, "problem-list-item") in categories:
            return MEDICAL_HISTORY
        if (CONDITION_CATEGORY, "encounter-diagnosis") in categories:
            return DIAGNOSIS
        return DIAGNOSIS if not any(system == CONDITION_CATEGORY for system, _ in categories) else SYMPTOM
    if resource_type == "Observation":
        if (OBSERVATION_CATEGORY, "laboratory") in categories:
            return LAB_RESULT
        if (OBSERVATION_CATEGORY, "vital-signs") in categories:
            return VITAL_SIGNS_RECORD
        return SYMPTOM
    if resource_type == "DiagnosticReport":
        return IMAGING if categories & IMAGING_SECTIONS else LAB_RESULT
    return _SINGLE_RECORD_TYPE.get(resource_type) if isinstance(resource_type, str) else None


def quantity(payload: Any) -> Quantity | None:
    """The numeric value of an Observation, with its UCUM unit code and first reference range.

    ``None`` unless ``payload`` is an Observation with a numeric
    ``valueQuantity.value``. ``unit`` is the unit code when its system is UCUM,
    else ``None``; ``low``/``high`` come from ``referenceRange[0]`` (either may
    be missing). Units are not converted: ``validate`` refuses lab results and
    vital signs whose range is in another unit than the value.
    """
    if not isinstance(payload, Mapping) or payload.get("resourceType") != "Observation":
        return None
    value_quantity = payload.get("valueQuantity")
    value = _number_at(value_quantity, "value")
    if value is None:
        return None
    ranges = payload.get("referenceRange")
    first_range = ranges[0] if isinstance(ranges, list) and ranges and isinstance(ranges[0], Mapping) else {}
    return Quantity(
        value=value,
        unit=_ucum_code(value_quantity),
        low=_number_at(first_range.get("low"), "value"),
        high=_number_at(first_range.get("high"), "value"),
    )


def interpret(value: float, low: float | None, high: float | None) -> Interpretation | None:
    """Place a value against its reference range; ``None`` when there is no range.

    The range is inclusive: ``low <= value <= high`` is normal. Beyond it, the
    value is ``"critical"`` when it lies more than one range width outside
    (``value < low - (high - low)`` or ``value > high + (high - low)``), else
    ``"low"`` or ``"high"``. A one-sided range has no width, so it never gives
    ``"critical"``. This is a screening flag for lists, not a laboratory's
    critical-value policy, which is set per analyte. Raises ``ValueError`` when
    ``low > high``.
    """
    if low is None and high is None:
        return None
    if low is not None and high is not None and low > high:
        raise ValueError("the reference range's low is above its high")
    width = None if low is None or high is None else high - low
    if low is not None and value < low:
        return "critical" if width is not None and value < low - width else "low"
    if high is not None and value > high:
        return "critical" if width is not None and value > high + width else "high"
    return "normal"


# --- Builders for the admin forms ----------------------------------------------

Number = int | float | Decimal


def build_vital_signs(
    *,
    kind: str,
    value: Number | None = None,
    systolic: Number | None = None,
    diastolic: Number | None = None,
    unit: str | None = None,
    effective: dt.datetime,
    patient_reference: str,
) -> dict[str, Any]:
    """A vital-signs Observation. ``kind`` is a ``VITAL_SIGNS`` key (LOINC code).

    Blood pressure (85354-9, 55284-4) takes ``systolic`` and ``diastolic``; every
    other kind takes ``value``. ``unit`` is a UCUM code and defaults to the
    kind's first unit. Raises ``ValueError`` for a wrong combination of
    arguments and ``FhirValidationError`` for a unit the kind does not allow.
    """
    spec = VITAL_SIGNS.get(kind)
    if spec is None:
        raise ValueError(f"unknown vital sign {kind!r}")
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [_codeable(OBSERVATION_CATEGORY, "vital-signs", "Vital Signs")],
        "code": _codeable(LOINC, kind, spec.name),
        "subject": _reference(patient_reference),
        "effectiveDateTime": date_time_text(effective),
    }
    if spec.components:
        if value is not None or systolic is None or diastolic is None:
            raise ValueError("a blood pressure takes systolic and diastolic, not value")
        resource["component"] = [
            {
                "code": _codeable(LOINC, code, VITAL_SIGNS[code].name),
                "valueQuantity": _ucum_quantity(reading, unit or VITAL_SIGNS[code].units[0]),
            }
            for code, reading in zip(spec.components, (systolic, diastolic), strict=True)
        ]
    else:
        if value is None or systolic is not None or diastolic is not None:
            raise ValueError(f"{spec.name} takes value, not systolic and diastolic")
        resource["valueQuantity"] = _ucum_quantity(value, unit or spec.units[0])
    validate(VITAL_SIGNS_RECORD, resource)
    return resource


def build_lab_result(
    *,
    loinc_code: str,
    display: str,
    value: Number,
    unit: str,
    low: Number | None = None,
    high: Number | None = None,
    effective: dt.datetime,
    patient_reference: str,
) -> dict[str, Any]:
    """A laboratory Observation with a UCUM quantity and, when ``low`` or ``high`` is given, a reference range."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [_codeable(OBSERVATION_CATEGORY, "laboratory", "Laboratory")],
        "code": _codeable(LOINC, _required(loinc_code, "loinc_code"), display),
        "subject": _reference(patient_reference),
        "effectiveDateTime": date_time_text(effective),
        "valueQuantity": _ucum_quantity(value, unit),
    }
    bounds = {name: _ucum_quantity(bound, unit) for name, bound in (("low", low), ("high", high)) if bound is not None}
    if bounds:
        resource["referenceRange"] = [bounds]
    validate(LAB_RESULT, resource)
    return resource


def build_diagnosis(
    *,
    icd10_code: str,
    display: str,
    onset: dt.date,
    patient_reference: str,
    clinical_status: str = "active",
) -> dict[str, Any]:
    """An encounter-diagnosis Condition coded in ICD-10-CM."""
    if clinical_status not in _CONDITION_CLINICAL_STATUSES:
        raise ValueError(f"clinical_status must be one of {', '.join(_CONDITION_CLINICAL_STATUSES)}")
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "clinicalStatus": _codeable(CONDITION_CLINICAL, clinical_status),
        "category": [_codeable(CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
        "code": _codeable(ICD_10_CM, _required(icd10_code, "icd10_code"), display),
        "subject": _reference(patient_reference),
        "onsetDateTime": _date(onset),
    }
    validate(DIAGNOSIS, resource)
    return resource


def build_vaccination(
    *,
    cvx_code: str,
    display: str,
    occurrence: dt.date,
    patient_reference: str,
    lot_number: str | None = None,
) -> dict[str, Any]:
    """A completed Immunization coded in CVX."""
    resource: dict[str, Any] = {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": _codeable(CVX, _required(cvx_code, "cvx_code"), display),
        "patient": _reference(patient_reference),
        "occurrenceDateTime": _date(occurrence),
    }
    if lot_number:
        resource["lotNumber"] = lot_number
    validate(VACCINATION, resource)
    return resource


# --- Validation internals --------------------------------------------------------


def _parse(resource_type: str, payload: Mapping[str, Any]) -> FHIRAbstractModel:
    model = get_fhir_model_class(resource_type)
    try:
        return model.model_validate(dict(payload))
    except ValidationError as exc:
        # fhir_core checks required elements after the fields parse, so a field error
        # hides them; report the resource's own missing ones too, so that one 400 names all.
        errors = _pydantic_errors(resource_type, exc)
        errors += [error for error in _missing_required(model, resource_type, payload) if error not in errors]
        raise FhirValidationError(errors) from None
    except (ValueError, TypeError) as exc:  # fhir_core raises a few of these outside pydantic
        raise FhirValidationError([_error(resource_type, _clean_message(str(exc)))]) from None


def _missing_required(model: type[FHIRAbstractModel], resource_type: str, payload: Mapping[str, Any]) -> ErrorList:
    """Top-level elements the resource must carry (``element_required``) that the payload lacks."""
    errors: ErrorList = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if not (isinstance(extra, dict) and extra.get("element_required")):
            continue
        alias = field.alias or name
        if payload.get(alias) is None and payload.get(f"_{alias}") is None:
            errors.append(_error(f"{resource_type}.{alias}", "required element is missing"))
    return errors


def _pydantic_errors(resource_type: str, exc: ValidationError) -> ErrorList:
    errors: ErrorList = []
    for item in exc.errors(include_url=False, include_input=False):
        if item["type"] == "fhir-validation-wrong-resource-type":
            path = "resourceType"
        else:
            path = _fhir_path(resource_type, item["loc"])
        error = _error(path, _pydantic_message(item["type"], item["msg"]))
        if error not in errors:
            errors.append(error)
    return errors


def _fhir_path(resource_type: str, loc: Sequence[int | str]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        elif part.endswith("__ext"):  # a primitive's extension, ``_status`` in JSON
            path += f"._{part.removesuffix('__ext')}"
        else:
            path += f".{part}"
    return path


def _pydantic_message(error_type: str, message: str) -> str:
    if error_type == "extra_forbidden":
        return "unknown element"
    if error_type in {"missing", "model_field_validation.missing"}:
        return "required element is missing"
    return _clean_message(message)


def _clean_message(message: str) -> str:
    message = message.removeprefix("Value error, ").replace("None is not allowed", "null is not allowed")
    return " ".join(message.split())


def _binding_errors(
    record_type: str, resource_type: str, payload: Mapping[str, Any], rule: CategoryRule | None
) -> ErrorList:
    errors: ErrorList = []
    statuses = _STATUS_CODES.get(resource_type)
    if statuses is not None and isinstance(payload.get("status"), str) and payload["status"] not in statuses:
        errors.append(_error(f"{resource_type}.status", f"status must be one of {', '.join(sorted(statuses))}"))
    if rule is not None and not rule.accepts(_category_codings(payload)):
        errors.append(_error(f"{resource_type}.category", f"a {record_type} {resource_type} needs {rule.description}"))
    return errors


def _quantity_errors(observation: Mapping[str, Any]) -> ErrorList:
    errors: ErrorList = []
    value_quantity = observation.get("valueQuantity")
    for path, element in _observation_quantities(observation):
        # The models accept a decimal written as a JSON string ("5.4"); FHIR JSON does not.
        number = element.get("value")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int | float)):
            errors.append(_error(f"{path}.value", "a quantity's value must be a JSON number"))
        system, code = element.get("system"), element.get("code")
        if system is not None and system != UCUM:
            errors.append(_error(f"{path}.system", f"units must be UCUM ({UCUM}), not {_quoted(system)}"))
        elif code is not None and system is None:
            errors.append(_error(f"{path}.system", f"a unit code needs its system, {UCUM}"))
    ranges = observation.get("referenceRange") or []
    if ranges and isinstance(value_quantity, Mapping):
        low, high = ranges[0].get("low") or {}, ranges[0].get("high") or {}
        value_unit = value_quantity.get("code")
        for name, bound in (("low", low), ("high", high)):
            bound_unit = bound.get("code")
            if bound_unit is not None and value_unit is not None and bound_unit != value_unit:
                message = f"the range is in {_quoted(bound_unit)} but the value in {_quoted(value_unit)}"
                errors.append(_error(f"Observation.referenceRange[0].{name}.code", message))
        low_value, high_value = _number_at(low, "value"), _number_at(high, "value")
        if low_value is not None and high_value is not None and low_value > high_value:
            errors.append(_error("Observation.referenceRange[0]", "low is above high"))
    return errors


def _observation_quantities(observation: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(observation.get("valueQuantity"), Mapping):
        yield "Observation.valueQuantity", observation["valueQuantity"]
    for index, component in enumerate(observation.get("component") or []):
        if isinstance(component.get("valueQuantity"), Mapping):
            yield f"Observation.component[{index}].valueQuantity", component["valueQuantity"]
    for index, reference_range in enumerate(observation.get("referenceRange") or []):
        for bound in ("low", "high"):
            if isinstance(reference_range.get(bound), Mapping):
                yield f"Observation.referenceRange[{index}].{bound}", reference_range[bound]


def _vital_sign_errors(observation: Mapping[str, Any]) -> ErrorList:
    errors: ErrorList = []
    for code in dict.fromkeys(_loinc_codes(observation.get("code"))):
        spec = VITAL_SIGNS.get(code)
        if spec is None:
            continue
        if spec.units:
            errors += _unit_errors("Observation", observation, spec)
        components = observation.get("component") or []
        for required in spec.components:
            index = next((i for i, c in enumerate(components) if required in _loinc_codes(c.get("code"))), None)
            part = VITAL_SIGNS[required]
            if index is None:
                message = f"a {spec.name.lower()} needs a {part.name.lower()} ({required}) component"
                errors.append(_error("Observation.component", message))
            else:
                errors += _unit_errors(f"Observation.component[{index}]", components[index], part)
    # Observation-satO2 carries two oxygen saturation codes: one error per element is enough.
    first_per_path: dict[str, dict[str, str]] = {}
    for error in errors:
        first_per_path.setdefault(error["path"], error)
    return list(first_per_path.values())


def _unit_errors(path: str, element: Mapping[str, Any], spec: VitalSign) -> ErrorList:
    units = " or ".join(spec.units)
    value_quantity = element.get("valueQuantity")
    if not isinstance(value_quantity, Mapping):
        if element.get("dataAbsentReason") is not None:
            return []
        return [_error(f"{path}.valueQuantity", f"{spec.name} needs a valueQuantity in {units} or a dataAbsentReason")]
    code = value_quantity.get("code")
    if code in spec.units:
        return []
    found = "no unit code" if code is None else _quoted(code)
    return [_error(f"{path}.valueQuantity.code", f"{spec.name} must be in {units} (UCUM), not {found}")]


# --- Metadata internals ------------------------------------------------------------


def _metadata(record_type: str, resource_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    codings = _codings(resource_type, payload)
    numeric = None
    if record_type in (LAB_RESULT, VITAL_SIGNS_RECORD):
        numeric = quantity(payload)
    comparator = (payload.get("valueQuantity") or {}).get("comparator")
    return {
        "resource_type": resource_type,
        "codings": [{"system": system, "code": code} for system, code in codings],
        "systems": list(dict.fromkeys(_ALIAS_BY_URI[s] for s, _ in codings if s in _ALIAS_BY_URI)),
        "categories": list(dict.fromkeys(code for _, code in _category_codings(payload))),
        "effective": _effective(resource_type, payload),
        "quantity": numeric.as_dict() if numeric else None,
        # "<5" or ">200" is not a point value: better no interpretation than a wrong one.
        "interpretation": interpret(numeric.value, numeric.low, numeric.high) if numeric and not comparator else None,
    }


def _codings(resource_type: str, payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    elements = [element for path in CODE_ELEMENTS.get(resource_type, ()) for element in _walk(payload, path)]
    if resource_type == "MedicationRequest":
        elements += _contained_medication_codes(payload)
    pairs: dict[tuple[str, str], None] = {}
    for element in elements:
        for coding in element.get("coding") or [element]:  # a CodeableConcept, or a Coding itself
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                pairs[(system, code)] = None
    return list(pairs)


def _contained_medication_codes(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # R4 lets a prescription point at a Medication contained in it ("#med0320").
    reference = (payload.get("medicationReference") or {}).get("reference")
    if not isinstance(reference, str) or not reference.startswith("#"):
        return []
    return [
        resource["code"]
        for resource in payload.get("contained") or []
        if resource.get("resourceType") == "Medication"
        and resource.get("id") == reference[1:]
        and isinstance(resource.get("code"), Mapping)
    ]


def _effective(resource_type: str, payload: Mapping[str, Any]) -> str | None:
    for path in EFFECTIVE_ELEMENTS.get(resource_type, ()):
        for value in _walk(payload, path):
            if isinstance(value, str) and _FULL_DATE.match(value):
                return value[:10]
    return None


def _walk(node: Any, path: str) -> Iterator[Any]:
    """The values at a dotted path, stepping through lists: ``component.code``."""
    head, _, rest = path.partition(".")
    value = node.get(head) if isinstance(node, Mapping) else None
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        if rest:
            yield from _walk(item, rest)
        else:
            yield item


def _category_codings(payload: Mapping[str, Any]) -> list[Coding]:
    """(system, code) of every category coding; AllergyIntolerance's plain codes have no system."""
    category = payload.get("category")
    found: list[Coding] = []
    for item in category if isinstance(category, list) else [category]:
        if isinstance(item, str):
            found.append((None, item))
        elif isinstance(item, Mapping) and isinstance(item.get("coding"), list):
            for coding in item["coding"]:
                if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                    system = coding.get("system")
                    found.append((system if isinstance(system, str) else None, coding["code"]))
    return list(dict.fromkeys(found))


def _loinc_codes(concept: Any) -> list[str]:
    if not isinstance(concept, Mapping):
        return []
    return [
        c["code"] for c in concept.get("coding") or [] if c.get("system") == LOINC and isinstance(c.get("code"), str)
    ]


def _number_at(element: Any, key: str) -> float | None:
    value = element.get(key) if isinstance(element, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _ucum_code(element: Any) -> str | None:
    if isinstance(element, Mapping) and element.get("system") == UCUM and isinstance(element.get("code"), str):
        return str(element["code"])
    return None


def _error(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}


def _quoted(value: Any) -> str:
    # Only codes, unit codes and system URIs are quoted back, and only shortened.
    text = str(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


# --- Builder internals ---------------------------------------------------------------


def _codeable(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
        return {"coding": [coding], "text": display}
    return {"coding": [coding]}


def _ucum_quantity(value: Number, unit: str) -> dict[str, Any]:
    return {"value": _json_number(value), "unit": unit, "system": UCUM, "code": unit}


def _json_number(value: Number) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError(f"a measurement must be a number, not {type(value).__name__}")
    if isinstance(value, int):
        return value
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("a measurement must be a finite number")
    return number


def _reference(patient_reference: str) -> dict[str, str]:
    return {"reference": _required(patient_reference, "patient_reference")}


def _required(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value.strip()


def date_time_text(value: dt.datetime) -> str:
    if not isinstance(value, dt.datetime) or value.utcoffset() is None:
        raise ValueError("effective must be a timezone-aware datetime (FHIR requires an offset with a time)")
    text = value.isoformat(timespec="seconds")
    # "Z" for UTC, as the models write it: a built resource then survives a round trip unchanged.
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _date(value: dt.date) -> str:
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise ValueError("expected a date, not a datetime")
    return value.isoformat()


# --- A human-readable summary (admin pages) -----------------------------------------


def _concept_text(concept: Any) -> str | None:
    """A CodeableConcept as a person reads it: its text, else the first coding's display, else system|code."""
    if not isinstance(concept, Mapping):
        return None
    if isinstance(concept.get("text"), str):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
            return str(coding["display"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, Mapping) and coding.get("code"):
            alias = _ALIAS_BY_URI.get(str(coding.get("system")))
            return f"{alias} {coding['code']}" if alias else str(coding["code"])
    return None


def _quantity_text(node: Any) -> str | None:
    if not isinstance(node, Mapping) or node.get("value") is None:
        return None
    unit = node.get("unit") or node.get("code") or ""
    comparator = node.get("comparator") or ""
    value = node["value"]
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{comparator}{shown} {unit}".strip()


def summarize(payload: Any) -> list[tuple[str, str]]:
    """Label and value lines that tell a clinician what a record says, without reading its JSON.

    Covers the elements staff look for first (what, value, when, status, by
    whom); anything else stays in the payload. Never raises on odd input.
    """
    if not isinstance(payload, Mapping):
        return []
    resource_type = str(payload.get("resourceType", ""))
    lines: list[tuple[str, str]] = [("Resource", resource_type)]
    what = None
    for path in CODE_ELEMENTS.get(resource_type, ()):
        for element in _walk(payload, path):
            what = _concept_text(element)
            if what:
                break
        if what:
            break
    if resource_type == "MedicationRequest" and not what:
        for element in _contained_medication_codes(payload):
            what = _concept_text(element)
    if what:
        lines.append(("What", what))
    value = _quantity_text(payload.get("valueQuantity"))
    if value is None and isinstance(payload.get("valueCodeableConcept"), Mapping):
        value = _concept_text(payload["valueCodeableConcept"])
    if value is None and isinstance(payload.get("valueString"), str):
        value = payload["valueString"]
    if value:
        lines.append(("Value", value))
    for component in payload.get("component") or []:
        if isinstance(component, Mapping):
            label = _concept_text(component.get("code")) or "Component"
            shown = _quantity_text(component.get("valueQuantity"))
            if shown:
                lines.append((label, shown))
    numeric = quantity(payload)
    if numeric and (numeric.low is not None or numeric.high is not None):
        low = "" if numeric.low is None else f"{numeric.low:g}"
        high = "" if numeric.high is None else f"{numeric.high:g}"
        lines.append(("Reference range", f"{low}–{high} {numeric.unit or ''}".strip()))
    for label, key in (("Status", "status"), ("Clinical status", "clinicalStatus"), ("Criticality", "criticality")):
        node = payload.get(key)
        text = node if isinstance(node, str) else _concept_text(node)
        if text:
            lines.append((label, text))
    effective = _effective(resource_type, payload)
    if effective:
        lines.append(("Date", effective))
    dosage = payload.get("dosageInstruction")
    if isinstance(dosage, list) and dosage and isinstance(dosage[0], Mapping) and dosage[0].get("text"):
        lines.append(("Dosage", str(dosage[0]["text"])))
    for note in payload.get("note") or []:
        if isinstance(note, Mapping) and isinstance(note.get("text"), str):
            lines.append(("Note", note["text"]))
    return lines
