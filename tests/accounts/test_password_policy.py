"""Passwords: Argon2 first in production, at least 12 characters everywhere."""

import importlib
import importlib.util

import pytest
from django.contrib.auth.hashers import check_password, identify_hasher, make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import override_settings


def production_hashers():
    return importlib.import_module("config.settings.base").PASSWORD_HASHERS


def test_the_production_hasher_list_starts_with_argon2_and_keeps_pbkdf2_after_it():
    hashers = production_hashers()
    assert hashers[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"
    assert "django.contrib.auth.hashers.PBKDF2PasswordHasher" in hashers[1:]


def test_production_and_local_settings_keep_the_argon2_list():
    for module in ("config.settings.local", "config.settings.production"):
        source = importlib.util.find_spec(module).origin
        with open(source) as handle:
            assert "PASSWORD_HASHERS" not in handle.read(), f"{module} overrides the hasher list"


def test_argon2_hashes_and_an_old_pbkdf2_hash_still_verifies():
    with override_settings(PASSWORD_HASHERS=production_hashers()):
        encoded = make_password("a long enough passphrase")
        assert identify_hasher(encoded).algorithm == "argon2"
        assert check_password("a long enough passphrase", encoded)
        assert not check_password("a wrong passphrase", encoded)
        legacy = make_password("old passphrase here", hasher="pbkdf2_sha256")
        assert check_password("old passphrase here", legacy)


def test_a_pbkdf2_password_is_rehashed_with_argon2_at_the_next_sign_in(make_user):
    with override_settings(PASSWORD_HASHERS=production_hashers()):
        user = make_user()
        user.password = make_password("old passphrase here", hasher="pbkdf2_sha256")
        user.save()
        assert user.check_password("old passphrase here")
        user.refresh_from_db()
        assert user.password.startswith("argon2")


def test_a_password_of_eleven_characters_is_refused():
    with pytest.raises(ValidationError) as refused:
        validate_password("qx7!Lm2#pRw")
    assert any("at least 12 characters" in message for message in refused.value.messages)


def test_a_password_of_twelve_unusual_characters_is_accepted():
    assert validate_password("qx7!Lm2#pRw9") is None


def test_a_common_or_numeric_password_is_refused_even_when_long_enough():
    with pytest.raises(ValidationError):
        validate_password("password1234")
    with pytest.raises(ValidationError):
        validate_password("739184620571")
