"""A loaded policy compiled for the request path: router, parameter specs, statement facts.

Built once per (re)load, then read-only: requests in flight keep the CompiledPolicy they started
with while a reload swaps in a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.policy.bind import ParamSpec, compile_param
from gateway.policy.load import LoadedPolicy
from gateway.policy.model import Policy, Query, Route
from gateway.policy.pagination import Paging, compile_paging
from gateway.policy.reads import ClaimReads, claim_reads
from gateway.policy.roles import RoleTable
from gateway.policy.router import Router, template_params
from gateway.policy.sqlscan import SqlInfo, scan_sql
from gateway.policy.sqltoken import GOOGLESQL, POSTGRESQL, Dialect

__all__ = ["CompiledPolicy", "CompiledQuery", "CompiledRoute", "compile_policy", "wire_names"]


def wire_names(params: Iterable[str], dialect: Dialect) -> dict[str, str]:
    """Declared parameter -> its name on the wire: GoogleSQL binds ``@name`` as ``name``,
    Spanner's PostgreSQL dialect binds ``$k`` as ``pk``."""
    if dialect == POSTGRESQL:
        return {name: f"p{k}" for k, name in enumerate(params, start=1)}
    return {name: name for name in params}


@dataclass(frozen=True)
class CompiledQuery:
    name: str
    model: Query
    sql: SqlInfo
    params: Mapping[str, ParamSpec]
    paging: Paging | None = None  # keyset pagination (``pagination:``)
    # Each declared parameter's name on the wire: itself (GoogleSQL's @name), or p1..pN in
    # declared order (PostgreSQL's $1..$N, which Spanner binds as p1..pN).
    wire: Mapping[str, str] = field(default_factory=dict)
    dialect: Dialect = GOOGLESQL  # the policy's spanner.dialect

    @property
    def is_dml(self) -> bool:
        return self.sql.kind == "dml"


@dataclass(frozen=True)
class CompiledRoute:
    index: int
    model: Route
    query: CompiledQuery
    path_params: tuple[str, ...]

    @property
    def query_name(self) -> str:
        return self.query.name

    @property
    def template(self) -> str:
        return self.model.path

    @property
    def tool_name(self) -> str | None:
        """Its MCP tool's name: ``tool:``, else the query's name; None with ``tool: false``."""
        tool = self.model.tool
        return None if tool is False else tool or self.query.name


@dataclass(frozen=True)
class CompiledPolicy:
    loaded: LoadedPolicy
    router: Router
    queries: Mapping[str, CompiledQuery]
    routes: tuple[CompiledRoute, ...]
    roles: RoleTable
    reads: ClaimReads  # the claims its decisions read: what audit events record for replay

    @property
    def model(self) -> Policy:
        return self.loaded.policy

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir

    def tool(self, name: str) -> CompiledRoute | None:
        """The route whose MCP tool is ``name`` (the loader keeps tool names unique)."""
        return next((r for r in self.routes if r.tool_name == name), None)


def compile_policy(loaded: LoadedPolicy) -> CompiledPolicy:
    """Compile a policy that ``load_policy`` has already validated."""
    policy = loaded.policy
    dialect = policy.spanner.dialect
    queries = {
        name: CompiledQuery(
            name=name,
            model=query,
            sql=scan_sql(query.sql, dialect, tuple(query.params)),
            params={
                p: compile_param(p, spec, query.pagination, dialect)
                for p, spec in query.params.items()
            },
            paging=compile_paging(query, dialect),
            wire=wire_names(query.params, dialect),
            dialect=dialect,
        )
        for name, query in policy.queries.items()
    }
    routes = tuple(
        CompiledRoute(i, route, queries[route.query], tuple(template_params(route.path)))
        for i, route in enumerate(policy.routes)
    )
    router = Router([(r.method, r.path) for r in policy.routes])
    return CompiledPolicy(
        loaded, router, queries, routes, RoleTable(policy.roles), claim_reads(policy)
    )
