"""Every statement of a policy analysed by Spanner itself (``query_mode=PLAN``) before it serves.

Contract:

- Each query is planned under its own identity (so on real Spanner a missing grant shows too),
  with its declared parameter types: a misspelt table or column, a parameter whose type does not
  fit the SQL, or a missing grant fails the load with a ``PolicyError`` naming the query, its
  file:line:column and Spanner's words ("Unrecognized name: OrderIdd; Did you mean OrderId?"),
  instead of failing the first call. Every problem is reported, not just the first.
- Queries are planned in a single-use snapshot; DML is planned inside a read-write transaction
  that is then rolled back (Spanner refuses DML in a snapshot). Nothing is executed.
- The plan's result fields give each query's response columns and their types (``Shape``), which
  the OpenAPI document publishes. A result that the JSON body cannot carry is a problem too: a
  STRUCT column, an unnamed column (``SELECT COUNT(*)`` without ``AS``) or two columns with one
  name (rows are JSON objects keyed by column name).
- A query's masks must name result columns (exactly: rows are keyed by them), and ``last4``
  only STRING columns (``policy.masking.column_findings``): else a problem located at the mask.
  A result column that differs from a masked one only in case is a warning
  (``Analysis.warnings``, located; ``policy.masking.column_warnings``): it is answered unmasked.
- A paginated query's keyset columns must be result columns (exactly) of a keyset type, the
  type their cursor parameters declare (``policy.pagination.column_findings``).
- For identities that run DML, the Idempotency-Key table is planned too; its absence is not a
  load error (``idempotency_ready`` is False and a warning says to run ``spangate init-db``).
  Likewise the approvals table for identities whose query a route's approval guards
  (``approvals_ready``; calls to such routes answer 503 ``approval-table-missing`` meanwhile).
- First of all, the database's dialect must be the policy's ``spanner.dialect``
  (``dialect.py``): else a PolicyError located at ``spanner.dialect`` saying which to set.
- A read shaped as a point lookup (``bounded.point_lookup``) has its table's primary key read
  from ``INFORMATION_SCHEMA.INDEX_COLUMNS`` under its identity; when its WHERE clause fixes every
  key column it is in ``Analysis.point_lookups`` (at most one row: one unary ExecuteSql,
  ``direct.py``). A failure to read the key only leaves it out (it streams). GoogleSQL only:
  a PostgreSQL-dialect policy's reads all stream.
- Spanner being unreachable is not a policy problem: that error propagates as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc

from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.compiled import CompiledPolicy, CompiledQuery
from gateway.policy.masking import column_findings, column_warnings
from gateway.policy.pagination import column_findings as keyset_findings
from gateway.policy.source import dotted
from gateway.policy.sqltoken import Dialect
from gateway.spanner.dialect import dialect_answer, dialect_hint, dialect_named, dialect_problem
from gateway.spanner.identities import Databases
from gateway.spanner.params import spanner_type

__all__ = [
    "PLAN_TIMEOUT_SECONDS",
    "Analysis",
    "Column",
    "Shape",
    "analyze_policy",
    "plan_query",
    "type_name",
]

log = logging.getLogger("spangate.spanner")

PLAN_TIMEOUT_SECONDS = 15.0
_POLICY_ERRORS = (
    gexc.InvalidArgument,
    gexc.NotFound,
    gexc.PermissionDenied,
    gexc.FailedPrecondition,
    gexc.MethodNotImplemented,
    gexc.OutOfRange,
)


@dataclass(frozen=True)
class Column:
    """A result column: its name and Spanner type (``INT64``, ``ARRAY<STRING>``...)."""

    name: str
    type: str

    @property
    def is_array(self) -> bool:
        return self.type.startswith("ARRAY<")

    @property
    def scalar(self) -> str:
        return self.type[6:-1] if self.is_array else self.type


@dataclass(frozen=True)
class Shape:
    columns: tuple[Column, ...] = ()


@dataclass(frozen=True)
class Analysis:
    shapes: Mapping[str, Shape] = field(default_factory=dict)  # query name -> result columns
    idempotency_ready: Mapping[str, bool] = field(default_factory=dict)  # writing identity -> ok
    approvals_ready: Mapping[str, bool] = field(default_factory=dict)  # approving identity -> ok
    warnings: tuple[PolicyProblem, ...] = ()  # located; the policy still serves
    point_lookups: frozenset[str] = frozenset()  # reads that fix their table's primary key


class _Planned(Exception):  # control flow: roll the planning transaction back
    pass


def type_name(type_pb: Any) -> str:
    """``INT64``, ``ARRAY<STRING>``... of a result field's type (a protobuf message)."""
    from google.cloud.spanner_v1 import TypeCode

    raw = type_pb.code
    code = raw.name if hasattr(raw, "name") else TypeCode(raw).name
    if code == "ARRAY":
        return f"ARRAY<{type_name(type_pb.array_element_type)}>"
    return str(code)


