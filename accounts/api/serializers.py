from rest_framework import serializers

from accounts.models import User


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
