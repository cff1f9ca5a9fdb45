"""The introspection answers a gateway remembers: active and inactive ones kept apart.

Each kind has its own bounded LRU (least recently used first out), keyed by the SHA-256 of the
token, each entry with its own expiry. Because a flood of unknown tokens fills only the inactive
one, it can never evict the active answers that legitimate callers are served from.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

__all__ = ["Answer", "AnswerCache"]

Answer = Mapping[str, Any]


class AnswerCache:
    def __init__(self, *, max_active: int = 10_000, max_inactive: int = 10_000) -> None:
        self._max = {True: max_active, False: max_inactive}
        self._entries: dict[bool, OrderedDict[bytes, tuple[Answer | None, float]]] = {
            True: OrderedDict(),
            False: OrderedDict(),
        }

    def get(self, digest: bytes, now: float) -> tuple[bool, Answer | None]:
        """(found, answer): the answer (None: inactive) when one is cached and not expired."""
        for active in (True, False):
            entries = self._entries[active]
            hit = entries.get(digest)
            if hit is None:
                continue
            if now < hit[1]:
                entries.move_to_end(digest)
                return True, hit[0]
            del entries[digest]
        return False, None

    def put(self, digest: bytes, answer: Answer | None, until: float) -> None:
        active = answer is not None
        self._entries[not active].pop(digest, None)  # a token changes kind: one answer only
        entries = self._entries[active]
        entries[digest] = (answer, until)
        entries.move_to_end(digest)
        while len(entries) > self._max[active]:
            entries.popitem(last=False)

    def sizes(self) -> tuple[int, int]:
        """(active, inactive) entries held (expired ones included until they are looked up)."""
        return len(self._entries[True]), len(self._entries[False])
