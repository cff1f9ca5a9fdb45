"""Hash chaining of audit events: each event names its sequence number and the previous event's hash.

``hash = HMAC-SHA256(key, canonical_json(event without "hash"))`` when a key is configured
(``SPANGATE_AUDIT_KEY``); plain SHA-256 otherwise, which only detects accidents: anyone who can edit
the file can recompute it. Canonical JSON: sorted keys, no spaces, UTF-8.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Chain", "ChainBreak", "canonical", "event_hash", "verify_events"]

GENESIS = "0" * 64


def canonical(event: Mapping[str, Any]) -> bytes:
    return json.dumps(
        event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def event_hash(event: Mapping[str, Any], key: bytes | None) -> str:
    body = canonical({k: v for k, v in event.items() if k != "hash"})
    if key:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


class Chain:
    """Seals events in order. Not thread-safe: call it from the event loop only."""

    def __init__(self, key: bytes | None, *, previous: str = GENESIS, seq: int = 0) -> None:
        self._key = key
        self.last_hash = previous
        self.seq = seq

    def seal(self, event: dict[str, Any]) -> bytes:
        self.seq += 1
        event["seq"] = self.seq
        event["prev"] = self.last_hash
        event["hash"] = event_hash(event, self._key)
        self.last_hash = event["hash"]
        return canonical(event) + b"\n"


@dataclass(frozen=True)
class ChainBreak:
    line: int
    seq: int | None
    why: str


def verify_events(lines: Iterable[bytes], key: bytes | None) -> ChainBreak | None:
    """The first break in a trail's lines, or None when every event chains to the one before."""
    previous: str | None = None
    last_seq: int | None = None
    for number, raw in enumerate(lines, start=1):
        try:
            event = json.loads(raw)
        except ValueError:
            return ChainBreak(number, None, "not a JSON line")
        seq = event.get("seq")
        if event.get("hash") != event_hash(event, key):
            return ChainBreak(number, seq, "edited: the event's hash does not match its content")
        if previous is not None and event.get("prev") != previous:
            if isinstance(seq, int) and last_seq is not None and seq > last_seq + 1:
                why = f"deleted: events {last_seq + 1}..{seq - 1} are missing"
            elif isinstance(seq, int) and last_seq is not None and seq <= last_seq:
                why = "reordered or inserted: the sequence goes backwards"
            else:
                why = "inserted or reordered: prev does not name the event before"
            return ChainBreak(number, seq, why)
        previous, last_seq = event.get("hash"), seq if isinstance(seq, int) else last_seq
    return None
