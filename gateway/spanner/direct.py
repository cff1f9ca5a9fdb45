"""A read's RPC sent straight on the client's gRPC channel: the same request, without the
library's per-call overhead.

Measured (``bench e2e``, a point read, the emulator): google-cloud-spanner's
``snapshot.execute_sql`` costs ~1.5 ms of CPU per read on this machine, most of it not the RPC:
proto-plus marshalling of the request and of every response message, api_core's retry and
timeout wrappers, the client's tracing and metrics context managers, ``StreamedResultSet`` and
its per-message bookkeeping. The same ExecuteStreamingSql RPC built here as a plain protobuf costs
about half of that, and a unary ExecuteSql (one response message) less than a quarter.

What stays the official client's: the session (checked out of the Database's sessions manager
for a read-only transaction and handed back, as ``database.snapshot()`` does, without building the
``Snapshot`` this path never uses: ``Checkout``; a read that ends with NotFound is handed to the
library's own ``SnapshotCheckout.__aexit__``, which checks the session and replaces a lost one),
the channel (its credentials, TLS, keep-alives and interceptors: built-in metrics and the
library's logging see these calls as theirs; a unary call skips the logging interceptor only
while it would log nothing, ``_without_quiet_logging``, and is then sent on gRPC's Cython call
as ``grpc.aio`` sends it, without its per-call Python objects: ``_CoreUnary``), the request-id
counter, the client-info header,
and every write (transactions, retries of ABORTED, commits).

Why each shortcut is safe:

- The request is the library's, field for field (``Prepared``/``request``): session, SQL, params
  (each value encoded by the library's own ``_make_value_pb``), param types, a single-use
  read-only selector with the query's staleness and ``return_read_timestamp``, the client's
  default query options, the request tag and priority, no transaction tag (read-only), the
  database's directed-read options. The metadata is the library's too: the resource prefix
  (with the AFE server-timing header when the library adds it), ``x-goog-spanner-request-id``
  from the client's own counter (so request ids stay unique and ordered across both paths),
  ``x-goog-api-client`` as the GAPIC wrapper sends it, and the ``session`` routing header.
- Errors: a gRPC error becomes the same ``google.api_core`` exception the GAPIC wrapper raises
  (``from_grpc_error``), so ``errors.map_error`` answers exactly as before.
- Retries and resumption: the library's streaming read resumes after UNAVAILABLE (and after the
  INTERNAL errors it deems resumable) from the last resume token, and its unary ExecuteSql
  retries UNAVAILABLE and RESOURCE_EXHAUSTED. This path does neither itself: on such an error
  (and on FAILED_PRECONDITION from a unary call, which is what Spanner answers when a result
  exceeds the unary reply's 10 MiB) it raises ``Fallback`` and the caller runs the read again on
  the library's path, as a new single-use read (a read-only snapshot: running it again changes
  nothing; the rows of the first attempt were never used).
- Chunked values: a streamed value may be split across messages (``chunked_value``). This path
  does not merge chunks: it falls back the same way (values that large are rare, and the
  library's merge is the reference).
- Decoding: each value goes through the library's own decoder for its type
  (``_get_type_decoder``) and the gateway's ``to_json``, as on the library's path.
- Unary ExecuteSql returns the whole result in one message, so it is only used for reads
  whose row count is bounded by their statement (``Executor`` decides: ``bounded_rows``).

Used only when nothing would miss the library's per-call work: not when the client traces
(a ``tracer_provider`` in its ``observability_options``, set when the gateway's traces are on,
or a global tracer provider: its spans stay the library's),
and only when the library is shaped as expected (``DirectReads.of`` returns None otherwise and
every read takes the library's path).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.api_core import exceptions as gexc

from gateway.spanner.analyze import type_name
from gateway.spanner.results import to_json

__all__ = ["Checkout", "DirectReads", "Fallback", "Prepared", "Rows"]

log = logging.getLogger("spangate.spanner")

_STREAMING = "/google.spanner.v1.Spanner/ExecuteStreamingSql"
_UNARY = "/google.spanner.v1.Spanner/ExecuteSql"
# The INTERNAL errors after which the library resumes a stream (snapshot.py)
_RESUMABLE_INTERNAL = ("RST_STREAM", "Received unexpected EOS on DATA frame from server")


class Fallback(Exception):  # control flow: run this read on the library's path
    """This read must run on the library's path (see the module's notes); nothing of it was
    used."""


@dataclass
class Rows:
    """A read's rows as JSON values, cut at ``limit`` (``truncated``: there were more)."""

    columns: list[str]
    types: list[str]  # Spanner type names, when asked for (masks)
    rows: list[dict[str, Any]]
    truncated: bool


