"""Start-up's dialect check when the database will not say its dialect (issue 19, L5): each
identity is asked in turn, the no-answer case is a located warning, and a statement Spanner
refuses then says which dialect to try. Pure: ``analyze_policy`` is given its databases (the
injected seam) as small stand-ins, since the emulator always answers the dialect query."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from gateway.errors import PolicyError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy_data
from gateway.spanner.analyze import analyze_policy
from gateway.spanner.dialect import DIALECT_SQL


class _Stream:
    def __init__(self, rows: list[list[Any]]) -> None:
        self._rows = rows
        self.fields: list[Any] = []

    def __aiter__(self) -> AsyncIterator[list[Any]]:
        async def rows() -> AsyncIterator[list[Any]]:
            for row in self._rows:
                yield row

        return rows()


class _Database:
    """Answers the dialect query with ``dialect`` (an exception, or the rows); refuses every
    statement's PLAN as Spanner refuses a statement of the other dialect."""

    def __init__(self, dialect: BaseException | list[list[Any]], *, plans: bool = False) -> None:
        self.dialect = dialect
        self.plans = plans  # the statements plan (no result columns)
        self.asked = 0

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[_Database]:
        yield self

    async def execute_sql(self, sql: str, **_: Any) -> _Stream:
        if sql == DIALECT_SQL:
            self.asked += 1
            if isinstance(self.dialect, BaseException):
                raise self.dialect
            return _Stream(self.dialect)
        if self.plans:
            return _Stream([])
        raise gexc.InvalidArgument("Syntax error: Unexpected \"$\" [at 1:40]")


class _Databases:
    def __init__(self, policy: CompiledPolicy, **by_identity: _Database) -> None:
        self.target = policy.model.spanner
        self.roles = {n: i.database_role for n, i in policy.model.identities.items()}
        self.by_identity = by_identity

    def aio(self, identity: str) -> _Database:
        return self.by_identity[identity]


def _policy() -> CompiledPolicy:
    data = {
        "version": 1,
        "spanner": {"project": "p", "instance": "i", "database": "d"},
        "issuers": {"okta": {"issuer": "https://idp.example", "audience": "api"}},
        "identities": {"a": {"database_role": "ra"}, "b": {"database_role": "rb"}},
        "roles": {"staff": [{"groups": ["staff"]}]},
        "queries": {
            f"q{n}": {
                "identity": n,
                "sql": "SELECT id FROM things WHERE id = @id" + n,  # noqa: S608
                "params": {f"id{n}": {"type": "int64"}},
            }
            for n in ("a", "b")
        },
        "routes": [
            {"path": f"/q{n}", "method": "GET", "query": f"q{n}", "allow": ["staff"]}
            for n in ("a", "b")
        ],
    }
    return compile_policy(load_policy_data(data, base_dir=Path(".")))


async def test_each_identity_is_asked_until_one_answers() -> None:
    policy = _policy()
    a = _Database(gexc.PermissionDenied("Role ra lacks SELECT on database_options"))
    b = _Database([["POSTGRESQL"]])
    with pytest.raises(PolicyError) as caught:
        await analyze_policy(policy, _Databases(policy, a=a, b=b))  # type: ignore[arg-type]
    [problem] = caught.value.problems
    assert problem.where == "spanner.dialect"
    assert "the database d is a PostgreSQL-dialect database" in problem.message
    assert (a.asked, b.asked) == (1, 1)


async def test_no_answer_is_said_and_refused_statements_name_the_other_dialect() -> None:
    policy = _policy()
    a = _Database(gexc.PermissionDenied("Role ra lacks SELECT on database_options"))
    b = _Database([])  # no row
    with pytest.raises(PolicyError) as caught:
        await analyze_policy(policy, _Databases(policy, a=a, b=b))  # type: ignore[arg-type]
    messages = [p.message for p in caught.value.problems]
    assert messages == [
        f"Spanner refuses query 'q{n}': Syntax error: Unexpected \"$\" [at 1:40] (the database "
        "did not say its dialect: if it is a PostgreSQL-dialect database, set spanner.dialect: "
        "postgresql)"
        for n in ("a", "b")
    ]


async def test_a_database_that_does_not_say_is_a_located_warning() -> None:
    policy = _policy()
    a = _Database(gexc.PermissionDenied("Role ra lacks SELECT on database_options"), plans=True)
    b = _Database([], plans=True)
    analysis = await analyze_policy(policy, _Databases(policy, a=a, b=b))  # type: ignore[arg-type]
    [warning] = analysis.warnings
    assert warning.where == "spanner.dialect"
    assert warning.message == (
        "cannot ask the database for its dialect (identity 'a': Role ra lacks SELECT on "
        "database_options; identity 'b': no row): spanner.dialect (googlesql) is not checked "
        "against it; each statement's PLAN still is"
    )
