"""The HTTP protocol the gateway serves with: uvicorn's httptools protocol, bounded.

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

These answers are problem+json written by the server itself: they are not audit events, since no
request reached the gateway; each is a request line of ``spangate.access`` (rate-limited) and
counted in ``/metrics`` (``gateway.refusals``). The body deadline is the gateway's own
(``gateway.http``), so a body too slow is a 408 with its audit event. WebSockets are off: an
upgrade request is served as plain HTTP (and audited like any request); the h11 implementation
is never selected.

The limits come from :class:`GatewayConfig` (``ServerLimits``), which ``gateway.server`` builds
from the settings.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

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
from gateway.http import Receive, Scope, Send, dumps, problem, send_problem
from gateway.refusals import REFUSALS
from gateway.settings import Settings

__all__ = ["PIPELINE_DEPTH", "GatewayConfig", "GatewayHttpProtocol", "ServerLimits"]

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
            raise TypeError("GatewayHttpProtocol needs a GatewayConfig (gateway.http_protocol)")
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
