"""API-wide error shape: every 4xx body is JSON that names the field at fault.

Django ``ValidationError`` raised by services becomes a 400 with the same
``{"field": ["message"]}`` shape DRF uses for serializer errors; database
integrity errors that slip past validation become a 409 naming the constraint,
never a 500 and never the row's values.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError) and hasattr(exc, "fhir_errors"):
        # An invalid FHIR payload: each failing element's path and message.
        return Response({"payload": exc.fhir_errors}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, IntegrityError):
        cause = getattr(exc, "__cause__", None)
        constraint = getattr(getattr(cause, "diag", None), "constraint_name", None)
        return Response(
            {"non_field_errors": ["The change conflicts with existing data."], "constraint": constraint},
            status=status.HTTP_409_CONFLICT,
        )
    return drf_exception_handler(exc, context)
