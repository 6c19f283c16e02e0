"""Personas for the login tests: a patient-like user, staff with and without an MFA device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import AuthenticatorApp
from tests.conftest import totp_code


@pytest.fixture
def member(make_user: Callable[..., Any]) -> Any:
    """A user who is not staff (a patient, say)."""
    return make_user(email="mary.seacole@example.org")


@pytest.fixture
def staff(make_user: Callable[..., Any]) -> Any:
    """Staff who never set up MFA."""
    return make_user(email="florence@example.org", is_staff=True)


@pytest.fixture
def device(staff: Any) -> AuthenticatorApp:
    """A confirmed authenticator app of ``staff``, as enrolment leaves it."""
    return AuthenticatorApp.objects.create(user=staff, name="Phone", confirmed=True)


@pytest.fixture
def code() -> Callable[[AuthenticatorApp], str]:
    """The code the device's app shows now."""

    def current(device: AuthenticatorApp) -> str:
        device.refresh_from_db()
        return totp_code(device)

    return current