class _Decoders:
    """One result shape's column names, type names and value decoders, built once per shape."""

    def __init__(self, row_type: Any) -> None:
        from google.cloud.spanner_v1 import _helpers
        from google.cloud.spanner_v1.types import Type

        self.row_type = row_type
        fields = list(row_type.fields)
        self.columns = [f.name for f in fields]
        self.types = [type_name(f.type_) for f in fields]
        # The library's decoders, on its proto-plus view of the type (no copy)
        decoder = _helpers._get_type_decoder
        self.decoders = [decoder(Type.wrap(f.type_), f.name) for f in fields]  # type: ignore[no-untyped-call]

    def row(self, values: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, decode, value in zip(self.columns, self.decoders, values, strict=True):
            # As the library's _parse_nullable: a NULL of any type is None.
            out[column] = None if value.HasField("null_value") else to_json(decode(value))
        return out


@dataclass
class Prepared:
    """What every request of one query shares (built once per query and database)."""

    sql: str
    param_types: Mapping[str, Any]  # name -> google.spanner.v1.Type (protobuf)
    selector: Any  # TransactionSelector (protobuf): single use, read only
    priority: int
    bounded: bool  # its statement bounds its rows (``bounded.py``): one unary ExecuteSql
    decoders: _Decoders | None = None


def _global_tracing() -> bool:
    """Whether a global OpenTelemetry tracer provider is set (the client would trace to it)."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _library_logging() -> tuple[bool, logging.Logger | None]:
    """The library's gRPC logging: whether it is supported, and its logger (None: another
    shape of the library, so no call skips its interceptors)."""
    try:
        from google.cloud.spanner_v1.services.spanner.transports import grpc_asyncio

        logger = grpc_asyncio._LOGGER
        return bool(grpc_asyncio.CLIENT_LOGGING_SUPPORTED), (
            logger if isinstance(logger, logging.Logger) else None
        )
    except Exception:  # noqa: BLE001 - another shape: nothing is skipped
        return True, None


_LIBRARY_LOGGING, _LIBRARY_LOGGER = _library_logging()


def _library_logs_calls() -> bool:
    """Whether the library's gRPC logging interceptor would log a call now (its own test)."""
    return _LIBRARY_LOGGING and (
        _LIBRARY_LOGGER is None or _LIBRARY_LOGGER.isEnabledFor(logging.DEBUG)
    )


def _without_quiet_logging(stub: Any) -> Any | None:
    """``stub`` without its interceptors when the only ones are the library's logging
    interceptor (``_LoggingClientAIOInterceptor``), else None: any other interceptor (built-in
    metrics, an application's) keeps every call going through them.

    That interceptor does nothing unless its logger is at DEBUG (``_library_logs_calls``, asked
    per call: such calls still take the intercepted stub), but going through it costs each call
    an asyncio task of gRPC's interceptor machinery: ~25 µs of CPU (py-spy, ``bench e2e``)."""
    try:
        from google.cloud.spanner_v1.services.spanner.transports import grpc_asyncio

        interceptors = stub._interceptors
        quiet = grpc_asyncio._LoggingClientAIOInterceptor
        if not interceptors or any(type(i) is not quiet for i in interceptors):
            return None
        if _LIBRARY_LOGGER is not grpc_asyncio._LOGGER:
            return None  # not the logger its interceptor asks
        plain = copy.copy(stub)
        plain._interceptors = None
        return plain
    except Exception as exc:  # noqa: BLE001 - another shape: every call takes the interceptors
        log.debug("direct reads keep the channel's interceptors: %s", exc)
        return None


_CANCELLED = "Locally cancelled by application!"  # grpc.aio's own words (_call.py)


