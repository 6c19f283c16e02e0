"""Patient representations for the API. Objects are named by UUID only."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from clinical.models import Gender, Patient, Sex


class InstitutionRefSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField(source="uuid")
    name = serializers.CharField()


class DoctorRefSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField(source="uuid")
    name = serializers.CharField(source="__str__")


class PatientSerializer(serializers.ModelSerializer[Patient]):
    id = serializers.UUIDField(source="uuid", read_only=True)
    sex = serializers.SlugRelatedField(slug_field="code", read_only=True)
    gender = serializers.SlugRelatedField(slug_field="code", read_only=True)
    institution = InstitutionRefSerializer(read_only=True)
    doctor = DoctorRefSerializer(read_only=True)

    class Meta:
        model = Patient
        fields = (
            "id",
            "mrn",
            "first_name",
            "last_name",
            "date_of_birth",
            "sex",
            "gender",
            "validation_status",
            "is_active",
            "institution",
            "doctor",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields


class PatientDetailSerializer(PatientSerializer):
    notes = serializers.CharField(read_only=True, allow_null=True)

    class Meta(PatientSerializer.Meta):
        fields = (*PatientSerializer.Meta.fields, "notes")
        read_only_fields = fields


class PatientUpdateSerializer(serializers.Serializer[Any]):
    """What staff may change through the API; moves and validation have their own services."""

    first_name = serializers.CharField(max_length=150, required=False)
    last_name = serializers.CharField(max_length=150, required=False)
    date_of_birth = serializers.DateField(required=False)
    sex = serializers.SlugRelatedField(slug_field="code", queryset=Sex.objects.all(), required=False)
    gender = serializers.SlugRelatedField(
        slug_field="code", queryset=Gender.objects.all(), required=False, allow_null=True
    )
    notes = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    is_active = serializers.BooleanField(required=False)
