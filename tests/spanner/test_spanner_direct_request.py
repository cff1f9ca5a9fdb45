"""The direct path's request and metadata are the client library's, field for field: both paths
read once from a recording gRPC server (a unit test of the wire shape: the emulator does not
show what it receives), and every request and header is compared."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud.spanner_v1 import AsyncClient, RequestOptions, param_types
from google.cloud.spanner_v1.types import Type, result_set, spanner
from google.protobuf import struct_pb2

from gateway.spanner.direct import Checkout, DirectReads, Prepared, _CoreUnary

SERVICE = "google.spanner.v1.Spanner"
DATABASE = "projects/p/instances/i/databases/d"
SQL = "SELECT Id FROM T WHERE Id = @id AND Name = @name"
TYPES = {"id": param_types.INT64, "name": param_types.STRING}
VALUES = {"id": 7, "name": "ü"}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, list[tuple[str, Any]]]] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None  # ExecuteSql answers this status
        self.hold: asyncio.Event | None = None  # ExecuteSql waits for this (cancelled: set)
        self.cancelled = asyncio.Event()

    def _note(self, method: str, request: bytes, context: Any) -> None:
        self.calls.append((method, request, list(context.invocation_metadata())))

    async def get_session(self, request: bytes, context: Any) -> bytes:
        self._note("GetSession", request, context)
        session = spanner.Session(name=f"{DATABASE}/sessions/s1", multiplexed=True)
        return spanner.Session.serialize(session)

    async def create_session(self, request: bytes, context: Any) -> bytes:
        self._note("CreateSession", request, context)
        session = spanner.Session(name=f"{DATABASE}/sessions/s1", multiplexed=True)
        return spanner.Session.serialize(session)

    def _metadata(self) -> Any:
        field = {"name": "Id", "type_": Type(code=param_types.INT64.code)}
        return result_set.ResultSetMetadata.pb(
            result_set.ResultSetMetadata(row_type={"fields": [field]})
        )

    async def execute_sql(self, request: bytes, context: Any) -> bytes:
        self._note("ExecuteSql", request, context)
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if self.fail is not None:
            await context.abort(*self.fail)
        row = struct_pb2.ListValue(values=[struct_pb2.Value(string_value="7")])
        reply = result_set.ResultSet.pb()(metadata=self._metadata(), rows=[row])
        return bytes(reply.SerializeToString())

    async def execute_streaming_sql(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self._note("ExecuteStreamingSql", request, context)
        part = result_set.PartialResultSet.pb()(
            metadata=self._metadata(), values=[struct_pb2.Value(string_value="7")]
        )
        yield bytes(part.SerializeToString())


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[Recorder, Any]]:
    recorder = Recorder()
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "CreateSession": grpc.unary_unary_rpc_method_handler(recorder.create_session),
            "GetSession": grpc.unary_unary_rpc_method_handler(recorder.get_session),
            "ExecuteSql": grpc.unary_unary_rpc_method_handler(recorder.execute_sql),
            "ExecuteStreamingSql": grpc.unary_stream_rpc_method_handler(
                recorder.execute_streaming_sql
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = AsyncClient(
        project="p",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": f"127.0.0.1:{port}"},
        disable_builtin_metrics=True,
    )
    database = await client.instance("i").database("d", database_role="reader")
    try:
        yield recorder, database
    finally:
        await database.close()
        await server.stop(None)


def _request(data: bytes) -> Any:
    return spanner.ExecuteSqlRequest.pb().FromString(data)


def _headers(metadata: list[tuple[str, Any]]) -> dict[str, Any]:
    """The headers the client chose (gRPC's own, such as user-agent, left out); the request id's
    sequence number, which differs from call to call, cut off."""
    out = {k: v for k, v in metadata if not k.startswith(("user-agent", "grpc-", ":"))}
    rid = out.get("x-goog-spanner-request-id")
    if isinstance(rid, str):
        out["x-goog-spanner-request-id"] = rid.rsplit(".", 2)[0]
    return out


@pytest.mark.parametrize("staleness", [{}, {"max_staleness": dt.timedelta(seconds=10)}])
@pytest.mark.parametrize("unary", [False, True])
async def test_the_direct_request_is_the_librarys(
    recorded: tuple[Recorder, Any], staleness: dict[str, Any], unary: bool
) -> None:
    recorder, database = recorded
    options = {"request_tag": "rid q GET /t", "priority": RequestOptions.Priority.PRIORITY_LOW}
    async with database.snapshot(**staleness) as snapshot:
        stream = await snapshot.execute_sql(
            SQL, params=VALUES, param_types=TYPES, request_options=options, timeout=5
        )
        assert [list(row) async for row in stream] == [[7]]
    direct = DirectReads.of(database)
    assert direct is not None
    prepared = Prepared(
        sql=SQL,
        param_types={name: Type.pb(t) for name, t in TYPES.items()},
        selector=direct.selector(staleness),
        priority=int(RequestOptions.Priority.PRIORITY_LOW),
        bounded=unary,
    )
    async with database.snapshot(**staleness) as snapshot:
        session = snapshot._session.name
        request = direct.request(session, prepared, VALUES, "rid q GET /t")
        read = direct.unary if unary else direct.streamed
        rows = await read(session, prepared, request, 1, 5.0, True)
    assert rows.rows == [{"Id": 7}]
    assert rows.types == ["INT64"]
    library, sent = [c for c in recorder.calls if c[0] != "CreateSession"]
    assert sent[0] == ("ExecuteSql" if unary else "ExecuteStreamingSql")
    assert _request(sent[1]) == _request(library[1])  # the same request, field for field
    assert _headers(sent[2]) == _headers(library[2])
    assert set(_headers(sent[2])) >= {
        "google-cloud-resource-prefix",
        "x-goog-spanner-request-id",
        "x-goog-api-client",
        "x-goog-request-params",
    }


async def test_checkout_is_the_librarys_snapshot_checkout_less_its_snapshot(
    recorded: tuple[Recorder, Any],
) -> None:
    """The direct path's session: the one ``database.snapshot()`` checks out; a read that ends
    with NotFound has the library check the session (GetSession) on both, and the error stands."""
    recorder, database = recorded
    async with database.snapshot() as snapshot:
        library = snapshot._session
    async with Checkout(database) as session:
        assert session is library  # the multiplexed session, from the same sessions manager
    for checkout in (database.snapshot(), Checkout(database)):
        before = [c[0] for c in recorder.calls].count("GetSession")
        with pytest.raises(gexc.NotFound):
            async with checkout:
                raise gexc.NotFound("Session not found")
        assert [c[0] for c in recorder.calls].count("GetSession") == before + 1


def _prepared(direct: DirectReads) -> Prepared:
    return Prepared(
        sql=SQL,
        param_types={name: Type.pb(t) for name, t in TYPES.items()},
        selector=direct.selector({}),
        priority=0,
        bounded=True,
    )


@pytest.mark.parametrize(
    "status", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED]
)
async def test_a_failed_unary_read_raises_what_the_grpc_aio_stub_raises(
    recorded: tuple[Recorder, Any], status: grpc.StatusCode
) -> None:
    """The unary read sent on gRPC's Cython call (``_CoreUnary``) fails as grpc.aio's stub
    fails: the same exception, code, details and trailing metadata, which the gateway maps."""
    recorder, database = recorded
    direct = DirectReads.of(database)
    assert direct is not None and isinstance(direct._unary_quiet, _CoreUnary)
    recorder.fail = (status, "no such column: Nope")
    errors = []
    async with Checkout(database) as session:
        request = direct.request(session.name, _prepared(direct), VALUES, "rid")
        for call in (direct._unary_quiet, direct._unary):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(request, metadata=direct._metadata(session.name), timeout=5.0)
            errors.append(raised.value)
    core, stub = errors
    assert (core.code(), core.details()) == (stub.code(), stub.details()) == (
        status,
        "no such column: Nope",
    )
    assert type(core) is type(stub)
    assert core.trailing_metadata() == stub.trailing_metadata()


async def test_a_cancelled_unary_read_cancels_its_call(recorded: tuple[Recorder, Any]) -> None:
    """A caller cancelled (its deadline) while the reply is awaited cancels the RPC: the server
    sees it cancelled, as with grpc.aio's stub (gRPC's Cython call cancels itself on a
    cancelled await; ``_CoreUnary`` cancels it too, as grpc.aio does)."""
    recorder, database = recorded
    direct = DirectReads.of(database)
    assert direct is not None
    recorder.hold = asyncio.Event()
    async with Checkout(database) as session:
        request = direct.request(session.name, _prepared(direct), VALUES, "rid")
        reading = asyncio.ensure_future(
            direct._unary_quiet(request, metadata=direct._metadata(session.name), timeout=30.0)
        )
        while not any(c[0] == "ExecuteSql" for c in recorder.calls):
            await asyncio.sleep(0.01)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
    await asyncio.wait_for(recorder.cancelled.wait(), 5.0)


async def test_a_unary_read_past_its_deadline_fails_deadline_exceeded(
    recorded: tuple[Recorder, Any],
) -> None:
    recorder, database = recorded
    direct = DirectReads.of(database)
    assert direct is not None
    recorder.hold = asyncio.Event()
    async with Checkout(database) as session:
        request = direct.request(session.name, _prepared(direct), VALUES, "rid")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await direct._unary_quiet(
                request, metadata=direct._metadata(session.name), timeout=0.2
            )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
