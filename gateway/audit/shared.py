"""Blocks of audit events that many calls share, built once per policy. Pure.

Some blocks of an event depend only on the policy and on values that calls repeat: the
``authenticationInfo`` of one token (its subject, issuer, client, token id, audiences), whether
one set of groups holds each group a role names. ``event`` builds such a block for the first call
and hands every later call with the same values the very same object. So a shared block is never
changed once built, and only blocks that ``bounds.Bounds`` leaves alone are shared: nothing in
them was cut, nothing in them may be dropped (``drop_largest`` changes only the containers it
was given), scrubbing (``chain.writable``) copies, and sealing copies the event's top level.

``SharedBlocks.of(policy)`` keeps the blocks of one policy only: a call with another policy (a
reload, a test's) starts afresh, so no block outlives the policy it was built from. At most
``MAX_BLOCKS`` blocks are kept (one token's calls share one; tokens that change on every call
share none): when full, they are forgotten all at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

__all__ = ["MAX_BLOCKS", "SharedBlocks"]

MAX_BLOCKS = 1024


class SharedBlocks:
    """The shared blocks of one policy, by key (a tuple of immutable values)."""

    _current: SharedBlocks | None = None  # the last policy's (events are built for one at a time)

    def __init__(self, policy: object) -> None:
        self.policy = policy  # held: compared by identity, so never mistaken for a newer one
        self._blocks: dict[Hashable, Any] = {}

    @classmethod
    def of(cls, policy: object) -> SharedBlocks:
        current = cls._current
        if current is None or current.policy is not policy:
            current = cls._current = cls(policy)
        return current

    def get(self, key: Hashable) -> Any:
        """The block built for ``key``, or None."""
        return self._blocks.get(key)

    def put(self, key: Hashable, block: Any) -> None:
        """Keep ``block`` for ``key``; it is never changed from now on."""
        if len(self._blocks) >= MAX_BLOCKS:
            self._blocks.clear()
        self._blocks[key] = block
