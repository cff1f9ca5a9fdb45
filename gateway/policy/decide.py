"""The Decision: a request's facts and a Principal in, allow or deny with a stable reason out. Pure.

Order of checks (each stops the request with its reason code):

    route       no-route (404) / method-not-allowed (405) / path-invalid (400)
    roles       denied-by-role (403, deny wins) / no-allow-role (403)
    parameters  param-unknown / param-missing / param-invalid (400), claim-missing (403)
    -> allowed: the query to run and its bound parameters

Roles are checked before parameters, so a caller without a role learns nothing about a route's
parameters. ``roles`` are the roles that hold (that can allow); for a delegated token, a route's
deny roles are judged as ``RoleTable.held(..., deny=True)`` says, so ``rule`` may name a deny
role that is not in ``roles``. Once a route matched, ``ignored`` holds the values the caller sent
for its claim-bound parameters, whatever the outcome: the audit trail records a tenant override
that was refused too. An allowed decision names the result columns ``masked`` for this caller
(``masking.masked_columns``: those whose ``unless`` roles are none of ``roles``).

A paginated query's route takes the caller's ``cursor`` (``pagination.CURSOR_ARGUMENT``: in the
query string for GET, HEAD and DELETE, in the JSON body otherwise, an MCP tool's argument; null
or absent: the first page). The decision sets it aside, as the caller sent it, in ``cursor``:
opening it needs the cursor keys and the clock, which the gateway has and a decision does not
(``gateway.shaping.paging``); the decision binds the cursor parameters to null, the first page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from gateway.auth.principal import Principal
from gateway.errors import BadRequest, Forbidden, GatewayError, MethodNotAllowed, RouteNotFound
from gateway.policy.approval import APPROVAL_ARGUMENT
from gateway.policy.bind import Bound, bind_params, ignored_values
from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.masking import masked_columns
from gateway.policy.pagination import CURSOR_ARGUMENT
from gateway.policy.router import MethodMismatch, PathInvalid, check_param_segment

__all__ = [
    "REASONS",
    "Decision",
    "RoleVerdict",
    "Reason",
    "RequestFacts",
    "decide",
    "decide_route",
    "IDEMPOTENCY_ARGUMENT",
    "takes_approval_id",
    "takes_idempotency_key",
    "tool_parameters",
    "match_route",
    "role_verdict",
]

# Every reason a Decision can carry: stable codes, identical in HTTP problem bodies, the audit
# trail, ``spangate policy explain`` and policy tests.
Reason = Literal[
    "allowed",
    "no-route",
    "method-not-allowed",
    "path-invalid",
    "denied-by-role",
    "no-allow-role",
    "param-unknown",
    "param-missing",
    "param-invalid",
    "claim-missing",
    "claim-invalid",
]
REASONS: tuple[str, ...] = get_args(Reason)


# A write tool's argument that is its Idempotency-Key, not a parameter (unless its query has a
# parameter of that name).
IDEMPOTENCY_ARGUMENT = "idempotency_key"


@dataclass(frozen=True)
class RequestFacts:
    """An HTTP request; or, with ``tool``, an MCP ``tools/call`` whose ``body`` is its arguments
    (``method`` is then ``MCP`` and ``path`` the tool's name)."""

    method: str
    path: str  # the raw path, still percent-encoded
    query: Sequence[tuple[str, str]] = ()
    body: Mapping[str, Any] | None = None
    tool: str | None = None


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str  # "allowed" or the code of ``problem``
    route: CompiledRoute | None = None
    roles: frozenset[str] = frozenset()
    rule: str | None = None  # the role that allowed or denied
    bound: Bound | None = None
    problem: GatewayError | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, Any] = field(default_factory=dict)  # caller values for claim-bound params
    masked: tuple[str, ...] = ()  # allowed: the result columns masked for this caller
    # A paginated route: the caller's cursor as sent (a string, or anything a caller may send
    # that is no cursor); None for none. Never shown, logged or recorded.
    cursor: object = field(default=None, repr=False)

    @property
    def query_name(self) -> str | None:
        return self.route.query_name if self.route else None


def _deny(problem: GatewayError, **kw: Any) -> Decision:
    return Decision(allow=False, reason=problem.code, problem=problem, **kw)


def match_route(
    policy: CompiledPolicy, method: str, path: str
) -> tuple[CompiledRoute, dict[str, str]] | GatewayError:
    try:
        hit = policy.router.match(method, path)
    except PathInvalid as exc:
        return BadRequest(str(exc), code="path-invalid")
    if hit is None:
        return RouteNotFound("no route matches this path")
    if isinstance(hit, MethodMismatch):
        return MethodNotAllowed(f"{method} is not allowed on this path", allow=hit.allow)
    return policy.routes[hit.route], hit.params


def takes_approval_id(route: CompiledRoute) -> bool:
    """Does the route's MCP tool take an ``approval_id`` argument (a route with approval)?"""
    return route.model.approval is not None and APPROVAL_ARGUMENT not in route.query.params


def takes_idempotency_key(route: CompiledRoute) -> bool:
    """Does the route's MCP tool take an ``idempotency_key`` argument (a write's tool)?"""
    return route.query.is_dml and IDEMPOTENCY_ARGUMENT not in route.query.params


