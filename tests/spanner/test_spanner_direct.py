"""Direct reads (gateway.spanner.direct) against the real emulator: the same answers as the
client library's path, unary ExecuteSql only for reads their statement bounds, errors mapped
alike, and the library's path taking over when the direct one cannot finish a read."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text

from gateway.app import Gateway
from gateway.spanner.direct import DirectReads, _CoreUnary

DATABASE = "sgdirect"
DDL = [
    "CREATE TABLE Things (Id INT64 NOT NULL, Name STRING(64), Price NUMERIC, Ts TIMESTAMP,"
    " Tags ARRAY<STRING(16)>, Doc JSON, Raw BYTES(16)) PRIMARY KEY (Id)"
]
SEED = [
    "INSERT INTO Things (Id, Name, Price, Ts, Tags, Doc, Raw) VALUES (1, 'one', NUMERIC '1.50',"
    " TIMESTAMP '2026-01-02T03:04:05.123456789Z', ['a', NULL], JSON '{\"k\": [1, null]}',"
    " b'\\x00\\xff')",
    "INSERT INTO Things (Id, Name) VALUES (2, NULL)",
    "INSERT INTO Things (Id, Name) VALUES (3, 'three')",
]

POLICY = """\
identities:
  reader: {database_role: direct_reader}
queries:
  all:
    identity: reader
    sql: SELECT Id, Name, Price, Ts, Tags, Doc, Raw FROM Things ORDER BY Id
    max_rows: 2
  limited:
    identity: reader
    sql: SELECT Id, Name, Price, Ts, Tags, Doc, Raw FROM Things ORDER BY Id LIMIT 3
    max_rows: 2
  one:
    identity: reader
    sql: SELECT Id, Name FROM Things WHERE Id = @id LIMIT 1
    params: {id: {type: INT64}}
  lookup:
    identity: reader
    sql: SELECT t.Id, t.Name FROM Things AS t WHERE t.Id = @id
    params: {id: {type: INT64}}
    max_rows: 1
  scan:
    identity: reader
    sql: SELECT Id, Name FROM Things WHERE Name = @name
    params: {name: {type: STRING}}
    max_rows: 1
  cast:
    identity: reader
    sql: SELECT CAST(@s AS INT64) AS n LIMIT 1
    params: {s: {type: STRING}}
routes:
  - {path: /all, method: GET, query: all, allow: [tester]}
  - {path: /limited, method: GET, query: limited, allow: [tester]}
  - {path: "/one/{id}", method: GET, query: one, allow: [tester]}
  - {path: "/lookup/{id}", method: GET, query: lookup, allow: [tester]}
  - {path: "/scan/{name}", method: GET, query: scan, allow: [tester]}
  - {path: "/cast/{s}", method: GET, query: cast, allow: [tester]}
"""


@pytest.fixture(scope="module")
async def served(
    demo_database: str, idp: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    make_database(demo_database, DATABASE, DDL, SEED)
    policy = policy_text(DATABASE, POLICY)
    async with gateway_on(
        tmp_path_factory.mktemp("direct"), demo_database, policy, issuer=idp.issuer
    ) as served:
        yield served


@pytest.fixture(scope="module")
def token(token_for: Token) -> str:
    return token_for("support-console")


async def _both(
    app: Gateway, http: httpx.AsyncClient, token: str, path: str
) -> tuple[httpx.Response, httpx.Response]:
    """The answer on the direct path, then on the library's path."""
    executor = app.executor
    try:
        direct = await http.get(path, headers=bearer(token))
        executor.direct_reads = False
        executor._directs.clear()
        library = await http.get(path, headers=bearer(token))
    finally:
        executor.direct_reads = True
        executor._directs.clear()
    return direct, library


@pytest.mark.parametrize(
    "path",
    ["/all", "/limited", "/one/1", "/one/2", "/one/9", "/lookup/1", "/lookup/9", "/scan/one"],
)
async def test_the_direct_path_answers_what_the_library_path_answers(
    served: tuple[Gateway, httpx.AsyncClient], token: str, path: str
) -> None:
    app, http = served
    before = dict(app.executor.direct_counts)
    direct, library = await _both(app, http, token, path)
    assert direct.status_code == library.status_code == 200
    assert direct.json() == library.json()
    counts = app.executor.direct_counts
    # LIMIT 3 and LIMIT 1 bound their rows, and so does fixing the primary key; /all and a
    # lookup by a column that is not the key stream
    way = "direct" if path in ("/all", "/scan/one") else "unary"
    assert counts[way] == before[way] + 1
    assert counts["fallback"] == before["fallback"]


async def test_rows_are_cut_at_max_rows_on_both_calls(
    served: tuple[Gateway, httpx.AsyncClient], token: str
) -> None:
    _, http = served
    for path in ("/all", "/limited"):  # a stream stopped at the 3rd row; a unary reply of 3
        body = (await http.get(path, headers=bearer(token))).json()
        assert [r["Id"] for r in body["rows"]] == [1, 2]
        assert body["truncated"] is True
        first = body["rows"][0]
        assert first == {
            "Id": 1, "Name": "one", "Price": "1.5", "Ts": "2026-01-02T03:04:05.123456789Z",
            "Tags": ["a", None], "Doc": {"k": [1, None]}, "Raw": "AP8=",
        }  # fmt: skip