class _CoreUnary:
    """A unary call without interceptors, made as ``grpc.aio``'s ``UnaryUnaryCall`` makes it,
    minus what this path never uses: the same channel, method, registered-method handle,
    serializers, deadline (``time.time() + timeout``, as ``_timeout_to_deadline``), metadata and
    census context, sent by the same Cython call (``AioChannel.call(...).unary_unary``). Left out:
    the ``UnaryUnaryCall`` object, the asyncio task it runs every call in, the ``Metadata``
    conversions and the channel's registry of calls, which ``channel.close()`` cancels: a call
    in flight when its channel is closed runs on to its deadline (then DEADLINE_EXCEEDED) instead
    of being cancelled at once. The gateway never closes a Spanner channel while it serves
    (``Databases.aclose`` closes the clients' session managers, at exit), so no call meets that;
    were channels closed while serving, these calls would need tracking. Measured in process
    (8 concurrent callers, the emulator): ~260-300 µs of CPU a call against ~300-390 through the
    stub.

    As the stub: a failure raises ``grpc.aio.AioRpcError`` built by grpc.aio's own
    ``_create_rpc_error`` from the call's initial metadata and status; a cancelled caller
    cancels the call. A reply that does not parse raises protobuf's ``DecodeError`` here (the
    stub logs it and returns None, which fails a line later): a 500 either way. ``of`` returns
    the stub itself when grpc.aio is not shaped so."""

    __slots__ = ("_call", "_census", "_deserialize", "_error", "_handle", "_method", "_serialize")

    def __init__(self, stub: Any) -> None:
        from grpc._cython import cygrpc
        from grpc.aio import _call

        channel = stub._channel
        if not isinstance(channel, cygrpc.AioChannel) or stub._interceptors:
            raise TypeError("not a plain unary stub on an AioChannel")
        self._call = channel.call
        self._method: bytes = stub._method
        self._handle = stub._registered_call_handle
        self._serialize = stub._request_serializer
        self._deserialize = stub._response_deserializer
        self._census = cygrpc.build_census_context
        self._error = _call._create_rpc_error

    @classmethod
    def of(cls, stub: Any) -> Any:
        if stub is None:
            return None
        try:
            return cls(stub)
        except Exception as exc:  # noqa: BLE001 - another shape: the stub serves
            log.debug("direct unary reads call through grpc.aio's stub: %s", exc)
            return stub

    async def __call__(self, request: Any, *, metadata: list[tuple[str, str]], timeout: float) -> Any:
        call = self._call(self._method, time.time() + timeout, None, None, self._handle)
        try:
            data = await call.unary_unary(self._serialize(request), tuple(metadata), self._census())
        except asyncio.CancelledError:
            if not call.done():
                call.cancel(_CANCELLED)
            raise
        if call.is_ok():
            return self._deserialize(data)
        if call.is_locally_cancelled():
            raise asyncio.CancelledError()
        raise self._error(await call.initial_metadata(), await call.status())


def _checkout_shape(database: Any) -> None:
    """Raises unless ``Checkout`` can do what ``database.snapshot()`` does with this library."""
    from google.cloud.spanner_v1._async.database import SnapshotCheckout
    from google.cloud.spanner_v1._async.database_sessions_manager import TransactionType

    manager = database.sessions_manager
    if not (callable(manager.get_session) and callable(manager.put_session)):
        raise TypeError("the sessions manager has no get_session/put_session")
    TransactionType.READ_ONLY  # noqa: B018
    if "_session" not in vars(SnapshotCheckout(database)):  # type: ignore[no-untyped-call]
        raise TypeError("SnapshotCheckout keeps its session elsewhere")


class Checkout:
    """``async with Checkout(database) as session``: what ``database.snapshot()`` does around a
    read, without the ``Snapshot`` (measured: ~9 µs a read against ~17-23 µs). The session comes
    from the sessions manager for a read-only transaction and goes back to it; on NotFound the
    library's ``SnapshotCheckout.__aexit__`` runs instead (it checks whether the session still
    exists and replaces a lost one before handing it back), so that path is the library's own."""

    __slots__ = ("_database", "_session")

    def __init__(self, database: Any) -> None:
        self._database = database
        self._session: Any = None

    async def __aenter__(self) -> Any:
        from google.cloud.spanner_v1._async.database_sessions_manager import TransactionType

        manager = self._database.sessions_manager
        self._session = await manager.get_session(TransactionType.READ_ONLY)
        return self._session

    async def __aexit__(self, kind: Any, error: BaseException | None, trace: Any) -> None:
        if isinstance(error, gexc.NotFound):
            from google.cloud.spanner_v1._async.database import SnapshotCheckout

            checkout = SnapshotCheckout(self._database)  # type: ignore[no-untyped-call]
            checkout._session = self._session
            await checkout.__aexit__(kind, error, trace)
            return
        await self._database.sessions_manager.put_session(self._session)


