"""Reference catalogs. Each coded row stores its coding system with the code."""

from __future__ import annotations

from django.db import models

from accounts.models import PublicModel

ICD_10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED_CT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
CVX = "http://hl7.org/fhir/sid/cvx"
ADMINISTRATIVE_GENDER = "http://hl7.org/fhir/administrative-gender"

CODE_SYSTEM_CHOICES = [
    (ICD_10_CM, "ICD-10-CM"),
    (SNOMED_CT, "SNOMED CT"),
    (LOINC, "LOINC"),
    (RXNORM, "RxNorm"),
    (ATC, "ATC"),
    (CVX, "CVX"),
]


class CodedCatalog(PublicModel):
    code = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Country(PublicModel):
    """ISO 3166-1."""

    alpha2 = models.CharField("ISO alpha-2", max_length=2, unique=True)
    alpha3 = models.CharField("ISO alpha-3", max_length=3, unique=True)
    numeric = models.CharField("ISO numeric", max_length=3, unique=True)
    name = models.CharField(max_length=100)
    official_name = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "countries"

    def __str__(self) -> str:
        return self.name


class Region(PublicModel):
    """ISO 3166-2 subdivisions; ``parent`` follows the standard's hierarchy."""

    country = models.ForeignKey(Country, on_delete=models.PROTECT, related_name="regions")
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="children")
    code = models.CharField("ISO 3166-2 code", max_length=10, unique=True)
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["country__name", "name"]
        indexes = [models.Index(fields=["country", "name"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class InstitutionType(CodedCatalog):
    description = models.TextField(blank=True)


class SpecialtyCategory(CodedCatalog):
    class Meta(CodedCatalog.Meta):
        verbose_name_plural = "specialty categories"


class Specialty(CodedCatalog):
    category = models.ForeignKey(SpecialtyCategory, on_delete=models.PROTECT, related_name="specialties")
    code_system = models.CharField(max_length=100, blank=True, default=SNOMED_CT)
    snomed_code = models.CharField("SNOMED CT code", max_length=20, blank=True)

    class Meta(CodedCatalog.Meta):
        verbose_name_plural = "specialties"


class Sex(PublicModel):
    """Administrative sex as HL7 FHIR administrative-gender."""

    code_system = models.CharField(max_length=100, default=ADMINISTRATIVE_GENDER)
    code = models.CharField(max_length=20)
    display = models.CharField(max_length=50)

    class Meta:
        ordering = ["display"]
        verbose_name_plural = "sexes"
        constraints = [models.UniqueConstraint(fields=["code_system", "code"], name="clinical_sex_code_unique")]

    def __str__(self) -> str:
        return self.display


class Gender(CodedCatalog):
    """Gender identity, an inclusive list; SNOMED CT where a concept exists."""

    snomed_code = models.CharField("SNOMED CT code", max_length=20, blank=True)


class BloodType(PublicModel):
    code = models.CharField(max_length=3, unique=True)
    abo = models.CharField("ABO group", max_length=2)
    rh = models.CharField("Rh factor", max_length=1)
    can_donate_to = models.ManyToManyField(
        "self",
        through="BloodCompatibility",
        through_fields=("donor", "recipient"),
        symmetrical=False,
        related_name="can_receive_from",
        blank=True,
    )

    class Meta:
        ordering = ["abo", "rh"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(abo__in=["O", "A", "B", "AB"]), name="clinical_bloodtype_abo_valid"
            ),
            models.CheckConstraint(condition=models.Q(rh__in=["+", "-"]), name="clinical_bloodtype_rh_valid"),
            models.UniqueConstraint(fields=["abo", "rh"], name="clinical_bloodtype_abo_rh_unique"),
        ]

    def __str__(self) -> str:
        return self.code


class BloodCompatibility(PublicModel):
    """Red-cell compatibility: ``donor``'s red cells may be given to ``recipient``."""

    donor = models.ForeignKey(BloodType, on_delete=models.CASCADE, related_name="+")
    recipient = models.ForeignKey(BloodType, on_delete=models.CASCADE, related_name="+")

    class Meta:
        verbose_name_plural = "blood compatibilities"
        constraints = [
            models.UniqueConstraint(fields=["donor", "recipient"], name="clinical_bloodcompatibility_unique")
        ]

    def __str__(self) -> str:
        return f"{self.donor} → {self.recipient}"


class EmailType(CodedCatalog):
    pass


class PhoneType(CodedCatalog):
    pass


class MedicalCondition(PublicModel):
    code_system = models.CharField(max_length=100, choices=CODE_SYSTEM_CHOICES, default=ICD_10_CM)
    code = models.CharField(max_length=20)
    name = models.CharField(max_length=255)
    category = models.CharField(max_length=50, blank=True)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.UniqueConstraint(fields=["code_system", "code"], name="clinical_medicalcondition_code_unique")
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Medication(PublicModel):
    """A medicinal product: substance, form and strength.

    Each code column belongs to one coding system (``ATC`` and ``RXNORM``
    above), so a code is never stored without its system.
    """

    generic_name = models.CharField(max_length=200)
    form = models.CharField(max_length=50)
    strength = models.CharField(max_length=50)
    atc_code = models.CharField("ATC code", max_length=7, blank=True)
    rxnorm_code = models.CharField("RxNorm code", max_length=12, blank=True)

    class Meta:
        ordering = ["generic_name", "strength"]
        constraints = [
            models.UniqueConstraint(fields=["generic_name", "form", "strength"], name="clinical_medication_unique"),
            models.CheckConstraint(
                condition=models.Q(atc_code="") | models.Q(atc_code__regex=r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"),
                name="clinical_medication_atc_format",
            ),
            models.CheckConstraint(
                condition=models.Q(rxnorm_code="") | models.Q(rxnorm_code__regex=r"^[0-9]+$"),
                name="clinical_medication_rxnorm_format",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.generic_name} {self.strength} {self.form}"
