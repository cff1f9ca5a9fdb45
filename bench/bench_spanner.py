"""Spanner execution: the two execution models side by side, then the whole gateway end to end.

Models (the choice behind ``gateway.spanner.execute``): the same point read by key and the same
DML write, (a) on the blocking client in a bounded thread pool (``run_in_executor``, 32 threads)
and (b) on the client's asyncio API (``spanner_v1.AsyncClient``), at 1, 8 and 32 concurrent
callers. Writes are serialised in front of the emulator in both (it runs one read-write
transaction at a time), as the gateway does.

End to end: the real gateway in process (httpx over ASGI: token verification by the real OpenID
provider's keys, policy decision, Spanner, a file audit trail) on the example policy: a read
(``GET /v1/orders/{id}``) at 1, 8 and 32 callers, and a write (``POST /v1/orders``) at 8, without
and with an Idempotency-Key.

Each phase gets a fresh emulator (it slows as it ages). Ratios compare rows within a table.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.table import Row, Table

__all__ = ["run"]

REPO = Path(__file__).resolve().parent.parent
PROJECT, INSTANCE, DATABASE = "demo-project", "demo", "shop"
READ = (
    "SELECT OrderId, Status, TotalCents, CreatedAt FROM Orders WHERE TenantId = @t AND OrderId = @o"
)
WRITE = (
    "INSERT INTO Orders (TenantId, OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt)"
    " VALUES ('t1', @o, 'C-1', 'OPEN', 1, 'USD', PENDING_COMMIT_TIMESTAMP())"
)

COLUMNS = ("OrderId", "Status", "TotalCents", "CreatedAt")
Op = Callable[[int], Awaitable[object]]


async def _load(op: Op, callers: int, total: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    counter = iter(range(total))

    async def caller() -> None:
        for n in counter:
            started = time.perf_counter()
            await op(n)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies, time.perf_counter() - started


def _fresh_emulator() -> Any:
    from gateway.dev.database import create_database, load_demo_sql
    from gateway.dev.emulator import start_emulator

    emulator = start_emulator()
    ddl, dml = load_demo_sql(REPO)
    from gateway.spanner.idempotency import DDL

    create_database(
        emulator.host, project=PROJECT, instance=INSTANCE, database=DATABASE,
        ddl=[*ddl, *DDL], dml=dml,
    )  # fmt: skip
    return emulator


def _order_key() -> Any:
    from google.cloud.spanner_v1 import KeySet

    return KeySet(keys=[["t1", "O-1001"]])  # type: ignore[no-untyped-call]


def _param_types() -> dict[str, Any]:
    from google.cloud.spanner_v1 import param_types

    return {"t": param_types.STRING, "o": param_types.STRING}


Ops = tuple[Op, Op, Op, Callable[[], None]]  # SQL read, Read-API read, write, close


async def _threads_ops(host: str) -> Ops:
    from gateway.spanner.identities import default_client_factory

    database = default_client_factory(host)(PROJECT, None).instance(INSTANCE).database(DATABASE)
    pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="bench-spanner")
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    types = _param_types()

    def read_blocking() -> list[Any]:
        with database.snapshot() as snapshot:
            return list(
                snapshot.execute_sql(READ, params={"t": "t1", "o": "O-1001"}, param_types=types)
            )

    def write_blocking(n: int) -> int:
        def work(tx: Any) -> int:
            return int(
                tx.execute_update(WRITE, params={"o": f"B-T-{n}"}, param_types={"o": types["o"]})
            )

        return int(database.run_in_transaction(work, default_retry_delay=0.01))

    def keyed_blocking() -> list[Any]:
        with database.snapshot() as snapshot:
            return list(snapshot.read("Orders", COLUMNS, _order_key()))

    async def read(_: int) -> object:
        return await loop.run_in_executor(pool, read_blocking)

    async def keyed(_: int) -> object:
        return await loop.run_in_executor(pool, keyed_blocking)

    async def write(n: int) -> object:
        async with lock:
            return await loop.run_in_executor(pool, write_blocking, n)

    return read, keyed, write, lambda: pool.shutdown(wait=False)


async def _asyncio_ops(host: str) -> Ops:
    from gateway.spanner.identities import default_async_client_factory

    client = await default_async_client_factory(host)(PROJECT, None)
    database = await client.instance(INSTANCE).database(DATABASE)
    lock = asyncio.Lock()
    types = _param_types()

    async def read(_: int) -> object:
        async with database.snapshot() as snapshot:
            rows = await snapshot.execute_sql(
                READ, params={"t": "t1", "o": "O-1001"}, param_types=types
            )
            return [r async for r in rows]

    async def keyed(_: int) -> object:
        async with database.snapshot() as snapshot:
            rows = await snapshot.read("Orders", COLUMNS, _order_key())
            return [r async for r in rows]

    async def write(n: int) -> object:
        async def work(tx: Any) -> int:
            return int(
                await tx.execute_update(
                    WRITE, params={"o": f"B-A-{n}"}, param_types={"o": types["o"]}
                )
            )

        async with lock:
            return await database.run_in_transaction(work, default_retry_delay=0.01)

    return read, keyed, write, lambda: None


async def _models(quick: bool) -> Table:
    table = Table(
        "Spanner execution models on the emulator: blocking client in 32 threads vs AsyncClient"
    )
    reads = 400 if quick else 3000
    writes = 150 if quick else 1000
    for name, make in (("threads", _threads_ops), ("asyncio", _asyncio_ops)):
        for kind, callers in (("SQL", 1), ("SQL", 8), ("SQL", 32), ("read", 8), ("read", 32)):
            emulator = _fresh_emulator()
            try:
                sql, keyed, _, close = await make(emulator.host)
                op = sql if kind == "SQL" else keyed
                await op(0)
                latencies, wall = await _load(op, callers, reads)
                label = f"{name} point {'SQL' if kind == 'SQL' else 'Read API'} x{callers}"
                table.add(Row.from_latencies(label, latencies, wall))
                close()
            finally:
                emulator.stop()
        emulator = _fresh_emulator()
        try:
            _, _, write, close = await make(emulator.host)
            latencies, wall = await _load(write, 8, writes)
            table.add(Row.from_latencies(f"{name} DML write x8", latencies, wall, "serialised"))
            close()
        finally:
            emulator.stop()
    return table


async def _end_to_end(quick: bool) -> Table:
    import httpx

    from gateway.dev.idp import fetch_token, load_clients, start_idp
    from gateway.dev.keys import write_signing_keys
    from gateway.runtime import build_gateway
    from gateway.settings import Settings

    table = Table("Gateway end to end (ASGI in process: token, policy, Spanner, file audit)")
    reads = 300 if quick else 2000
    writes = 100 if quick else 600
    clients = {c["client_id"]: c for c in load_clients(REPO / "dev" / "idp" / "clients.json")}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        write_signing_keys(keys)
        with start_idp(idp_dir=REPO / "dev" / "idp", keys_path=keys) as idp:

            def token(client_id: str) -> str:
                client = clients[client_id]
                scopes = " ".join(client.get("scopes") or []) or None
                return fetch_token(
                    idp.issuer, client_id, str(client["client_secret"]), scope=scopes
                )

            reader = {"Authorization": f"Bearer {token('support-console')}"}
            writer = {"Authorization": f"Bearer {token('order-writer')}"}
            phases: list[tuple[str, int, int, str]] = [
                ("read", 1, reads, ""), ("read", 8, reads, ""), ("read", 32, reads, ""),
                ("write", 8, writes, ""), ("write", 8, writes, "key"),
            ]  # fmt: skip
            for kind, callers, total, variant in phases:
                emulator = _fresh_emulator()
                try:
                    settings = Settings(
                        policy=REPO / "policy.example.yaml",
                        spanner_emulator_host=emulator.host,
                        audit_path=Path(tmp) / f"audit-{kind}-{callers}-{variant}.jsonl",
                        audit_key="bench-audit-key",  # the example policy redacts a parameter
                        # the example policy paginates list_orders
                        cursor_keys="YmVuY2gtY3Vyc29yLWtleS1ub3QtYS1zZWNyZXQhISE",
                    )
                    app = build_gateway(settings, env={**os.environ, "OKTA_ISSUER": idp.issuer})
                    await app.startup()
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(
                        transport=transport, base_url="http://bench"
                    ) as http:

                        async def read(_: int) -> object:
                            response = await http.get("/v1/orders/O-1001", headers=reader)
                            assert response.status_code == 200, response.text
                            return response

                        async def write(n: int, keyed: bool = bool(variant)) -> object:
                            headers = {**writer, "Idempotency-Key": f"k-{n}"} if keyed else writer
                            body = {
                                "order_id": f"O-{n + 1}",
                                "customer_id": "C-1",
                                "total_cents": 5,
                            }
                            response = await http.post("/v1/orders", json=body, headers=headers)
                            assert response.status_code == 200, response.text
                            return response

                        op = read if kind == "read" else write
                        if kind == "read":
                            await read(0)
                        latencies, wall = await _load(op, callers, total)
                    await app.shutdown()
                finally:
                    emulator.stop()
                label = f"{kind} x{callers}" + (" + Idempotency-Key" if variant else "")
                table.add(Row.from_latencies(label, latencies, wall))
    return table


class _Tables(Table):
    """Two tables printed one after the other."""

    def __init__(self, tables: list[Table]) -> None:
        super().__init__(tables[0].title, tables[0].rows)
        self._tables = tables

    def render(self) -> str:
        return "\n\n".join(t.render() for t in self._tables)


def run(quick: bool) -> Table:
    async def both() -> list[Table]:
        return [await _models(quick), await _end_to_end(quick)]

    return _Tables(asyncio.run(both()))