def _columns(fields: Any) -> tuple[Column, ...]:
    return tuple(Column(f.name, type_name(f.type_)) for f in (fields or ()))


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def plan_query(database: Any, query: CompiledQuery) -> tuple[Column, ...]:
    """Spanner's PLAN of one statement (nothing runs); its result columns."""
    from google.cloud.spanner_v1 import ExecuteSqlRequest

    plan = ExecuteSqlRequest.QueryMode.PLAN
    wire = query.wire or {name: name for name in query.params}
    params = {wire[name]: None for name in query.params}
    types = {
        wire[name]: spanner_type(spec.ptype, query.dialect) for name, spec in query.params.items()
    }
    options = {"request_tag": f"spangate analyze {query.name}"[:50]}
    if not query.is_dml:
        async with database.snapshot() as snapshot:
            stream = await snapshot.execute_sql(
                query.model.sql,
                params=params,
                param_types=types,
                query_mode=plan,
                request_options=options,
            )
            await _drain(stream)
            return _columns(stream.fields)
    found: list[tuple[Column, ...]] = []

    async def work(transaction: Any) -> None:
        stream = await transaction.execute_sql(
            query.model.sql,
            params=params,
            param_types=types,
            query_mode=plan,
            request_options=options,
        )
        await _drain(stream)
        found.append(_columns(stream.fields))
        raise _Planned

    try:
        await database.run_in_transaction(work)
    except _Planned:
        pass
    return found[0]


def _result_problems(columns: tuple[Column, ...]) -> list[str]:
    out = []
    names = [c.name for c in columns]
    for column in columns:
        if column.scalar == "STRUCT":
            out.append(f"column {column.name or '(unnamed)'} is a STRUCT, which cannot be returned")
    if any(not n for n in names):
        out.append("a result column has no name: name it with AS")
    duplicates = sorted({n for n in names if n and names.count(n) > 1})
    if duplicates:
        out.append(f"result columns share a name: {', '.join(duplicates)} (rename with AS)")
    return out


def _problem(
    policy: CompiledPolicy, name: str, message: str, where: tuple[str | int, ...] | None = None
) -> PolicyProblem:
    where = where or ("queries", name, "sql")
    file, line, column = policy.loaded.locate(where)
    return PolicyProblem(file, line, column, dotted(where), message)


def _spanner_words(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc)
    return text.split("\n", 1)[0].split(", request_id", 1)[0].strip()


async def _idempotency_ready(database: Any, dialect: Dialect) -> bool:
    from gateway.spanner.idempotency import lookup_sql

    sql, param = lookup_sql(dialect)
    return await _plans(database, sql, param)


async def _approvals_ready(database: Any, dialect: Dialect) -> bool:
    from gateway.spanner.approvals import probe_sql

    sql, param = probe_sql(dialect)
    return await _plans(database, sql, param)


async def _plans(database: Any, sql: str, param: str) -> bool:
    """Whether Spanner plans ``sql`` (one STRING parameter) under this database's role."""
    from google.cloud.spanner_v1 import ExecuteSqlRequest, param_types

    try:
        async with database.snapshot() as snapshot:
            stream = await snapshot.execute_sql(
                sql,
                params={param: None},
                param_types={param: param_types.STRING},
                query_mode=ExecuteSqlRequest.QueryMode.PLAN,
            )
            await _drain(stream)
    except _POLICY_ERRORS:
        return False
    return True


async def _check_dialect(policy: CompiledPolicy, databases: Databases) -> str | None:
    """PolicyError at ``spanner.dialect`` when the database's dialect is not the policy's. Each
    identity the queries run as is asked in turn, until one gets an answer; a database that
    will not say to any of them (a role without access to INFORMATION_SCHEMA, no row) is not
    refused here, the PLAN of each statement still is the authority: what each identity got is
    returned then (None: the dialect was checked, or there is no query)."""
    identities = dict.fromkeys(q.model.identity for q in policy.queries.values())
    got: list[str] = []
    for identity in identities:
        try:
            async with asyncio.timeout(PLAN_TIMEOUT_SECONDS):
                answer = await dialect_answer(databases.aio(identity))
        except _POLICY_ERRORS as exc:
            got.append(f"identity {identity!r}: {_spanner_words(exc)}")
            continue
        actual = dialect_named(answer)
        if actual is None:
            said = "no row" if answer is None else f"a dialect the gateway does not know, {answer!r}"
            got.append(f"identity {identity!r}: {said}")
            continue
        problem = dialect_problem(policy.model.spanner.dialect, actual, databases.target.database)
        if problem is not None:
            raise PolicyError([_problem(policy, "", problem, ("spanner", "dialect"))])
        return None
    return "; ".join(got) if got else None


_PRIMARY_KEY_SQL = (
    "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.INDEX_COLUMNS WHERE TABLE_SCHEMA = '' "
    "AND TABLE_NAME = @table AND INDEX_NAME = 'PRIMARY_KEY'"
)