class DirectReads:
    """The stubs and constant metadata of one Database's reads (see the module's notes)."""

    def __init__(self, database: Any, wrapped_metadata: tuple[tuple[str, str], ...]) -> None:
        from google.cloud.spanner_v1 import _helpers
        from google.cloud.spanner_v1.types import result_set, spanner

        self._database = database
        self._request_type = spanner.ExecuteSqlRequest.pb()
        channel = database.spanner_api.transport.grpc_channel
        serialize = self._request_type.SerializeToString
        # Registered with gRPC's core once (as the generated stubs do), not looked up per call.
        self._stream = channel.unary_stream(
            _STREAMING,
            request_serializer=serialize,
            response_deserializer=result_set.PartialResultSet.pb().FromString,
            _registered_method=True,
        )
        self._unary = channel.unary_unary(
            _UNARY,
            request_serializer=serialize,
            response_deserializer=result_set.ResultSet.pb().FromString,
            _registered_method=True,
        )
        self._unary_quiet = _CoreUnary.of(_without_quiet_logging(self._unary))
        self._make_value = _helpers._make_value_pb
        # GAPIC's own (x-goog-api-client), then the library's: resource prefix (+ AFE timing)
        self._static = [*wrapped_metadata, *_helpers._metadata_with_prefix(database.name)]  # type: ignore[no-untyped-call]
        self._routing: dict[str, tuple[str, str]] = {}
        client = database._instance._client
        options = _helpers._merge_query_options(client._query_options, None)  # type: ignore[no-untyped-call]
        self._query_options = type(options).pb(options) if options is not None else None
        directed = database._directed_read_options
        self._directed = None
        if directed is not None:
            from google.cloud.spanner_v1.types import DirectedReadOptions

            value = DirectedReadOptions(directed) if isinstance(directed, dict) else directed
            self._directed = DirectedReadOptions.pb(value)
        self._prepared: dict[tuple[str, str, str], Prepared] = {}

    @classmethod
    def of(cls, database: Any) -> DirectReads | None:
        """This Database's direct reads, or None when they would drop something the library
        does per call (its tracing) or the library is not shaped as this module expects."""
        try:
            options = database._instance._client.observability_options or {}
            if options.get("tracer_provider") is not None or _global_tracing():
                return None  # the client's spans are wanted: the library's path makes them
            transport = database.spanner_api.transport
            wrapped = transport._wrapped_methods[transport.execute_streaming_sql]
            metadata = tuple(wrapped._default_metadata)
            if database._instance._client._client_context is not None:
                return None  # request options merged per call from a client context
            database.metadata_and_request_id  # noqa: B018 - shape checks
            database._next_nth_request  # noqa: B018
            _checkout_shape(database)
            return cls(database, metadata)
        except Exception as exc:  # noqa: BLE001 - another shape: the library's path serves
            log.info("direct reads are off for this client library: %s", exc)
            return None

    # -- requests -----------------------------------------------------------------------------
    def prepared(self, key: tuple[str, str, str], build: Any) -> Prepared:
        """The query's ``Prepared`` (``key``: its name, identity and SQL), made once by
        ``build()``."""
        found = self._prepared.get(key)
        if found is None:
            found = self._prepared[key] = build()
        return found

    def selector(self, staleness: Mapping[str, Any]) -> Any:
        """A single-use read-only TransactionSelector, as ``Snapshot`` builds it."""
        from google.cloud.spanner_v1.types import TransactionOptions, TransactionSelector

        read_only = TransactionOptions.ReadOnly(
            return_read_timestamp=True, **(staleness or {"strong": True})
        )
        return TransactionSelector.pb(
            TransactionSelector(single_use=TransactionOptions(read_only=read_only))
        )

    def request(self, session: str, prepared: Prepared, params: Mapping[str, Any], tag: str) -> Any:
        request = self._request_type(session=session, sql=prepared.sql)
        request.transaction.CopyFrom(prepared.selector)
        fields = request.params.fields
        for name, value in params.items():
            fields[name].CopyFrom(self._make_value(value))  # type: ignore[no-untyped-call]
        for name, type_pb in prepared.param_types.items():
            request.param_types[name].CopyFrom(type_pb)
        if self._query_options is not None:
            request.query_options.CopyFrom(self._query_options)
        request.request_options.request_tag = tag
        if prepared.priority:
            request.request_options.priority = prepared.priority
        if self._directed is not None:
            request.directed_read_options.CopyFrom(self._directed)
        return request

    def _metadata(self, session: str) -> list[tuple[str, str]]:
        routing = self._routing.get(session)
        if routing is None:
            from google.api_core.gapic_v1 import routing_header

            routing = routing_header.to_grpc_metadata((("session", session),))  # type: ignore[no-untyped-call]
            self._routing = {session: routing}  # the multiplexed session: one at a time
        database = self._database
        metadata, _ = database.metadata_and_request_id(database._next_nth_request, 1, self._static)
        metadata.append(routing)
        return list(metadata)

    # -- calls --------------------------------------------------------------------------------
    async def unary(
        self, session: str, prepared: Prepared, request: Any, limit: int, timeout: float,
        want_types: bool,
    ) -> Rows:  # fmt: skip
        """ExecuteSql: the whole result in one reply (for bounded reads only)."""
        try:
            stub = self._unary
            if self._unary_quiet is not None and not _library_logs_calls():
                stub = self._unary_quiet
            reply = await stub(request, metadata=self._metadata(session), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            error = gexc.from_grpc_error(exc)  # type: ignore[no-untyped-call]
            if isinstance(error, gexc.ServiceUnavailable | gexc.ResourceExhausted):
                raise Fallback from error  # the library's ExecuteSql retries these
            if isinstance(error, gexc.FailedPrecondition):
                raise Fallback from error  # e.g. over the unary reply's 10 MiB: stream it
            raise error from None
        decoders = self._decoders(prepared, reply.metadata.row_type)
        rows = reply.rows
        kept = [decoders.row(row.values) for row in list(rows)[:limit]]
        return Rows(decoders.columns, decoders.types if want_types else [], kept, len(rows) > limit)

    async def streamed(
        self, session: str, prepared: Prepared, request: Any, limit: int, timeout: float,
        want_types: bool,
    ) -> Rows:  # fmt: skip
        """ExecuteStreamingSql, read until ``limit + 1`` rows (then cancelled)."""
        call = self._stream(request, metadata=self._metadata(session), timeout=timeout)
        decoders: _Decoders | None = None
        values: list[Any] = []
        width = 0
        truncated = False
        try:
            async for message in call:
                if decoders is None:
                    decoders = self._decoders(prepared, message.metadata.row_type)
                    width = len(decoders.columns)
                if message.chunked_value:
                    raise Fallback  # the library merges chunks
                values.extend(message.values)
                if width and len(values) > limit * width:
                    truncated = True  # the (limit + 1)th row: stop reading
                    break
        except grpc.aio.AioRpcError as exc:
            error = gexc.from_grpc_error(exc)  # type: ignore[no-untyped-call]
            if isinstance(error, gexc.ServiceUnavailable) or (
                isinstance(error, gexc.InternalServerError)
                and any(m in str(error.message) for m in _RESUMABLE_INTERNAL)
            ):
                raise Fallback from error  # the library resumes these
            raise error from None
        finally:
            call.cancel()  # a no-op once the stream ended
        if decoders is None:
            raise Fallback  # no message at all: let the library say what that means
        kept = values[: limit * width] if width else []
        rows = [decoders.row(kept[i : i + width]) for i in range(0, len(kept), width)]
        return Rows(decoders.columns, decoders.types if want_types else [], rows, truncated)

    @staticmethod
    def _decoders(prepared: Prepared, row_type: Any) -> _Decoders:
        found = prepared.decoders
        if found is None or found.row_type != row_type:  # a query's shape rarely changes
            found = prepared.decoders = _Decoders(row_type)
        return found
