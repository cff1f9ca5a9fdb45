"""The HTTP server the gateway runs under: one uvicorn configuration for ``serve`` and ``dev``.

Requests are read by :class:`~gateway.http_protocol.GatewayHttpProtocol` (``gateway.http_protocol``:
uvicorn's httptools protocol with bounded heads, pipelines, bodies and connections).
Once started, the server freezes its start-up heap out of the garbage collector's later
collections (``gateway.heap``: a full collection walking it held the event loop ~70 ms).

Shutdown (:class:`GatewayServer`): the first SIGTERM or SIGINT starts a drain: the application
is told (``/readyz`` answers 503 ``draining``), every answer from then on closes its connection
(``Connection: close``: a client behind a connection-level balancer reconnects elsewhere), and the
server keeps listening for ``drain_seconds``; then uvicorn's graceful shutdown: the listener
closes, idle connections close, requests in flight get ``shutdown_timeout_seconds`` to finish;
then the calls still running are stopped (``app.cut_short()``) and each is answered 503
``shutting-down`` (problem+json, with its request id) and audited so, within ``ANSWER_SECONDS``;
what still runs after that is cancelled (each still leaving its audit event), and the lifespan
shutdown settles writes and flushes the audit trail. A second signal ends the drain at once; a
third stops without waiting; a signal within ``ECHO_SECONDS`` of the one before counts as that
one (``StopSignals``). The exit code is 0: the signal is handled, not re-raised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import Any, cast

import uvicorn
from uvicorn.server import ServerState

from gateway.heap import freeze_startup_heap, unfreeze_heap
from gateway.http_protocol import PIPELINE_DEPTH, GatewayConfig, GatewayHttpProtocol, ServerLimits
from gateway.logs import configure_logging
from gateway.settings import Settings

__all__ = [
    "GatewayConfig",
    "GatewayHttpProtocol",
    "ECHO_SECONDS",
    "GatewayServer",
    "PIPELINE_DEPTH",
    "ServerLimits",
    "StopSignals",
    "admin_config",
    "bind_admin_socket",
    "run_server",
    "server_config",
]

log = logging.getLogger("spangate.server")


def server_config(app: Any, settings: Settings, *, log_level: str | None = None) -> GatewayConfig:
    """The one server configuration of ``spangate serve`` and ``spangate dev``."""
    limits = ServerLimits.from_settings(settings)
    return GatewayConfig(
        app,
        limits=limits,
        drain_seconds=settings.drain_seconds,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        host=settings.host,
        port=settings.port,
        http=GatewayHttpProtocol,
        ws="none",  # an Upgrade header is ignored: the request is plain HTTP, audited as such
        lifespan="on",
        log_level=log_level or settings.log_level,
        # uvicorn's own loggers go through the gateway's formatter (gateway.logs), and its
        # access log is off: the gateway logs one line per request itself, with what it knows
        # (route, query, code, principal, trace), and the audit trail records every call.
        log_config=None,
        access_log=False,
        server_header=False,
        # The client address is the TCP peer unless it is in SPANGATE_TRUSTED_PROXIES (the
        # gateway reads X-Forwarded-For itself): uvicorn must not rewrite it from any header.
        proxy_headers=False,
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        # Once the listener closed: requests in flight get the shutdown timeout, then those still
        # running are cut short and answered 503 shutting-down within ANSWER_SECONDS; what still
        # runs then is cancelled (each still leaves its event). A stuck client or sink never
        # holds up the exit.
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds + ANSWER_SECONDS,
        # GatewayHttpProtocol answers over-capacity requests itself, as problem+json.
        limit_concurrency=None,
        # Not used (the protocol is GatewayHttpProtocol), bounded all the same.
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def admin_config(app: Any, config: GatewayConfig) -> GatewayConfig:
    """The admin port's server configuration (``gateway.admin``): the API's head limits and
    keep-alive, a connection budget of its own, no lifespan (the API server runs it)."""
    from gateway.admin import ADMIN_MAX_CONNECTIONS

    limits = replace(
        config.limits,
        max_connections=ADMIN_MAX_CONNECTIONS,
        max_connections_per_ip=0,
        label="the admin port's cap",
    )
    admin = GatewayConfig(
        app,
        limits=limits,
        http=GatewayHttpProtocol,
        ws="none",
        lifespan="off",
        log_level=config.log_level,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=config.timeout_keep_alive,
        limit_concurrency=None,
        h11_max_incomplete_event_size=config.h11_max_incomplete_event_size,
    )
    admin.load()
    return admin


def bind_admin_socket(settings: Settings) -> socket.socket:
    """The admin port's socket, bound (not yet listening) on SPANGATE_HOST; exits 3 (as uvicorn
    does for the API port) when the address is taken."""
    config = uvicorn.Config(cast(Any, None), host=settings.host, port=settings.admin_port)
    return config.bind_socket()


ECHO_SECONDS = 1.0  # a stop signal this soon after the one counted is the same stop
# After the shutdown timeout: how long calls cut short get to be answered 503 shutting-down and
# audited (their event written) before whatever still runs is cancelled.
ANSWER_SECONDS = 7.0


class StopSignals:
    """Counts stop signals (SIGTERM, SIGINT), each stop once: a terminal's Ctrl-C or an
    orchestrator's SIGTERM sent to a whole process group reaches this process and every wrapper
    in the group, and a wrapper that forwards what it got delivers the same stop a second time,
    a moment later. A signal within ``ECHO_SECONDS`` of the last one counted is taken for such an
    echo; a second signal sent on purpose (later than that) still counts. Safe in a signal
    handler (no locks, no I/O)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None
        self.counted = 0

    def count(self) -> bool:
        """Note one signal; True when it counts (a new stop), False for an echo."""
        now = self._clock()
        if self._last is not None and now - self._last < ECHO_SECONDS:
            return False
        self._last = now
        self.counted += 1
        return True


