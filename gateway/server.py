"""The HTTP server the gateway runs under: one uvicorn configuration for ``serve`` and ``dev``.

uvicorn's httptools protocol reads a request head of any size for as long as the client likes,
parses pipelined requests without limit, and holds a connection whose body never ends.
:class:`GatewayHttpProtocol` bounds all of these before a request reaches the gateway:

- the request line and headers may be at most ``max_header_bytes`` and ``max_headers`` fields:
  beyond that the connection parses no further and gets 431 ``headers-too-large``;
- they must arrive within ``header_timeout`` of their first byte (or of the connection, when
  nothing was sent): else 408 ``request-timeout`` (a silent close when no byte arrived);
- the framing of a chunked body (chunk lines, extensions, trailer fields) is bounded by
  ``max_header_bytes`` between body bytes (431), and a framing error is answered at once (400);
- bytes are parsed in pieces; while a pipelined request waits (at most ``PIPELINE_DEPTH``
  parsed ahead) or a body is buffered up to uvicorn's mark, the rest of a read is held unparsed
  and the transport reads no more;
- a response given before the request body ended closes the connection (the rest of the body is
  never read), so a body that never ends holds nothing once the gateway has answered;
- at most ``max_connections`` connections are open: a new one beyond it closes an idle or slow
  one, or is refused (503 ``server-busy`` and closed) when all have a request in progress; with
  ``max_connections_per_ip``, one peer address holds at most that many;
- a request that is not HTTP/1.1 gets 400 ``request-invalid`` (uvicorn's is text/plain);
- every answer that closes the connection closes it gracefully (FIN, then what still arrives is
  dropped for ``_LINGER_SECONDS``), so a client still sending reads its answer, not a reset.

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

These answers are problem+json written by the server itself: they are not audit events, since no
request reached the gateway; each is a request line of ``spangate.access`` (rate-limited) and
counted in ``/metrics`` (``gateway.refusals``). The body deadline is the gateway's own
(``gateway.http``), so a body too slow is a 408 with its audit event. WebSockets are off: an
upgrade request is served as plain HTTP (and audited like any request); the h11 implementation
is never selected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, cast

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, RequestTimeout, ServerBusy
from gateway.heap import settle_heap
from gateway.http import Receive, Scope, Send, dumps, problem, send_problem
from gateway.logs import configure_logging
from gateway.refusals import REFUSALS
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

# How long a refused connection still reads (and drops) what the client sends after the answer.
_LINGER_SECONDS = 2.0

# Pipelined requests parsed ahead of the one being answered: beyond this the server reads no
# further until answers drain (requests are parsed in pieces of _FEED_BYTES, so a piece of tiny
# requests may queue a few more).
PIPELINE_DEPTH = 8
_FEED_BYTES = 512

# At most one warning about the connection cap per this many seconds (with counts).
_BUSY_LOG_SECONDS = 10.0


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    max_connections: int
    max_connections_per_ip: int = 0
    label: str = "SPANGATE_MAX_CONNECTIONS"  # what the connection cap is called in warnings

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout_seconds,
            max_connections=settings.max_connections,
            max_connections_per_ip=settings.max_connections_per_ip,
        )


class GatewayConfig(uvicorn.Config):
    """A uvicorn Config that carries the limits of :class:`GatewayHttpProtocol` (picklable, so it
    survives a worker spawn)."""

    def __init__(
        self,
        app: Any,
        *,
        limits: ServerLimits,
        drain_seconds: float = 0.0,
        shutdown_timeout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits
        self.drain_seconds = drain_seconds
        self.shutdown_timeout = shutdown_timeout  # then calls still running are cut short
        self.draining = False  # set by GatewayServer on the first SIGTERM/SIGINT
        self.peers: Counter[str] = Counter()  # open connections per peer address (per process)


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
    ) -> None:
        super().__init__(config)
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
            settle_heap()
        if self.started and self._admin is not None:
            await self._serve_admin()
        if self.started:
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
) -> int:
    """Serve until SIGTERM/SIGINT (drained, see :class:`GatewayServer`); 0 after a clean
    shutdown, 1 when the last audit flush lost events (``app.audit.lost``), 3 when start-up
    failed (as uvicorn). ``sockets``: listen on these (a worker of
    ``gateway.workers``, on the socket its supervisor bound) instead of binding host and port;
    ``admin_socket`` likewise for SPANGATE_ADMIN_PORT (else it is bound here, before start-up);
    ``early``: signals received before this (raised again once started, see GatewayServer).
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
    )
    server.run(sockets=sockets)
    if not server.started:
        return 3
    # Audit events the last flush lost (gateway.audit.trail): a clean stop is not claimed.
    return 1 if getattr(getattr(app, "audit", None), "lost", 0) else 0


