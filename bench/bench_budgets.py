"""The budget check: its cost per call in process and with Redis on loopback.

The real gateway in process (httpx over ASGI, the real OpenID provider's keys, Spanner on the
emulator, a file audit trail) on the example policy, the read ``GET /v1/orders/O-1001`` as the
order-agent at 8 concurrent callers, three ways: no budget (the baseline), a budget counted in
the process, and one counted in a real redis-server on 127.0.0.1 (one Lua round trip before the
statement, one after it for the rows). Rounds alternate between the three gateways so that all
see the same emulator. The budgets are far above what the run spends: nothing is refused. The
Redis row's note is one check's round trip on its own (one caller, sequential); a last note is
the CPU of the budget check of one call alone, in process with no I/O: ``Budgets.spend``, its
headers, ``count_rows`` and the headers again, as the gateway runs them for this read.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.bench_spanner import REPO, _fresh_emulator, _load
from bench.policy import example_policy
from bench.table import Row, Table, percentile

__all__ = ["run"]

CALLERS = 8
BUDGET = "budgets:\n  order-agent: {calls: 100000000/day, rows: 100000000/day}\n"


async def _check_latency(url: str, checks: int) -> float:
    """Median seconds of one RedisStore.take (the check's round trip), sequentially."""
    from gateway.budgets.core import Counter
    from gateway.budgets.redis_store import RedisStore

    store = RedisStore(url, timeout=2.0)
    samples: list[float] = []
    try:
        counter = [
            Counter("bench:{b}:calls", 10**12, 1, 60),
            Counter("bench:{b}:rows", 10**12, 0, 60),
        ]
        for _ in range(checks):
            started = time.perf_counter()
            await store.take(counter, time.time())
            samples.append(time.perf_counter() - started)
    finally:
        await store.aclose()
    return percentile(samples, 50)


async def _spend_path(policy_path: Path, calls: int) -> float:
    """Median seconds of one call's budget check (spend, headers, rows, headers) on the
    in-process store, three callers in turn, by the median of 20 batches."""
    from gateway.auth.principal import Principal
    from gateway.budgets.check import Budgets
    from gateway.budgets.core import derive_hash_key
    from gateway.budgets.store import MemoryStore
    from gateway.policy.compiled import compile_policy
    from gateway.policy.load import load_policy

    issuer = "https://idp.example/oauth2/default"
    policy = compile_policy(load_policy(policy_path, env={"OKTA_ISSUER": issuer}))
    route = next(r for r in policy.routes if r.template == "/v1/orders/{order_id}")
    roles = frozenset({"order-agent"})
    callers = [
        Principal(issuer="okta", iss=issuer, subject=f"agent-{n}", client_id=f"agent-{n}")
        for n in range(3)
    ]
    budgets = Budgets(MemoryStore(), key=derive_hash_key(b"bench-audit-key"))
    batch = max(1, calls // 20)
    samples: list[float] = []
    for _ in range(20):
        started = time.perf_counter()
        for n in range(batch):
            spend = await budgets.spend(policy, route, roles, callers[n % 3])
            assert spend is not None
            _ = spend.headers
            await budgets.count_rows(spend, 1)
            _ = spend.headers
        samples.append((time.perf_counter() - started) / batch)
    return percentile(samples, 50)


async def _compare(quick: bool) -> Table:
    import httpx
    from pydantic import SecretStr

    from gateway.dev.idp import fetch_token, load_clients, start_idp
    from gateway.dev.keys import write_signing_keys
    from gateway.dev.redis import start_redis
    from gateway.runtime import build_gateway
    from gateway.settings import Settings

    table = Table(f"Budget check on GET /v1/orders/{{order_id}}, x{CALLERS} callers")
    total = 300 if quick else 2000
    rounds = 2 if quick else 3
    clients = {c["client_id"]: c for c in load_clients(REPO / "dev" / "idp" / "clients.json")}
    names = ("none", "memory", "redis")
    latencies: dict[str, list[float]] = {n: [] for n in names}
    walls = dict.fromkeys(names, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = folder / "keys.json"
        write_signing_keys(keys)
        with start_idp(idp_dir=REPO / "dev" / "idp", keys_path=keys) as idp, start_redis() as redis:
            agent = clients["order-agent"]
            token = fetch_token(
                idp.issuer, "order-agent", str(agent["client_secret"]), scope="orders.read"
            )
            headers = {"Authorization": f"Bearer {token}"}
            emulator = _fresh_emulator()
            apps = {}
            try:
                for name in names:
                    where = folder / name
                    where.mkdir()
                    settings = Settings(
                        policy=example_policy(where, "" if name == "none" else BUDGET),
                        spanner_emulator_host=emulator.host,
                        audit_path=where / "audit.jsonl",
                        audit_key="bench-audit-key",  # the example policy redacts a parameter
                        # the example policy paginates list_orders
                        cursor_keys="YmVuY2gtY3Vyc29yLWtleS1ub3QtYS1zZWNyZXQhISE",
                        redis_url=SecretStr(redis.url) if name == "redis" else None,
                    )
                    app = apps[name] = build_gateway(
                        settings, env={**os.environ, "OKTA_ISSUER": idp.issuer}
                    )
                    await app.startup()
                for _ in range(rounds):
                    for name in names:
                        transport = httpx.ASGITransport(app=apps[name])
                        async with httpx.AsyncClient(
                            transport=transport, base_url="http://127.0.0.1"
                        ) as http:

                            async def get(_: int, http: httpx.AsyncClient = http) -> object:
                                response = await http.get("/v1/orders/O-1001", headers=headers)
                                assert response.status_code == 200, response.text
                                return response

                            await get(0)
                            samples, wall = await _load(get, CALLERS, total)
                            latencies[name] += samples
                            walls[name] += wall
                check = await _check_latency(redis.url, 200 if quick else 2000)
                spend_path = await _spend_path(folder / "memory" / "policy.yaml", 2000 if quick else 40000)
            finally:
                for app in apps.values():
                    await app.shutdown()
                emulator.stop()
    table.add(Row.from_latencies("no budget", latencies["none"], walls["none"]))
    table.add(Row.from_latencies("budget in process", latencies["memory"], walls["memory"]))
    table.add(
        Row.from_latencies(
            "budget in Redis (loopback)",
            latencies["redis"],
            walls["redis"],
            note=f"one check alone: {check * 1e6:.0f} us",
        )
    )
    table.notes.append(
        f"one call's budget check alone (spend, headers, rows, headers; in process, no I/O): "
        f"{spend_path * 1e6:.1f} us"
    )
    return table


def run(quick: bool) -> Table:
    return asyncio.run(_compare(quick))
