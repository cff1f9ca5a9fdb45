"""The admin port (``SPANGATE_ADMIN_PORT``): ``/healthz``, ``/readyz`` and ``/metrics`` on a
listener of their own.

Why not the API port alone:

- Its connection cap (``SPANGATE_MAX_CONNECTIONS``) refuses a new connection at accept time, with
  503 ``server-busy``, when every connection has a request in progress: before a request line is
  read, so a probe cannot be told from a client. Under overload the kubelet's liveness probes
  would fail and restart pods that are only busy, moving their load to the others: a cascade.
- A Service of type LoadBalancer publishes whatever the port serves: ``/metrics`` and ``/readyz``
  (issuers, their errors, the policy's hash) to every client.

The admin listener is bound like the API port, on ``SPANGATE_HOST`` (under ``--workers`` by the
supervisor, once, and inherited by every worker, as the API socket is), and served by the same
``GatewayHttpProtocol`` (head limits and deadlines) with a connection budget of its own,
``ADMIN_MAX_CONNECTIONS``, counted apart from the API's. It answers ``ADMIN_PATHS`` only (else 404
``no-route``), through ``Gateway.fixed`` (request id, log line; never audited); the API port then
answers 404 for ``/readyz`` and ``/metrics`` (``/healthz`` stays, for a load balancer's health
check of the serving port). It opens once the gateway has started (as the API port does) and
closes last, as the process ends: ``/healthz`` answers through the whole drain and shutdown (a
liveness probe does not kill a pod finishing its requests), ``/readyz`` says 503 ``draining``
from the first signal. With several workers any worker may answer: ``/metrics`` is the sum of all
of them, ``/readyz`` the answering worker's own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.endpoints import ADMIN_PATHS
from gateway.http import Receive, Scope, Send, request_id, routed_path

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["ADMIN_MAX_CONNECTIONS", "AdminApp"]

# Open connections on the admin port at most (a kubelet's probes and a few scrapers hold a
# handful); beyond it an idle one is closed to make room, as on the API port.
ADMIN_MAX_CONNECTIONS = 32


class AdminApp:
    """The admin port's ASGI app: the gateway's health, readiness and metrics, nothing else (no
    lifespan: the API server runs the gateway's)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = scope.get("headers", [])
        rid = request_id(next((v for k, v in headers if k == b"x-request-id"), None))
        path = routed_path(scope)
        refuse = None
        if path not in ADMIN_PATHS:
            refuse = "the admin port serves " + ", ".join(sorted(ADMIN_PATHS)) + " only"
        await self.gateway.fixed(scope, receive, send, rid, path, time.perf_counter(), refuse=refuse)
