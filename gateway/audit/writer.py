"""One sink's writer: its own hash chain, its own thread, group commit with a bounded window.

Each event is queued with an urgency. A ``strict`` event starts a flush at once (with whatever is
already queued: events that arrive during a flush go together in the next one). ``batched`` events
start at most one flush per ``window``: a flush waits until ``window`` has passed since the
previous one started (at once when the sink was idle that long) or until ``max_batch`` events are
queued, so under load many requests share one fsync or one commit, the sink does at most one per
window, and no event waits more than a window plus a flush. The window is only waited out while
``expecting()`` says other requests are on their way to the trail: with nobody left to join the
batch, waiting would add latency and save nothing, so the flush starts at once (a lone caller
sending requests back to back pays no window). Either way the caller's future
resolves only once its event is durable in this sink, or fails with ``AuditUnavailable``.

Events are sealed into the chain on the writer thread, in queue order, right before the write; a
batch that cannot be written is rolled back out of the chain, so the trail never has a gap, and the
sink is opened again for the next batch. Not thread-safe: ``submit`` is called on the event loop.

Bounded: a sink with a ``deadline`` (seconds; the Spanner sink) has each batch refused with
``AuditUnavailable`` once it has waited that long; while that write is still stuck on the writer
thread, later batches are refused at once (never sealed, so still no gap), and a sink's
``unavailable()`` (checked on the event loop) refuses a batch before it is sent. ``close`` flushes
what it can within ``CLOSE_TIMEOUT_SECONDS`` and logs what it could not. The writer thread is a
daemon: a write stuck in a sink never holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

from gateway.audit.chain import Chain
from gateway.audit.sinks import Sealed, Sink
from gateway.errors import AuditUnavailable

__all__ = ["CLOSE_TIMEOUT_SECONDS", "Durability", "SinkStats", "SinkWriter"]

log = logging.getLogger("spangate.audit")

Durability = Literal["strict", "batched"]

CLOSE_TIMEOUT_SECONDS = 5.0

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _DaemonThread(Executor):
    """One daemon worker thread running jobs in order (a ThreadPoolExecutor's threads are joined
    at interpreter exit: one stuck in a sink would keep the process from exiting)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                future.set_exception(exc)

        self._jobs.put(job)
        return future

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)
        if wait:
            self._thread.join()


@dataclass
class SinkStats:
    """Counters of one sink (monotonic, except ``queue_depth``)."""

    sink: str
    events_written: int = 0
    batches: int = 0
    failures: int = 0
    queue_depth: int = 0
    flush_seconds_total: float = 0.0
    flush_seconds_max: float = 0.0
    last_error: str | None = None


@dataclass
class _Pending:
    event: dict[str, Any]
    done: asyncio.Future[None]
    urgent: bool
    queued: float
    skip: bool = False  # already durable in this sink (a Spanner row written in its transaction)


