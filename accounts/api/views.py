from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.serializers import (
    ApiTokenIssuedSerializer,
    ApiTokenSerializer,
    ErrorSerializer,
    MeSerializer,
    TokenObtainSerializer,
)
from accounts.lockout import retry_after_seconds
from accounts.models import ApiToken
from accounts.selectors import api_tokens_of
from accounts.services import (
    InvalidCredentials,
    LockedOut,
    LoginRefused,
    MfaNotEnrolled,
    api_token_obtain,
    api_token_revoke_own,
    user_update_profile,
)


class MeView(APIView):
    """The signed-in user's own account."""

    @extend_schema(responses=MeSerializer)
    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user).data)

    @extend_schema(request=MeSerializer, responses=MeSerializer)
    def patch(self, request: Request) -> Response:
        serializer = MeSerializer(request.user, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        user = user_update_profile(user=request.user, **serializer.validated_data)  # type: ignore[arg-type]
        return Response(MeSerializer(user).data)


def _refusal(exc: LoginRefused) -> Response:
    if isinstance(exc, LockedOut):
        return Response(
            {"detail": exc.message, "code": exc.code},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(retry_after_seconds())},
        )
    if isinstance(exc, MfaNotEnrolled):
        return Response({"detail": exc.message, "code": exc.code}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, InvalidCredentials):
        return Response({"non_field_errors": [exc.message], "code": exc.code}, status=400)
    return Response({exc.field or "non_field_errors": [exc.message], "code": exc.code}, status=400)


class TokenObtainView(APIView):
    """Exchange an e-mail address, password and (for staff) a one-time code for an API token."""

    authentication_classes = ()
    permission_classes = (AllowAny,)

    @extend_schema(
        request=TokenObtainSerializer,
        responses={
            201: ApiTokenIssuedSerializer,
            400: OpenApiResponse(description="Wrong credentials or one-time code, naming the field."),
            403: OpenApiResponse(ErrorSerializer, description="A staff account without MFA set up."),
            429: OpenApiResponse(ErrorSerializer, description="Locked out after 5 failures, for 15 minutes."),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        serializer = TokenObtainSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            token, secret = api_token_obtain(request=request._request, **serializer.validated_data)
        except LoginRefused as exc:
            return _refusal(exc)
        body = ApiTokenIssuedSerializer(token, context={"secret": secret}).data
        return Response(body, status=status.HTTP_201_CREATED)


class TokenListView(APIView):
    """The caller's API tokens (never their secrets)."""

    @extend_schema(responses=ApiTokenSerializer(many=True))
    def get(self, request: Request) -> Response:
        tokens = api_tokens_of(user=request.user)  # type: ignore[arg-type]
        return Response(ApiTokenSerializer(tokens, many=True).data)


class TokenDetailView(APIView):
    """Revoke one of the caller's tokens; anyone else's is not found."""

    @extend_schema(responses={204: None, 404: OpenApiResponse(description="No such token of yours.")})
    def delete(self, request: Request, token_id: uuid.UUID) -> Response:
        try:
            api_token_revoke_own(user=request.user, token_uuid=token_id)  # type: ignore[arg-type]
        except ApiToken.DoesNotExist:
            return Response({"detail": "No such token."}, status=status.HTTP_404_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)