class GatewayServer(uvicorn.Server):
    """uvicorn's Server with a drain before its graceful shutdown (see the module docstring).

    ``on_drain`` is called (on the event loop) when the drain starts: the application's cue to
    say not-ready. ``parent``: a worker's supervisor pid; when the worker finds itself orphaned
    (its parent gone), it drains and stops as if it had been sent SIGTERM. ``admin``: the admin
    port's socket and app (``gateway.admin``), served from the end of start-up to the end of
    shutdown, with its own connection count. ``early``: signals received before the server
    installed its handlers (a worker's, ``gateway.workers``), raised again once it has started.
    ``freeze_heap``: once started, what start-up built is frozen out of the garbage collector's
    later collections, and unfrozen after the shutdown (``gateway.heap``).

    Stop signals (SIGTERM, SIGINT) are counted once per stop (``StopSignals``): a signal that
    comes within ``ECHO_SECONDS`` of the one counted before it is the same stop delivered twice
    (a process group's signal that also reaches a wrapper which forwards it), not a second."""

    config: GatewayConfig

    def __init__(
        self,
        config: GatewayConfig,
        *,
        on_drain: Callable[[], None] | None = None,
        on_cut: Callable[[], int] | None = None,
        parent: int | None = None,
        admin: tuple[socket.socket, Any] | None = None,
        early: list[int] | None = None,
        freeze_heap: bool = True,
    ) -> None:
        super().__init__(config)
        self._freeze_heap = freeze_heap
        self._on_drain = on_drain
        self._on_cut = on_cut
        self._parent = parent
        self._signals = 0  # SIGTERM/SIGINT received (each stop counted once: StopSignals)
        self._stops = StopSignals()
        self._early = early if early is not None else []
        self._drain_until: float | None = None
        self._drain_told = False
        self._admin = admin
        self._admin_state = ServerState()
        self._admin_server: asyncio.base_events.Server | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            if self._freeze_heap:  # what start-up built, out of later collections (gateway.heap)
                freeze_startup_heap()
            if self._admin is not None:
                await self._serve_admin()
            # Signals a worker received before any handler of the server was installed
            # (``gateway.workers``): now acted on, in the order they came.
            for sig in self._early:
                signal.raise_signal(sig)
        self._early = []

    async def _serve_admin(self) -> None:
        if self._admin is not None:
            sock, app = self._admin
            config = admin_config(app, self.config)
            state = self._admin_state
            state.default_headers = self.server_state.default_headers

            def protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
                return GatewayHttpProtocol(config, state, {}, _loop)

            loop = asyncio.get_running_loop()
            self._admin_server = await loop.create_server(
                protocol, sock=sock, backlog=self.config.backlog
            )
            host, port = sock.getsockname()[:2]
            log.info("admin port (/healthz, /readyz, /metrics) on %s:%d", host, port)

    async def _wait_tasks_to_complete(self) -> None:
        """Requests in flight get the shutdown timeout; then ``on_cut`` stops the calls still
        running, which are answered 503 ``shutting-down`` (and audited so) within
        ``ANSWER_SECONDS``; uvicorn cancels what still runs after that."""
        try:
            async with asyncio.timeout(self.config.shutdown_timeout):
                await super()._wait_tasks_to_complete()
            return
        except TimeoutError:
            pass
        cut = self._on_cut() if self._on_cut is not None else 0
        log.warning(
            "shutdown timeout (%g s) over: %d call(s) still running stopped, each answered 503 "
            "shutting-down (%d request(s) in flight get %g s more, then are cancelled)",
            self.config.shutdown_timeout,
            cut,
            len(self.server_state.tasks),
            ANSWER_SECONDS,
        )
        await super()._wait_tasks_to_complete()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if self._freeze_heap:  # collectable (and finalized) at exit again (gateway.heap)
                unfreeze_heap()
            # Last: /healthz answered while requests finished and the trail was flushed.
            if self._admin_server is not None:
                self._admin_server.close()
                for connection in list(self._admin_state.connections):
                    connection.shutdown()
                self._admin_server = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only flags here (no logging, no loop calls); on_tick acts on them.
        # Not recorded in _captured_signals: uvicorn would re-raise it after the shutdown, and
        # the exit code would be the signal's instead of 0.
        if not self._stops.count():
            return  # the same stop delivered twice (StopSignals)
        self._signals += 1
        if not self.started or self._signals == 2:
            self.should_exit = True  # not serving yet, or a second signal: no (more) drain
        elif self._signals > 2:
            self.force_exit = True  # a third: stop without waiting for requests
        self.config.draining = True

    async def on_tick(self, counter: int) -> bool:
        if (
            self._parent is not None
            and counter % 10 == 0
            and not self.config.draining
            and os.getppid() != self._parent
        ):
            log.error("the supervisor (pid %d) is gone: stopping", self._parent)
            self._signals = 1
            self.config.draining = True
        if self.config.draining and not self._drain_told:
            self._drain_told = True
            drain = 0.0 if self.should_exit else self.config.drain_seconds
            self._drain_until = time.monotonic() + drain
            log.info(
                "stopping: /readyz says 503 draining; serving %g s more, then requests in flight "
                "get %g s (then those still running are answered 503 shutting-down)",
                drain,
                self.config.shutdown_timeout,
            )
            if self._on_drain is not None:
                self._on_drain()
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        exiting = await super().on_tick(counter)
        self._admin_state.default_headers = self.server_state.default_headers
        return exiting