class _HeadRefused(Exception):
    """Raised in a parser callback: the head is over a limit, parse no further."""


def _raw_problem(error: GatewayError, rid: str) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection."""
    body = dumps(problem(error, rid))
    headers = {
        "content-type": "application/problem+json",
        "content-length": str(len(body)),
        "x-request-id": rid,
        "cache-control": "no-store",
        **{k.lower(): v for k, v in error.headers.items()},
        "connection": "close",
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return STATUS_LINE[error.status] + head.encode("latin-1") + b"\r\n" + body


async def _server_busy(scope: Scope, receive: Receive, send: Send) -> None:
    error = ServerBusy("the server holds as many connections as it may; retry shortly")
    error.headers["Connection"] = "close"
    rid = secrets.token_hex(16)
    client = scope.get("client")
    REFUSALS.note(error, rid, client[0] if client else None, scope.get("method"))
    await send_problem(send, error, rid, head=scope.get("method") == "HEAD")


class _Flow(FlowControl):
    """uvicorn's read flow control, which the protocol may overrule: reading stays paused while
    the pipeline is full or the connection is refused, and bytes held back are fed on resuming."""

    def __init__(self, transport: asyncio.Transport, protocol: GatewayHttpProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        protocol = self._protocol
        if protocol._refused or len(protocol.pipeline) >= PIPELINE_DEPTH:
            return
        super().resume_reading()
        if protocol._held:
            protocol.loop.call_soon(protocol._feed_held)


class _CycleTransport:
    """The transport a request cycle writes to: its close() (an answer with ``Connection:
    close``, a 408, a 503) lingers like the server's own refusals, so the answer is not lost to a
    reset while the client is still sending.

    An answer's head is held until its body is written, and both go in one ``write`` (one
    ``send(2)``, one TCP segment for a small answer, instead of two): uvicorn writes the head on
    ``http.response.start`` and the body on ``http.response.body``, which the gateway sends in
    the same step. A head is never held past the current loop iteration (``call_soon``), nor
    past ``close()``. Nothing else writes to the connection meanwhile: the server's own
    refusals wait while a response is incomplete (``_refuse``)."""

    def __init__(self, protocol: GatewayHttpProtocol) -> None:
        self._protocol = protocol
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._protocol._lingering:
            self._head = None
            return
        head = data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 ")
        if self._head is None and head and data.endswith(b"\r\n\r\n"):
            self._head = data
            self._protocol.loop.call_soon(self._flush)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._protocol.transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._protocol._lingering:
                self._protocol.transport.write(head)

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._protocol.transport.is_closing()

    def close(self) -> None:
        self._flush()
        self._protocol._linger_close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._protocol.transport.get_extra_info(name, default)


class _BusyLog:
    """At most one warning per ``_BUSY_LOG_SECONDS`` about refused or evicted connections."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._last = -_BUSY_LOG_SECONDS
        self._refused = 0
        self._evicted = 0
        self._peer = 0

    def note(self, *, refused: bool, limit: int, peer: bool = False) -> None:
        if peer:
            self._peer += 1
        elif refused:
            self._refused += 1
        else:
            self._evicted += 1
        now = time.monotonic()
        if now - self._last >= _BUSY_LOG_SECONDS:
            log.warning(
                "connection limits (%s %d): %d new connections refused at the cap, %d over "
                "SPANGATE_MAX_CONNECTIONS_PER_IP, %d idle or slow ones closed to make room, since "
                "the last such warning",
                self._label,
                limit,
                self._refused,
                self._peer,
                self._evicted,
            )
            self._last, self._refused, self._peer, self._evicted = now, 0, 0, 0


