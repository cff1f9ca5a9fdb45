"""Pagination cursors, sealed (pure): AES-256-GCM under ``SPANGATE_CURSOR_KEYS``, no server state.

A cursor is ``base64url(header || nonce || ciphertext)`` without padding, where

    header      version (1 byte, 1) || key id (4 bytes: HMAC-SHA256(key, "spangate cursor key
                id"), its first 4 bytes)
    nonce       12 random bytes, new for every cursor
    ciphertext  AES-256-GCM of the state below, with its 16-byte tag, under the key the key id
                names; associated data: "spangate cursor v1" || 0x00 || header || the binding

The binding (``associated_data``) is what must match for the cursor to open at all: the token's
issuer (``iss``) and subject, the actors of a delegated token, the query's name and its
fingerprint (its statement, keyset and cursor parameter types). A cursor presented by another
principal or for another query fails to authenticate exactly as a tampered one does: nothing
tells them apart, to the caller or to anyone holding a cursor.

The state (compact JSON inside the ciphertext): ``p`` the SHA-256 of the call's other bound
parameters (base64url), ``k`` the last row's keyset values as ``[type, JSON value]`` pairs (the
gateway's JSON form of each Spanner type, so every type round-trips exactly), ``e`` its expiry
(seconds since 1970). Opening checks, in this order, and refuses with a reason that only the
audit trail records: ``malformed`` (not a cursor: wrong characters, length, version),
``unknown-key`` (its key id is none of the keys: retired, or never ours), ``unauthentic``
(tampered, truncated, another principal, another query), ``params`` (other parameters),
``expired``. Only the last is told to the caller as such (``cursor-expired``), and only to the
principal it was sealed for, with its own parameters.

Keys: ``SPANGATE_CURSOR_KEYS`` is a comma-separated list of base64url 256-bit keys; the first
seals, all open, so a key rotates in three steps (add the new one second, make it first, drop
the old one once its cursors have expired). Random 96-bit nonces keep AES-GCM safe for far more
cursors than one key should seal (2^32); rotate keys well before that. Nothing here logs, and no
exception carries a key or a cursor's content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "MAX_CURSOR_CHARS",
    "REFUSALS",
    "CursorKeys",
    "CursorNotOpened",
    "CursorState",
    "associated_data",
    "open_cursor",
    "seal_cursor",
]

VERSION = 1
KEY_BYTES = 32
KID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_CURSOR_CHARS = 4096  # longer is malformed, unread; a longer cursor is never sealed
REFUSALS = ("malformed", "unknown-key", "unauthentic", "params", "expired")
_DOMAIN = b"spangate cursor v1\x00"
_KID_LABEL = b"spangate cursor key id"
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_TEXT = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_HEADER = 1 + KID_BYTES
_MIN_BYTES = _HEADER + NONCE_BYTES + TAG_BYTES


class CursorNotOpened(Exception):
    """A cursor that does not open for this call; ``reason`` is one of ``REFUSALS`` (for the
    audit trail; the caller learns only ``cursor-invalid`` or ``cursor-expired``: see
    ``gateway.errors.CursorRefused``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class _Key:
    kid: bytes
    aead: AESGCM = field(repr=False)


@dataclass(frozen=True)
class CursorKeys:
    """The keys of ``SPANGATE_CURSOR_KEYS``: the first seals, every one opens."""

    keys: tuple[_Key, ...] = field(repr=False)

    @classmethod
    def from_bytes(cls, keys: Sequence[bytes]) -> CursorKeys:
        """From raw 32-byte keys (ValueError naming the position of a bad one)."""
        if not keys:
            raise ValueError("no key")
        out: list[_Key] = []
        for position, key in enumerate(keys, start=1):
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"key {position} is {len(key)} bytes, not {KEY_BYTES} (256 bits)"
                )
            kid = hmac.new(key, _KID_LABEL, hashlib.sha256).digest()[:KID_BYTES]
            if any(k.kid == kid for k in out):
                raise ValueError(f"key {position} is listed twice")
            out.append(_Key(kid, AESGCM(key)))
        return cls(tuple(out))

    @classmethod
    def parse(cls, text: str) -> CursorKeys:
        """From ``SPANGATE_CURSOR_KEYS``: comma-separated base64url keys (padding optional).
        ValueError naming the position of a bad key, never its text."""
        raw: list[bytes] = []
        for position, part in enumerate(text.split(","), start=1):
            item = part.strip()
            if not item:
                raise ValueError(f"key {position} is empty")
            if not _KEY_TEXT.match(item):
                raise ValueError(f"key {position} is not base64url (A-Z a-z 0-9 - _)")
            try:
                raw.append(_unb64(item.rstrip("=")))
            except (binascii.Error, ValueError):
                raise ValueError(f"key {position} is not base64url") from None
        return cls.from_bytes(raw)

    @property
    def sealing(self) -> _Key:
        return self.keys[0]

    def find(self, kid: bytes) -> _Key | None:
        return next((k for k in self.keys if hmac.compare_digest(k.kid, kid)), None)


