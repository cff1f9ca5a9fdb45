"""Cross-reference checks of a policy whose shape pydantic has accepted. Pure: the loader locates.

``validate_policy`` returns every finding as (document path, message); an empty list means the
policy may be served. What it checks, beyond the models:

- references: a route's ``query`` and its ``allow``/``deny`` roles, a query's ``identity``, a role
  entry's ``issuer``, and ``audit.redact`` names (each must be a parameter of some query, or
  ``claim.PATH`` for a claim a role tests or a parameter is bound to, not ``sub`` nor under
  ``act``); unknown names come with "did you mean …?";
- path templates (``template_problems``): they start with ``/``; a segment is literal text of RFC
  3986 pchar characters (no percent-encoding, no ``.``/``..``) or a whole ``{name}`` with a
  parameter-style name, each name once; ``//`` only as a trailing slash; ``RESERVED_PREFIXES``
  belong to the gateway itself. Two routes with the same method and the same shape (parameters
  compared by position, names ignored) are duplicates; two routes with the same method that can
  both match a path while neither is more specific than the other (``overlap.py``) can shadow
  each other;
- every path parameter is a declared, non-claim-bound parameter of the route's query;
- SQL (via ``scan_sql``, in the policy's ``spanner.dialect``): refused statements, and ``@params``
  (PostgreSQL: ``$1..$N``, the declared params in order) that differ from the declared params
  in either direction; a GET route must not reach DML; a DML query takes no ``staleness`` (it runs
  in a read-write transaction); ``timeout`` must be more than zero; every query is routed;
- parameter constraints, which must fit the type (``constraints.py``);
- masks (``masking.mask_findings``): ``unless`` roles exist, a masked column is one the
  statement returns when its select list says so, DML without ``THEN RETURN`` masks nothing;
- approvals (``approval.approval_findings``): ``approvers`` name known roles, not on a
  paginated query's route;
- pagination (``pagination.pagination_findings``): cursor and page size parameters, the
  statement's ``ORDER BY`` keyset and ``LIMIT``, reads only;
- no two issuers answer to the same token ``iss`` (``issuers.py``);
- roles that routes allow say who the caller is when they can hold for a token of an issuer
  anyone can get tokens from (``google``, ``github-actions``; ``pinning.py``), and no role entry
  naming such an issuer tests one of its string claims (``repository_id``) with a number;
- claim-bound parameters (``from: claim.…``) take no ``default`` and are not ``nullable``: a token
  without the claim is always refused (403 claim-missing), so either would promise a value the
  gateway never uses. Their other constraints (pattern, enum, min/max, max_length) are allowed:
  binding checks the claim against them and refuses a token whose claim does not fit (403).

``policy_warnings`` lists what a valid policy may keep but should not: a STRING parameter with a
``pattern`` and no ``max_length`` (RE2 matches in linear time, but the value may be as long as
the request allows); a ``pattern`` or ``matches`` using ``\\d \\w \\s \\b`` (or their negations),
which RE2 matches on ASCII only where Python's ``re`` (which such patterns were often written
for) is Unicode aware, worded more strongly in a deny role (non-ASCII input escapes the deny);
an entry of a route's ``deny`` role that says ``delegated: false`` (it never denies a delegated
token, which the default would); a route that allows a role without a budget beside a budgeted
role one token may also hold (``unbudgeted.py``: the budget is moot for such a token); masks
that may not mean what they say (``masking.mask_warnings``: a result column that differs from a
masked one only in case, a ``hash`` of a value the statement takes from a parameter).

``Salvage`` lets the loader run these checks on the valid part of a policy that also has shape
errors, without reporting follow-on errors for the entries that failed.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.policy.approval import approval_findings, approval_warnings
from gateway.policy.constraints import Finding, Where, param_findings
from gateway.policy.issuers import issuer_findings
from gateway.policy.masking import hash_domains, mask_findings, mask_warnings
from gateway.policy.model import TOOL_NAME, ClaimTest, Param, Policy
from gateway.policy.overlap import route_overlaps
from gateway.policy.pagination import pagination_findings
from gateway.policy.pgsql import tokenize
from gateway.policy.pinning import number_findings, pin_findings
from gateway.policy.reads import claim_reads
from gateway.policy.regex import ascii_escapes
from gateway.policy.sqlscan import SqlInfo, SqlProblem, scan_sql
from gateway.policy.sqltoken import POSTGRESQL, Dialect, fail
from gateway.policy.unbudgeted import unbudgeted_roles

__all__ = [
    "RESERVED_PREFIXES",
    "Finding",
    "Salvage",
    "Where",
    "did_you_mean",
    "policy_warnings",
    "template_problems",
    "template_shape",
    "validate_policy",
]

RESERVED_PREFIXES = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/mcp",
    "/approvals",
    "/.well-known/oauth-protected-resource",
)
_PARAM_SEGMENT = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_PCHAR = frozenset(string.ascii_letters + string.digits + "-._~" + "!$&'()*+,;=" + ":@")
_SINGULAR = {"issuers": "issuer", "identities": "identity", "roles": "role", "queries": "query"}


@dataclass(frozen=True)
class Salvage:
    """What the loader kept of a policy that failed shape validation.

    ``route_index`` gives, for each route kept in the partial policy, its index in the document.
    ``broken`` names, per section (issuers, identities, roles, queries, routes), the entries that
    failed; ``None`` means the section itself was unusable, so no reference into it is checked.
    ``routed`` holds the query names that failed routes refer to; ``redactable`` the parameter
    names of failed queries (``None``: unknown, so ``audit.redact`` is not checked).
    """

    route_index: tuple[int, ...]
    broken: Mapping[str, frozenset[str] | None]
    routed: frozenset[str]
    redactable: frozenset[str] | None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice (case aside first), or ``""``."""
    options = sorted(set(choices))
    same = [c for c in options if c.casefold() == name.casefold()]
    close = same or difflib.get_close_matches(name, options, n=1, cutoff=0.7)
    return f"; did you mean '{close[0]}'?" if close else ""


