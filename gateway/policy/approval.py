"""Approvals, the policy's side (pure): what a route's ``approval:`` may say, and who may decide.

A route with ``approval: {approvers: [roles], ttl: 15m}`` runs nothing on an allowed call: the
call answers 202 ``approval-required`` with an approval id (``gateway.approvals``). Who may
decide a request, under the live policy (``decider_verdict``):

- a holder of one of the route's ``approvers`` roles, a role judged as a route's ``allow``
  judges it (``RoleTable.held``: a delegated token holds it only through an entry that admits
  delegated tokens);
- not denied by the route: a ``deny`` role of the route that holds refuses (``denied-by-role``),
  as it would refuse the call itself;
- nobody who took part in the request (``parties``): its subject (issuer and ``sub``) or an actor
  of its delegation chain (``act.sub`` under the same issuer). The requester never approves their
  own request, nor does the agent that asked for them.

- an approver whose own token binds the route's ``match`` parameters (``match_names``: by
  default every claim-bound parameter of its query, such as the tenant) to the request's values:
  a lead of tenant t2 neither sees nor decides tenant t1's requests. The service keeps the
  request's matched values as a keyed digest (``gateway.approvals``) and compares the
  approver's.

Checks (``approval_findings``, the loader and ``policy check``): ``approvers`` name known roles;
``match`` names claim-bound parameters of the query, none bound from the requester's own
``sub`` (nobody else binds it alike, so nobody could decide); not on a paginated query's route
(each page would be a call of its own to approve). The ``ttl`` is bounded by the model (1s to
24h).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.auth.principal import Principal
from gateway.errors import Forbidden, GatewayError
from gateway.policy.constraints import Finding, Where
from gateway.policy.model import Approval, Param, Policy, Route
from gateway.policy.roles import RoleTable

__all__ = [
    "APPROVAL_ARGUMENT",
    "APPROVAL_HEADER",
    "DeciderVerdict",
    "approval_findings",
    "approval_warnings",
    "decider_verdict",
    "match_names",
    "parties",
]

# The header a requester repeats the call with, and its MCP tool argument twin.
APPROVAL_HEADER = b"approval-id"
APPROVAL_ARGUMENT = "approval_id"

# Claims that name the requester or its actor: no approver binds them alike (nobody decides a
# request they took part in), so a match on one would leave every request undecidable.
_OWN_CLAIMS = frozenset({"sub", "act.sub"})


def match_names(approval: Approval, params: Mapping[str, Param]) -> tuple[str, ...]:
    """The parameters an approver's token must bind to a request's values: ``approval.match``,
    or by default every claim-bound parameter of the route's query (in declaration order)."""
    if approval.match is not None:
        return tuple(approval.match)
    return tuple(name for name, param in params.items() if param.claim is not None)


def approval_findings(
    where: Where, route: Route, policy: Policy, unknown_role: Callable[[str], str | None]
) -> list[Finding]:
    """What is wrong with ``route``'s ``approval:`` as written (none when it has none)."""
    approval = route.approval
    if approval is None:
        return []
    found: list[Finding] = []
    for k, role in enumerate(approval.approvers):
        if msg := unknown_role(role):
            found.append(((*where, "approval", "approvers", k), msg))
    query = policy.queries.get(route.query)
    if query is not None:
        for k, name in enumerate(approval.match or ()):
            param = query.params.get(name)
            if param is None:
                found.append(
                    ((*where, "approval", "match", k), f"query {route.query} has no parameter {name}")
                )
            elif param.claim is None:
                found.append(
                    (
                        (*where, "approval", "match", k),
                        f"parameter {name} of query {route.query} is not bound from a claim: "
                        "match names claim-bound parameters (from: claim.NAME), which an "
                        "approver's own token binds",
                    )
                )
        for name in match_names(approval, query.params):
            param = query.params.get(name)
            if param is not None and param.claim in _OWN_CLAIMS:
                at = ("match",) if approval.match is not None else ()
                found.append(
                    (
                        (*where, "approval", *at),
                        f"parameter {name} of query {route.query} is bound from claim."
                        f"{param.claim}, which no approver shares with the requester: nobody "
                        "could decide. Set approval.match to the claim-bound parameters an "
                        "approver must share (such as the tenant), or [] to let any approver "
                        "decide any request",
                    )
                )
    if query is not None and query.pagination is not None:
        found.append(
            (
                (*where, "approval"),
                (
                    f"query {route.query} pages by keyset: every page would be a call of its own to "
                    "approve; approvals are for routes that run one statement"
                ),
            )
        )
    return found


# Claims that tell roles apart (and so usually differ between a requester and its approver).
_ROLE_CLAIMS = frozenset({"groups", "roles", "scp", "scope"})


def approval_warnings(where: Where, route: Route, policy: Policy) -> list[Finding]:
    """What a valid ``approval:`` may not mean: no claim-bound parameter and no ``match`` (any
    approver decides any request, unsaid), or a matched parameter bound from a claim that roles
    test (a requester and its approver usually differ in it: nobody could decide)."""
    approval = route.approval
    query = policy.queries.get(route.query)
    if approval is None or query is None:
        return []
    found: list[Finding] = []
    names = match_names(approval, query.params)
    if approval.match is None and not names:
        found.append((
            (*where, "approval"),
            f"query {route.query} binds no parameter from a claim: any approver decides any "
            "request to this route, whatever its tenant. Write match: [] to say so",
        ))  # fmt: skip
    tested = set(_ROLE_CLAIMS)
    for role in policy.roles.values():
        for entry in role.any_of:
            tested.update(entry.claims or {})
    at = ("match",) if approval.match is not None else ()
    for name in names:
        param = query.params.get(name)
        if param is not None and param.claim in tested:
            found.append((
                (*where, "approval", *at),
                f"parameter {name} is bound from claim.{param.claim}, which roles test: a "
                "requester and its approver usually differ in it, so a request could have "
                "nobody to decide it. Set approval.match to what approvers share (such as the "
                "tenant)",
            ))  # fmt: skip
    return found


def parties(principal: Principal) -> frozenset[tuple[str, str]]:
    """Who takes part in a call: (issuer URL, subject) of the token's subject and of each actor
    of its ``act`` chain (actors are named by their ``sub`` under the token's issuer)."""
    found = {(principal.iss, principal.subject)}
    found.update((principal.iss, actor) for actor in principal.actors if actor)
    return frozenset(found)


@dataclass(frozen=True)
class DeciderVerdict:
    """May a principal decide requests to a route: ``problem`` None when it may; ``role`` the
    approver role that holds (or the deny role that refused)."""

    roles: frozenset[str]
    role: str | None
    problem: GatewayError | None


def decider_verdict(
    roles_table: RoleTable, route: Route, approval: Approval, principal: Principal
) -> DeciderVerdict:
    """Whether ``principal`` may approve or reject requests to ``route`` (the requester check is
    the caller's: it needs the request). 403 ``denied-by-role`` or ``not-approver``."""
    roles = roles_table.held(principal)
    denying = roles_table.held(principal, deny=True) if principal.delegated else roles
    for role in route.deny:
        if role in denying:
            return DeciderVerdict(
                roles, role, Forbidden(f"denied by role '{role}'", code="denied-by-role")
            )
    holding = next((r for r in approval.approvers if r in roles), None)
    if holding is None:
        return DeciderVerdict(
            roles,
            None,
            Forbidden(
                "none of the roles that may decide this request holds for this token",
                code="not-approver",
            ),
        )
    return DeciderVerdict(roles, holding, None)
