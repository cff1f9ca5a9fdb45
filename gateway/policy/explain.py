"""The decision trace of one request (``spangate policy explain``). Pure, apart from the clock a
caller passes in.

``explain`` runs ``decide`` (the gateway's own decision, so the reason codes are the same) and
adds what a person needs to see why: every role of the policy with the verdict of every key of
every entry, the route and where it is defined, the statement and its identity, each bound
parameter with where its value came from (path, query, body, claim, cursor, default, null), for
an allowed call each masked result column: masked or clear for this caller, and why, and for a
paginated query its keyset, page size and cursor (explain shows the first page: a cursor is
opened by a running gateway, which holds the keys), and for a route that waits for approval its
approvers, ttl and match parameters (an allowed call answers 202 ``approval-required``).

``unverified_claims`` reads a JWT's claims WITHOUT checking its signature (explain is a tool for
people holding a token, not a gate), as strictly as the gateway reads them (a token the gateway
refuses as malformed is not explained), and lists what the gateway would refuse about it anyway: an
issuer URL, algorithm or audience it does not accept, a time claim that is no NumericDate
(``times.py``, as the verifier checks it), a missing or past ``exp``, a ``cnf`` claim.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from gateway.auth.audiences import api_server_audience
from gateway.auth.decode import decode_unverified
from gateway.auth.presets import accepted_iss, audience_refusal
from gateway.auth.principal import Principal
from gateway.auth.sender import binding
from gateway.auth.times import time_claims
from gateway.budgets.core import applicable
from gateway.errors import AuthError
from gateway.policy.approval import match_names
from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.decide import Decision, RequestFacts, decide
from gateway.policy.masking import MaskVerdict, mask_verdicts
from gateway.policy.model import Policy
from gateway.policy.roles import RoleResult
from gateway.policy.simulate import SimulationError, issuer_for
from gateway.policy.sqltoken import POSTGRESQL
from gateway.policy.types import json_value

__all__ = [
    "Explanation",
    "ParamTrace",
    "explain",
    "explanation_record",
    "render_explanation",
    "unverified_claims",
]

UNVERIFIED = "the token's signature was NOT verified: explain trusts its claims as given"


@dataclass(frozen=True)
class ParamTrace:
    name: str
    value: Any  # JSON representation
    source: str  # path, query, body, claim <path>, default, null


@dataclass(frozen=True)
class Explanation:
    facts: RequestFacts
    principal: Principal
    decision: Decision
    roles: tuple[RoleResult, ...]  # every role of the policy
    params: tuple[ParamTrace, ...]
    notes: tuple[str, ...]

    @property
    def route(self) -> CompiledRoute | None:
        return self.decision.route


def budget_limits(policy: CompiledPolicy, ex: Explanation) -> list[dict[str, str]]:
    """The budgets an allowed call spends (the most generous of the allowing roles', per kind)."""
    d, route = ex.decision, ex.route
    if not d.allow or route is None:
        return []
    allowing = [r for r in route.model.allow if r in d.roles]
    limits = applicable(policy.model.budgets, allowing, ex.principal, write=route.query.is_dml)
    return [
        {"kind": lim.kind, "limit": lim.text, "role": lim.role,
         "per": policy.model.budgets[lim.role].per}
        for lim in limits
    ]  # fmt: skip


def _sources(facts: RequestFacts, decision: Decision) -> tuple[ParamTrace, ...]:
    if decision.bound is None or decision.route is None:
        return ()
    query = {k for k, _ in facts.query}
    body = set(facts.body or ())
    out = []
    for name, value in decision.bound.values.items():
        spec = decision.route.query.params[name]
        if spec.claim is not None:
            source = f"claim {spec.claim}"
        elif spec.cursor is not None:
            source = f"cursor {spec.cursor} (null: the first page)"
        elif name in body and facts.tool is not None:
            source = "argument"  # an MCP tool's argument (a path parameter's too)
        elif name in decision.path_params:
            source = "path"
        elif name in query:
            source = "query"
        elif name in body:
            source = "body"
        else:
            source = "default" if spec.has_default else "null"
        out.append(ParamTrace(name, json_value(value), source))
    return tuple(out)


def explain(
    policy: CompiledPolicy,
    facts: RequestFacts,
    principal: Principal,
    notes: Sequence[str] = (),
) -> Explanation:
    """The decision on ``facts`` for ``principal``, with its trace."""
    decision = decide(policy, facts, principal)
    return Explanation(
        facts=facts,
        principal=principal,
        decision=decision,
        roles=tuple(policy.roles.trace(principal)),
        params=_sources(facts, decision),
        notes=tuple(notes),
    )


def unverified_claims(
    policy: Policy, token: str, *, now: dt.datetime
) -> tuple[dict[str, Any], list[str]]:
    """The claims of ``token`` read without verifying it, and notes: that it was not verified,
    and what the gateway would refuse about it (expiry, audience, algorithm). SimulationError
    when the gateway cannot read it (``decode_unverified``: no JWT, not strict JSON, a header
    pyjwt refuses; in the gateway's words) or it comes from no issuer of the policy (a legacy
    Kubernetes token: as the gateway refuses it, ``api-server-token``)."""
    try:
        header, claims = decode_unverified(token)  # as the gateway reads it: strict JSON
    except AuthError as exc:
        raise SimulationError(
            f"{exc.detail} (the gateway answers 401 {exc.code})", key="token"
        ) from None
    name = issuer_for(policy, claims.get("iss"))
    issuer = policy.issuers[name]
    notes = [UNVERIFIED]
    if not isinstance(claims.get("iss"), str):  # the verifier's own check, before any issuer's
        notes.append("the token has no iss claim: the gateway answers 401 token-malformed")
    elif claims.get("iss") not in accepted_iss(issuer):
        notes.append(
            f"iss is not the URL of issuer '{name}': the gateway answers 401 issuer-unknown"
        )
    alg = header.get("alg")
    if alg not in issuer.algorithms:
        notes.append(
            f"algorithm {alg!r} is not allowed for issuer '{name}': 401 algorithm-not-allowed"
        )
    if "cnf" in claims:
        notes.append(
            f"the token has a cnf claim (it is bound to {binding(claims['cnf'])}): the gateway "
            "answers 401 token-sender-constrained (it accepts bearer tokens only)"
        )
    try:
        times = time_claims(claims, require_exp=False)  # the gateway's NumericDate check
    except AuthError as exc:
        notes.append(f"{exc.detail}: the gateway answers 401 {exc.code}")
    else:
        exp = times.get("exp")
        if exp is None:
            notes.append("the token has no exp claim: the gateway answers 401 token-malformed")
        elif exp < now.timestamp():
            notes.append(
                f"the token expired at {_when(exp)}: the gateway answers 401 token-expired"
            )
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    api_server = issuer.preset == "kubernetes" and any(
        isinstance(a, str) and api_server_audience(a, issuer.issuer) for a in auds
    )
    if api_server or not set(auds) & set(issuer.audiences):
        refusal = audience_refusal(issuer, name, aud)
        notes.append(f"aud {aud!r}: {refusal.detail}: the gateway answers 401 {refusal.code}")
    return claims, notes


def _when(timestamp: float) -> str:
    """A NumericDate as ISO 8601 UTC, or as the number when no date can show it."""
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return f"{timestamp!r} (seconds since 1970, beyond any date)"


def _role_record(result: RoleResult) -> dict[str, Any]:
    return {
        "role": result.role,
        "holds": result.holds,
        "denies": result.denies,
        "entries": [
            {
                "index": e.index,
                "holds": e.holds,
                "denies": e.holds_for_deny,
                "keys": [{"key": k.key, "holds": k.holds, "why": k.why} for k in e.keys],
            }
            for e in result.entries
        ],
    }


def explanation_record(ex: Explanation, policy: CompiledPolicy | None = None) -> dict[str, Any]:
    """The explanation as JSON-ready data (``--json``); with ``policy``, its ``budget`` too."""
    d, route, p = ex.decision, ex.route, ex.principal
    return {
        "request": {
            "method": ex.facts.method,
            "path": ex.facts.path,
            "query": list(ex.facts.query),
            "tool": ex.facts.tool,  # an MCP call's tool (method MCP), else null
        },
        "principal": {
            "issuer": p.issuer,
            "sub": p.subject or None,
            "client_id": p.client_id,
            "scopes": sorted(p.scopes),
            "groups": sorted(p.groups),
            "delegated": p.delegated,
            "actors": list(p.actors),
        },
        "notes": list(ex.notes),
        "decision": {
            "allow": d.allow,
            "reason": d.reason,
            "status": d.problem.status if d.problem else 200,
            "detail": d.problem.detail if d.problem else None,
            "rule": d.rule,
        },
        "route": None
        if route is None
        else {
            "index": route.index,
            "method": route.model.method,
            "path": route.model.path,
            "query": route.query_name,
            "allow": route.model.allow,
            "deny": route.model.deny,
            "path_params": d.path_params,
        },
        "roles": [_role_record(r) for r in ex.roles],
        "params": [{"name": t.name, "value": t.value, "source": t.source} for t in ex.params],
        "ignored": {k: v for k, v in (d.bound.ignored if d.bound else {}).items()},
        "masks": [
            {"column": v.column, "with": v.mode, "masked": v.masked, "unless": list(v.unless),
             "why": v.why}
            for v in _verdicts(ex)
        ],
        "pagination": pagination_record(ex),
        "approval": approval_record(ex),
        **({"budget": budget_limits(policy, ex)} if policy is not None else {}),
    }


def pagination_record(ex: Explanation) -> dict[str, Any] | None:
    """A paginated query's keyset (column, direction, parameter), page size and cursor."""
    route = ex.route
    paging = route.query.paging if route is not None else None
    if route is None or paging is None:
        return None
    bound = ex.decision.bound.values if ex.decision.bound else {}
    return {
        "keyset": [
            {"column": c, "direction": d, "param": p}
            for c, d, p in zip(paging.keyset, paging.directions, paging.cursor_params, strict=True)
        ],
        "page_size": {
            "param": paging.page_param,
            "value": bound.get(paging.page_param),
            "default": paging.default,
            "max": paging.max,
        },
        "cursor": "given" if ex.decision.cursor is not None else "none",
    }


def approval_record(ex: Explanation) -> dict[str, Any] | None:
    """A route that waits for approval: its approvers, ttl, and what an allowed call answers."""
    route = ex.route
    approval = route.model.approval if route is not None else None
    if route is None or approval is None:
        return None
    return {
        "approvers": list(approval.approvers),
        "ttl": approval.ttl,
        # the parameters an approver's own token must bind alike (policy.approval.match_names)
        "match": list(match_names(approval, route.query.model.params)),
        "required": ex.decision.allow,  # an allowed call answers 202 approval-required
    }


def _verdicts(ex: Explanation) -> tuple[MaskVerdict, ...]:
    """Per masked column of an allowed call: masked or clear for this caller, and why."""
    d, route = ex.decision, ex.route
    if not d.allow or route is None:
        return ()
    return mask_verdicts(route.query.model, d.roles)


def _at(policy: CompiledPolicy, where: tuple[str | int, ...]) -> str:
    file, line, column = policy.loaded.locate(where)
    return file + (f":{line}" if line else "") + (f":{column}" if line and column else "")


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def render_explanation(policy: CompiledPolicy, ex: Explanation) -> str:
    """The explanation as text for a terminal."""
    d, p, route = ex.decision, ex.principal, ex.route
    query = "?" + urlencode(list(ex.facts.query)) if ex.facts.query else ""
    lines = [f"request   {ex.facts.method} {ex.facts.path}{query}"]
    if ex.facts.body is not None:
        lines.append(f"{'arguments' if ex.facts.tool else 'body     '} {_show(ex.facts.body)}")
    lines.append(
        f"caller    issuer {p.issuer}, sub {p.subject or '-'}, client {p.client_id or '-'}, "
        f"scopes {sorted(p.scopes)}, groups {sorted(p.groups)}"
    )
    if p.delegated:
        chain = ", then ".join(repr(a) if a else "an actor without sub" for a in p.actors)
        lines.append(
            f"          delegated (RFC 8693 act): actor {chain or '(act is not an object)'} "
            f"acts for sub {p.subject or '-'}"
        )
    lines += [f"note      {n}" for n in ex.notes]
    if route is None:
        lines.append("route     none")
    else:
        r = route.model
        lines.append(
            f"route     routes[{route.index}] {r.method} {r.path}  ({_at(policy, ('routes', route.index))})"
        )
        if r.description:
            lines.append(f"          {r.description}")
        if d.path_params:
            shown = ", ".join(f"{k}={_show(v)}" for k, v in d.path_params.items())
            lines.append(f"          path parameters: {shown}")
        lines.append(f"          allow {r.allow}, deny {r.deny}")
    lines.append("roles")
    relevant = set(route.model.allow) | set(route.model.deny) if route else set()
    for result in ex.roles:
        role = policy.model.roles[result.role]
        mark = "+" if result.holds else "-"
        used = "" if not relevant or result.role in relevant else "  (not named by this route)"
        verdict = "holds" if result.holds else "does not hold"
        denies = route is not None and result.role in route.model.deny
        if denies and result.denies and not result.holds:  # a delegated token (see roles.py)
            mark, verdict = "!", "denies (a deny role judges a delegated token all the same)"
        desc = f" - {role.description}" if role.description else ""
        lines.append(f"  {mark} {result.role}: {verdict}{used}{desc}")
        for e in result.entries:
            where = _at(policy, ("roles", result.role, *role.entry_path(e.index)))
            state = "holds" if e.holds else "fails"
            if denies and e.holds_for_deny and not e.holds:
                state = "holds as a deny role"
            lines.append(f"      entry {e.index} ({where}): {state}")
            for k in e.keys:
                lines.append(f"        {'+' if k.holds else '-'} {k.key}: {k.why}")
    if d.allow:
        lines.append(f"decision  ALLOW (allowed) by role {d.rule}")
    else:
        assert d.problem is not None
        by = f" by role {d.rule}" if d.reason == "denied-by-role" else ""
        lines.append(f"decision  DENY {d.problem.status} {d.reason}{by}: {d.problem.detail}")
    if route is not None:
        q = route.query
        identity = policy.model.identities.get(q.model.identity)
        db_role = identity.database_role if identity else None
        lines.append(
            f"query     {q.name} ({'DML, read-write' if q.is_dml else 'read-only'}) as identity "
            f"{q.model.identity} (database role {db_role or '-'})"
        )
        if q.model.description:
            lines.append(f"          {q.model.description}")
    # PostgreSQL: $k is the k-th declared parameter, so the placeholder each name fills is shown
    placeholder: dict[str, str] = {}
    if route is not None and route.query.dialect == POSTGRESQL:
        placeholder = {n: f"${k} -> " for k, n in enumerate(route.query.model.params, start=1)}
    for t in ex.params:
        at = placeholder.get(t.name, "")
        lines.append(f"param     {at}{t.name} = {_show(t.value)}  ({t.source})")
    for name, value in (d.bound.ignored if d.bound else {}).items():
        lines.append(
            f"ignored   {name} = {_show(value)}  (a caller value for a claim-bound parameter)"
        )
    for v in _verdicts(ex):
        state = f"masked ({v.mode})" if v.masked else f"clear (else {v.mode})"
        lines.append(f"mask      {v.column}: {state}: {v.why}")
    page = pagination_record(ex)
    if page is not None:
        keyset = ", ".join(f"{k['column']} {k['direction']}" for k in page["keyset"])
        size = page["page_size"]
        lines.append(
            f"pages     keyset {keyset}; page size {_show(size['value'])} ({size['param']}: "
            f"default {size['default']}, max {size['max']}); next_cursor while rows remain"
        )
        if page["cursor"] == "given":
            lines.append(
                "          a cursor is given: the gateway opens it (for the caller it was sealed "
                "for, with the same parameters); shown here: the first page"
            )
        else:
            lines.append("          no cursor: the first page")
    approval = approval_record(ex)
    if approval is not None:
        who = ", ".join(approval["approvers"])
        shared = ", ".join(approval["match"])
        lines.append(
            f"approval  required: approvers {who} (never the requester); ttl {approval['ttl']}"
        )
        lines.append(
            f"          an approver decides only requests whose {shared} its own token binds alike"
            if shared
            else "          any approver decides any request to this route (match: [])"
        )
        if d.allow:
            lines.append(
                "          this call answers 202 approval-required with an approval id; once "
                "approved, repeated with Approval-Id it runs once with exactly these parameters"
            )
    if d.allow:
        spent = budget_limits(policy, ex)
        shown = ", ".join(
            f"{b['kind']} {b['limit']} (role {b['role']}, per {b['per']})" for b in spent
        )
        lines.append(f"budget    {shown or 'none'}")
    return "\n".join(lines) + "\n"