async def primary_key(database: Any, table: str) -> frozenset[str]:
    """The upper-cased primary key columns of ``table`` (empty: unknown)."""
    from google.cloud.spanner_v1 import param_types

    async with database.snapshot() as snapshot:
        stream = await snapshot.execute_sql(
            _PRIMARY_KEY_SQL,
            params={"table": table},
            param_types={"table": param_types.STRING},
            request_options={"request_tag": "spangate analyze primary key"},
        )
        return frozenset([str(row[0]).upper() async for row in stream])


async def _point_lookups(policy: CompiledPolicy, databases: Databases) -> frozenset[str]:
    from gateway.spanner.bounded import point_lookup

    if policy.model.spanner.dialect == "postgresql":  # its reader and key query are GoogleSQL's
        return frozenset()
    found = set()
    keys: dict[tuple[str, str], frozenset[str]] = {}
    for name, query in policy.queries.items():
        shape = None if query.is_dml else point_lookup(query.model.sql)
        if shape is None:
            continue
        identity = query.model.identity
        where = (identity, shape.table.upper())
        try:
            if where not in keys:
                async with asyncio.timeout(PLAN_TIMEOUT_SECONDS):
                    keys[where] = await primary_key(databases.aio(identity), shape.table)
        except Exception as exc:  # noqa: BLE001 - an optimisation: without it the read streams
            log.info("cannot read the primary key of %s for query %s: %s", shape.table, name, exc)
            keys[where] = frozenset()
        if keys[where] and keys[where] <= shape.fixed:
            found.add(name)
    return frozenset(found)


async def analyze_policy(policy: CompiledPolicy, databases: Databases) -> Analysis:
    """Plan every query of ``policy``; PolicyError with every problem found (see module doc).

    The caller serialises this with writes against the emulator (DML planning opens read-write
    transactions). Unreachable Spanner: the google.api_core error propagates."""
    problems: list[PolicyProblem] = []
    warnings: list[PolicyProblem] = []
    shapes: dict[str, Shape] = {}
    dialect = policy.model.spanner.dialect
    unknown = await _check_dialect(policy, databases)
    hint = ""
    if unknown is not None:
        message = (
            f"cannot ask the database for its dialect ({unknown}): spanner.dialect "
            f"({dialect}) is not checked against it; each statement's PLAN still is"
        )
        warnings.append(_problem(policy, "", message, ("spanner", "dialect")))
        hint = dialect_hint(dialect)
    for name, query in policy.queries.items():
        identity = query.model.identity
        try:
            database = databases.aio(identity)
            async with asyncio.timeout(PLAN_TIMEOUT_SECONDS):
                columns = await plan_query(database, query)
        except gexc.PermissionDenied as exc:
            role = databases.roles.get(identity)
            problems.append(
                _problem(
                    policy,
                    name,
                    (
                        f"identity {identity!r} (database role {role!r}) lacks a grant this statement "
                        f"needs (see `spangate grants`): {_spanner_words(exc)}"
                    ),
                )
            )
            continue
        except _POLICY_ERRORS as exc:
            problems.append(
                _problem(
                    policy, name, f"Spanner refuses query {name!r}: {_spanner_words(exc)}{hint}"
                )
            )
            continue
        for message in _result_problems(columns):
            problems.append(_problem(policy, name, f"query {name!r}: {message}"))
        pairs = [(c.name, c.type) for c in columns]
        for where, message in column_findings(name, query.model.mask, pairs):
            problems.append(_problem(policy, name, message, where))
        for where, message in column_warnings(name, query.model, pairs, dialect):
            warnings.append(_problem(policy, name, message, where))
        for where, message in keyset_findings(name, query.model, pairs):
            problems.append(_problem(policy, name, message, where))
        shapes[name] = Shape(columns)
    if problems:
        raise PolicyError(problems)
    ready: dict[str, bool] = {}
    for query in policy.queries.values():
        identity = query.model.identity
        if query.is_dml and identity not in ready:
            async with asyncio.timeout(PLAN_TIMEOUT_SECONDS):
                ready[identity] = await _idempotency_ready(databases.aio(identity), dialect)
            if not ready[identity]:
                log.warning(
                    "identity %s cannot read the Idempotency-Key table: writes with an "
                    "Idempotency-Key will fail (500 idempotency-table-missing) until "
                    "`spangate init-db` creates it and `spangate grants` are applied",
                    identity,
                )
    approving: dict[str, bool] = {}
    for route in policy.routes:
        identity = route.query.model.identity
        if route.model.approval is not None and identity not in approving:
            async with asyncio.timeout(PLAN_TIMEOUT_SECONDS):
                approving[identity] = await _approvals_ready(databases.aio(identity), dialect)
            if not approving[identity]:
                log.warning(
                    "identity %s cannot read the approvals table: calls to routes with an "
                    "approval will fail (503 approval-table-missing) until `spangate init-db` "
                    "creates it and `spangate grants` are applied",
                    identity,
                )
    return Analysis(
        shapes=shapes,
        idempotency_ready=ready,
        approvals_ready=approving,
        warnings=tuple(warnings),
        point_lookups=await _point_lookups(policy, databases),
    )
