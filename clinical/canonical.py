"""RFC 8785 JSON Canonicalization Scheme (JCS) and the content hash built on it.

A medical record's FHIR payload is stored encrypted, and the encryption key is
rotated: the ciphertext of the same payload changes with every key (and with
every nonce), so it cannot tell whether two records hold the same content or
whether a record was altered. The hash is therefore taken over the *plaintext*,
serialised canonically, so that it depends only on the JSON value:

- not on the key that encrypts it, so re-encrypting under a new key keeps it;
- not on how the submitter happened to write the JSON (member order,
  whitespace, ``1.0`` versus ``1``, ``\\u00e9`` versus ``é``), so the same
  resource submitted twice hashes the same.

Canonical form (RFC 8785):

- UTF-8, no insignificant whitespace;
- object members sorted by their names compared as UTF-16 code units
  (not by code point: U+1F600 sorts before U+FB33);
- strings escaped as ECMAScript ``JSON.stringify`` does: ``\\"``, ``\\\\``,
  ``\\b \\t \\n \\f \\r``, other control characters as ``\\u00xx`` (lowercase
  hex); everything else, including ``/`` and non-ASCII, written as is;
- numbers written as ECMAScript ``Number.prototype.toString`` writes them.

Python values map onto the JSON data model as ``json.loads`` produces them:
``dict`` (string keys only), ``list``/``tuple``, ``str``, ``bool``, ``None``,
``int`` and ``float``. ``bool`` is a literal, never the number 0 or 1.

Integers are the one deliberate departure from a JavaScript implementation,
which can only hold IEEE 754 doubles: a Python ``int`` is written exactly, as
its decimal digits. Up to 2**53 in magnitude this is the same text JCS gives.
Beyond that a double cannot hold every integer, and a JavaScript JCS would
first round the value (9007199254740993 becomes 9007199254740992) and write
integers of 10**21 and above in exponent form (``1e+21``). Writing the exact
digits keeps two different integers from hashing the same; the price is that
hashes of payloads with such integers do not match other JCS implementations.
FHIR payloads do not carry integers that large (FHIR ``integer`` is 32-bit).
A ``float`` is always treated as a double, as RFC 8785 requires.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_json", "sha256_hex"]

_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_ESCAPES = {chr(c): _SHORT_ESCAPES.get(chr(c), f"\\u{c:04x}") for c in range(0x20)} | _SHORT_ESCAPES
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON, UTF-8 encoded.

    Raises ``ValueError`` for values JSON cannot represent (NaN, infinities,
    strings with lone surrogates) and ``TypeError`` for anything that is not a
    JSON value (non-string keys, ``Decimal``, ``datetime``, sets ...).
    """
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts).encode("utf-8")


def sha256_hex(value: Any) -> str:
    """Hex SHA-256 of ``canonical_json(value)``: the content hash of a JSON value."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _write(value: Any, out: list[str]) -> None:
    # bool before int: bool is a subclass of int in Python, but a literal in JSON.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        _write_object(value, out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _write_object(value: Mapping[Any, Any], out: list[str]) -> None:
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
    out.append("{")
    for index, key in enumerate(sorted(value, key=_utf16_sort_key)):
        if index:
            out.append(",")
        out.append(_string(key))
        out.append(":")
        _write(value[key], out)
    out.append("}")


def _utf16_sort_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare exactly like the sequence of 16-bit code units.
    return _checked(key).encode("utf-16-be")


def _string(value: str) -> str:
    return '"' + _checked(value).translate(_ESCAPE_TABLE) + '"'


def _checked(value: str) -> str:
    # RFC 8785 works on I-JSON, whose strings are valid Unicode: a lone surrogate
    # (which json.loads happily produces from "\ud800") has no UTF-8 encoding.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("JSON strings must not contain lone surrogates") from exc
    return value


def _number(value: float) -> str:
    """ECMAScript Number::toString for a finite double (ECMA-262, 6.1.6.1.20)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    if value == 0:
        return "0"  # also for -0.0
    if value < 0:
        return "-" + _number(-value)
    # repr() gives the shortest digit string that round-trips, choosing the one
    # closest to the exact value when there are several: the digits ES requires.
    mantissa_text, _, exponent_text = float.__repr__(value).partition("e")
    whole, _, fraction = mantissa_text.partition(".")
    digits = (whole + fraction).rstrip("0")
    n = len(whole) + int(exponent_text or 0)  # value = 0.<digits> × 10**n
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{n - 1:+d}"
