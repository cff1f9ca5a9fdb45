"""Hash chaining of audit events: each event names its chain, sequence number and predecessor's hash.

    hash = HMAC-SHA256(chain_key, canonical_json(event without "hash"))   with SPANGATE_AUDIT_KEY
    hash = SHA-256(canonical_json(event without "hash"))                    without a key

A keyed chain cannot be extended, edited or re-hashed by anyone without the key; a plain SHA-256
chain only detects accidents (anyone who can edit the file can recompute every hash). Canonical
JSON: sorted keys, no spaces, UTF-8, no NaN. The secret is never used directly: ``AuditKeys``
derives one key for the chain and another for redacted parameter values (domain separation).

The written line is the canonical JSON with U+0085, U+2028 and U+2029 escaped (``\\u2028``; JSON
already escapes every other character a line splitter breaks at), so ``str.splitlines``,
JavaScript and Unicode-aware log shippers all see one event per line. Both forms decode to the
same event and the hash is over the canonical form, so lines written before the escaping (with
these characters raw) verify as they are.

A ``Chain`` belongs to one writer (one sink of one process): ``seq`` starts at 1 with a new random
``chain`` id in every process, and the first event's ``prev`` names the predecessor's last hash
when the sink could read it (``GENESIS`` otherwise). Under ``spangate serve --workers N`` every
event also carries its worker's number (``worker``, 1 to N), hashed with the rest.
``mark``/``rollback`` undo the sealing of a batch that could not be written, so a failed write
never leaves a gap in the chain.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GENESIS",
    "UNKEYED_WARNING",
    "AuditKeys",
    "Chain",
    "canonical",
    "Members",
    "encode_members",
    "encoded_size",
    "event_hash",
    "line_text",
    "members_size",
    "writable",
]

log = logging.getLogger("spangate.audit")

GENESIS = "0" * 64

# Logged at start-up and shown in /readyz while SPANGATE_AUDIT_KEY is not set.
UNKEYED_WARNING = (
    "the audit trail is unkeyed (SPANGATE_AUDIT_KEY is not set): its SHA-256 hash chain "
    "detects accidents only; anyone who can write the trail can rewrite and re-hash it and it "
    "still verifies"
)


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _make_encode(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode`` without its cost per call: ``JSONEncoder.encode`` builds a new C encoder
    (and a closure) on every call; this one is built once, with the arguments CPython 3.11's
    ``JSONEncoder.iterencode`` gives it, so its text is the same (the probes below check it). One
    difference: no ``markers`` (they would be state shared by the event loop and the writer
    thread, and an encode that fails leaves its entries behind), so a value that holds itself
    raises ``RecursionError`` instead of ``ValueError`` (every caller here catches both). Where
    there is no C encoder, or it does not encode the probes as ``encoder`` does,
    ``encoder.encode`` itself."""
    make: Any = getattr(json.encoder, "c_make_encoder", None)  # None: no C accelerator
    if make is None or encoder.indent is not None:
        return encoder.encode
    string = (
        json.encoder.encode_basestring_ascii
        if encoder.ensure_ascii
        else json.encoder.encode_basestring
    )
    try:
        c_encode = make(
            None,  # markers: no cycle check (see above)
            encoder.default,
            string,
            encoder.indent,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
    except TypeError:  # a C encoder that takes other arguments
        return encoder.encode

    def encode(value: Any) -> str:
        if type(value) is str:
            return string(value)  # as JSONEncoder.encode does for a string
        if value is None:
            return "null"
        return "".join(c_encode(value, 0))

    probes = [
        {"b": [1, -2.5e-300, None, True, "\u00e9\u2028\"\n"], "a": {"z": 0, "y": [{}]}},
        {2: 1, 10: 1.5, False: None},
        [float("nan")],
        [float("-inf")],
    ]
    if any(_outcome(encode, p) != _outcome(encoder.encode, p) for p in probes):
        return encoder.encode
    return encode


def _outcome(encode: Callable[[Any], str], value: Any) -> str | type[Exception]:
    try:
        return encode(value)
    except (ValueError, TypeError) as exc:
        return type(exc)


_encode = _make_encode(_ENCODER)  # the canonical text of any value: _ENCODER.encode's


# Line breaks for str.splitlines and Unicode (NEL, LS, PS) that JSON leaves unescaped.
_BREAKS = re.compile("[\u0085\u2028\u2029]")


def canonical(event: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8."""
    return _encode(event).encode()


def line_text(text: str) -> str:
    """Canonical JSON text as it is written: U+0085, U+2028 and U+2029 escaped. These characters
    can only stand inside JSON strings, where ``\\uXXXX`` means the same character."""
    return _BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# The same three characters in UTF-8: these byte sequences are always those characters (0xC2 and
# 0xE2 only ever start a character), so the written bytes can be escaped without decoding them.
_BREAKS_UTF8 = re.compile(b"\xc2\x85|\xe2\x80[\xa8\xa9]")
_ESCAPES = {b"\xc2\x85": b"\\u0085", b"\xe2\x80\xa8": b"\\u2028", b"\xe2\x80\xa9": b"\\u2029"}


def _line_bytes(data: bytes) -> bytes:
    """``line_text`` on canonical JSON's UTF-8 bytes."""
    if b"\xc2" not in data and b"\xe2" not in data:
        return data
    return _BREAKS_UTF8.sub(lambda m: _ESCAPES[m.group()], data)


# An event's top-level members, each value's canonical JSON in UTF-8: what sealing joins (with the
# chain's own members) into the canonical bytes and the line, without encoding the event again.
Members = dict[str, bytes]

_KEYS: dict[str, bytes] = {}  # '"name":' of the top-level keys seen (a handful)


def _key(name: str) -> bytes:
    found = _KEYS.get(name)
    if found is None:
        found = _encode(name).encode() + b":"
        if len(_KEYS) < 256:
            _KEYS[name] = found
    return found


def _json(value: Any) -> bytes:
    return _encode(value).encode()


def encode_members(event: Mapping[str, Any]) -> Members | None:
    """``event``'s ``Members``; None when a top-level key is not a string (JSON would order the
    keys otherwise). Raises ``UnicodeError``, ``ValueError``, ``TypeError`` or ``RecursionError``
    when a value does not encode (see ``writable``)."""
    for name in event:
        if not isinstance(name, str):
            return None
    return {k: _encode(v).encode() for k, v in event.items()}


def members_size(members: Members) -> int:
    """``encoded_size`` of the event with these members (its line without the chain's members
    and the newline). The values' escapes are counted on their bytes joined: each value is whole
    UTF-8, so no character (and no escape) spans two of them."""
    values = b"".join(members.values())
    return 1 + max(len(members), 1) + _keys_size(tuple(members)) + len(_line_bytes(values))


@functools.lru_cache(maxsize=256)
def _keys_size(names: tuple[str, ...]) -> int:
    """``len(_line_bytes(_key(name)))`` summed over ``names``: once per set of top-level keys (the
    events' few shapes)."""
    return sum(len(_line_bytes(_key(name))) for name in names)


def _encodable(event: Mapping[str, Any]) -> tuple[Mapping[str, Any], Members | None]:
    """``event`` and its members, or its scrubbed copy and theirs (see ``writable``)."""
    try:
        return event, encode_members(event)
    except (UnicodeError, ValueError, TypeError, RecursionError):
        clean = writable(event)
        return clean, encode_members(clean)


def encoded_size(event: Mapping[str, Any]) -> int:
    """The bytes ``event``'s line will take (an upper bound when it must be scrubbed)."""
    try:
        text = _encode(event)
    except (ValueError, TypeError, RecursionError):
        text = _encode(_scrub(event))
    return len(line_text(text).encode("utf-8", "surrogatepass"))


def writable(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """``event`` itself when it encodes as canonical JSON, else a scrubbed copy: lone surrogates
    replaced, non-finite numbers and unknown types as strings. One odd value a token or a caller
    smuggled in must never keep an event, or the batch it travels with, out of the trail."""
    try:
        _encode(event).encode()
    except (UnicodeError, ValueError, TypeError, RecursionError):
        log.warning("audit event %s had values that are not JSON; scrubbed", event.get("insertId"))
        scrubbed: Mapping[str, Any] = _scrub(event)
        return scrubbed
    return event


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {_scrub(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return _scrub(str(value))


def event_hash(event: Mapping[str, Any], key: bytes | None) -> str:
    """The hash of ``event`` without its own ``hash`` field (hex)."""
    body = canonical({k: v for k, v in event.items() if k != "hash"})
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class AuditKeys:
    """Keys derived from the audit secret; both None when no secret is configured."""

    chain: bytes | None
    redact: bytes | None

    @classmethod
    def from_secret(cls, secret: bytes | None) -> AuditKeys:
        if not secret:
            return cls(None, None)
        return cls(
            hmac.new(secret, b"spangate audit chain v1", hashlib.sha256).digest(),
            hmac.new(secret, b"spangate audit redact v1", hashlib.sha256).digest(),
        )


class Chain:
    """Seals events in order. Not thread-safe: one writer thread owns it."""

    def __init__(
        self, key: bytes | None, *, chain_id: str | None = None, worker: int | None = None
    ) -> None:
        self.key = key
        self.chain_id = chain_id or secrets.token_hex(8)
        self.worker = worker  # sealed into every event (``worker``) under `serve --workers N`
        self.last_hash = GENESIS
        self.seq = 0
        self.started = False
        self._chain_json = _json(self.chain_id)

    def start(self, predecessor: str | None) -> None:
        """Name the predecessor's last hash (a previous process's) before the first event."""
        if self.seq == 0 and predecessor:
            self.last_hash = predecessor
        self.started = True

    def seal(
        self, event: Mapping[str, Any], members: Members | None = None
    ) -> tuple[dict[str, Any], bytes]:
        """A sealed copy of ``event`` (``chain``, ``seq``, ``prev``, ``hash`` added) and its line.

        The canonical bytes of the sealed event without its hash are hashed; the line is those
        bytes with the ``"hash"`` member put where sorting puts it, line breaks escaped
        (``line_text``, on the UTF-8 bytes). Both are joined from the event's top-level members,
        each encoded once: ``members`` when the caller has them already (``encode_members`` of
        this very event, as ``bounds.fit`` makes them), else encoded here. An event that does not
        encode (a lone surrogate, NaN, an unknown type) is scrubbed first (``writable``)."""
        seq = self.seq + 1
        if members is None:
            event, members = _encodable(event)
        if members is None:  # a key that is not a string: JSON's own order, one encode
            return self._seal_whole(event, seq)
        own = {"chain": self._chain_json, "seq": b"%d" % seq, "prev": _json(self.last_hash)}
        if self.worker is not None:
            own["worker"] = b"%d" % self.worker
        joined = {k: v for k, v in members.items() if k != "hash" and k not in own}
        joined.update(own)
        keys = sorted(joined)
        parts = [_key(k) + joined[k] for k in keys]
        body = b"{" + b",".join(parts) + b"}"
        digest = self._digest(body)
        parts.insert(bisect.bisect(keys, "hash"), b'"hash":"' + digest.encode() + b'"')
        sealed = {k: v for k, v in event.items() if k != "hash"}
        sealed.update(chain=self.chain_id, seq=seq, prev=self.last_hash, hash=digest)
        if self.worker is not None:
            sealed["worker"] = self.worker
        self.seq, self.last_hash = seq, digest
        return sealed, _line_bytes(b"{" + b",".join(parts) + b"}\n")

    def _seal_whole(self, event: Mapping[str, Any], seq: int) -> tuple[dict[str, Any], bytes]:
        sealed = {**event, "chain": self.chain_id, "seq": seq, "prev": self.last_hash}
        if self.worker is not None:
            sealed["worker"] = self.worker
        sealed.pop("hash", None)
        try:
            body = _encode(sealed).encode()
        except (UnicodeError, ValueError, TypeError, RecursionError):
            log.warning("audit event %s had keys or values that are not JSON; scrubbed", seq)
            return self.seal(_scrub(event))  # every key a string now
        digest = self._digest(body)
        before = {k: v for k, v in sealed.items() if k < "hash"}  # "chain" at least
        cut = len(_encode(before).encode()) - 1
        line = b"%s,\"hash\":\"%s\"%s\n" % (body[:cut], digest.encode(), body[cut:])
        sealed["hash"] = digest
        self.seq, self.last_hash = seq, digest
        return sealed, _line_bytes(line)

    def _digest(self, body: bytes) -> str:
        if self.key:
            return hmac.new(self.key, body, hashlib.sha256).hexdigest()
        return hashlib.sha256(body).hexdigest()

    def mark(self) -> tuple[int, str]:
        return self.seq, self.last_hash

    def rollback(self, mark: tuple[int, str]) -> None:
        """Forget the events sealed since ``mark`` (their batch was not written)."""
        self.seq, self.last_hash = mark