def run_server(
    app: Any,
    settings: Settings,
    *,
    log_level: str | None = None,
    sockets: list[socket.socket] | None = None,
    parent: int | None = None,
    admin_socket: socket.socket | None = None,
    early: list[int] | None = None,
    freeze_heap: bool = True,
) -> int:
    """Serve until SIGTERM/SIGINT (drained, see :class:`GatewayServer`); 0 after a clean
    shutdown, 1 when the last audit flush lost events (``app.audit.lost``), 3 when start-up
    failed (as uvicorn). ``sockets``: listen on these (a worker of
    ``gateway.workers``, on the socket its supervisor bound) instead of binding host and port;
    ``admin_socket`` likewise for SPANGATE_ADMIN_PORT (else it is bound here, before start-up);
    ``early``: signals received before this (raised again once started, see GatewayServer);
    ``freeze_heap``: see GatewayServer (off for a server run inside another program's process).
    ``app.drain()``, when the app has it, is the drain's cue. Logging: ``SPANGATE_LOG_FORMAT``
    for every logger (``gateway.logs``)."""
    configure_logging(settings.log_format, log_level or settings.log_level)
    drain = getattr(app, "drain", None)
    cut = getattr(app, "cut_short", None)
    admin = None
    if settings.admin_port:
        from gateway.admin import AdminApp

        sock = admin_socket if admin_socket is not None else bind_admin_socket(settings)
        admin = (sock, AdminApp(app))
    server = GatewayServer(
        server_config(app, settings, log_level=log_level),
        on_drain=drain if callable(drain) else None,
        on_cut=cut if callable(cut) else None,
        parent=parent,
        admin=admin,
        early=early,
        freeze_heap=freeze_heap,
    )
    server.run(sockets=sockets)
    if not server.started:
        return 3
    # Audit events the last flush lost (gateway.audit.trail): a clean stop is not claimed.
    return 1 if getattr(getattr(app, "audit", None), "lost", 0) else 0
