"""The HTTP server the gateway runs under: one uvicorn configuration for ``serve`` and ``dev``.

uvicorn's httptools protocol reads a request head of any size for as long as the client likes, and
holds a connection whose body never ends. :class:`GatewayHttpProtocol` bounds both before a request
reaches the gateway:

- the request line and headers may be at most ``max_header_bytes`` and ``max_headers`` fields:
  beyond that the connection reads no further and gets 431 ``headers-too-large``;
- they must arrive within ``header_timeout`` of the first byte (or of the connection, when nothing
  was sent): else 408 ``request-timeout`` (a silent close when no byte arrived);
- a response given before the request body ended closes the connection (the rest of the body is
  never read), so a body that never ends holds nothing once the gateway has answered;
- a request on a connection beyond ``max_connections`` gets 503 ``server-busy``;
- a request that is not HTTP/1.1 gets 400 ``request-invalid`` (uvicorn's is text/plain).

These answers are problem+json written by the server itself: they are not audit events, since no
request reached the gateway. The body deadline is the gateway's own (``gateway.http``), so a body
too slow is a 408 with its audit event. WebSockets are off: an upgrade request is served as plain
HTTP (and audited like any request); the h11 implementation is never selected.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, RequestTimeout, ServerBusy
from gateway.http import Receive, Scope, Send, dumps, problem, send_problem
from gateway.settings import Settings

__all__ = [
    "GRACEFUL_SHUTDOWN_SECONDS",
    "GatewayConfig",
    "GatewayHttpProtocol",
    "ServerLimits",
    "run_server",
    "server_config",
]

log = logging.getLogger("spangate.server")

# SIGTERM: requests in flight get this long to finish, then their connections close (each still
# leaves its event); a stuck client or sink never holds up the exit.
GRACEFUL_SHUTDOWN_SECONDS = 10

# How long a refused connection still reads (and drops) what the client sends after the answer.
_LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout_seconds,
            max_connections=settings.max_connections,
        )


class GatewayConfig(uvicorn.Config):
    """A uvicorn Config that carries the limits of :class:`GatewayHttpProtocol` (picklable, so it
    survives a worker spawn)."""

    def __init__(self, app: Any, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits


def server_config(app: Any, settings: Settings, *, log_level: str | None = None) -> GatewayConfig:
    """The one server configuration of ``spangate serve`` and ``spangate dev``."""
    limits = ServerLimits.from_settings(settings)
    return GatewayConfig(
        app,
        limits=limits,
        host=settings.host,
        port=settings.port,
        http=GatewayHttpProtocol,
        ws="none",  # an Upgrade header is ignored: the request is plain HTTP, audited as such
        lifespan="on",
        log_level=log_level or settings.log_level,
        access_log=False,  # the audit trail records every request
        server_header=False,
        # The client address is the TCP peer unless it is in SPANGATE_TRUSTED_PROXIES (the
        # gateway reads X-Forwarded-For itself): uvicorn must not rewrite it from any header.
        proxy_headers=False,
        timeout_keep_alive=settings.keepalive_timeout_seconds,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        # GatewayHttpProtocol answers over-capacity requests itself, as problem+json.
        limit_concurrency=None,
        # Not used (the protocol is GatewayHttpProtocol), bounded all the same.
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


def run_server(app: Any, settings: Settings, *, log_level: str | None = None) -> int:
    """Serve until SIGINT/SIGTERM; 0 after a clean shutdown, 3 when start-up failed (as uvicorn)."""
    server = uvicorn.Server(server_config(app, settings, log_level=log_level))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, as uvicorn.run does
        pass
    return 0 if server.started else 3


class _HeadRefused(Exception):
    """Raised in a parser callback: the head is over a limit, parse no further."""


def _raw_problem(error: GatewayError) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection."""
    rid = secrets.token_hex(16)
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
    await send_problem(send, error, secrets.token_hex(16), head=scope.get("method") == "HEAD")


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads, a head deadline and a connection
    cap (see the module docstring). The limits come from :class:`GatewayConfig`."""

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
        self.limit_concurrency = None  # checked in on_headers_complete, answered as problem+json
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True  # the next bytes belong to a request head
        self._head_received = 0  # bytes received since the current head began
        self._head_parsed = 0  # bytes of the request line and header fields parsed
        self._header_count = 0
        self._refused = False  # a limit was hit: read nothing more

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._refused or self.parser is None:
            return
        view = memoryview(data)
        while view:
            if self._awaiting_head:
                if self._head_timer is None:
                    self._arm_head_timer()
                # Feed no more than the head may still hold: its bytes are never buffered
                # beyond the limit, however large the head the client sends.
                room = self.limits.max_header_bytes - self._head_received
                piece, view = view[:room], view[room:]
                self._head_received += len(piece)
            else:
                piece, view = view, view[len(view) :]
            if not self._feed(piece):
                return
            if self._awaiting_head and self._head_received >= self.limits.max_header_bytes:
                self._refuse_head(
                    HeadersTooLarge(
                        f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
                    )
                )
                return

    def _feed(self, data: memoryview) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadRefused):
                self._refuse_head(HeadersTooLarge(str(exc.__context__)))
            else:
                self._refuse_head(
                    BadRequest(f"not a valid HTTP/1.1 request: {exc}", code="request-invalid")
                )
            return False
        except httptools.HttpParserUpgrade:
            # WebSockets are off: the request was served as HTTP; what follows the upgrade
            # request is not HTTP, so the connection closes after the answer.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            self._refused = True
            return False
        return True

    def _unsupported_upgrade_warning(self) -> None:
        pass  # an Upgrade header is ignored by design (ws="none"), not worth a warning

    # -- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True
        self._head_parsed = 0
        self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        if self._head_parsed > self.limits.max_header_bytes:
            raise _HeadRefused(f"the request line exceeds {self.limits.max_header_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
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
        self._awaiting_head = False
        self._head_received = 0
        self._cancel_head_timer()
        limit = self.limits.max_connections
        if len(self.connections) > limit or len(self.tasks) >= limit:
            log.warning("over %d connections: a request got 503 server-busy", limit)
            app, self.app = self.app, _server_busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True  # what follows is the next request's head

    def on_response_complete(self) -> None:
        cycle = self.cycle
        unread = cycle is not None and cycle.response_complete and cycle.more_body
        super().on_response_complete()
        if unread and not self.transport.is_closing():
            # Answered before the body ended (401, 413...): the rest is never read, so a body
            # that never ends cannot hold the connection.
            self._refused = True
            self._linger_close()

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
        if self.transport.is_closing():
            return
        if self._head_received == 0:
            self.transport.close()  # nothing sent at all: no request to answer
            return
        self._refuse_head(
            RequestTimeout(
                f"the request line and headers did not arrive within "
                f"{self.limits.header_timeout:g} seconds"
            )
        )

    def _refuse_head(self, error: GatewayError) -> None:
        """Answer a request head that broke a limit, and close."""
        self._refused = True
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is being answered: close once it is, read nothing more.
            self.cycle.keep_alive = False
            self.transport.pause_reading()
            return
        log.debug("%s from %s: %s", error.code, self.client, error.detail)
        self.transport.write(_raw_problem(error))
        self._linger_close()

    def _linger_close(self) -> None:
        """Close after the answer: FIN now, and what the client still sends is read and dropped
        for a moment, so its TCP stack does not reset the connection (and discard the answer)
        before the client has read it."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