class SinkWriter:
    def __init__(
        self,
        sink: Sink,
        chain: Chain,
        *,
        durability: Durability | None,
        window: float,
        max_batch: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.chain = chain
        self.durability = durability  # None: strict for writes, batched for everything else
        self.window = window
        self.max_batch = max_batch
        self.stats = SinkStats(sink.name)
        self._clock = clock
        self._queue: list[_Pending] = []
        self._urgent = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = _DaemonThread(f"audit-{sink.name}")
        self._stuck: asyncio.Future[BaseException | None] | None = None  # a write past deadline
        self._inflight: list[_Pending] = []
        self._open = False
        self._closing = False
        self._last_flush = -float("inf")  # when the last flush started (clock time)
        # How many requests may still submit an event soon (set by the gateway); the default
        # assumes some always may, which makes ``window`` a fixed minimum spacing of flushes.
        self.expecting: Callable[[], int] = lambda: 1
        self.healthy = True

    async def start(self) -> None:
        """Open the sink now (a failure is logged; the next batch tries again and, failing,
        refuses its requests)."""
        error = await asyncio.get_running_loop().run_in_executor(self._thread, self._open_sink)
        if error is not None:
            self.healthy = False
            self.stats.last_error = str(error)
            log.error("audit sink %s cannot be opened: %s", self.sink.name, error)

    def _open_sink(self) -> BaseException | None:
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

    def strict_for(self, write: bool) -> bool:
        return self.durability == "strict" or (self.durability is None and write)

    def submit(
        self, event: dict[str, Any], *, write: bool, skip: bool = False
    ) -> asyncio.Future[None]:
        """Queue ``event``; the future resolves once it is durable here (or is skipped)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._closing:
            done.set_exception(AuditUnavailable("the audit trail is closed"))
            return done
        urgent = self.strict_for(write)
        self._queue.append(_Pending(event, done, urgent, self._clock(), skip))
        self._urgent += urgent
        self.stats.queue_depth = len(self._queue)
        if self._wake is None:
            self._wake = asyncio.Event()
        if urgent or len(self._queue) >= self.max_batch or self.expecting() == 0:
            self._wake.set()
        if self._task is None:
            self._task = loop.create_task(self._run(), name=f"audit-{self.sink.name}")
        return done

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if not (
                    self._urgent
                    or self._closing
                    or len(self._queue) >= self.max_batch
                    or self.expecting() == 0
                ):
                    remaining = self._last_flush + self.window - self._clock()
                    if remaining > 0:
                        self._wake.clear()
                        try:
                            async with asyncio.timeout(remaining):
                                await self._wake.wait()
                        except TimeoutError:
                            pass
                        continue
                self._last_flush = self._clock()
                batch = self._queue[: self.max_batch]
                del self._queue[: len(batch)]
                self._urgent -= sum(p.urgent for p in batch)
                self.stats.queue_depth = len(self._queue)
                started = time.perf_counter()
                self._inflight = batch
                error = await self._dispatch(loop, batch)
                self._inflight = []
                elapsed = time.perf_counter() - started
                self.stats.batches += 1
                self.stats.flush_seconds_total += elapsed
                self.stats.flush_seconds_max = max(self.stats.flush_seconds_max, elapsed)
                self._settle(batch, error)
        finally:
            self._task = None

    async def _dispatch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]
    ) -> BaseException | None:
        """Write ``batch`` on the writer thread, within the sink's deadline if it has one."""
        if self._stuck is not None and not self._stuck.done():
            return TimeoutError(f"a previous write to {self.sink.name} is still unfinished")
        probe: Callable[[], str | None] | None = getattr(self.sink, "unavailable", None)
        if probe is not None and (reason := probe()) is not None:
            return OSError(reason)
        deadline: float | None = getattr(self.sink, "deadline", None)
        future = loop.run_in_executor(self._thread, self._write, batch)
        if deadline is None:
            return await future
        done, _ = await asyncio.wait([future], timeout=deadline)
        if done:
            return future.result()
        self._stuck = future  # the thread goes on; whatever it ends with is only logged
        future.add_done_callback(self._late)
        return TimeoutError(f"{self.sink.name} did not answer within {deadline:g}s")

    def _late(self, future: asyncio.Future[BaseException | None]) -> None:
        if future.cancelled():
            return
        error = future.result()
        if error is None:
            log.warning(
                "audit sink %s: a batch refused for its deadline was written after all",
                self.sink.name,
            )
        else:
            log.info("audit sink %s: a batch past its deadline failed: %s", self.sink.name, error)

    def _settle(self, batch: list[_Pending], error: BaseException | None) -> None:
        if error is None:
            self.healthy = True
            self.stats.events_written += sum(not p.skip for p in batch)
            for p in batch:
                if not p.done.done():
                    p.done.set_result(None)
            return
        self.healthy = False
        self.stats.failures += 1
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self.stats.last_error = reason
        log.error(
            "audit sink %s failed; %d event(s) refused: %s", self.sink.name, len(batch), reason
        )
        for p in batch:
            if not p.done.done():
                p.done.set_exception(
                    AuditUnavailable("the audit trail cannot be written")  # which sink: the log
                )

    def _write(self, batch: list[_Pending]) -> BaseException | None:
        """On the writer thread: seal, write, and undo the sealing when the write fails."""
        mark = self.chain.mark()
        try:
            if (error := self._open_sink()) is not None:
                raise error
            sealed = [Sealed(*self.chain.seal(p.event)) for p in batch if not p.skip]
            if sealed:
                self.sink.write(sealed)
        except Exception as exc:  # noqa: BLE001 - any sink failure refuses its requests
            self.chain.rollback(mark)
            self._open = False
            return exc
        return None

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Flush everything queued (at once, without waiting for the window), then close; within
        ``timeout`` seconds: events not written by then are refused and logged."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        task = self._task
        if task is not None:
            await asyncio.wait([task], timeout=timeout)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        lost = [p for p in (*self._inflight, *self._queue) if not p.done.done()]
        self._inflight, self._queue = [], []
        self.stats.queue_depth = 0
        if lost:
            log.error(
                "audit sink %s: %d event(s) not written before shutdown (within %gs): %s",
                self.sink.name,
                len(lost),
                timeout,
                ", ".join(str(p.event.get("insertId")) for p in lost),
            )
            for p in lost:
                p.done.set_exception(AuditUnavailable("the audit trail is closed"))
        if self._stuck is not None and not self._stuck.done():
            log.error("audit sink %s is still stuck in a write; left unclosed", self.sink.name)
        else:
            closing = loop.run_in_executor(self._thread, self.sink.close)
            done, _ = await asyncio.wait([closing], timeout=max(0.1, until - loop.time()))
            if not done:
                log.error("audit sink %s did not close within %gs", self.sink.name, timeout)
            elif (error := closing.exception()) is not None:
                log.error("audit sink %s did not close cleanly: %s", self.sink.name, error)
        self._thread.shutdown(wait=False)
