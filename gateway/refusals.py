"""Requests the HTTP server refuses before they reach the gateway: a request line and a count each.

The server's HTTP protocol (``gateway.http_protocol``) answers some requests itself (431
``headers-too-large``, 408 ``request-timeout`` for a head that never ends, 400
``request-invalid``, 503 ``server-busy`` at the connection caps): no route, no token, no audit
event (nothing reached the gateway). Each still gets:

- a line of ``spangate.access``, as a request the gateway answers: its request id (the one in
  the answer's ``X-Request-ID`` and problem body), status, code, the TCP peer as ``client``;
  never the path or a header (the head was not accepted: they are the caller's bytes, unchecked);
  at most ``LINES_PER_SECOND`` a second per process (a flood of bad requests must not become a
  flood of log lines); beyond, lines are not written, and the next one written says how many;
- a count per code (``counts``), published as ``spangate_server_refusals_total{code}``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from gateway.errors import GatewayError
from gateway.logs import REQUEST_FIELDS, log_request

__all__ = ["CODES", "LINES_PER_SECOND", "REFUSALS", "ServerRefusals"]

LINES_PER_SECOND = 10
# The codes of the server's own refusals (each has its series from the start, at 0).
CODES = ("headers-too-large", "request-timeout", "request-invalid", "server-busy")


class ServerRefusals:
    """The process's refusals: counted, and logged within the rate (``clock``: seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._window = float("-inf")  # when the current second began
        self._lines = 0  # lines written in it
        self._unlogged = 0  # refusals not logged since the last line

    def note(
        self, error: GatewayError, request_id: str, client: str | None, method: str | None = None
    ) -> None:
        """Count one refusal and log its line (unless the rate is spent)."""
        self.counts[error.code] += 1
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._lines = now, 0
        if self._lines >= LINES_PER_SECOND:
            self._unlogged += 1
            return
        self._lines += 1
        fields: dict[str, object] = dict.fromkeys(REQUEST_FIELDS)
        fields.update(
            request_id=request_id,
            transport="http",
            method=method,
            status=error.status,
            code=error.code,
            client=client,
        )
        unlogged, self._unlogged = self._unlogged, 0
        note = f"refused by the server: {error.code}"
        if unlogged:
            note += f" [{unlogged} earlier refusal(s) not logged: over {LINES_PER_SECOND}/s]"
        log_request(fields, None, None, note=note)


REFUSALS = ServerRefusals()  # this process's (each worker its own)