def template_shape(template: str) -> tuple[str, ...]:
    """Segments with every ``{name}`` replaced by ``{}``: equal shapes match the same paths."""
    return tuple("{}" if _PARAM_SEGMENT.match(s) else s for s in template.split("/")[1:])


def template_problems(template: str) -> list[str]:
    """Everything wrong with a path template (empty when it is fine)."""
    if not template.startswith("/"):
        return ["a path template must start with /"]
    found: list[str] = []
    segments = template.split("/")[1:]
    names: set[str] = set()
    for k, seg in enumerate(segments):
        if seg == "":
            if k != len(segments) - 1:
                found.append("empty segment (//): only a trailing slash may be empty")
            continue
        m = _PARAM_SEGMENT.match(seg)
        if m:
            if m.group(1) in names:
                found.append(f"path parameter {{{m.group(1)}}} appears twice")
            names.add(m.group(1))
        elif "{" in seg or "}" in seg:
            found.append(
                f"segment {seg!r}: a parameter is a whole segment such as {{order_id}}, "
                "named with letters, digits and _"
            )
        elif seg in (".", ".."):
            found.append(f"dot segment {seg!r} is not allowed")
        elif "%" in seg:
            found.append(f"segment {seg!r}: percent-encoding is not allowed; write the character")
        elif bad := sorted({c for c in seg if c not in _PCHAR}):
            shown = " ".join(repr(c) for c in bad)
            found.append(f"segment {seg!r}: {shown} not allowed in a path segment (RFC 3986 pchar)")
    for prefix in RESERVED_PREFIXES:
        if template == prefix or template.startswith(prefix + "/"):
            found.append(f"{prefix} is reserved for the gateway's own endpoints")
    return found


def _template_names(template: str) -> list[str]:
    return [m.group(1) for s in template.split("/")[1:] if (m := _PARAM_SEGMENT.match(s))]


class _Context:
    def __init__(self, policy: Policy, salvage: Salvage | None) -> None:
        self.policy = policy
        self.salvage = salvage
        self._names: dict[str, frozenset[str]] = {}

    def names(self, section: str) -> frozenset[str]:
        found = self._names.get(section)
        if found is None:
            section_map: Mapping[str, Any] = getattr(self.policy, section)
            salvage = self.salvage
            broken = salvage.broken.get(section, frozenset()) if salvage else frozenset()
            found = self._names[section] = frozenset(section_map) | frozenset(broken or ())
        return found

    def unknown(self, section: str, name: str) -> str | None:
        """The message for a reference to an unknown name, or None when it is known."""
        if self.salvage is not None and self.salvage.broken.get(section, frozenset()) is None:
            return None
        names = self.names(section)
        if name in names:
            return None
        return f"unknown {_SINGULAR[section]} '{name}'{did_you_mean(name, names)}"

    def route_where(self, i: int) -> Where:
        return ("routes", self.salvage.route_index[i] if self.salvage else i)


