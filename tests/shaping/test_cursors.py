"""The pure sealing core of pagination cursors: keys as SPANGATE_CURSOR_KEYS gives them, the
round trip, key rotation, tampering and truncation, the binding (principal, query), other
parameters, expiry on an injected clock, and the format docs/pagination.md publishes (checked by
opening a cursor with ``cryptography`` alone, as the docs say)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from gateway.shaping.cursors import (
    MAX_CURSOR_CHARS,
    REFUSALS,
    CursorKeys,
    CursorNotOpened,
    CursorState,
    associated_data,
    open_cursor,
    seal_cursor,
)

K1, K2, K3 = (bytes([n]) * 32 for n in (1, 2, 3))
PARAMS = hashlib.sha256(b'{"tenant":"t1"}').digest()
NOW = 1_800_000_000.0
BINDING = associated_data(
    iss="https://idp.example/oauth2/default",
    subject="alice",
    actors=(),
    query="list_orders",
    fingerprint="f" * 64,
)
STATE = CursorState(
    PARAMS, (("TIMESTAMP", "2026-02-05T16:40:00.123456789Z"), ("STRING", "O-1003")), 1_800_003_600
)


def text(*keys: bytes) -> str:
    return ",".join(base64.urlsafe_b64encode(k).rstrip(b"=").decode() for k in keys)


def keys(*raw: bytes) -> CursorKeys:
    return CursorKeys.parse(text(*raw))


def refusal(token: object, ring: CursorKeys | None = None, **change: Any) -> str:
    """The reason ``token`` is refused with (its binding, params and clock changed as asked)."""
    with pytest.raises(CursorNotOpened) as caught:
        open_cursor(
            ring or keys(K1),
            change.get("binding", BINDING),
            token,
            params=change.get("params", PARAMS),
            now=change.get("now", NOW),
        )
    assert caught.value.reason in REFUSALS
    assert str(caught.value) == caught.value.reason  # nothing of the cursor in the message
    return caught.value.reason


# --- keys ----------------------------------------------------------------------------------------


def test_keys_parse_comma_separated_base64url_with_or_without_padding() -> None:
    padded = base64.urlsafe_b64encode(K2).decode()
    assert padded.endswith("=")
    ring = CursorKeys.parse(f" {text(K1)} , {padded}")
    assert len(ring.keys) == 2
    assert ring.sealing.kid == hmac.new(K1, b"spangate cursor key id", hashlib.sha256).digest()[:4]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "key 1 is empty"),
        (text(K1) + ",", "key 2 is empty"),
        ("not*base64", "key 1 is not base64url"),
        (base64.b64encode(b"\xfb" * 32).decode(), "key 1 is not base64url"),  # + and /: not url
        (text(b"short"), "key 1 is 5 bytes, not 32 (256 bits)"),
        (text(K1, K2, K1), "key 3 is listed twice"),
    ],
)
def test_bad_keys_are_refused_naming_their_position_never_their_text(
    given: str, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)) as caught:
        CursorKeys.parse(given)
    for part in given.split(","):
        if len(part) > 4:
            assert part.strip() not in str(caught.value)


def test_keys_never_show_in_their_repr() -> None:
    ring = keys(K1)
    assert "\\x01" not in repr(ring) and text(K1) not in repr(ring)


# --- the round trip --------------------------------------------------------------------------------


def test_a_cursor_opens_for_its_binding_and_params_before_it_expires() -> None:
    token = seal_cursor(keys(K1), BINDING, STATE)
    assert open_cursor(keys(K1), BINDING, token, params=PARAMS, now=NOW) == STATE


def test_every_seal_is_new_and_opaque() -> None:
    one, two = (seal_cursor(keys(K1), BINDING, STATE) for _ in range(2))
    assert one != two  # a fresh nonce each time
    for token in (one, two):
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert b"O-1003" not in base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("STRING"), st.text(max_size=40)),
            st.tuples(st.just("INT64"), st.integers(-(2**63), 2**63 - 1)),
            st.tuples(st.just("FLOAT64"), st.floats(allow_nan=False, allow_infinity=False)),
            st.tuples(st.just("FLOAT64"), st.sampled_from(["NaN", "Infinity", "-Infinity"])),
            st.tuples(st.just("BOOL"), st.booleans()),
            st.tuples(st.just("NUMERIC"), st.decimals(places=9, allow_nan=False,
                                                      allow_infinity=False).map(str)),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 2**40),
)
def test_any_keyset_values_round_trip_exactly(values: list[tuple[str, Any]], expires: int) -> None:
    state = CursorState(PARAMS, tuple(values), expires)
    token = seal_cursor(keys(K1), BINDING, state)
    opened = open_cursor(keys(K1), BINDING, token, params=PARAMS, now=expires - 1)
    assert opened.values == state.values
    assert [type(v) for _, v in opened.values] == [type(v) for _, v in state.values]


def test_a_cursor_too_long_to_carry_is_never_sealed() -> None:
    big = CursorState(PARAMS, (("STRING", "x" * MAX_CURSOR_CHARS),), 1)
    with pytest.raises(ValueError, match="at most 4096"):
        seal_cursor(keys(K1), BINDING, big)


# --- rotation --------------------------------------------------------------------------------------


def test_keys_rotate_the_first_seals_every_one_opens() -> None:
    old = seal_cursor(keys(K1), BINDING, STATE)
    rotating = keys(K2, K1)
    assert open_cursor(rotating, BINDING, old, params=PARAMS, now=NOW) == STATE  # still listed
    new = seal_cursor(rotating, BINDING, STATE)
    assert open_cursor(keys(K2), BINDING, new, params=PARAMS, now=NOW) == STATE  # sealed by K2
    assert refusal(new, keys(K1)) == "unknown-key"  # a gateway that has not got K2 yet
    assert refusal(old, keys(K2)) == "unknown-key"  # K1 retired
    assert refusal(old, keys(K3)) == "unknown-key"  # never ours


def test_a_key_id_of_another_listed_key_does_not_open_it() -> None:
    """The key id picks the key: a cursor sealed by K1 whose header names K2 (a listed key)
    fails to authenticate under K2."""
    token = seal_cursor(keys(K1), BINDING, STATE)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[1:5] = keys(K2).sealing.kid
    swapped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert refusal(swapped, keys(K1, K2)) == "unauthentic"


# --- tampering, truncation, garbage ---------------------------------------------------------------


def test_every_changed_byte_is_refused() -> None:
    token = seal_cursor(keys(K1), BINDING, STATE)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    reasons = set()
    for position in range(len(raw)):
        changed = bytearray(raw)
        changed[position] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
        reason = refusal(forged)
        expected = "malformed" if position == 0 else "unknown-key" if position < 5 else None
        assert reason == (expected or "unauthentic"), position
        reasons.add(reason)
    assert reasons == {"malformed", "unknown-key", "unauthentic"}


def test_every_truncation_is_refused() -> None:
    token = seal_cursor(keys(K1), BINDING, STATE)
    for end in range(len(token)):
        assert refusal(token[:end]) in ("malformed", "unknown-key", "unauthentic")
    assert refusal(token + "A") in ("malformed", "unauthentic")


@pytest.mark.parametrize(
    "garbage",
    ["", "a", "====", "not a cursor", "%41%41", "A" * (MAX_CURSOR_CHARS + 1), "AQAAAAA",
     None, 42, ["a", "b"], {"cursor": "x"}, "é" * 40],
)  # fmt: skip
def test_what_is_no_cursor_is_malformed(garbage: object) -> None:
    assert refusal(garbage) == "malformed"


# --- binding, parameters, expiry ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "bob"},
        {"iss": "https://other.example"},
        {"actors": ("order-agent",)},  # the same person, through an agent
        {"query": "list_order_items"},
        {"fingerprint": "0" * 64},  # the query's statement or keyset changed
    ],
)
def test_a_cursor_opens_for_nobody_else_and_no_other_query(change: dict[str, Any]) -> None:
    token = seal_cursor(keys(K1), BINDING, STATE)
    fields: dict[str, Any] = {
        "iss": "https://idp.example/oauth2/default",
        "subject": "alice",
        "actors": (),
        "query": "list_orders",
        "fingerprint": "f" * 64,
        **change,
    }
    assert refusal(token, binding=associated_data(**fields)) == "unauthentic"


def test_other_parameters_are_refused() -> None:
    token = seal_cursor(keys(K1), BINDING, STATE)
    assert refusal(token, params=hashlib.sha256(b'{"tenant":"t2"}').digest()) == "params"


def test_expiry_on_the_injected_clock() -> None:
    token = seal_cursor(keys(K1), BINDING, STATE)
    assert open_cursor(keys(K1), BINDING, token, params=PARAMS, now=STATE.expires - 0.001)
    assert refusal(token, now=STATE.expires) == "expired"
    # Expiry is told only to the caller the cursor is for, with its own parameters:
    other = associated_data(
        iss="https://idp.example/oauth2/default", subject="bob", actors=(), query="list_orders",
        fingerprint="f" * 64,
    )  # fmt: skip
    assert refusal(token, binding=other, now=STATE.expires + 10) == "unauthentic"
    assert refusal(token, params=b"\x00" * 32, now=STATE.expires + 10) == "params"


# --- the published format -------------------------------------------------------------------------


def test_the_format_is_the_one_docs_pagination_md_publishes() -> None:
    """Opened with ``cryptography`` alone: base64url(version 1 || kid || nonce || AES-256-GCM
    ciphertext and tag), associated data "spangate cursor v1" 0x00 header binding, the binding
    being the JSON array [iss, sub, actors, query, fingerprint]."""
    nonce = bytes(range(12))
    token = seal_cursor(keys(K1), BINDING, STATE, nonce=nonce)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    kid = hmac.new(K1, b"spangate cursor key id", hashlib.sha256).digest()[:4]
    assert raw[0] == 1 and raw[1:5] == kid and raw[5:17] == nonce
    assert BINDING == json.dumps(
        ["https://idp.example/oauth2/default", "alice", [], "list_orders", "f" * 64],
        separators=(",", ":"),
    ).encode()
    plain = AESGCM(K1).decrypt(nonce, raw[17:], b"spangate cursor v1\x00" + raw[:5] + BINDING)
    assert json.loads(plain) == {
        "p": base64.urlsafe_b64encode(PARAMS).rstrip(b"=").decode(),
        "k": [["TIMESTAMP", "2026-02-05T16:40:00.123456789Z"], ["STRING", "O-1003"]],
        "e": 1_800_003_600,
    }
