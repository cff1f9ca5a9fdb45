"""The pure masking core: each mode on each Spanner type's JSON form, nulls, arrays, the canonical
bytes that ``hash`` hashes (checked against the formula ``docs/masking.md`` publishes), and that a
value never reaches an exception."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import struct
import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.shaping.masks import (
    HASH_LENGTH,
    REDACTED,
    MaskFailed,
    MaskKey,
    canonical_bytes,
    es_number,
    expect_columns,
    mask_result,
    mask_value,
)
from gateway.spanner.results import Result

SECRET = b"a-test-mask-key-of-32-characters"
ROOT = MaskKey.from_secret(SECRET)
KEY = ROOT.for_mask("get_customer", "Email")  # the key values are hashed with: a column's

# One value of each Spanner type as the gateway answers it (spanner.results.to_json), and the
# canonical bytes docs/masking.md gives for it.
VALUES: list[tuple[str, Any, bytes]] = [
    ("STRING", "wile@acme.example", b"wile@acme.example"),
    ("STRING", "caf\u00e9 \U0001f600", "caf\u00e9 \U0001f600".encode()),
    ("INT64", -9223372036854775808, b"-9223372036854775808"),
    ("INT64", 42, b"42"),
    ("BOOL", True, b"true"),
    ("BOOL", False, b"false"),
    ("FLOAT64", 1.5, b"1.5"),
    ("FLOAT64", 100.0, b"100"),
    ("FLOAT64", -0.0, b"0"),
    ("FLOAT64", 1e-7, b"1e-7"),
    ("FLOAT64", 1e21, b"1e+21"),
    ("FLOAT64", "NaN", b"NaN"),
    ("FLOAT64", "-Infinity", b"-Infinity"),
    ("FLOAT32", 0.5, b"0.5"),
    ("NUMERIC", "1.50", b"1.5"),
    ("NUMERIC", "2.000000000", b"2"),
    ("NUMERIC", "-0", b"0"),
    ("NUMERIC", "99999999999999999999999999999.999999999",
     b"99999999999999999999999999999.999999999"),
    ("BYTES", base64.b64encode(b"\x00\xff").decode(), b"\x00\xff"),
    ("DATE", "2026-01-02", b"2026-01-02"),
    ("TIMESTAMP", "2026-01-02T09:00:00.5Z", b"2026-01-02T09:00:00.5Z"),
    ("JSON", {"b": [1, 2.5, None], "a": "\u00e9\n"}, '{"a":"\u00e9\\n","b":[1,2.5,null]}'.encode()),
    ("JSON", [1, {"z": 1, "y": True}], b'[1,{"y":true,"z":1}]'),
    ("JSON", "a string", b'"a string"'),
]  # fmt: skip


def published(
    type_name: str,
    canonical: bytes,
    secret: bytes = SECRET,
    *,
    query: str = "get_customer",
    column: str = "Email",
    domain: str | None = None,
) -> str:
    """The hash as docs/masking.md defines it, computed here independently of the code."""
    root = hmac.new(secret, b"spangate mask v1", hashlib.sha256).digest()
    label = (
        b"domain\x00" + domain.encode()
        if domain is not None
        else b"column\x00" + query.encode() + b"\x00" + column.encode()
    )
    key = hmac.new(root, label, hashlib.sha256).digest()
    message = type_name.encode() + b"\x00" + canonical
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.mark.parametrize(("type_name", "value", "canonical"), VALUES)
def test_canonical_bytes_of_each_type(type_name: str, value: Any, canonical: bytes) -> None:
    assert canonical_bytes(type_name, value) == canonical


@pytest.mark.parametrize(("type_name", "value", "canonical"), VALUES)
def test_hash_is_the_published_hmac(type_name: str, value: Any, canonical: bytes) -> None:
    masked = mask_value("hash", type_name, value, KEY)
    assert masked == published(type_name, canonical)
    assert len(masked) == HASH_LENGTH and "=" not in masked


@pytest.mark.parametrize(("type_name", "value", "canonical"), VALUES)
def test_redact_null_and_last4_on_each_type(type_name: str, value: Any, canonical: bytes) -> None:
    string = type_name == "STRING"
    assert mask_value("redact", type_name, value, None) == (REDACTED if string else None)
    assert mask_value("null", type_name, value, KEY) is None
    if not string:  # the loader refuses last4 here; at run time nothing shows
        assert mask_value("last4", type_name, value, None) is None


def test_equal_values_hash_equally_and_types_and_keys_apart() -> None:
    one = mask_value("hash", "STRING", "wile@acme.example", KEY)
    again = MaskKey.from_secret(SECRET).for_mask("get_customer", "Email")
    assert one == mask_value("hash", "STRING", "wile@acme.example", again)
    assert one != mask_value("hash", "STRING", "beep@acme.example", KEY)
    other = MaskKey.from_secret(b"x" * 32).for_mask("get_customer", "Email")
    assert one != mask_value("hash", "STRING", "wile@acme.example", other)
    assert mask_value("hash", "STRING", "5", KEY) != mask_value("hash", "INT64", 5, KEY)
    # equal NUMERICs, however written, and both zeros of a FLOAT64, hash equally (as they group)
    assert mask_value("hash", "NUMERIC", "1.50", KEY) == mask_value("hash", "NUMERIC", "1.5", KEY)
    assert mask_value("hash", "FLOAT64", -0.0, KEY) == mask_value("hash", "FLOAT64", 0.0, KEY)


def test_a_long_pg_numeric_is_canonical_to_its_last_digit() -> None:
    # PG_NUMERIC has up to 147,455 digits before the point: normalize() must not round them
    long = "1" + "0" * 300 + "1"
    assert canonical_bytes("PG_NUMERIC", long + ".500") == (long + ".5").encode()
    assert canonical_bytes("PG_NUMERIC", "-" + long) == ("-" + long).encode()
    nearly = long[:-1] + "2"
    assert mask_value("hash", "PG_NUMERIC", long, KEY) != mask_value(
        "hash", "PG_NUMERIC", nearly, KEY
    )
    fraction = "0." + "0" * 200 + "7"
    assert canonical_bytes("PG_NUMERIC", fraction + "000") == fraction.encode()


def test_the_key_is_derived_and_never_shown() -> None:
    assert KEY.key != SECRET and len(KEY.key) == 32
    assert SECRET.decode() not in repr(KEY) and KEY.key.hex() not in repr(KEY)
    assert ROOT.key.hex() not in repr(ROOT)


def test_each_column_has_its_own_key_unless_masks_name_one_domain() -> None:
    """A hash is tied to its query's column: a route that hashes what its caller sent does not
    let the caller test guesses against another query's hashes. Masks naming one ``domain``
    share a key, so a caller can join their columns."""
    email = "wile@acme.example"

    def hashed(query: str, column: str, domain: str | None = None) -> str:
        return str(mask_value("hash", "STRING", email, ROOT.for_mask(query, column, domain)))

    assert hashed("get_customer", "Email") == published("STRING", email.encode())
    assert hashed("list_orders", "Contact") == published(
        "STRING", email.encode(), query="list_orders", column="Contact"
    )
    assert len({hashed("get_customer", "Email"), hashed("list_orders", "Contact"),
                hashed("get_customer", "Contact"), hashed("add_customer", "Email")}) == 4  # fmt: skip
    shared = hashed("get_customer", "Email", "email")
    assert shared == hashed("list_orders", "Contact", "email")  # the domain alone decides
    assert shared == published("STRING", email.encode(), domain="email")
    assert shared != hashed("get_customer", "Email")  # a domain is no column's key
    assert shared != hashed("get_customer", "Email", "contact")


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("4111111111111111", "***1111"),
        ("12345678", "***5678"),  # 8 characters: half shows
        ("1234567", "***"),  # shorter: masked whole
        ("abcd", "***"),
        ("", "***"),
        ("caf\u00e9-\U0001f600\U0001f600\u00e9x", "***\U0001f600\U0001f600\u00e9x"),  # code points
    ],
)
def test_last4_shows_at_most_half_of_a_string(value: str, masked: str) -> None:
    assert mask_value("last4", "STRING", value, None) == masked


@pytest.mark.parametrize("mode", ["redact", "null", "hash", "last4"])
@pytest.mark.parametrize("type_name", ["STRING", "INT64", "ARRAY<STRING>", "JSON", None])
def test_null_stays_null(mode: str, type_name: str | None) -> None:
    assert mask_value(mode, type_name, None, KEY) is None


def test_arrays_are_masked_element_by_element() -> None:
    emails = ["wile@acme.example", None, "beep@acme.example"]
    assert mask_value("redact", "ARRAY<STRING>", emails, None) == [REDACTED, None, REDACTED]
    assert mask_value("redact", "ARRAY<INT64>", [1, None, 3], None) == [None, None, None]
    assert mask_value("last4", "ARRAY<STRING>", emails, None) == ["***mple", None, "***mple"]
    assert mask_value("null", "ARRAY<STRING>", emails, None) is None
    hashed = mask_value("hash", "ARRAY<STRING>", emails, KEY)
    assert hashed == [published("STRING", emails[0].encode()), None,  # type: ignore[union-attr]
                      published("STRING", emails[2].encode())]  # fmt: skip
    numbers = mask_value("hash", "ARRAY<NUMERIC>", ["1.0", "1"], KEY)
    assert numbers[0] == numbers[1] == published("NUMERIC", b"1")
    assert mask_value("redact", "ARRAY<STRING>", [], None) == []


def test_a_json_array_is_one_value_and_a_wrong_shape_shows_nothing() -> None:
    assert mask_value("hash", "JSON", [1, 2], KEY) == published("JSON", b"[1,2]")
    assert mask_value("redact", "JSON", "text", None) is None  # a JSON string is no STRING
    assert mask_value("redact", "ARRAY<STRING>", "not a list", None) is None
    assert mask_value("hash", "ARRAY<STRING>", "not a list", KEY) is None


def test_an_unknown_type_is_judged_from_its_json_value() -> None:
    assert mask_value("redact", None, "x", None) == REDACTED
    assert mask_value("redact", None, 5, None) is None
    assert mask_value("redact", None, ["a", 1], None) == [REDACTED, None]
    assert mask_value("hash", None, {"a": 1}, KEY) == published("", b'{"a":1}')
    assert mask_value("hash", "INTERVAL", "P1D", KEY) == published("INTERVAL", b'"P1D"')


def test_a_value_never_reaches_the_exception() -> None:
    clear_value = "wile@acme.éxample"  # no JSON form of an INT64, BYTES, NUMERIC, DATE, BOOL
    for type_name in ("INT64", "BYTES", "NUMERIC", "DATE", "BOOL", "FLOAT64"):
        with pytest.raises(MaskFailed) as caught:
            mask_value("hash", type_name, clear_value, KEY)
        assert clear_value not in str(caught.value), type_name
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(MaskFailed, match="SPANGATE_MASK_KEY"):
        mask_value("hash", "STRING", clear_value, None)


def test_mask_result_masks_only_the_named_columns() -> None:
    result = Result(
        columns=["CustomerId", "Email", "Tags"],
        types=["STRING", "STRING", "ARRAY<STRING>"],
        rows=[
            {"CustomerId": "C-1", "Email": "wile@acme.example", "Tags": ["vip"]},
            {"CustomerId": "C-2", "Email": None, "Tags": None},
        ],
        row_count=2,
        truncated=True,
    )
    types = dict(zip(result.columns, result.types, strict=True))
    masked = mask_result(result, {"Email": "redact", "Tags": "hash"}, types, {"Tags": KEY})
    assert masked.rows == [
        {"CustomerId": "C-1", "Email": REDACTED, "Tags": [published("STRING", b"vip")]},
        {"CustomerId": "C-2", "Email": None, "Tags": None},
    ]
    assert (masked.row_count, masked.truncated, masked.columns) == (2, True, result.columns)
    assert result.rows[0]["Email"] == "wile@acme.example"  # a new result; the input is untouched
    assert mask_result(result, {}, types, {}) is result
    with pytest.raises(MaskFailed, match="a hash mask without SPANGATE_MASK_KEY"):
        mask_result(result, {"Tags": "hash"}, types, {})  # no key for the column: fails closed


def test_a_masked_column_the_result_lacks_fails_closed() -> None:
    """The masks were judged on a statement that returned the column: a result without it
    (a view or the schema changed) is refused, not answered unmasked."""
    result = Result(
        columns=["CustomerId", "email"],
        types=["STRING", "STRING"],
        rows=[{"CustomerId": "C-1", "email": "wile@acme.example"}],
        row_count=1,
    )
    types = dict(zip(result.columns, result.types, strict=True))
    with pytest.raises(MaskFailed, match=r"column Email is not in the result \(only email, in "
                       r"another case\); its columns: CustomerId, email") as caught:  # fmt: skip
        mask_result(result, {"Email": "redact"}, types, {})
    assert "wile" not in str(caught.value)
    with pytest.raises(MaskFailed, match="column Phone is not in the result; its columns"):
        mask_result(result, {"email": "redact", "Phone": "null"}, types, {})
    empty = Result(columns=["CustomerId"], types=["STRING"], rows=[], row_count=0)
    with pytest.raises(MaskFailed, match="column Email is not in the result"):
        mask_result(empty, {"Email": "redact"}, {}, {})  # no rows: still the wrong shape


def test_the_result_must_have_the_analysed_columns() -> None:
    result = Result(
        columns=["CustomerId", "Email"],
        types=["STRING", "STRING"],
        rows=[{"CustomerId": "C-1", "Email": "wile@acme.example"}],
    )
    expect_columns(result, [("CustomerId", "STRING"), ("Email", "STRING")])
    expect_columns(result, [("CustomerId", None), ("Email", None)])
    untyped = Result(columns=["CustomerId", "Email"], rows=result.rows)  # a stored replay
    expect_columns(untyped, [("CustomerId", "STRING"), ("Email", "STRING")])
    for analysed in (
        [("CustomerId", "STRING")],  # a column added since (SELECT *)
        [("CustomerId", "STRING"), ("Email", "STRING"), ("Phone", "STRING")],  # one dropped
        [("Email", "STRING"), ("CustomerId", "STRING")],  # reordered (a view redefined)
        [("CustomerId", "STRING"), ("Email", "BYTES")],  # retyped
        [("CustomerId", "STRING"), ("email", "STRING")],  # renamed in case
    ):
        with pytest.raises(MaskFailed, match="the policy was analysed with") as caught:
            expect_columns(result, analysed)
        assert "wile" not in str(caught.value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_es_number_round_trips_as_ecmascript_writes_it(value: float) -> None:
    text = es_number(value)
    assert float(text) == value or (value == 0 and text == "0")
    assert float(json.loads(text)) == value  # valid JSON, the same double
    assert not text.endswith(".0") and "e+0" not in text and "e-0" not in text
    mantissa = text.lstrip("-").split("e")[0]
    assert not (mantissa.startswith("0") and len(mantissa) > 1 and mantissa[1] != ".")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (123456789012345680000.0, "123456789012345680000"),
        (1.2345e-5, "0.000012345"),
        (0.000001, "0.000001"),
        (1e-6 / 10, "1e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (-2.5, "-2.5"),
        (float(struct.unpack("f", struct.pack("f", 0.1))[0]), "0.10000000149011612"),
        (math.inf, "Infinity"),
    ],
)
def test_es_number_matches_ecmascript(value: float, text: str) -> None:
    assert es_number(value) == text  # the strings JSON.stringify / Number#toString give


def test_es_number_agrees_with_node() -> None:
    """Node.js (which the local OpenID provider needs anyway) writes the same text for doubles
    across every magnitude: ECMAScript's Number::toString is the reference."""
    rng = random.Random(17)  # noqa: S311 - a fixed sample of doubles, not a secret
    values = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(3000)]
    values += [rng.uniform(-1e6, 1e6) for _ in range(500)] + [float(n) for n in range(-50, 50)]
    values += [10.0**e for e in range(-30, 30)] + [5e-324, 2.0**53, 2.0**53 + 2, 0.1 + 0.2]
    values = [v for v in values if math.isfinite(v)]
    script = "process.stdout.write(JSON.stringify(JSON.parse(require('fs')"
    script += ".readFileSync(0, 'utf8')).map(String)))"
    given_ = json.dumps([repr(v) for v in values]).replace('"', "")  # JSON numbers, exact
    out = subprocess.run(
        ["node", "-e", script], input=given_, capture_output=True, text=True, check=True
    )
    assert [es_number(v) for v in values] == json.loads(out.stdout)