_busy_logs: dict[str, _BusyLog] = {}


def _busy_log_for(label: str) -> _BusyLog:
    return _busy_logs.setdefault(label, _BusyLog(label))


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads, a head deadline, a bounded
    pipeline and a connection cap (see the module docstring). The limits come from
    :class:`GatewayConfig`."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, GatewayConfig):
            raise TypeError("GatewayHttpProtocol needs a GatewayConfig (gateway.server)")
        self.limits = config.limits
        self._config = config
        self.limit_concurrency = None  # checked in on_headers_complete, answered as problem+json
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True  # the next bytes belong to a request head
        self._head_began = False  # on_message_begin ran during the current feed
        self._head_received = 0  # bytes received since the current head began (over, never under)
        self._head_parsed = 0  # bytes of the request line and header fields parsed
        self._header_count = 0
        self._body_left: int | None = None  # Content-Length still to come; None: chunked or none
        self._framing = 0  # body-phase bytes fed since the last body data (chunk lines, trailers)
        self._held = bytearray()  # bytes read but not yet parsed (the pipeline is full)
        self._refused = False  # a limit was hit: parse nothing more
        # to answer once earlier requests are answered: the refusal and its request id
        self._refusal: tuple[GatewayError, str] | None = None
        self._lingering = False  # answered and closing: what arrives is dropped
        self._running: RequestResponseCycle | None = None
        self._last_active = 0.0
        self._peers = config.peers
        self._busy = _busy_log_for(self.limits.label)
        self._peer: str | None = None  # counted in self._peers while open

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        self._last_active = time.monotonic()
        limit = self.limits.max_connections
        per_ip = self.limits.max_connections_per_ip
        peer = self.client[0] if self.client else None
        if per_ip and peer is not None and self._peers[peer] >= per_ip:
            self._busy.note(refused=True, limit=limit, peer=True)
            self._refuse_connection("connections from your address")
            return
        if len(self.connections) > limit and not self._evict_one():
            # Every connection holds a request in progress: refuse this one at once.
            self._busy.note(refused=True, limit=limit)
            self._refuse_connection("connections")
            return
        if peer is not None:
            self._peer = peer
            self._peers[peer] += 1
        self._arm_head_timer()  # a connection that never sends a byte is closed too

    def _refuse_connection(self, what: str) -> None:
        """A short 503 and an immediate close (no lingering: this must cost next to nothing)."""
        self.connections.discard(self)
        self._refused = True
        self._lingering = True
        error = ServerBusy(f"the server holds as many {what} as it may; retry shortly")
        self.transport.write(_raw_problem(error, self._noted(error)))
        self.transport.close()

    def _evict_one(self) -> bool:
        """Close the connection that costs least to lose: one lingering after its answer, else
        the longest idle keep-alive connection, else the oldest one still sending a head."""
        best: GatewayHttpProtocol | None = None
        best_key: tuple[int, float] | None = None
        for other in self.connections:
            if other is self or not isinstance(other, GatewayHttpProtocol):
                continue
            key = other._eviction_rank()
            if key is not None and (best_key is None or key < best_key):
                best, best_key = other, key
        if best is None:
            return False
        self._busy.note(refused=False, limit=self.limits.max_connections)
        best.connections.discard(best)
        best.transport.close()
        return True

    def _eviction_rank(self) -> tuple[int, float] | None:
        """(rank, since): lower is evicted first; None: a request is in progress."""
        if self.transport is None or self.transport.is_closing():
            return None
        if self._lingering:
            return (0, self._last_active)
        running = self._running
        if self.pipeline or (running is not None and not running.response_complete):
            return None
        if not self._awaiting_head:
            return None
        if self._head_received == 0:
            return (1, self._last_active)  # idle: kept alive, or nothing sent yet
        return (2, self._last_active)  # a head still arriving

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self._peers[self._peer] -= 1
            if self._peers[self._peer] <= 0:
                del self._peers[self._peer]
            self._peer = None
        self._cancel_head_timer()
        self._held.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._refused or self.parser is None:
            return
        if self._held:
            self._held += data
            data, self._held = bytes(self._held), bytearray()
        self._consume(memoryview(data))

    def _feed_held(self) -> None:
        if self._held and not self.flow.read_paused and not self._refused and self.parser:
            self._unset_keepalive_if_required()
            data, self._held = bytes(self._held), bytearray()
            self._consume(memoryview(data))

    def _consume(self, view: memoryview) -> None:
        """Feed ``view`` to the parser in pieces; stop (holding the rest) when reading is paused:
        a pipelined request is queued, or a request body is buffered up to uvicorn's mark."""
        self._last_active = time.monotonic()
        while view:
            if self._refused or self.parser is None:
                return
            if self.flow.read_paused:
                self._held = bytearray(view)  # at most one read: the transport reads no more
                return
            if self._awaiting_head:
                room = self.limits.max_header_bytes - self._head_received
                size = min(_FEED_BYTES, room)
            elif self._body_left:
                size = self._body_left  # the rest of a Content-Length body, at once
            else:
                size = _FEED_BYTES
            piece, view = view[:size], view[size:]
            awaiting = self._awaiting_head
            if not awaiting and self._body_left is None:
                self._framing += len(piece)
            self._head_began = False
            if not self._feed(piece):
                return
            if self._awaiting_head:
                if self._head_began:
                    # A head began in this piece: count all of it (what preceded it belonged
                    # to the request before, so the count is over, never under).
                    self._head_received = len(piece)
                elif awaiting and self._head_received:
                    self._head_received += len(piece)
                if self._head_received and self._head_timer is None:
                    self._arm_head_timer()
                if self._head_received >= self.limits.max_header_bytes:
                    self._refuse(
                        HeadersTooLarge(
                            f"the request line and headers exceed "
                            f"{self.limits.max_header_bytes} bytes"
                        )
                    )
                    return
            elif self._framing > self.limits.max_header_bytes:
                self._refuse(
                    HeadersTooLarge(
                        f"the chunk lines or trailer fields of the body exceed "
                        f"{self.limits.max_header_bytes} bytes"
                    )
                )
                return

    def _feed(self, data: memoryview) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadRefused):
                self._refuse(HeadersTooLarge(str(exc.__context__)))
            else:
                self._refuse(
                    BadRequest(f"not a valid HTTP/1.1 request: {exc}", code="request-invalid")
                )
            return False
        except httptools.HttpParserUpgrade:
            # WebSockets are off: the request was served as HTTP; what follows the upgrade
            # request is not HTTP, so the connection closes after the answer.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            self._refused = True
            self._held.clear()
            return False
        return True

    def _unsupported_upgrade_warning(self) -> None:
        pass  # an Upgrade header is ignored by design (ws="none"), not worth a warning

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True
        self._head_began = True
        self._head_parsed = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        if self._head_parsed > self.limits.max_header_bytes:
            raise _HeadRefused(f"the request line exceeds {self.limits.max_header_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._awaiting_head:
            return  # a trailer field of a chunked body: ignored, its bytes bounded as framing
        self._header_count += 1
        self._head_parsed += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            raise _HeadRefused(f"the request has more than {self.limits.max_headers} header fields")
        if self._head_parsed > self.limits.max_header_bytes:
            raise _HeadRefused(
                f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_received = 0
        self._framing = 0
        self._cancel_head_timer()
        chunked = any(k == b"transfer-encoding" for k, _ in self.headers)
        length = next((v for k, v in self.headers if k == b"content-length"), None)
        self._body_left = None
        if length is not None and not chunked and length.strip().isdigit():
            self._body_left = int(length)
        limit = self.limits.max_connections
        if len(self.tasks) >= limit:
            self._busy.note(refused=True, limit=limit)
            app, self.app = self.app, _server_busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        # Only now: a head refused in super() (an invalid URL) is not this cycle's body.
        self._awaiting_head = False
        if self.cycle is not None:
            self.cycle.transport = _CycleTransport(self)  # type: ignore[assignment]
            if self._config.draining:  # the answer closes the connection: reconnect elsewhere
                self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        self._framing = 0
        if self._body_left is not None:
            self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True  # what follows is the next request's head
        self._body_left = None

    def on_response_complete(self) -> None:
        if self._lingering:
            self.server_state.total_requests += 1
            return
        if self._refusal is not None:
            # A later request was refused: answer the earlier ones, then the refusal.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
                return
            (error, rid), self._refusal = self._refusal, None
            self.transport.write(_raw_problem(error, rid))
            self._linger_close()
            return
        cycle = self.cycle
        unread = cycle is not None and cycle.response_complete and cycle.more_body
        super().on_response_complete()
        if unread and not self.transport.is_closing():
            # Answered before the body ended (401, 413...): the rest is never read, so a body
            # that never ends cannot hold the connection.
            self._linger_close()
        elif not self.transport.is_closing():
            if self._head_received:
                # The next request's head is arriving: its own deadline runs, not keep-alive.
                self._unset_keepalive_if_required()
            self.flow.resume_reading()  # the pipeline shrank: parse what is held back

    # -- deadlines and refusals ------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._lingering:
            return
        if self._head_received == 0:
            self.transport.close()  # nothing sent at all: no request to answer
            return
        self._refuse(
            RequestTimeout(
                f"the request line and headers did not arrive within "
                f"{self.limits.header_timeout:g} seconds"
            )
        )

    def _refuse(self, error: GatewayError) -> None:
        """Answer a request that broke a limit (in its head, or in the framing of its body) and
        close; requests before it are answered first."""
        self._refused = True
        self._held.clear()
        self._cancel_head_timer()
        log.debug("%s from %s: %s", error.code, self.client, error.detail)
        rid = self._noted(error)
        broken = self.cycle if not self._awaiting_head and self.cycle is not None else None
        if broken is not None:
            # Its body cannot be read: its application sees a disconnect now (not at the body
            # deadline), and the refusal is the answer.
            broken.disconnected = True
            broken.message_event.set()
            if any(c is broken for c, _ in self.pipeline):  # queued: it never runs
                self.pipeline = deque(p for p in self.pipeline if p[0] is not broken)
            if broken.response_started and not broken.response_complete:
                self.transport.close()  # an answer is half written: nothing else can follow
                return
        running = self._running
        owed = bool(self.pipeline) or (
            running is not None and running is not broken and not running.response_complete
        )
        if owed:
            self._refusal = (error, rid)  # written once the requests before it are answered
            self.flow.pause_reading()
            return
        self.transport.write(_raw_problem(error, rid))
        self._linger_close()

    def _noted(self, error: GatewayError) -> str:
        """A refusal's request id, the refusal counted and logged (``gateway.refusals``)."""
        rid = secrets.token_hex(16)
        REFUSALS.note(error, rid, self.client[0] if self.client else None)
        return rid

    def _linger_close(self) -> None:
        """Close after the answer: FIN now, and what the client still sends is read and dropped
        for a moment, so its TCP stack does not reset the connection (and discard the answer)
        before the client has read it."""
        if self._lingering:
            return
        self._lingering = True
        self._refused = True
        self._held.clear()
        self._last_active = time.monotonic()
        self._unset_keepalive_if_required()
        if self.transport.is_closing() or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.read_paused = False
        self.transport.resume_reading()  # drop what arrives, so nothing unread resets the close
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
