"""The FHIR R4 samples the tests use: vendored from the project's shared samples (sources and
licences in tests/fixtures/fhir-samples/SOURCES.md: Apache-2.0 Synthea bundles, CC0 HL7 examples),
so a clone runs the tests without anything beside it."""

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "fixtures" / "fhir-samples"
