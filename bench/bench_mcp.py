"""MCP against HTTP: the same statement through both transports of one gateway.

The real gateway in process (httpx over ASGI: token verification by the real OpenID provider's
keys, policy decision, Spanner on the emulator, a file audit trail) on the example policy: the
read ``GET /v1/orders/O-1001`` (the baseline) and the MCP ``tools/call`` of its tool
``get_order`` (one JSON-RPC POST to ``/mcp``, stateless, protocol 2025-11-25), at 8 concurrent
callers, alternating HTTP and MCP rounds so that both see the same emulator. The ratio is MCP's
throughput over HTTP's (the issue's target: at least 0.9).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from bench.bench_spanner import REPO, _fresh_emulator, _load
from bench.policy import example_policy
from bench.table import Row, Table

__all__ = ["run"]

CALLERS = 8


async def _compare(quick: bool) -> Table:
    import httpx

    from gateway.dev.idp import fetch_token, load_clients, start_idp
    from gateway.dev.keys import write_signing_keys
    from gateway.runtime import build_gateway
    from gateway.settings import Settings

    table = Table(f"MCP tools/call against the HTTP route, same statement, x{CALLERS} callers")
    total = 300 if quick else 2000
    rounds = 2 if quick else 3
    clients = {c["client_id"]: c for c in load_clients(REPO / "dev" / "idp" / "clients.json")}
    latencies: dict[str, list[float]] = {"http": [], "mcp": []}
    walls: dict[str, float] = {"http": 0.0, "mcp": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        write_signing_keys(keys)
        with start_idp(idp_dir=REPO / "dev" / "idp", keys_path=keys) as idp:
            agent = clients["order-agent"]
            token = fetch_token(
                idp.issuer, "order-agent", str(agent["client_secret"]), scope="orders.read"
            )
            emulator = _fresh_emulator()
            try:
                settings = Settings(
                    policy=example_policy(Path(tmp)),  # without the agent's budget
                    spanner_emulator_host=emulator.host,
                    audit_path=Path(tmp) / "audit.jsonl",
                    audit_key="bench-audit-key",  # the example policy redacts a parameter
                    # the example policy paginates list_orders
                    cursor_keys="YmVuY2gtY3Vyc29yLWtleS1ub3QtYS1zZWNyZXQhISE",
                )
                app = build_gateway(settings, env={**os.environ, "OKTA_ISSUER": idp.issuer})
                await app.startup()
                headers = {"Authorization": f"Bearer {token}"}
                mcp_headers = {
                    **headers,
                    "Accept": "application/json, text/event-stream",
                    "MCP-Protocol-Version": "2025-11-25",
                }
                call = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "get_order", "arguments": {"order_id": "O-1001"}},
                }
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://127.0.0.1"
                ) as http:

                    async def over_http(_: int) -> object:
                        response = await http.get("/v1/orders/O-1001", headers=headers)
                        assert response.status_code == 200, response.text
                        return response

                    async def over_mcp(_: int) -> object:
                        response = await http.post("/mcp", json=call, headers=mcp_headers)
                        assert response.status_code == 200, response.text
                        assert "\"isError\":false" in response.text, response.text
                        return response

                    await over_http(0)
                    await over_mcp(0)
                    for _ in range(rounds):
                        for name, op in (("http", over_http), ("mcp", over_mcp)):
                            samples, wall = await _load(op, CALLERS, total)
                            latencies[name] += samples
                            walls[name] += wall
                await app.shutdown()
            finally:
                emulator.stop()
    table.add(
        Row.from_latencies("HTTP GET /v1/orders/{order_id}", latencies["http"], walls["http"])
    )
    table.add(Row.from_latencies("MCP tools/call get_order", latencies["mcp"], walls["mcp"]))
    return table


def run(quick: bool) -> Table:
    return asyncio.run(_compare(quick))