def tool_parameters(
    route: CompiledRoute, arguments: Mapping[str, Any] | None
) -> tuple[dict[str, str], dict[str, Any]]:
    """An MCP call's arguments as the route's parameters: (the path parameters, as the router
    would hand them over; the rest, as a JSON body binds them), a write's idempotency key and
    an approval route's approval id left out. A path parameter's argument is a string, or an
    integer (its decimal text, what HTTP's path would carry), obeying the router's segment rule
    (``check_param_segment``); anything else raises ``BadRequest`` ``path-invalid``. An absent
    one is left to binding (param-missing).
    """
    skip = {IDEMPOTENCY_ARGUMENT} if takes_idempotency_key(route) else set()
    if takes_approval_id(route):
        skip.add(APPROVAL_ARGUMENT)
    path: dict[str, str] = {}
    body: dict[str, Any] = {}
    for name, value in (arguments or {}).items():
        if name in skip:
            continue
        if name not in route.path_params:
            body[name] = value
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise BadRequest(
                f"path parameter '{name}' must be a string (or an integer), as in a path",
                code="path-invalid",
                extra={"param": name},
            )
        try:
            check_param_segment(value)
        except PathInvalid as exc:
            raise BadRequest(
                f"path parameter '{name}': {exc}", code="path-invalid", extra={"param": name}
            ) from None
        path[name] = value
    return path, body


def decide(policy: CompiledPolicy, facts: RequestFacts, principal: Principal) -> Decision:
    if facts.tool is not None:  # an MCP tools/call: the tool names the route
        route = policy.tool(facts.tool)
        if route is None:
            return _deny(RouteNotFound(f"no tool named {facts.tool!r}"))
        try:
            path, body = tool_parameters(route, facts.body)
        except GatewayError as exc:
            return _deny(exc, route=route)
        return decide_route(policy, route, path, principal, body=body)
    found = match_route(policy, facts.method, facts.path)
    if isinstance(found, GatewayError):
        return _deny(found)
    route, path_params = found
    return decide_route(policy, route, path_params, principal, query=facts.query, body=facts.body)


# (the roles that hold, the rule that allowed or denied, the refusal or None)
RoleVerdict = tuple[frozenset[str], str | None, GatewayError | None]


def role_verdict(
    policy: CompiledPolicy, route: CompiledRoute, principal: Principal
) -> RoleVerdict:
    """The roles part of a decision: (roles that hold, the rule, the refusal or None)."""
    roles = policy.roles.held(principal)
    # a deny role also bites a delegated token on the subject's claims (see roles.py)
    denying = policy.roles.held(principal, deny=True) if principal.delegated else roles
    for role in route.model.deny:
        if role in denying:
            return roles, role, Forbidden(f"denied by role '{role}'", code="denied-by-role")
    allowing = next((r for r in route.model.allow if r in roles), None)
    if allowing is None:
        return (
            roles,
            None,
            Forbidden("no role that this route allows holds for this token", code="no-allow-role"),
        )
    return roles, allowing, None


def decide_route(
    policy: CompiledPolicy,
    route: CompiledRoute,
    path_params: Mapping[str, str],
    principal: Principal,
    *,
    query: Sequence[tuple[str, str]] = (),
    body: Mapping[str, Any] | None = None,
    verdict: RoleVerdict | None = None,
) -> Decision:
    """The decision on a route already found (by the router, or by an MCP tool's name);
    ``verdict``: ``role_verdict``'s, when the transport judged the roles already."""
    path_params = dict(path_params)
    cursor: object = None
    if route.query.paging is not None:
        cursor, query, body = _take_cursor(query, body)
    ignored = ignored_values(route.query.params, query, body)
    roles, rule, refused = verdict or role_verdict(policy, route, principal)
    if refused is not None:
        return _deny(
            refused,
            route=route,
            roles=roles,
            rule=rule,
            path_params=path_params,
            ignored=ignored,
            cursor=cursor,
        )
    assert rule is not None
    try:
        bound = bind_params(
            route.query.params, principal, path_params=path_params, query=query, body=body
        )
    except GatewayError as exc:
        return _deny(
            exc,
            route=route,
            roles=roles,
            rule=rule,
            path_params=path_params,
            ignored=ignored,
            cursor=cursor,
        )
    return Decision(
        allow=True,
        reason="allowed",
        route=route,
        roles=roles,
        rule=rule,
        bound=bound,
        path_params=path_params,
        ignored=ignored,
        masked=masked_columns(route.query.model, roles),
        cursor=cursor,
    )


def _take_cursor(
    query: Sequence[tuple[str, str]], body: Mapping[str, Any] | None
) -> tuple[object, Sequence[tuple[str, str]], Mapping[str, Any] | None]:
    """The caller's cursor, and the query string and body without it. A cursor given twice in a
    query string is kept as the list of both (no cursor: opening it refuses it)."""
    given = [v for k, v in query if k == CURSOR_ARGUMENT]
    cursor: object = None
    if given:
        cursor = given[0] if len(given) == 1 else given
        query = [(k, v) for k, v in query if k != CURSOR_ARGUMENT]
    if body is not None and CURSOR_ARGUMENT in body:
        sent = body[CURSOR_ARGUMENT]
        if cursor is None:
            cursor = sent
        elif sent is not None:
            cursor = [cursor, sent]
        body = {k: v for k, v in body.items() if k != CURSOR_ARGUMENT}
    return cursor, query, body
