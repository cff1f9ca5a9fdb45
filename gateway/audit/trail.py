"""The audit trail: every event to every sink, each sink with its own chain, writer and durability.

``record(event, write=...)`` returns once the event is as durable in every sink as that sink's
durability says (see ``writer.SinkWriter``: strict, written, batched), and raises ``AuditUnavailable`` when
any sink could not take it: the caller then refuses the request (fail closed). ``available`` says
whether the last write of every sink succeeded, so a gateway can refuse a request before running
its statement while a sink is failing (the refusal's own event probes the sink again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.audit.bounds import DEFAULT_MAX_EVENT_BYTES
from gateway.audit.chain import Members
from gateway.audit.writer import SinkStats, SinkWriter
from gateway.errors import AuditUnavailable

__all__ = ["AuditMetrics", "AuditTrail"]

log = logging.getLogger("spangate.audit")


@dataclass(frozen=True)
class AuditMetrics:
    """A snapshot of the trail's counters: per sink, and totals."""

    sinks: tuple[SinkStats, ...]

    @property
    def events_written(self) -> int:
        return sum(s.events_written for s in self.sinks)

    @property
    def queue_depth(self) -> int:
        return sum(s.queue_depth for s in self.sinks)

    @property
    def failures(self) -> int:
        return sum(s.failures for s in self.sinks)

    @property
    def flush_seconds_max(self) -> float:
        return max((s.flush_seconds_max for s in self.sinks), default=0.0)


class AuditTrail:
    def __init__(
        self, writers: Sequence[SinkWriter], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> None:
        if not writers:
            raise ValueError("an audit trail needs at least one sink")
        self.writers = list(writers)
        self.max_event_bytes = max_event_bytes  # events are built to fit (audit.bounds)
        self.closed = False
        self.lost = 0  # events lost by the last flush (close) or queued after it

    def expect_from(self, expecting: Callable[[], int]) -> None:
        """Tell batched writers how many requests are still on their way (see writer.py)."""
        for writer in self.writers:
            writer.expecting = expecting

    async def start(self) -> None:
        """Open every sink (failures are logged; their requests get 503 until they recover)."""
        await asyncio.gather(*(w.start() for w in self.writers))

    @property
    def events_written(self) -> int:
        return self.metrics().events_written

    @property
    def failures(self) -> int:
        return self.metrics().failures

    @property
    def available(self) -> bool:
        return not self.closed and all(w.healthy for w in self.writers)

    async def record(
        self,
        event: dict[str, Any],
        *,
        write: bool,
        durable_in: Collection[str] = (),
        members: Members | None = None,
    ) -> None:
        """Write ``event`` to every sink; ``write``: the request ran DML (strict by default).

        ``durable_in`` names sinks that already hold the event (a Spanner row committed in the
        write's own transaction): they do not write it again. ``members``: the event's top-level
        members already encoded (``event.build_event_encoded``); the event must not change
        after this call."""
        if self.closed:
            raise AuditUnavailable("the audit trail is closed")
        futures = [
            w.submit(event, write=write, skip=w.sink.name in durable_in, members=members)
            for w in self.writers
        ]
        # A request cancelled while it waits cancels only its wait: its event stays queued and is
        # written (the writer settles futures that are still pending only).
        if len(futures) == 1:
            await futures[0]  # raises AuditUnavailable (the writer sets only it)
            return
        results = await asyncio.shield(asyncio.gather(*futures, return_exceptions=True))
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, AuditUnavailable):
                    raise result
                raise AuditUnavailable("the audit trail cannot be written") from result

    def record_nowait(
        self, event: dict[str, Any], *, write: bool, members: Members | None = None
    ) -> None:
        """Queue ``event`` without waiting (a cancelled request's last word); errors are logged."""
        if self.closed:
            log.error("audit event %s dropped: the trail is closed", event.get("insertId"))
            self.lost += 1
            return
        for writer in self.writers:
            writer.submit(event, write=write, members=members).add_done_callback(_log_failure)

    def metrics(self) -> AuditMetrics:
        return AuditMetrics(tuple(w.snapshot() for w in self.writers))

    async def close(self) -> int:
        """Refuse new events, flush every queued one of every sink (at once), close the sinks;
        returns how many events were lost (``lost``: in any sink; the process's exit says so)."""
        self.closed = True
        self.lost += sum(await asyncio.gather(*(w.close() for w in self.writers)))
        return self.lost


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("an audit event queued without waiting was not written: %s", future.exception())
