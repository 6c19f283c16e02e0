"""RFC 8785 canonical JSON: the RFC's own examples, the edge cases, and properties."""

from __future__ import annotations

import hashlib
import json
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clinical.canonical import canonical_json, sha256_hex


def _double(ieee_754_hex: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(ieee_754_hex))[0]
    return value


# RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
@pytest.mark.parametrize(
    ("ieee_754", "expected"),
    [
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ],
)
def test_it_writes_the_rfc_8785_appendix_b_numbers(ieee_754: str, expected: str) -> None:
    assert canonical_json(_double(ieee_754)) == expected.encode()
    assert canonical_json({"n": _double(ieee_754)}) == b'{"n":' + expected.encode() + b"}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (0.1, "0.1"),
        (333333333.33333329, "333333333.3333333"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992, "9007199254740992"),
        (9007199254740992.0, "9007199254740992"),
        (295147905179352830000.0, "295147905179352830000"),
        (1e30, "1e+30"),
        (4.50, "4.5"),
        (2e-3, "0.002"),
        (1e-27, "1e-27"),
    ],
)
def test_it_writes_numbers_as_ecmascript_does(value: float, expected: str) -> None:
    assert canonical_json(value) == expected.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), {"a": [1, float("nan")]}])
def test_it_rejects_numbers_json_cannot_hold(value: Any) -> None:
    with pytest.raises(ValueError, match="not a JSON number"):
        canonical_json(value)


def test_it_writes_python_ints_exactly_even_beyond_what_a_double_holds() -> None:
    # The documented choice: exact digits, where a JavaScript JCS would round to a double.
    assert canonical_json(2**53 + 1) == b"9007199254740993"
    assert canonical_json(10**21) == b"1000000000000000000000"
    assert canonical_json(-(10**30)) == b"-1000000000000000000000000000000"
    assert canonical_json(2**53 + 1) != canonical_json(2**53)


def test_it_treats_bools_as_literals_not_numbers() -> None:
    assert canonical_json([True, False, None, 1, 0]) == b"[true,false,null,1,0]"
    assert sha256_hex({"a": True}) != sha256_hex({"a": 1})


def test_it_reproduces_the_rfc_8785_section_3_2_2_example() -> None:
    submitted = r"""{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"""
    out = (
        r"""{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f"""
        r"""\nA'B\"\\\\\"/"}"""
    )
    assert canonical_json(json.loads(submitted)) == out.encode("utf-8")
    # RFC 8785 section 3.2.4 lists the same output as UTF-8 bytes.
    assert canonical_json(json.loads(submitted)).hex(" ") == (
        "7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 "
        "75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a "
        "5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 "
        "65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 "
        "5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 "
        "30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d"
    )


def test_it_sorts_keys_by_utf16_code_units_as_in_rfc_8785_section_3_2_3() -> None:
    submitted = json.loads(
        r"""{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"""
    )
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(submitted) == expected.encode("utf-8")
    # Code point order would put U+FB33 before U+1F600: the example tells the two apart.
    assert sorted(submitted).index("\ufb33") < sorted(submitted).index("\U0001f600")


def test_it_escapes_control_characters_as_json_stringify_does() -> None:
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    for code in range(0x20):
        expected = short.get(code, f"\\u{code:04x}")
        assert canonical_json(chr(code)) == f'"{expected}"'.encode(), hex(code)
    assert canonical_json('"\\') == b'"\\"\\\\"'


def test_it_leaves_slashes_delete_and_non_ascii_unescaped() -> None:
    text = "a/b \x7f é € \u2028 \U0001f600 नमस्ते"
    assert canonical_json(text) == ('"' + text + '"').encode("utf-8")


def test_it_writes_no_whitespace() -> None:
    assert canonical_json({"b": [1, {"d": None, "c": "x y"}], "a": []}) == b'{"a":[],"b":[1,{"c":"x y","d":null}]}'


def test_it_rejects_lone_surrogates_in_strings_and_keys() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json(json.loads('"\\ud800"'))
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json({"\udc00": 1})


@pytest.mark.parametrize("value", [{1: "a"}, Decimal("1.5"), {1, 2}, b"bytes", object()])
def test_it_rejects_what_is_not_a_json_value(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def test_the_hash_is_sha256_over_the_canonical_bytes_whatever_the_key_order_or_whitespace() -> None:
    one = json.loads('{"b": 2, "a": {"y": [1.0, "z"], "x": null}}')
    two = json.loads('{"a":{"x":null,"y":[1,"z"]},"b":2.0}')
    assert sha256_hex(one) == sha256_hex(two)
    assert sha256_hex(one) == hashlib.sha256(b'{"a":{"x":null,"y":[1,"z"]},"b":2}').hexdigest()
    assert sha256_hex({"a": 1}) != sha256_hex({"a": 2})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def _same_json(parsed: Any, original: Any) -> bool:
    """Equal as JSON values: a float may come back as the int JSON wrote it as, never a bool."""
    if isinstance(original, bool) or original is None or isinstance(original, str):
        return type(parsed) is type(original) and parsed == original
    if isinstance(original, float):
        return isinstance(parsed, int | float) and not isinstance(parsed, bool) and float(parsed) == original
    if isinstance(original, int):
        return type(parsed) is int and parsed == original
    if isinstance(original, list):
        return (
            isinstance(parsed, list)
            and len(parsed) == len(original)
            and all(_same_json(p, o) for p, o in zip(parsed, original, strict=True))
        )
    return (
        isinstance(parsed, dict)
        and parsed.keys() == original.keys()
        and all(_same_json(parsed[key], value) for key, value in original.items())
    )


@given(json_values)
def test_canonical_json_parses_back_to_the_same_value_and_is_idempotent(value: Any) -> None:
    written = canonical_json(value)
    parsed = json.loads(written.decode("utf-8"))
    assert _same_json(parsed, value)
    assert canonical_json(parsed) == written


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6), st.randoms(use_true_random=False))
def test_key_order_does_not_change_the_canonical_form(value: dict[str, Any], rnd: Any) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)
