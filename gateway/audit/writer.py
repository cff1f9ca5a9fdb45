"""One sink's writer: its own hash chain, its own thread, group commit, three durabilities.

Each event is queued with its durability (``reads`` or ``writes``, by whether the request ran DML):

- ``strict``: the answer waits until the event is durable in the sink (fsync'd, committed, handed
  to the pipe). A flush starts at once with whatever is queued; events that arrive during a
  flush go together in the next one.
- ``written`` (file and stdout sinks): the answer waits until the event is written to the OS
  (``write(2)`` returned: another process reads it, a crash of this one loses none of it). A file
  sink syncs it in the background (``syncer.Syncer``, every ``sync_interval``), so only a power
  loss or kernel crash can lose it, and only while it is younger than ``max_unsynced``: once the
  oldest unsynced byte is older than that, or more than ``max_unsynced_bytes`` are unsynced, new
  ``written`` events wait for their sync as ``strict`` ones do. On stdout it is ``strict``.
- ``batched``: as ``strict``, but a sink starts at most one flush per ``window``: a flush waits
  until ``window`` has passed since the previous one started (at once when the sink was idle that
  long) or until ``max_batch`` events are queued. The window is only waited out while
  ``expecting()`` says other requests are on their way to the trail: with nobody left to join
  the batch, waiting would add latency and save nothing.

A file sink's ``fdatasync`` runs on its syncer thread only: a sync the disk holds up never holds up
the next append, and a ``written`` event never waits for a sync it does not need. A request that
waits for a sync waits at most the sink's ``sync_deadline``, then gets ``AuditUnavailable``; while a
sync has run longer than that the sink is unhealthy (``healthy``: the gateway refuses statements
before they run) and events that need a sync are refused at once. A failed sync refuses the
events waiting for it and has the sink opened again for the next batch.

Events are sealed into the chain on the writer thread, in queue order, right before the write; a
batch that cannot be written is rolled back out of the chain, so the trail never has a gap, and the
sink is opened again for the next batch. Hand-offs: the event loop posts a batch to the writer
thread, which posts the result back with one ``call_soon_threadsafe``; nothing else crosses
threads for a batch of ``written`` events (the syncer wakes on its own, once per sync). A batch
that needs a sync also wakes the syncer, which posts back once that sync has returned. Not
thread-safe: ``submit`` and ``close`` are called on the event loop.

Bounded: a sink with a ``deadline`` (seconds; the Spanner sink) has each batch refused with
``AuditUnavailable`` once it has waited that long; while that write is still stuck on the writer
thread, later batches are refused at once (never sealed, so still no gap), and a sink's
``unavailable()`` (checked on the event loop) refuses a batch before it is sent. ``close`` flushes
and syncs what it can within ``CLOSE_TIMEOUT_SECONDS`` and logs what it could not. The writer and
syncer threads are daemons: a write stuck in a sink never holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from gateway.audit.chain import Chain, Members
from gateway.audit.durability import DURABILITIES, Durability, Pending, SyncWaits, post, settle
from gateway.audit.sinks import Sealed, Sink, SyncingSink
from gateway.audit.worker_thread import WorkerThread
from gateway.errors import AuditUnavailable

__all__ = ["CLOSE_TIMEOUT_SECONDS", "DURABILITIES", "Durability", "SinkStats", "SinkWriter"]

log = logging.getLogger("spangate.audit")

CLOSE_TIMEOUT_SECONDS = 5.0


@dataclass
class SinkStats:
    """Counters of one sink (monotonic, except the queue and the unsynced backlog)."""

    sink: str
    reads: str = "strict"  # the durability of reads' and writes' events in this sink
    writes: str = "strict"
    events_written: int = 0
    batches: int = 0
    failures: int = 0
    queue_depth: int = 0
    flush_seconds_total: float = 0.0
    flush_seconds_max: float = 0.0
    last_error: str | None = None
    healthy: bool = True  # as ``SinkWriter.healthy``
    # A file sink's syncs (zero elsewhere): counts and times, what is written and not yet
    # synced (bytes, and the age of the oldest of them), events waiting for a sync, and whether
    # a sync has run longer than the sink's sync deadline.
    syncs: int = 0
    sync_seconds_total: float = 0.0
    sync_seconds_max: float = 0.0
    sync_seconds_last: float = 0.0
    unsynced_bytes: int = 0
    unsynced_seconds: float = 0.0
    waiting_for_sync: int = 0
    sync_stalled: bool = False


class SinkWriter:
    def __init__(
        self,
        sink: Sink,
        chain: Chain,
        *,
        durability: Durability | None,
        window: float,
        max_batch: int,
        reads: Durability | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``durability``: every event's; None: ``strict`` for writes, and for reads ``reads`` or
        the sink's own default (``read_durability``: ``written`` for file and stdout sinks,
        ``batched`` for Spanner)."""
        self.sink = sink
        self.chain = chain
        self.writes: Durability = durability or "strict"
        default: Durability = getattr(sink, "read_durability", "batched")
        self.reads: Durability = durability or reads or default
        if "written" in (self.reads, self.writes) and not getattr(sink, "written_ok", False):
            raise ValueError(
                f"audit sink {sink.name}: durability written needs a sink that writes before it "
                "syncs (file, stdout); a Spanner batch is durable when it commits"
            )
        self.window = window
        self.max_batch = max_batch
        self.stats = SinkStats(sink.name, self.reads, self.writes)
        self._clock = clock
        self._syncing = cast(SyncingSink, sink) if hasattr(sink, "sync_appended") else None
        self._syncs: SyncWaits | None = None  # a file sink's (once bound to a loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[Pending] = []
        self._eager = 0  # queued events that start a flush at once (strict, written)
        self._kicking = False  # a _kick is scheduled on the loop
        self._timer: asyncio.TimerHandle | None = None  # the end of a batched window
        self._busy = False  # a batch is on the writer thread
        self._inflight: list[Pending] = []
        self._started = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._stuck = False  # a write past its deadline is still on the writer thread
        self._idle: asyncio.Event | None = None  # set while nothing is queued, in flight or waiting
        self._thread = WorkerThread(f"audit-{sink.name}")
        self._open = False
        self._reopen = False  # a sync failed: open the sink again before the next batch
        self._closing = False
        self._last_flush = -float("inf")  # when the last flush started (clock time)
        # How many requests may still submit an event soon (set by the gateway); the default
        # assumes some always may, which makes ``window`` a fixed minimum spacing of flushes.
        self.expecting: Callable[[], int] = lambda: 1
        self._healthy = True
        self.lost = 0  # events the close could not write (refused, or not written in time)

    # -- state -----------------------------------------------------------------------------
    @property
    def sync_stalled(self) -> bool:
        """A sync has been running for longer than the sink's ``sync_deadline``."""
        return self._syncs is not None and self._syncs.stalled

    @property
    def healthy(self) -> bool:
        """The last batch was written, the last sync did not fail, and no sync is stalled."""
        return self._healthy and not self.sync_stalled

    def snapshot(self) -> SinkStats:
        """The counters now (``stats`` plus the syncer's)."""
        stats = dataclasses.replace(self.stats, healthy=self.healthy)
        syncs = self._syncs
        if syncs is not None:
            syncer = syncs.syncer
            stats.syncs = syncer.syncs
            stats.sync_seconds_total = syncer.seconds_total
            stats.sync_seconds_max = syncer.seconds_max
            stats.sync_seconds_last = syncer.seconds_last
            stats.unsynced_bytes = syncer.unsynced_bytes
            stats.unsynced_seconds = syncs.unsynced_seconds()
            stats.waiting_for_sync = sum(1 for _ in syncs.held())
            stats.sync_stalled = syncs.stalled
        return stats

    # -- starting --------------------------------------------------------------------------
    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            if self._syncing is not None:
                self._syncs = SyncWaits(
                    self._syncing,
                    loop,
                    refuse=self._refuse,
                    failed=self._sync_failed,
                    changed=self._check_idle,
                    clock=self._clock,
                )
        return loop

    async def start(self) -> None:
        """Open the sink now (a failure is logged; the next batch tries again and, failing,
        refuses its requests)."""
        error = await self._bind().run_in_executor(self._thread, self._open_sink)
        if error is not None:
            self._healthy = False
            self.stats.last_error = str(error)
            log.error("audit sink %s cannot be opened: %s", self.sink.name, error)

    def _open_sink(self) -> BaseException | None:
        if self._reopen:
            self._reopen, self._open = False, False
        if self._open:
            return None
        try:
            predecessor = self.sink.open()
        except Exception as exc:  # noqa: BLE001 - reported; the next batch tries again
            return exc
        self._open = True
        if not self.chain.started:
            self.chain.start(predecessor)
        return None

    # -- queueing (the event loop) ---------------------------------------------------------
    def submit(
        self,
        event: dict[str, Any],
        *,
        write: bool,
        skip: bool = False,
        members: Members | None = None,
    ) -> asyncio.Future[None]:
        """Queue ``event`` (``members``: its top-level members already encoded, see
        ``chain.Chain.seal``); the future resolves once it is as durable here as its mode says
        (or is skipped), or fails with ``AuditUnavailable``."""
        loop = self._bind()
        done: asyncio.Future[None] = loop.create_future()
        if self._closing:
            done.set_exception(AuditUnavailable("the audit trail is closed"))
            return done
        mode = self.writes if write else self.reads
        self._queue.append(Pending(event, done, mode, members, skip))
        self._eager += mode != "batched"
        self.stats.queue_depth = len(self._queue)
        if not self._busy and not self._kicking:  # once per loop iteration: one batch for all
            self._kicking = True
            loop.call_soon(self._kick)
        return done

    def _kick(self) -> None:
        """Send the next batch to the writer thread when one is due and none is in flight."""
        self._kicking = False
        loop = self._loop
        assert loop is not None
        while self._queue and not self._busy:
            if not (
                self._eager
                or self._closing
                or len(self._queue) >= self.max_batch
                or self.expecting() == 0
            ):
                remaining = self._last_flush + self.window - self._clock()
                if remaining > 0:
                    if self._timer is None:
                        self._timer = loop.call_later(remaining, self._window_ended)
                    return
            self._last_flush = self._clock()
            batch = self._queue[: self.max_batch]
            del self._queue[: len(batch)]
            self._eager -= sum(p.mode != "batched" for p in batch)
            self.stats.queue_depth = len(self._queue)
            refusal = self._refusal()
            if refusal is not None:
                self._count_batch(0.0)
                self._settle_batch(batch, refusal, 0)
                continue
            self._busy, self._inflight, self._started = True, batch, time.perf_counter()
            self._thread.post(self._job, batch)
            deadline: float | None = getattr(self.sink, "deadline", None)
            if deadline is not None:
                self._deadline = loop.call_later(deadline, self._expire, batch)
        self._check_idle()

    def _window_ended(self) -> None:
        self._timer = None
        self._kick()

    def _refusal(self) -> BaseException | None:
        """Why the next batch is refused without being sent, or None."""
        if self._stuck:
            return TimeoutError(f"a previous write to {self.sink.name} is still unfinished")
        probe: Callable[[], str | None] | None = getattr(self.sink, "unavailable", None)
        if probe is not None and (reason := probe()) is not None:
            return OSError(reason)
        return None

    # -- the writer thread -----------------------------------------------------------------
    def _job(self, batch: list[Pending]) -> None:
        error, total = self._write(batch)
        assert self._loop is not None
        post(self._loop, self._written, batch, error, total)

    def _write(self, batch: list[Pending]) -> tuple[BaseException | None, int]:
        """Seal, write (a file sink: append only), and undo the sealing when the write fails.
        Returns the error and, for a file sink, how far the file goes after the batch."""
        mark = self.chain.mark()
        syncing = self._syncing
        try:
            if (error := self._open_sink()) is not None:
                raise error
            sealed = [Sealed(*self.chain.seal(p.event, p.members)) for p in batch if not p.skip]
            if syncing is None:
                if sealed:
                    self.sink.write(sealed)
                return None, 0
            total = syncing.append(sealed) if sealed else syncing.appended
        except Exception as exc:  # noqa: BLE001 - any sink failure refuses its requests
            self.chain.rollback(mark)
            self._open = False
            return exc, 0
        assert self._syncs is not None
        syncer = self._syncs.syncer
        syncer.appended_to(total)
        if any(p.mode != "written" for p in batch):
            syncer.want(total)  # start the sync now, not once the event loop has heard of it
        return None, total

    # -- results (the event loop) ----------------------------------------------------------
    def _written(self, batch: list[Pending], error: BaseException | None, total: int) -> None:
        if batch is not self._inflight:  # refused for its deadline already (see _expire)
            self._stuck = False
            self._late(error)
            self._kick()
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._busy, self._inflight = False, []
        self._count_batch(time.perf_counter() - self._started)
        self._settle_batch(batch, error, total)
        self._kick()

    def _count_batch(self, elapsed: float) -> None:
        self.stats.batches += 1
        self.stats.flush_seconds_total += elapsed
        self.stats.flush_seconds_max = max(self.stats.flush_seconds_max, elapsed)

    def _expire(self, batch: list[Pending]) -> None:
        """The batch on the writer thread has had its deadline: refuse it, and refuse the next
        ones at once while it is still there (``_stuck``); whatever it ends with is logged."""
        self._deadline = None
        if batch is not self._inflight:
            return
        self._busy, self._inflight, self._stuck = False, [], True
        deadline = getattr(self.sink, "deadline", 0.0)
        self._count_batch(time.perf_counter() - self._started)
        self._settle_batch(
            batch, TimeoutError(f"{self.sink.name} did not answer within {deadline:g}s"), 0
        )
        self._kick()

    def _late(self, error: BaseException | None) -> None:
        if error is None:
            log.warning(
                "audit sink %s: a batch refused for its deadline was written after all",
                self.sink.name,
            )
        else:
            log.info("audit sink %s: a batch past its deadline failed: %s", self.sink.name, error)

    def _settle_batch(self, batch: list[Pending], error: BaseException | None, total: int) -> None:
        if error is not None:
            self._refuse(batch, error, "audit sink %s failed; %d event(s) refused: %s")
            return
        self._healthy = True
        self.stats.events_written += sum(not p.skip for p in batch)
        syncs = self._syncs
        if syncs is None:
            for p in batch:
                settle(p)
            return
        behind = syncs.behind()
        held = []
        for p in batch:
            if p.skip or (p.mode == "written" and not behind):
                settle(p)
            else:
                held.append(p)
        if held:
            syncs.hold(held, total)

    def _refuse(self, batch: list[Pending], error: BaseException, message: str) -> None:
        if self._closing:  # the last flush: these events are lost to the trail
            self.lost += sum(not p.skip for p in batch)
        self._healthy = False
        self.stats.failures += 1
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self.stats.last_error = reason
        log.error(message, self.sink.name, len(batch), reason)
        refusal = AuditUnavailable("the audit trail cannot be written")  # which sink: the log
        for p in batch:
            settle(p, refusal)
        self._check_idle()

    def _sync_failed(self) -> None:
        self._reopen = True  # open the sink again (a new descriptor) before the next batch

    # -- closing ---------------------------------------------------------------------------
    def _check_idle(self) -> None:
        if self._idle is not None and not (self._queue or self._busy or self._syncs):
            self._idle.set()

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> int:
        """Flush everything queued (at once, without waiting for the window) and sync it, then
        close; within ``timeout`` seconds: events not written by then are refused and logged.
        Returns how many events this last flush lost (``lost``: refused by the sink, not written
        or not synced in time)."""
        loop = self._bind()
        until = loop.time() + timeout
        self._closing = True
        self._idle = asyncio.Event()
        syncs = self._syncs
        self._kick()
        if self._queue or self._busy or syncs:
            try:
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                pass
        if self._timer is not None:
            self._timer.cancel()
        lost = [p for p in (*self._inflight, *self._queue) if not p.settled]
        if syncs is not None:
            lost += syncs.drop()
        self._inflight, self._queue = [], []
        self.stats.queue_depth = 0
        self.lost += sum(not p.skip for p in lost)
        if lost:
            log.error(
                "audit sink %s: %d event(s) not written before shutdown (within %gs): %s",
                self.sink.name,
                len(lost),
                timeout,
                ", ".join(str(p.event.get("insertId")) for p in lost),
            )
            for p in lost:
                settle(p, AuditUnavailable("the audit trail is closed"))
        if syncs is not None:
            done, _ = await asyncio.wait([syncs.stop()], timeout=max(0.1, until - loop.time()))
            if not done or syncs.syncer.unsynced_bytes:
                log.error(
                    "audit sink %s: %d byte(s) written but not synced before shutdown (%s)",
                    self.sink.name,
                    syncs.syncer.unsynced_bytes,
                    syncs.syncer.last_error or "the sync did not finish in time",
                )
        if self._busy or self._stuck or (syncs is not None and syncs.syncer.running_since is not None):
            log.error("audit sink %s is still stuck in a write or sync; left unclosed", self.sink.name)
        else:
            closing = loop.run_in_executor(self._thread, self.sink.close)
            done, _ = await asyncio.wait([closing], timeout=max(0.1, until - loop.time()))
            if not done:
                log.error("audit sink %s did not close within %gs", self.sink.name, timeout)
            elif (error := closing.exception()) is not None:
                log.error("audit sink %s did not close cleanly: %s", self.sink.name, error)
        self._thread.shutdown(wait=False)
        return self.lost
