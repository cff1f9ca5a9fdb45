"""The audit trail: seal events into the hash chain in request order, write them in batches.

``record(event)`` returns once the event's line has been written to every sink (group commit: the
events that arrive while a batch is being written go out together in the next one, one write per
sink per batch). A sink that fails makes ``record`` raise ``AuditUnavailable``, and the caller
refuses the request (fail closed). Writes run on one dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.audit.chain import Chain
from gateway.audit.sinks import Sink
from gateway.errors import AuditUnavailable

__all__ = ["AuditTrail"]

log = logging.getLogger("spangate.audit")


class AuditTrail:
    def __init__(self, sinks: Sequence[Sink], chain: Chain) -> None:
        self.sinks = list(sinks)
        self.chain = chain
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self.events_written = 0
        self.failures = 0

    async def record(self, event: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        line = self.chain.seal(event)
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((line, done))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        await asyncio.shield(done)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                data = b"".join(line for line, _ in batch)
                try:
                    await loop.run_in_executor(self._writer, self._write_all, data)
                except OSError as exc:
                    self.failures += 1
                    log.error("audit write failed: %s", exc)
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(
                                AuditUnavailable(
                                    f"the audit trail cannot be written: {exc.strerror or exc}"
                                )
                            )
                else:
                    self.events_written += len(batch)
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flusher = None

    def _write_all(self, data: bytes) -> None:
        for sink in self.sinks:
            sink.write(data)

    async def close(self) -> None:
        """Flush what is pending, then close the sinks."""
        while self._flusher is not None:
            await asyncio.sleep(0.001)
        self._writer.shutdown(wait=True)
        for sink in self.sinks:
            sink.close()