async def test_point_lookups_are_read_from_the_schema(
    served: tuple[Gateway, httpx.AsyncClient],
) -> None:
    app, _ = served
    analysis = app.executor.analysis(app.policy)
    assert analysis is not None
    assert analysis.point_lookups == {"lookup", "one"}  # not `scan`: Name is not its key


async def test_errors_map_as_on_the_library_path(
    served: tuple[Gateway, httpx.AsyncClient], token: str
) -> None:
    app, http = served
    direct, library = await _both(app, http, token, "/cast/abc")
    assert direct.status_code == library.status_code == 400
    assert direct.json()["code"] == library.json()["code"] == "statement-rejected"


class _Unavailable(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
        )


async def test_the_library_path_takes_over_what_the_direct_path_cannot_finish(
    served: tuple[Gateway, httpx.AsyncClient], token: str
) -> None:
    """UNAVAILABLE on the direct call: the library's path (which resumes and retries) runs the
    read again and answers it."""
    app, http = served
    database = app.executor.databases.aio("reader")
    direct = app.executor._direct(database)
    assert isinstance(direct, DirectReads)
    real = direct._unary

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise _Unavailable()

    quiet = direct._unary_quiet
    before = app.executor.direct_counts["fallback"]
    direct._unary = direct._unary_quiet = failing  # type: ignore[method-assign]
    try:
        answer = await http.get("/one/3", headers=bearer(token))
    finally:
        direct._unary, direct._unary_quiet = real, quiet  # type: ignore[method-assign]
    assert answer.status_code == 200
    assert answer.json()["rows"] == [{"Id": 3, "Name": "three"}]
    assert app.executor.direct_counts["fallback"] == before + 1


async def test_spanner_direct_reads_false_reads_through_the_library(
    served: tuple[Gateway, httpx.AsyncClient],  # the database and its rows
    demo_database: str,
    idp: Any,
    tmp_path_factory: pytest.TempPathFactory,
    token: str,
) -> None:
    policy = policy_text(DATABASE, POLICY)
    async with gateway_on(
        tmp_path_factory.mktemp("library"),
        demo_database,
        policy,
        issuer=idp.issuer,
        spanner_direct_reads=False,
    ) as (app, http):
        answer = await http.get("/lookup/1", headers=bearer(token))
        assert answer.status_code == 200
        assert answer.json()["rows"] == [{"Id": 1, "Name": "one"}]
        assert app.executor.direct_counts == {"direct": 0, "unary": 0, "fallback": 0}


async def test_unary_reads_skip_the_library_logging_interceptor_only_while_it_is_quiet(
    served: tuple[Gateway, httpx.AsyncClient], token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The channel's only interceptor here is the library's logging one: a unary read skips it
    while its logger is not at DEBUG, and goes through it (and is logged by it) when it is."""
    from google.cloud.spanner_v1.services.spanner.transports import grpc_asyncio

    app, http = served
    direct = app.executor._direct(app.executor.databases.aio("reader"))
    assert isinstance(direct, DirectReads)
    assert [type(i) for i in direct._unary._interceptors] == [
        grpc_asyncio._LoggingClientAIOInterceptor
    ]
    quiet = direct._unary_quiet
    assert isinstance(quiet, _CoreUnary)  # the plain stub's call, sent on gRPC's Cython call
    taken: list[str] = []

    def counting(name: str, stub: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            taken.append(name)
            return stub(*args, **kwargs)

        return call

    real = direct._unary
    direct._unary, direct._unary_quiet = counting("intercepted", real), counting("quiet", quiet)
    library = logging.getLogger(grpc_asyncio.__name__)
    try:
        assert (await http.get("/one/1", headers=bearer(token))).status_code == 200
        assert taken == ["quiet"]
        with caplog.at_level(logging.DEBUG, logger=library.name):
            assert (await http.get("/one/1", headers=bearer(token))).status_code == 200
        assert taken == ["quiet", "intercepted"]
        assert any("ExecuteSql" in r.getMessage() for r in caplog.records if r.name == library.name)
    finally:
        direct._unary, direct._unary_quiet = real, quiet  # type: ignore[method-assign]


def test_any_other_interceptor_keeps_every_unary_read_going_through_them() -> None:
    from google.cloud.spanner_v1.services.spanner.transports import grpc_asyncio

    from gateway.spanner.direct import _without_quiet_logging

    class Stub:
        def __init__(self, interceptors: list[Any] | None) -> None:
            self._interceptors = interceptors

    logging_one = grpc_asyncio._LoggingClientAIOInterceptor()
    assert _without_quiet_logging(Stub([logging_one, object()])) is None  # e.g. built-in metrics
    assert _without_quiet_logging(Stub([])) is None  # nothing to skip
    assert _without_quiet_logging(object()) is None  # another shape of gRPC
    plain = _without_quiet_logging(Stub([logging_one]))
    assert plain is not None and plain._interceptors is None
