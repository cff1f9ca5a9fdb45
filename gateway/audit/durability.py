"""Durability: how far an event must have gone into a sink before its request is answered.

``strict`` (durable: synced, handed to the pipe, committed), ``written`` (written to the OS; a
file sink syncs it in the background) and ``batched`` (durable, flushed at most once a window);
``writer.SinkWriter`` says what each means there. This module holds the event loop's side of a
file sink's syncs (``SyncWaits``): the events whose answers wait for a sync, the bounds of the
unsynced backlog, and the stall.

- ``hold(pending, total)``: these events are written up to byte ``total`` and are answered once a
  sync covers it: at once when one has, else when the syncer says so, else (after the sink's
  ``sync_deadline``) refused; refused at once while a sync is stalled (``stalled``: running
  longer than that deadline).
- ``behind()``: the backlog is past its bounds (the oldest unsynced byte older than the sink's
  ``max_unsynced``, or more than ``max_unsynced_bytes`` unsynced): ``written`` events are then
  held as well.
- A failed sync refuses every event held and calls ``failed`` (the writer opens the sink again).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from gateway.audit.chain import Members
from gateway.audit.sinks import SyncingSink
from gateway.audit.syncer import Syncer

__all__ = ["DURABILITIES", "Durability", "Pending", "SyncWaits", "settle"]

Durability = Literal["strict", "written", "batched"]
DURABILITIES: tuple[Durability, ...] = ("strict", "written", "batched")


@dataclass(eq=False)
class Pending:
    """One event queued in a sink's writer, and its request's wait."""

    event: dict[str, Any]
    done: asyncio.Future[None]
    mode: Durability
    members: Members | None = None  # the event's, already encoded (chain.Chain.seal)
    skip: bool = False  # already durable in this sink (a Spanner row written in its transaction)
    settled: bool = False


def settle(p: Pending, error: BaseException | None = None) -> None:
    """Answer ``p``'s request (once): its event is in, or ``error``."""
    p.settled = True
    if not p.done.done():  # a caller that was cancelled stopped waiting; its event is written
        if error is None:
            p.done.set_result(None)
        else:
            p.done.set_exception(error)


Refuse = Callable[[list[Pending], BaseException, str], None]


@dataclass(eq=False)
class _Wait:
    """Events written up to ``total`` bytes, answered once a sync covers them."""

    total: int
    pending: list[Pending]
    timer: asyncio.TimerHandle | None = None


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """From another thread: call ``fn(*args)`` on ``loop`` (not at all once it is closed: the
    process is exiting)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


class SyncWaits:
    def __init__(
        self,
        sink: SyncingSink,
        loop: asyncio.AbstractEventLoop,
        *,
        refuse: Refuse,
        failed: Callable[[], None],
        changed: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self._loop = loop
        self._refuse = refuse
        self._failed = failed
        self._changed = changed
        self._clock = clock
        self._waits: deque[_Wait] = deque()
        self.syncer = Syncer(
            sink.sync_appended,
            interval=sink.sync_interval,
            on_synced=lambda synced, error: post(loop, self._synced, synced, error),
            name=sink.name,
            clock=clock,
        )

    @property
    def stalled(self) -> bool:
        """A sync has been running for longer than the sink's ``sync_deadline``."""
        since = self.syncer.running_since
        return since is not None and self._clock() - since > self.sink.sync_deadline

    def behind(self) -> bool:
        """The unsynced backlog is past its bounds: ``written`` events wait for their sync."""
        syncer = self.syncer
        if syncer.unsynced_bytes > self.sink.max_unsynced_bytes:
            return True
        oldest = syncer.oldest_unsynced()
        return oldest is not None and self._clock() - oldest > self.sink.max_unsynced

    def unsynced_seconds(self) -> float:
        oldest = self.syncer.oldest_unsynced()
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def __bool__(self) -> bool:
        return bool(self._waits)

    def held(self) -> Iterator[Pending]:
        return (p for w in self._waits for p in w.pending)

    def hold(self, pending: list[Pending], total: int) -> None:
        if self.stalled:
            self._refuse(pending, TimeoutError("a sync is stalled"), "audit sink %s: a sync is "
                         "stalled; %d event(s) that need one refused: %s")  # fmt: skip
        elif self.syncer.want(total):
            for p in pending:
                settle(p)
        else:
            wait = _Wait(total, pending)
            wait.timer = self._loop.call_later(self.sink.sync_deadline, self._overdue, wait)
            self._waits.append(wait)

    def _synced(self, synced: int, error: BaseException | None) -> None:
        if error is not None:
            self._failed()  # whatever the descriptor held may be lost: start afresh
            held = self.drop()
            self._refuse(held, error, "audit sink %s: a sync failed; %d event(s) refused: %s")
            return
        while self._waits and self._waits[0].total <= synced:
            wait = self._waits.popleft()
            if wait.timer is not None:
                wait.timer.cancel()
            for p in wait.pending:
                settle(p)
        self._changed()

    def _overdue(self, wait: _Wait) -> None:
        if wait in self._waits:
            self._waits.remove(wait)
            self._refuse(
                wait.pending,
                TimeoutError(f"not synced within {self.sink.sync_deadline:g}s"),
                "audit sink %s: %d event(s) not synced in time, refused: %s",
            )

    def drop(self) -> list[Pending]:
        """Stop waiting: the events held and not yet answered."""
        held = [p for p in self.held() if not p.settled]
        for wait in self._waits:
            if wait.timer is not None:
                wait.timer.cancel()
        self._waits.clear()
        return held

    def stop(self) -> asyncio.Future[None]:
        """Sync what was written and end the syncer thread; done when it has ended."""
        stopped: asyncio.Future[None] = self._loop.create_future()
        self.syncer.stop(lambda: post(self._loop, _resolve, stopped))
        return stopped


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