def validate_policy(policy: Policy, *, salvage: Salvage | None = None) -> list[Finding]:
    """Every cross-reference problem of ``policy`` as (document path, message)."""
    ctx = _Context(policy, salvage)
    findings: list[Finding] = []
    for name, role in policy.roles.items():
        for k, entry in enumerate(role.any_of):
            if entry.issuer is not None and (msg := ctx.unknown("issuers", entry.issuer)):
                findings.append((("roles", name, *role.entry_path(k), "issuer"), msg))
    infos: dict[str, SqlInfo] = {}
    dialect = policy.spanner.dialect
    for name, query in policy.queries.items():
        where: Where = ("queries", name)
        if msg := ctx.unknown("identities", query.identity):
            findings.append(((*where, "identity"), msg))
        try:
            infos[name] = info = scan_sql(query.sql, dialect, tuple(query.params))
        except SqlProblem as exc:
            findings.append(((*where, "sql"), str(exc)))
        else:
            findings.extend(_sql_params(where, info, query.params, dialect, query.sql))
            if info.kind == "dml" and query.staleness is not None:
                findings.append(((*where, "staleness"), "staleness applies to reads; DML runs in a "
                                 "read-write transaction"))
        found = mask_findings(
            name, query, infos.get(name), lambda r: ctx.unknown("roles", r), dialect
        )
        findings.extend(found)
        findings.extend(pagination_findings(name, query, infos.get(name), dialect))
        if query.timeout_seconds <= 0:
            findings.append(((*where, "timeout"), "timeout must be more than 0"))
        for pname, param in query.params.items():
            findings.extend(param_findings(("queries", name, "params", pname), param, dialect))
    findings.extend(_routes(ctx, infos))
    findings.extend(_never_routed(ctx))
    findings.extend(_redact(ctx))
    findings.extend(issuer_findings(policy))
    findings.extend(pin_findings(policy))
    findings.extend(number_findings(policy))
    for budgeted in policy.budgets:  # a budget for a role that does not exist would never apply
        if msg := ctx.unknown("roles", budgeted):
            findings.append((("budgets", budgeted), msg))
    for k, sink in enumerate(policy.audit.sinks):
        if sink.type == "spanner" and (msg := ctx.unknown("identities", sink.identity)):
            findings.append((("audit", "sinks", k, "identity"), msg))
    return findings


def policy_warnings(policy: Policy) -> list[Finding]:
    """What the loader reports as warnings: the policy loads, but says less than it could."""
    found: list[Finding] = []
    domains = hash_domains(policy)
    for name, query in policy.queries.items():
        found.extend(mask_warnings(name, query, domains, policy.spanner.dialect))
        for pname, param in query.params.items():
            scalar_string = not param.ptype.is_array and param.ptype.kind == "STRING"
            if scalar_string and param.pattern is not None and param.max_length is None:
                where: Where = ("queries", name, "params", pname, "pattern")
                found.append((where, (
                    "pattern without max_length: the value is matched whatever its length "
                    "(up to the request size limit); give max_length"
                )))
            if param.pattern is not None:
                found.extend(_ascii_pattern(("queries", name, "params", pname, "pattern"),
                                            param.pattern, ""))
    redact = set(policy.audit.redact)
    for name, query in policy.queries.items():
        for pname, param in query.params.items():
            parts = (param.claim or "").split(".")
            if pname in redact and parts[-1] == "sub" and set(parts[:-1]) <= {"act"}:
                found.append((("queries", name, "params", pname), (
                    f"audit.redact names '{pname}', bound to claim.{param.claim}: the parameter "
                    "is hashed, but the trail records the subject (and each actor's) in clear "
                    "in authenticationInfo"
                )))
    for i, route in enumerate(policy.routes):
        found.extend(approval_warnings(("routes", i), route, policy))
    denied_by: dict[str, list[int]] = {}
    for i, route in enumerate(policy.routes):
        for role_name in route.deny:
            denied_by.setdefault(role_name, []).append(i)
    for name, role in policy.roles.items():
        routes = denied_by.get(name, [])
        shown = ", ".join(f"routes[{i}]" for i in routes)
        deny = f" (role {name} is a deny role of {shown}: a value it should deny escapes it)"
        for k, entry in enumerate(role.any_of):
            at: Where = ("roles", name, *role.entry_path(k))
            for path, test in (entry.claims or {}).items():
                if isinstance(test, ClaimTest) and test.matches is not None:
                    found.extend(_ascii_pattern((*at, "claims", path, "matches"), test.matches,
                                                deny if routes else ""))
            if routes and entry.delegation == "direct":
                found.append(((*at, "delegated"), (
                    f"delegated: false in role {name}, a deny role of {shown}: this entry never "
                    "denies a delegated token (an agent acting for a person it matches gets "
                    "through); leave delegated out to deny delegated tokens too"
                )))
    found.extend(unbudgeted_roles(policy))
    return found


