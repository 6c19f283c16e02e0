"""Demo medical records: a few FHIR R4 records per patient, of every record type across the population.

Payloads come from the same builders the admin forms use, or are written here
for the types without a form; each is validated with ``clinical.fhir`` exactly
as ``record_create`` does, hashed, encrypted by the field on insert, and
appended to the integrity ledger in the caller's transaction
(``ledger.append_many``), so ``verify_integrity`` passes on a seeded database.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from clinical import fhir
from clinical import models as m
from clinical.canonical import sha256_hex
from clinical.services import record_searched_metadata

RecordSpec = tuple[str, dict[str, Any], dict[str, Any]]  # record type, payload, extra model fields

LABS = (  # LOINC, name, UCUM unit, reference low, high, typical spread
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 35),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 1.8),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 125, 200, 45),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 2.5),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 0.4),
)
VACCINES = (("140", "Influenza, seasonal, injectable, preservative free"), ("208", "COVID-19, mRNA, 30 mcg/0.3mL"))
SYMPTOMS = (("25064002", "Headache"), ("49727002", "Cough"), ("386661006", "Fever"), ("267036007", "Dyspnea"))
IMAGING = (("36643-5", "XR Chest 2 Views"), ("24627-2", "CT Chest"), ("30746-2", "US Abdomen"))
PLANS = (("698360004", "Diabetes self management plan"), ("736285004", "Hyperlipidemia clinical management plan"))
SNOMED = fhir.SNOMED_CT


def _reference(patient: m.Patient) -> str:
    return f"Patient/{patient.uuid}"


def _instant(day: datetime.date, rng: random.Random) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(rng.randint(7, 18), rng.choice((0, 15, 30, 45))), datetime.UTC)


class DemoRecords:
    """Builds record rows for one population; remembers which types it made so every type appears."""

    def __init__(self, rng: random.Random, today: datetime.date) -> None:
        self.rng = rng
        self.today = today
        self.missing = set(m.RecordType.values)

    # One record of each type --------------------------------------------------------------
    def vital_signs(self, patient: m.Patient, day: datetime.date) -> RecordSpec:
        rng, when = self.rng, _instant(day, self.rng)
        if rng.random() < 0.5:
            payload = fhir.build_vital_signs(
                kind="85354-9",
                systolic=rng.randint(105, 165),
                diastolic=rng.randint(65, 100),
                effective=when,
                patient_reference=_reference(patient),
            )
        else:
            payload = fhir.build_vital_signs(
                kind="8867-4", value=rng.randint(52, 110), effective=when, patient_reference=_reference(patient)
            )
        return m.RecordType.VITAL_SIGNS, payload, {}

    def lab_result(self, patient: m.Patient, day: datetime.date) -> RecordSpec:
        code, name, unit, low, high, spread = self.rng.choice(LABS)
        value = round(self.rng.gauss((low + high) / 2, spread), 1)
        payload = fhir.build_lab_result(
            loinc_code=code,
            display=name,
            value=max(value, 0.1),
            unit=unit,
            low=low,
            high=high,
            effective=_instant(day, self.rng),
            patient_reference=_reference(patient),
        )
        return m.RecordType.LAB_RESULT, payload, {}

    def diagnosis(self, patient: m.Patient, condition: m.PatientCondition) -> RecordSpec:
        payload = fhir.build_diagnosis(
            icd10_code=condition.condition.code,
            display=condition.condition.name,
            onset=condition.onset_date or self.today,
            patient_reference=_reference(patient),
            clinical_status="resolved" if condition.resolved_date else "active",
        )
        return m.RecordType.DIAGNOSIS, payload, {}

    def vaccination(self, patient: m.Patient, day: datetime.date) -> RecordSpec:
        code, name = self.rng.choice(VACCINES)
        payload = fhir.build_vaccination(
            cvx_code=code,
            display=name,
            occurrence=day,
            patient_reference=_reference(patient),
            lot_number=f"LOT{self.rng.randint(1000, 9999)}",
        )
        return m.RecordType.VACCINATION, payload, {}

    def prescription(self, patient: m.Patient, medication: m.PatientMedication) -> RecordSpec:
        drug = medication.medication
        codings = [{"system": fhir.RXNORM, "code": drug.rxnorm_code}] if drug.rxnorm_code else []
        if drug.atc_code:
            codings.append({"system": fhir.ATC, "code": drug.atc_code})
        payload = {
            "resourceType": "MedicationRequest",
            "status": "completed" if medication.end_date else "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": codings,
                "text": f"{drug.generic_name} {drug.strength} {drug.form}",
            },
            "subject": {"reference": _reference(patient)},
            "authoredOn": (medication.start_date or self.today).isoformat(),
            "dosageInstruction": [{"text": f"{medication.dose} {medication.frequency}".strip()}],
        }
        return m.RecordType.PRESCRIPTION, payload, {}

    def medical_history(self, patient: m.Patient, allergy: m.PatientAllergy | None) -> RecordSpec:
        if allergy is not None and allergy.code:
            payload: dict[str, Any] = {
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": allergy.code_system, "code": allergy.code}], "text": allergy.substance},
                "patient": {"reference": _reference(patient)},
                "recordedDate": self.today.isoformat(),
            }
            if allergy.category:
                payload["category"] = [allergy.category]
            if allergy.criticality:
                payload["criticality"] = allergy.criticality
        else:
            payload = {
                "resourceType": "Procedure",
                "status": "completed",
                "code": {"coding": [{"system": SNOMED, "code": "80146002"}], "text": "Appendectomy"},
                "subject": {"reference": _reference(patient)},
                "performedDateTime": (patient.date_of_birth + datetime.timedelta(days=365 * 18)).isoformat(),
            }
        return m.RecordType.MEDICAL_HISTORY, payload, {}

    def treatment_plan(self, patient: m.Patient, day: datetime.date) -> RecordSpec:
        code, name = self.rng.choice(PLANS)
        payload = {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "category": [{"coding": [{"system": SNOMED, "code": code}], "text": name}],
            "subject": {"reference": _reference(patient)},
            "period": {"start": day.isoformat()},
        }
        return m.RecordType.TREATMENT_PLAN, payload, {}

    def imaging(self, patient: m.Patient, day: datetime.date) -> RecordSpec:
        code, name = self.rng.choice(IMAGING)
        payload = {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
            "code": {"coding": [{"system": fhir.LOINC, "code": code}], "text": name},
            "subject": {"reference": _reference(patient)},
            "effectiveDateTime": _instant(day, self.rng).isoformat().replace("+00:00", "Z"),
            "conclusion": self.rng.choice(("No acute findings.", "Findings within normal limits.")),
        }
        return m.RecordType.IMAGING, payload, {}

    def symptom(self, patient: m.Patient, day: datetime.date) -> RecordSpec:
        code, name = self.rng.choice(SYMPTOMS)
        payload = {
            "resourceType": "Observation",
            "status": "preliminary",
            "code": {"coding": [{"system": SNOMED, "code": code}], "text": name},
            "subject": {"reference": _reference(patient)},
            "effectiveDateTime": _instant(day, self.rng).isoformat().replace("+00:00", "Z"),
            "valueString": "Reported by the patient in the portal.",
        }
        extra = {"source": m.RecordSource.PATIENT_INPUT, "severity": self.rng.randint(2, 7)}
        return m.RecordType.SYMPTOM, payload, extra

    # A patient's records ------------------------------------------------------------------------
    def for_patient(
        self,
        patient: m.Patient,
        conditions: list[m.PatientCondition],
        medications: list[m.PatientMedication],
        allergies: list[m.PatientAllergy],
    ) -> list[m.MedicalRecord]:
        rng = self.rng

        def day() -> datetime.date:
            return self.today - datetime.timedelta(days=rng.randint(0, 720))

        makers: dict[str, Callable[[], RecordSpec]] = {
            m.RecordType.VITAL_SIGNS: lambda: self.vital_signs(patient, day()),
            m.RecordType.LAB_RESULT: lambda: self.lab_result(patient, day()),
            m.RecordType.VACCINATION: lambda: self.vaccination(patient, day()),
            m.RecordType.TREATMENT_PLAN: lambda: self.treatment_plan(patient, day()),
            m.RecordType.IMAGING: lambda: self.imaging(patient, day()),
            m.RecordType.SYMPTOM: lambda: self.symptom(patient, day()),
            m.RecordType.MEDICAL_HISTORY: lambda: self.medical_history(patient, allergies[0] if allergies else None),
        }
        icd10 = [c for c in conditions if c.condition.code_system == fhir.ICD_10_CM]
        if icd10:
            makers[m.RecordType.DIAGNOSIS] = lambda: self.diagnosis(patient, icd10[0])
        if medications:
            makers[m.RecordType.PRESCRIPTION] = lambda: self.prescription(patient, medications[0])
        chosen = [m.RecordType.VITAL_SIGNS]
        for record_type, chance in (
            (m.RecordType.LAB_RESULT, 0.6),
            (m.RecordType.DIAGNOSIS, 0.7),
            (m.RecordType.PRESCRIPTION, 0.5),
            (m.RecordType.VACCINATION, 0.3),
            (m.RecordType.MEDICAL_HISTORY, 0.15),
            (m.RecordType.SYMPTOM, 0.1),
            (m.RecordType.IMAGING, 0.05),
            (m.RecordType.TREATMENT_PLAN, 0.05),
        ):
            if record_type in makers and rng.random() < chance:
                chosen.append(record_type)
        # Until every type has appeared once, each patient also gets one that is still missing.
        still_missing = sorted(t for t in self.missing if t in makers and t not in chosen)
        if still_missing:
            chosen.append(still_missing[0])
        records = [self._record(patient, *makers[record_type]()) for record_type in chosen]
        self.missing.difference_update(chosen)
        return records

    def _record(self, patient: m.Patient, record_type: str, payload: dict[str, Any], extra: dict[str, Any]) -> Any:
        validated = fhir.validate(record_type, payload)
        metadata, interpretation = record_searched_metadata(validated)
        effective = metadata.get("effective")
        author = patient.doctor.user
        source = extra.get("source", m.RecordSource.MANUAL)
        verified = source == m.RecordSource.MANUAL and self.rng.random() < 0.7
        return m.MedicalRecord(
            patient=patient,
            record_type=record_type,
            resource_type=validated.resource_type,
            payload=payload,
            record_metadata=metadata,
            effective_date=datetime.date.fromisoformat(effective) if effective else None,
            data_hash=sha256_hex(payload),
            source=source,
            severity=extra.get("severity"),
            confidence=Decimal("0.90") if source != m.RecordSource.MANUAL else None,
            interpretation=interpretation,
            author=author if source == m.RecordSource.MANUAL else None,
            institution_id=patient.institution_id,
            verified_by=author if verified else None,
            verified_at=datetime.datetime.now(datetime.UTC) if verified else None,
        )
