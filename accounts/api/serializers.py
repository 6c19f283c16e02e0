from rest_framework import serializers

from accounts.models import ApiToken, User


class MeSerializer(serializers.ModelSerializer[User]):
    id = serializers.UUIDField(source="uuid", read_only=True)

    class Meta:
        model = User
        fields = (
            "id",
            "email",
            "first_name",
            "last_name",
            "preferred_language",
            "email_verified",
            "is_staff",
        )
        read_only_fields = ("id", "email", "email_verified", "is_staff")


class TokenObtainSerializer(serializers.Serializer[None]):
    email = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=4096, write_only=True, trim_whitespace=False)
    otp = serializers.CharField(
        max_length=32,
        required=False,
        allow_blank=True,
        default="",
        help_text="Required for staff (and anyone who enrolled MFA): a 6-digit TOTP code or a backup code.",
    )
    name = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="Your label for this token."
    )


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    id = serializers.UUIDField(source="uuid", read_only=True)

    class Meta:
        model = ApiToken
        fields = ("id", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at")
        read_only_fields = fields


class ApiTokenIssuedSerializer(ApiTokenSerializer):
    token = serializers.SerializerMethodField(help_text="The secret: shown this once, never stored.")

    class Meta(ApiTokenSerializer.Meta):
        fields = ("id", "name", "prefix", "created_at", "expires_at", "token")
        read_only_fields = fields

    def get_token(self, obj: ApiToken) -> str:
        return str(self.context["secret"])


class ErrorSerializer(serializers.Serializer[None]):
    detail = serializers.CharField()
    code = serializers.CharField()
