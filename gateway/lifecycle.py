"""The gateway's start and stop: ``Gateway.startup`` and ``Gateway.shutdown`` (and the ASGI
lifespan protocol that runs them).

Start-up makes the first request fast and ``/readyz`` honest: the MCP transport runs, every
issuer's keys are fetched, every identity's Database is warmed, the ``on_startup`` hooks have run
(the reloader's), and only then is the gateway ready. Shutdown (after ``Gateway.drain``, and after
the server cut short what was still running: ``Gateway.cut_short``) lets every call record its
event, then settles writes, flushes the audit trail, and closes the rest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.http import Receive, Send

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["lifespan", "shutdown", "startup"]

log = logging.getLogger("spangate")

# At shutdown, calls still on their way to the audit trail (cancelled by the server's shutdown
# timeout, unwinding) get up to this many 10 ms steps to queue their events.
_RECORD_WAIT_STEPS = 100


async def startup(gateway: Gateway) -> None:
    """Fetch every issuer's keys and warm every identity's Database, then say ready."""
    await gateway.mcp.start()
    for cache in gateway.verifier.caches.values():
        await cache.start()
    await gateway.executor.warm()
    for hook in gateway.on_startup:
        await hook()
    gateway.ready = True


async def shutdown(gateway: Gateway) -> None:
    """Calls the server cancelled record their events first (bounded), then settling writes
    (bounded by ``SPANGATE_SETTLE_SECONDS``: their follow-up events go to the trail), then
    the audit trail (flushed), then the rest (the databases), the last metrics, and last the
    spans still buffered (at most ``tracing.SHUTDOWN_SECONDS``: a collector that does not
    answer never holds the exit)."""
    gateway.draining = True
    gateway.ready = False
    await gateway.mcp.stop()
    for _ in range(_RECORD_WAIT_STEPS):  # a cancelled call queues its event as it unwinds
        if gateway.unrecorded <= 0:
            break
        await asyncio.sleep(0.01)
    await gateway.executor.settle(gateway.settings.settle_seconds)
    if lost := await gateway.audit.close():
        log.error(
            "the last audit flush lost %d event(s) (see the lines above): the process "
            "exits 1",
            lost,
        )
    gateway.executor.close()
    for close in gateway._closers:
        await close()
    await gateway.budgets.store.aclose()
    gateway.metrics.publish(gateway)  # with several workers: this worker's last counts stay
    if gateway.tracing is not None:  # last: bounded (Tracing.aclose), the databases' spans too
        await gateway.tracing.aclose()


async def lifespan(gateway: Gateway, receive: Receive, send: Send) -> None:
    """ASGI's lifespan protocol: ``Gateway.startup`` (a failure is logged and reported to the
    server, which then exits), and ``Gateway.shutdown``."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await gateway.startup()
            except Exception as exc:
                log.exception("start-up failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await gateway.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