_UNICODE_FORMS = {
    "\\d": "\\pN (or [0-9] to say ASCII)",
    "\\D": "\\PN",
    "\\w": "[\\pL\\pN_]",
    "\\W": "[^\\pL\\pN_]",
    "\\s": "[\\s\\pZ] or an explicit class",
    "\\S": "[^\\s\\pZ]",
    "\\b": "an explicit class on each side (RE2 has no Unicode \\b)",
    "\\B": "an explicit class on each side",
}


def _ascii_pattern(where: Where, pattern: str, deny: str) -> list[Finding]:
    escapes = ascii_escapes(pattern)
    if not escapes:
        return []
    instead = "; ".join(f"{e} -> {_UNICODE_FORMS[e]}" for e in escapes)
    return [(where, (
        f"{', '.join(escapes)} match ASCII only in RE2 (Python's re matches Unicode letters, "
        f"digits and spaces): non-ASCII input such as 'é' or '٣' does not match{deny}; if "
        f"Unicode is meant, write {instead}"
    ))]


def _at(sql: str, declared: Mapping[str, Param], placeholder: str) -> str:
    """``(SQL line L, column C)`` of the first ``placeholder`` in ``sql`` (PostgreSQL)."""
    for token in tokenize(sql, tuple(declared)):
        if token.kind == "param" and token.text == placeholder:
            return str(fail(sql, token.pos, "")).removeprefix(" ")
    return ""  # pragma: no cover - the reader found it


def _sql_params(
    where: Where, info: SqlInfo, declared: Mapping[str, Param], dialect: Dialect, sql: str
) -> list[Finding]:
    found: list[Finding] = []
    unused = [p for p in declared if p not in info.params]
    if dialect == POSTGRESQL:  # $k names the k-th declared parameter (``pgsql``)
        count = len(declared)
        for p in info.params:
            if p not in declared:
                found.append(((*where, "sql"), (
                    f"{p} is used in the SQL, but the query declares {count} parameter"
                    f"{'' if count == 1 else 's'}: $1..$N stand for its params in the order "
                    f"they are declared; placeholders start at $1 {_at(sql, declared, p)}"
                )))
        positions = {p: k for k, p in enumerate(declared, start=1)}
        for p in unused:
            found.append(((*where, "params", p), (
                f"param {p} is declared (number {positions[p]}) but ${positions[p]} is not used "
                "in the SQL: a PostgreSQL-dialect statement refers to its k-th declared "
                "parameter as $k"
            )))
        return found
    for p in info.params:
        if p not in declared:
            hint = did_you_mean(p, unused)
            found.append(((*where, "sql"), f"@{p} is used in the SQL but not declared{hint}"))
    for p in unused:
        found.append(((*where, "params", p), f"param {p} is declared but not used in the SQL"))
    return found