def associated_data(
    *, iss: str, subject: str, actors: Sequence[str | None], query: str, fingerprint: str
) -> bytes:
    """The binding a cursor opens for only: who (issuer URL, subject, the actors of a delegated
    token, current first) and which query (its name and fingerprint)."""
    return json.dumps(
        [iss, subject, list(actors), query, fingerprint],
        ensure_ascii=True,
        separators=(",", ":"),
    ).encode("ascii")


@dataclass(frozen=True)
class CursorState:
    """What a cursor holds: the digest of the other bound parameters, the last row's keyset
    values (type, JSON value) in keyset order, and when it expires (seconds since 1970)."""

    params: bytes = field(repr=False)
    values: tuple[tuple[str, Any], ...] = field(repr=False)
    expires: int


def seal_cursor(
    keys: CursorKeys, binding: bytes, state: CursorState, *, nonce: bytes | None = None
) -> str:
    """``state`` sealed for ``binding`` under the sealing key; ValueError when the cursor would
    be longer than ``MAX_CURSOR_CHARS`` (keyset values too long to carry)."""
    key = keys.sealing
    header = bytes([VERSION]) + key.kid
    nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    plain = json.dumps(
        {"p": _b64(state.params), "k": [list(v) for v in state.values], "e": state.expires},
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    ).encode("utf-8")
    sealed = key.aead.encrypt(nonce, plain, _DOMAIN + header + binding)
    token = _b64(header + nonce + sealed)
    if len(token) > MAX_CURSOR_CHARS:
        raise ValueError(f"the cursor would be {len(token)} characters (at most {MAX_CURSOR_CHARS})")
    return token


def _state(plain: bytes) -> CursorState:
    try:
        data = json.loads(plain.decode("utf-8"))
        params = _unb64(data["p"])
        pairs = data["k"]
        expires = data["e"]
        if not (
            isinstance(pairs, list)
            and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs)
            and isinstance(expires, int)
            and not isinstance(expires, bool)
            and len(params) == hashlib.sha256().digest_size
        ):
            raise ValueError("not a cursor's state")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error):
        raise CursorNotOpened("malformed") from None
    return CursorState(params, tuple((p[0], p[1]) for p in pairs), expires)


def open_cursor(
    keys: CursorKeys, binding: bytes, token: object, *, params: bytes, now: float
) -> CursorState:
    """The state of ``token`` if it opens for ``binding``, carries ``params`` (the digest of
    this call's other bound parameters) and has not expired at ``now``; else CursorNotOpened."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_CURSOR_CHARS:
        raise CursorNotOpened("malformed")
    if not _B64URL.match(token) or len(token) % 4 == 1:
        raise CursorNotOpened("malformed")
    data = _unb64(token)
    if len(data) < _MIN_BYTES or data[0] != VERSION:
        raise CursorNotOpened("malformed")
    header = data[:_HEADER]
    key = keys.find(header[1:])
    if key is None:
        raise CursorNotOpened("unknown-key")
    nonce, sealed = data[_HEADER : _HEADER + NONCE_BYTES], data[_HEADER + NONCE_BYTES :]
    try:
        plain = key.aead.decrypt(nonce, sealed, _DOMAIN + header + binding)
    except InvalidTag:
        raise CursorNotOpened("unauthentic") from None
    state = _state(plain)
    if not hmac.compare_digest(state.params, params):
        raise CursorNotOpened("params")
    if now >= state.expires:
        raise CursorNotOpened("expired")
    return state
