"""Normalised e-mail addresses, phone numbers and postal addresses.

Each row belongs to exactly one owner, held in one of several typed foreign
keys (so the database checks every reference), and an owner has at most one
primary row of each kind.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower

from accounts.models import TimestampedModel
from clinical.models.catalogs import Country, EmailType, PhoneType, Region
from clinical.models.directory import E164_PATTERN, Doctor, MedicalInstitution, Patient, e164_validator


def _exactly_one(*fields: str) -> Q:
    condition = Q()
    for chosen in fields:
        condition |= Q(**{f"{f}__isnull": f != chosen for f in fields})
    return condition


def _owner_constraints(prefix: str, owners: tuple[str, ...]) -> list[models.BaseConstraint]:
    constraints: list[models.BaseConstraint] = [
        models.CheckConstraint(condition=_exactly_one(*owners), name=f"{prefix}_exactly_one_owner")
    ]
    for owner in owners:
        constraints.append(
            models.UniqueConstraint(
                fields=[owner],
                condition=Q(is_primary=True),
                name=f"{prefix}_one_primary_per_{owner}",
            )
        )
    return constraints


class OwnedContact(TimestampedModel):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    institution = models.ForeignKey(
        MedicalInstitution, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    is_primary = models.BooleanField(default=False)

    OWNERS: tuple[str, ...] = ("patient", "doctor", "institution")

    class Meta:
        abstract = True

    @property
    def owner(self) -> models.Model | None:
        for name in self.OWNERS:
            value = getattr(self, name)
            if value is not None:
                return value  # type: ignore[no-any-return]
        return None


class Email(OwnedContact):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, null=True, blank=True, related_name="emails")
    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, null=True, blank=True, related_name="emails")
    institution = models.ForeignKey(
        MedicalInstitution, on_delete=models.PROTECT, null=True, blank=True, related_name="emails"
    )
    address = models.EmailField(max_length=254)
    email_type = models.ForeignKey(EmailType, on_delete=models.PROTECT)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "e-mail address"
        verbose_name_plural = "e-mail addresses"
        constraints = [
            models.UniqueConstraint(Lower("address"), name="clinical_email_address_ci_unique"),
            *_owner_constraints("clinical_email", OwnedContact.OWNERS),
        ]

    def __str__(self) -> str:
        return self.address


class Phone(OwnedContact):
    """Numbers in E.164 form. Users own phones too: the user table holds none."""

    OWNERS = ("user", "patient", "doctor", "institution")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="phones"
    )
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, null=True, blank=True, related_name="phones")
    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, null=True, blank=True, related_name="phones")
    institution = models.ForeignKey(
        MedicalInstitution, on_delete=models.PROTECT, null=True, blank=True, related_name="phones"
    )
    number = models.CharField(max_length=16, validators=[e164_validator], help_text="E.164, e.g. +14155550123")
    phone_type = models.ForeignKey(PhoneType, on_delete=models.PROTECT)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(number__regex=E164_PATTERN), name="clinical_phone_e164"),
            *_owner_constraints("clinical_phone", ("user", "patient", "doctor", "institution")),
        ]
        indexes = [models.Index(fields=["number"])]

    def __str__(self) -> str:
        return self.number


class Address(OwnedContact):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, null=True, blank=True, related_name="addresses")
    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, null=True, blank=True, related_name="addresses")
    institution = models.ForeignKey(
        MedicalInstitution, on_delete=models.PROTECT, null=True, blank=True, related_name="addresses"
    )
    line1 = models.CharField("address line 1", max_length=200)
    line2 = models.CharField("address line 2", max_length=200, blank=True)
    city = models.CharField(max_length=100)
    postal_code = models.CharField(max_length=20, blank=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, null=True, blank=True)
    country = models.ForeignKey(Country, on_delete=models.PROTECT)
    latitude = models.DecimalField(
        max_digits=9,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(-90), MaxValueValidator(90)],
    )
    longitude = models.DecimalField(
        max_digits=9,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(-180), MaxValueValidator(180)],
    )

    class Meta:
        verbose_name_plural = "addresses"
        constraints = [
            models.CheckConstraint(
                condition=Q(latitude__isnull=True, longitude__isnull=True)
                | Q(latitude__gte=-90, latitude__lte=90, longitude__gte=-180, longitude__lte=180),
                name="clinical_address_coordinates_valid",
            ),
            *_owner_constraints("clinical_address", OwnedContact.OWNERS),
        ]

    def __str__(self) -> str:
        return ", ".join(p for p in (self.line1, self.city, self.postal_code) if p)