def _routes(ctx: _Context, infos: Mapping[str, SqlInfo]) -> list[Finding]:
    found: list[Finding] = []
    shapes: dict[tuple[str, tuple[str, ...]], int] = {}
    for i, route in enumerate(ctx.policy.routes):
        where = ctx.route_where(i)
        if msg := ctx.unknown("queries", route.query):
            found.append(((*where, "query"), msg))
        for field in ("allow", "deny"):
            for k, role in enumerate(getattr(route, field)):
                if msg := ctx.unknown("roles", role):
                    found.append(((*where, field, k), msg))
        found.extend(approval_findings(where, route, ctx.policy, lambda r: ctx.unknown("roles", r)))
        problems = template_problems(route.path)
        found.extend(((*where, "path"), p) for p in problems)
        key = (route.method, template_shape(route.path))
        if key in shapes:
            j = shapes[key]
            other = ctx.policy.routes[j]
            found.append(((*where, "path"), (
                f"duplicate route: {route.method} {route.path} has the same method and path shape "
                f"as routes[{ctx.route_where(j)[1]}] ({other.method} {other.path})"
            )))
        else:
            shapes[key] = i
        query = ctx.policy.queries.get(route.query)
        if query is None:
            continue
        for name in dict.fromkeys(_template_names(route.path)):
            param = query.params.get(name)
            if param is None:
                hint = did_you_mean(name, query.params)
                found.append(((*where, "path"), (
                    f"path parameter {{{name}}} is not a param of query {route.query}{hint}"
                )))
            elif param.claim is not None:
                found.append(((*where, "path"), (
                    f"path parameter {{{name}}} is claim-bound in query {route.query} "
                    f"(from: {param.from_}): a claim-bound parameter cannot come from the path"
                )))
            elif param.from_ is not None:
                found.append(((*where, "path"), (
                    f"path parameter {{{name}}} is bound from: {param.from_} in query "
                    f"{route.query}: the pagination's parameters cannot come from the path"
                )))
        info = infos.get(route.query)
        if route.method == "GET" and info is not None and info.kind == "dml":
            found.append(((*where, "method"), (
                f"a GET route cannot run DML (query {route.query}); use POST, PUT, PATCH or DELETE"
            )))
    found.extend(_tools(ctx))
    routes = ctx.policy.routes
    for o in route_overlaps([(r.method, r.path) for r in routes]):
        later, earlier = routes[o.later], routes[o.earlier]
        found.append(((*ctx.route_where(o.later), "path"), (
            f"{later.method} {later.path} and routes[{ctx.route_where(o.earlier)[1]}] "
            f"({earlier.method} {earlier.path}) can shadow each other: both match {o.example} "
            "and neither is more specific; make one a refinement of the other (a literal "
            f"wherever the other has one), make them disjoint, or add a route {o.meet}"
        )))
    return found


def _tools(ctx: _Context) -> list[Finding]:
    """Each MCP tool name once (``tool:``, else the query's name), and a valid one."""
    found: list[Finding] = []
    seen: dict[str, int] = {}
    for i, route in enumerate(ctx.policy.routes):
        if route.tool is False:
            continue
        name = route.tool or route.query
        where = (*ctx.route_where(i), "tool" if route.tool else "query")
        if route.tool is None and not re.fullmatch(TOOL_NAME, name):
            found.append((where, (
                f"query name {name!r} is not an MCP tool name (1 to 128 letters, digits, _ - .): "
                "give the route a tool: name, or tool: false"
            )))
        if name in seen:
            j = seen[name]
            found.append((where, (
                f"duplicate MCP tool name {name!r}: routes[{ctx.route_where(j)[1]}] has it too; "
                "give one of them another tool: name, or tool: false"
            )))
        else:
            seen[name] = i
    return found


def _never_routed(ctx: _Context) -> list[Finding]:
    if ctx.salvage is not None and ctx.salvage.broken.get("routes", frozenset()) is None:
        return []
    routed = {r.query for r in ctx.policy.routes} | (ctx.salvage.routed if ctx.salvage else set())
    return [
        (("queries", name), f"query {name} is never routed: no route names it")
        for name in ctx.policy.queries
        if name not in routed
    ]


def _redact(ctx: _Context) -> list[Finding]:
    """``audit.redact``: parameter names, and ``claim.PATH`` for claims the policy reads."""
    found: list[Finding] = []
    reads = claim_reads(ctx.policy)
    read = set(reads.paths)
    read.update(("groups",) if reads.groups else ())  # claim.groups: the names recorded, hashed
    read.update(("scopes",) if reads.scopes else ())
    for k, name in enumerate(ctx.policy.audit.redact):
        if not name.startswith("claim."):
            continue
        path = name.removeprefix("claim.")
        if path == "sub" or path == "act" or path.startswith("act."):
            found.append((("audit", "redact", k), (
                f"redact names '{name}': the trail records the subject and the actors of a "
                "delegated token in authenticationInfo, which redact does not hash"
            )))
        elif path not in read:
            found.append((("audit", "redact", k), (
                f"redact names '{name}', which no role tests and no parameter is bound to (the "
                "trail records only the claims a decision reads)" + did_you_mean(path, read)
            )))
    extra = ctx.salvage.redactable if ctx.salvage else frozenset()
    if extra is None:
        return found
    params = set(extra).union(*(q.params for q in ctx.policy.queries.values()))
    return found + [
        (("audit", "redact", k), f"redact names '{name}', which is no parameter of any query"
         + did_you_mean(name, params))
        for k, name in enumerate(ctx.policy.audit.redact)
        if name not in params and not name.startswith("claim.")
    ]
