"""Bounds on what callers put into an audit event. Pure.

A caller must not be able to grow the trail by more than a bounded amount per request, whatever
it sends. So, while an event is built (``event.build_event``):

- every string a caller or a token supplied (user agent, path, method, the principal's claims,
  parameter values, ignored caller values, actors' claims) is cut to ``MAX_STRING_BYTES`` UTF-8
  bytes, at a character boundary;
- an event whose line would still be longer than the maximum event size
  (``SPANGATE_AUDIT_MAX_EVENT_BYTES``, chain fields and newline included) has its largest caller
  values dropped (parameter values, ignored caller values, an actor's other claims become
  ``null``), largest first, until it fits; if it still does not fit, every such value is dropped
  and every string is cut to ``SHRUNK_STRING_BYTES``. An event is never refused for its size.

Each cut or dropped value is listed in the event's ``protoPayload.metadata.truncated``, in the
order it was cut: ``{"field": JSON Pointer (RFC 6901) into the event, "bytes": N, "sha256": hex}``,
where ``bytes`` and ``sha256`` are of the whole value (a string's UTF-8, any other value's
canonical JSON), so the original can still be matched against the event. The field holds the cut
string's start, or ``null`` for a dropped value. Redacted values are hashes already and are never
cut or dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.audit.chain import Members, encode_members, encoded_size, members_size

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "MAX_STRING_BYTES",
    "MIN_MAX_EVENT_BYTES",
    "SHRUNK_STRING_BYTES",
    "Bounds",
    "cut",
    "digest",
    "fit",
    "fit_encoded",
    "pointer",
]

log = logging.getLogger("spangate.audit")

MAX_STRING_BYTES = 512
SHRUNK_STRING_BYTES = 64
DEFAULT_MAX_EVENT_BYTES = 16384
MIN_MAX_EVENT_BYTES = 4096
SEAL_BYTES = 256  # "chain", "seq", "prev", "hash" and the newline, added when sealed (~205)


def pointer(*parts: str | int) -> str:
    """The JSON Pointer (RFC 6901) of ``parts``: ``pointer("a", "b/c", 0)`` is ``/a/b~1c/0``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate (a token's) is scrubbed later


def digest(value: Any) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a string's UTF-8, or of any other value's canonical JSON."""
    if isinstance(value, str):
        data = _utf8(value)
    else:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
        data = _utf8(text)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def cut(text: str, limit: int) -> str:
    """The longest start of ``text`` of at most ``limit`` UTF-8 bytes (whole characters)."""
    data = _utf8(text)
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:  # a continuation byte: inside a character
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass")


@dataclass
class _Value:
    """A caller value the event holds at ``container[key]``, which may be dropped."""

    container: dict[str, Any]
    key: str
    where: str
    original: Any

    def size(self) -> int:
        return encoded_size({"": self.container[self.key]})


class Bounds:
    """The bounding of one event: cuts strings, remembers what it cut and what it may drop.

    ``truncated`` is the list the event carries as ``metadata.truncated``; it is kept up to date
    in place as values are dropped."""

    def __init__(self, limit: int = MAX_STRING_BYTES, *, drop_all: bool = False) -> None:
        self.limit = limit
        self.drop_all = drop_all
        self.truncated: list[dict[str, Any]] = []
        self._values: list[_Value] = []

    @property
    def plain(self) -> bool:
        """The first bounding of an event (not the last resort's): what blocks shared between
        events are built under (``shared``)."""
        return self.limit == MAX_STRING_BYTES and not self.drop_all

    def mark(self) -> tuple[int, int]:
        """What has been cut and what may be dropped so far: the same mark after a block was built
        says nothing in it was cut or may be dropped (so it may be shared: ``shared``)."""
        return len(self.truncated), len(self._values)

    def text(self, where: str, value: str | None) -> str | None:
        """``value`` (a caller's string at ``where``), cut to the limit."""
        if value is None or len(value) * 4 <= self.limit:  # at most 4 bytes a character
            return value
        data = _utf8(value)
        if len(data) <= self.limit:
            return value
        self.truncated.append({"field": where, **digest(value)})
        return cut(value, self.limit)

    def tree(self, where: str, value: Any) -> Any:
        """A JSON value with every string in it (keys aside) cut to the limit."""
        if isinstance(value, str):
            return self.text(where, value)
        if isinstance(value, dict):
            return {k: self.tree(where + pointer(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(where + pointer(i), v) for i, v in enumerate(value)]
        return value

    def put(self, container: dict[str, Any], key: str, where: str, value: Any) -> None:
        """``container[key] = value``, bounded: a caller value that may be dropped whole."""
        if self.drop_all:
            container[key] = None
            self.truncated.append({"field": where, **digest(value)})
            return
        container[key] = self.tree(where, value)
        self._values.append(_Value(container, key, where, value))

    def drop_largest(self) -> bool:
        """Drop the largest value still held (its cut strings' entries go with it); False when
        there is none left."""
        if not self._values:
            return False
        largest = max(self._values, key=_Value.size)
        self._values.remove(largest)
        largest.container[largest.key] = None
        inner = largest.where + "/"
        self.truncated[:] = [
            t
            for t in self.truncated
            if t["field"] != largest.where and not t["field"].startswith(inner)
        ]
        self.truncated.append({"field": largest.where, **digest(largest.original)})
        return True


def fit(build: Callable[[Bounds], dict[str, Any]], max_bytes: int) -> dict[str, Any]:
    """The event ``build`` makes with a ``Bounds``, shrunk until its line fits in ``max_bytes``
    (see the module's docstring); an event that cannot be shrunk enough is returned anyway."""
    return fit_encoded(build, max_bytes)[0]


def fit_encoded(
    build: Callable[[Bounds], dict[str, Any]], max_bytes: int
) -> tuple[dict[str, Any], Members | None]:
    """``fit``, and the event's top-level members as measuring it encoded them (what sealing
    joins, ``chain.Chain.seal``: the event is encoded once); None when it must be scrubbed."""
    budget = max_bytes - SEAL_BYTES
    bounds = Bounds()
    event = build(bounds)
    while True:
        size, members = _measure(event)
        if size <= budget:
            return event, members
        if not bounds.drop_largest():
            break
    event = build(Bounds(SHRUNK_STRING_BYTES, drop_all=True))
    size, members = _measure(event)
    if size > budget:
        log.warning(
            "audit event %s is %d bytes, over SPANGATE_AUDIT_MAX_EVENT_BYTES (%d): written whole",
            event.get("insertId"),
            size + SEAL_BYTES,
            max_bytes,
        )
    return event, members


def _measure(event: dict[str, Any]) -> tuple[int, Members | None]:
    try:
        members = encode_members(event)
    except (UnicodeError, ValueError, TypeError, RecursionError):
        members = None
    if members is None:
        return encoded_size(event), None
    return members_size(members), members
