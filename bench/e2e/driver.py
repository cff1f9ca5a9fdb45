"""The closed-loop driver of the raw clients: ``python -m bench.e2e.driver --mode sync|async|unary``.

It is the application the gateway stands in for: google-cloud-spanner in process, no HTTP, no
token. ``--conc`` callers each run the statement, wait for its rows, record the latency and start
again, until ``--seconds`` have passed. All modes use one client and one ``Database`` with the
identity's database role, as the gateway does:

- ``sync``: each caller a thread on the blocking client, ``snapshot.execute_sql`` (a stream,
  ``ExecuteStreamingSql``);
- ``async``: each caller an asyncio task on ``AsyncClient`` (on uvloop, as the gateway runs), the
  same documented ``snapshot.execute_sql``, a stream too;
- ``unary``: the RPC the gateway sends for this read (``gateway/spanner/direct.py``, one unary
  ``ExecuteSql``: the statement proves one row), from the official client's lowest public layer:
  the ``AsyncClient`` Database's generated GAPIC client (``database.spanner_api``, a
  ``SpannerAsyncClient``) and its ``execute_sql``. The request is the gateway's: the client's own
  multiplexed read-only session (the one ``database.snapshot()`` checks out, taken once at
  start), a single-use strong read-only transaction with ``return_read_timestamp``, the same SQL
  with its parameters bound (each value encoded by the library's ``_make_value_pb``) and typed,
  and the resource-prefix header the library sends; the rows are decoded by the library's own
  ``_parse_list_value_pbs``. Each caller an asyncio task on uvloop. What the gateway does and
  this does not: the library's request-id header, a request tag, its JSON encoding. What this
  does and the gateway does not: GAPIC's wrapper (proto-plus request and reply, api_core's retry
  and timeout): the gateway calls the channel's stub itself with plain protobuf.

Protocol with the suite (stdin/stdout, one line each): the driver connects, checks its first
read's rows (``_check``), warms up for ``--warmup`` seconds and prints ``READY``; the suite takes
its first CPU sample and writes ``GO``; the driver runs and prints ``RESULT {json}``; the suite
takes its second sample and closes stdin, and the driver exits. Its start-up and teardown are
thus outside the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from itertools import cycle
from typing import Any

from bench.e2e.workload import (
    DATABASE,
    INSTANCE,
    ORDER_ID,
    PROJECT,
    spanner_param_types,
    statement,
)
from bench.table import percentile

__all__ = ["MODES", "Read", "async_reader", "main", "open_database", "unary_reader"]

MODES = ("sync", "async", "unary")
Read = Callable[[str], Awaitable[list[Any]]]  # a tenant's point read: its rows, as lists


def _client_options(host: str) -> dict[str, Any]:
    from google.auth.credentials import AnonymousCredentials

    # As gateway.spanner.identities builds its clients for the emulator.
    return {
        "project": PROJECT,
        "credentials": AnonymousCredentials(),  # type: ignore[no-untyped-call]
        "client_options": {"api_endpoint": host},
        "disable_builtin_metrics": True,
    }


def _check(rows: list[Any]) -> None:
    if len(rows) != 1 or rows[0][0] != ORDER_ID:
        raise RuntimeError(f"the point read returned {rows!r}, not the one order {ORDER_ID}")


def _summary(latencies: list[float], wall: float, errors: int) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "wall_s": wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


def _run_sync(host: str, conc: int, seconds: float, warmup: float, tenants: list[str]) -> None:
    from google.cloud import spanner

    stmt = statement()
    types = spanner_param_types(stmt.param_types)
    client = spanner.Client(**_client_options(host))
    instance = client.instance(INSTANCE)  # type: ignore[no-untyped-call]
    database = instance.database(DATABASE, database_role=stmt.database_role)

    def read(tenant: str) -> list[Any]:
        with database.snapshot() as snapshot:
            return list(
                snapshot.execute_sql(
                    stmt.sql, params={"tenant": tenant, "order_id": ORDER_ID}, param_types=types
                )
            )

    _check(read(tenants[0]))

    def load(duration: float) -> tuple[list[float], float, int]:
        latencies: list[list[float]] = [[] for _ in range(conc)]
        errors = [0] * conc
        start = threading.Barrier(conc + 1)
        deadline = 0.0

        def caller(n: int) -> None:
            mine, turn = latencies[n], cycle(tenants[n % len(tenants) :] + tenants)
            start.wait()
            while (began := time.perf_counter()) < deadline:
                try:
                    read(next(turn))
                except Exception:  # noqa: BLE001 - counted, and fails the phase
                    errors[n] += 1
                    continue
                mine.append(time.perf_counter() - began)

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(conc)]
        for thread in threads:
            thread.start()
        began = time.perf_counter()
        deadline = began + duration
        start.wait()
        for thread in threads:
            thread.join()
        return [x for mine in latencies for x in mine], time.perf_counter() - began, sum(errors)

    if warmup > 0:
        load(warmup)
    _handshake()
    _report(_summary(*load(seconds)))


# --- asyncio: AsyncClient's documented stream, or its GAPIC client's unary ExecuteSql ----------


async def open_database(host: str) -> Any:
    """An ``AsyncClient`` Database of the emulator at ``host`` with the identity's database role
    (its ``close()`` ends its session maintenance)."""
    from google.cloud.spanner_v1 import AsyncClient

    client = AsyncClient(**_client_options(host))
    instance = client.instance(INSTANCE)  # type: ignore[no-untyped-call]
    return await instance.database(DATABASE, database_role=statement().database_role)


async def async_reader(database: Any) -> Read:
    """The documented read: ``snapshot.execute_sql`` in a single-use snapshot (a stream)."""
    stmt = statement()
    types = spanner_param_types(stmt.param_types)

    async def read(tenant: str) -> list[Any]:
        async with database.snapshot() as snapshot:
            rows = await snapshot.execute_sql(
                stmt.sql, params={"tenant": tenant, "order_id": ORDER_ID}, param_types=types
            )
            return [row async for row in rows]

    return read


async def unary_reader(database: Any) -> Read:
    """The gateway's RPC from the GAPIC client: one unary ``ExecuteSql`` (the module's notes)."""
    from google.cloud.spanner_v1 import (
        ExecuteSqlRequest,
        ResultSet,
        TransactionOptions,
        TransactionSelector,
    )
    from google.cloud.spanner_v1._async.database_sessions_manager import TransactionType
    from google.cloud.spanner_v1._helpers import _make_value_pb, _parse_list_value_pbs
    from google.protobuf.struct_pb2 import Struct

    stmt = statement()
    types = spanner_param_types(stmt.param_types)
    api = database.spanner_api  # google.cloud.spanner_v1.SpannerAsyncClient
    # The client's multiplexed read-only session, as database.snapshot() checks it out per read
    session = await database.sessions_manager.get_session(TransactionType.READ_ONLY)
    # Strong, as the gateway's snapshot (and as Snapshot builds it: the read timestamp asked for)
    selector = TransactionSelector(
        single_use=TransactionOptions(
            read_only=TransactionOptions.ReadOnly(strong=True, return_read_timestamp=True)
        )
    )
    metadata = [("google-cloud-resource-prefix", database.name)]  # GAPIC adds the routing header

    async def read(tenant: str) -> list[Any]:
        values = {"tenant": tenant, "order_id": ORDER_ID}
        request = ExecuteSqlRequest(
            session=session.name,
            sql=stmt.sql,
            params=Struct(fields={k: _make_value_pb(v) for k, v in values.items()}),  # type: ignore[no-untyped-call]
            param_types=types,
            transaction=selector,
        )
        reply = await api.execute_sql(request=request, metadata=metadata)
        rows: list[Any] = _parse_list_value_pbs(ResultSet.pb(reply).rows, reply.metadata.row_type)  # type: ignore[no-untyped-call]
        return rows

    return read


def _run_asyncio(
    make: Callable[[Any], Awaitable[Read]], host: str, conc: int, seconds: float, warmup: float,
    tenants: list[str],
) -> None:  # fmt: skip
    async def main() -> None:
        read = await make(await open_database(host))
        _check(await read(tenants[0]))

        async def load(duration: float) -> tuple[list[float], float, int]:
            latencies: list[float] = []
            errors = 0
            deadline = time.perf_counter() + duration

            async def caller(n: int) -> None:
                nonlocal errors
                turn = cycle(tenants[n % len(tenants) :] + tenants)
                while (began := time.perf_counter()) < deadline:
                    try:
                        await read(next(turn))
                    except Exception:  # noqa: BLE001 - counted, and fails the phase
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - began)

            began = time.perf_counter()
            await asyncio.gather(*(caller(n) for n in range(conc)))  # a task per caller
            return latencies, time.perf_counter() - began, errors

        if warmup > 0:
            await load(warmup)
        await asyncio.to_thread(_handshake)
        _report(_summary(*await load(seconds)))

    import uvloop  # as the gateway runs (uvicorn[standard] installs it)

    uvloop.run(main())


def _handshake() -> None:
    print("READY", flush=True)
    line = sys.stdin.readline().strip()
    if line != "GO":
        raise SystemExit(f"expected GO from the suite, got {line!r}")


def _report(summary: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(summary), flush=True)
    sys.stdin.read()  # until the suite closes stdin: its CPU sample is taken by then
    sys.stdout.flush()
    # Without the client's teardown (its session maintenance thread can hold an exit for
    # minutes): nothing of it is measured, and the emulator is thrown away after the phase.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.driver")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--host", required=True, help="the emulator, host:port")
    parser.add_argument("--conc", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--tenants", required=True, help="comma-separated, in turn")
    args = parser.parse_args(argv)
    load = (args.host, args.conc, args.seconds, args.warmup, args.tenants.split(","))
    if args.mode == "sync":
        _run_sync(*load)
    else:
        _run_asyncio(async_reader if args.mode == "async" else unary_reader, *load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
