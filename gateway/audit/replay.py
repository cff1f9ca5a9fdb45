"""A recorded decision, recomputed under a candidate policy. Pure: a ``Recorded`` call and a
``CompiledPolicy`` in, a ``Replayed`` decision (or why it cannot be recomputed) out.

What the decision is recomputed from, and how far it can be:

- the route: the recorded method and raw path (``httpRequest``), or an MCP call's tool name;
- the issuer: the candidate's issuer of the recorded ``iss`` URL (of the recorded name first,
  when two share the URL); else the candidate refuses the token (``issuer-unknown``), as the
  shadow policy does (``shadow.shadow_principal``), except when the candidate's issuer of the
  recorded name has a stand-in URL (an unset ``${VAR}`` of the policy tools, a
  ``${VAR:-default}``'s default: the URL a deployment sets is not known here): then that one
  (``issuer_by_name``, counted in the report). When that
  issuer accepts none of the token's audiences the live issuer accepted
  (``thirdPartyPrincipal.audience``; not recorded before it was: not checked), the token would
  be refused before any decision: the call could not be replayed;
- roles: the candidate's role entries, judged three-valued on what the event recorded
  (``metadata.claimsRead``: claims, whether each group and scope a policy named is held; the
  issuer; whether the token is delegated).
  A group or scope is unknown when the candidate's issuer reads it from another claim than the
  live issuer did (``thirdPartyPrincipal.claimNames``, a changed ``claims:`` mapping or preset;
  not recorded before it was: not checked).
  An entry holds, fails, or is unknown when it tests a claim the event did not record (a claim
  the live policy did not read, an event from before claims were recorded, a value cut for the
  event's size), a ``matches`` test on a claim recorded as a keyed hash, or an equality test on
  one without the audit key (with the key the policy's values are hashed alike). A route's
  verdict is unknown when an unknown role could change allow or deny (an unknown deny role
  before an allow role that holds, or no role holding): the call "could not be replayed",
  naming those roles. An unknown role before a deny role that holds, or an unknown allow role
  before an allow role that holds (no deny role unknown), leaves only the rule uncertain
  (``rule_uncertain``): flips are reported, the rule is not compared;
- parameters: a claim-bound one from the recorded claim; path parameters from the path (an MCP
  call's from its recorded arguments; a segment recorded as its keyed hash, a redacted one, is
  taken as recorded); the others from the values the event recorded (``request.params`` sent by
  the caller, ``ignoredCallerValues``), re-checked against the candidate's types and
  constraints: what the caller sent where the live type changed its form (``sent``, ``text``
  when from a query string: ``"5"`` bound as 5), else the recorded value (an older event's
  query-string value turned back into text). A value recorded as a hash (redacted) or cut is
  taken as it was recorded, not re-checked (``unchecked``). A call the live policy refused
  before binding recorded no caller values: when the candidate's roles let it in, its parameters
  are not known (``params_known`` false): a deny -> allow flip all the same; and when the live
  policy refused it for a caller's parameter and the candidate runs the same query, that refusal
  is assumed (``assumed``). A cursor parameter (``from: cursor.COLUMN``) is bound as the trail
  records it, ``(cursor, null)``: a cursor's values are never recorded, and a cursor opened
  under the live policy is assumed to open under the candidate. A call that presented a cursor
  (``metadata.pagination.cursor`` other than ``none``) to a candidate route without
  ``pagination:`` is refused as the candidate would refuse it, ``param-unknown`` (its ``cursor``
  is a parameter it does not take).

Comparison (``changes``): ``allow->deny`` and ``deny->allow`` (flips), and for decisions that do
not flip ``query``, ``params`` (the bound values: names, where each came from, values; a hash
compared to a clear value with the key), ``reason`` (a refusal for another reason or rule) and
``masked`` (an allowed call whose masked result columns, ``metadata.masked``, differ; not
compared when an ``unless`` role cannot be judged) and ``approval`` (an allowed call that waits
for an approval under one policy and not under the other: the live one's as the event records
its approval step, ``recorded.approval_step``). An MCP call that presented an ``approval_id`` to
a candidate route without approval is refused, ``param-unknown``, as that tool would refuse the
argument (over HTTP the ``Approval-Id`` header is then ignored: the call runs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.audit.bounds import pointer
from gateway.audit.event import redacted, redacted_claim
from gateway.audit.recorded import CLAIMS_READ, HASHED, IGNORED, PARAMS, Recorded
from gateway.auth.presets import effective_names
from gateway.auth.principal import MISSING
from gateway.errors import GatewayError
from gateway.policy.approval import APPROVAL_ARGUMENT
from gateway.policy.bind import BODY_METHODS, ParamSpec, check_constraints
from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.decide import match_route, takes_approval_id
from gateway.policy.model import ClaimTest, ClaimValue, RoleEntry
from gateway.policy.roles import claim_holds
from gateway.policy.router import PathInvalid, check_param_segment, template_params
from gateway.policy.shadow import candidate_issuer
from gateway.policy.types import TypeProblem, coerce, json_value

__all__ = ["NotReplayed", "Replayed", "changes", "replay"]

_CALLER_REASONS = frozenset({"param-unknown", "param-missing", "param-invalid"})


@dataclass(frozen=True)
class NotReplayed:
    why: str  # what was missing, e.g. "claim dept not recorded"
    roles: tuple[str, ...] = ()  # the candidate's roles that could not be judged
    issuer_by_name: bool = False  # the issuer found by its name, its URL a stand-in


@dataclass(frozen=True)
class Replayed:
    allow: bool
    reason: str
    rule: str | None = None
    route: str | None = None  # "GET /v1/orders/{order_id}"
    query: str | None = None
    params: dict[str, tuple[str, Any]] | None = None  # name -> (from, recorded form)
    params_known: bool = True
    unchecked: tuple[str, ...] = ()  # parameters taken as recorded (a hash, a cut value)
    assumed: bool = False  # the live refusal for a caller's parameter, assumed
    approval: bool = False  # allowed, to a route with ``approval:`` (it waits for an approval)
    # allowed: the result columns masked for the caller; None: not known (an unknown role)
    masked: tuple[str, ...] | None = ()
    # roles that could not be judged and might be the rule instead of ``rule`` (the decision
    # itself is certain): the rule is not compared
    rule_uncertain: tuple[str, ...] = ()
    issuer_by_name: bool = False  # the issuer found by its name, its URL a stand-in


class _Unknown(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class _Opaque:
    """A value recorded as a hash or cut: bound as recorded, never re-checked."""

    recorded: Any


@dataclass
class _View:
    """What a replay knows of the caller."""

    rec: Recorded
    key: bytes | None  # the audit key's redaction key (hashes the policy's values alike)
    issuer: str  # the candidate's name for the token's issuer
    # the claims the candidate's issuer reads groups and scopes from; None: not compared
    names: Mapping[str, str | None] | None = None
    unknown: list[str] = field(default_factory=list)

    def claim(self, path: str) -> Any:
        """The recorded claim: a value, MISSING, an ``_Opaque`` hash, or ``_Unknown``."""
        rec = self.rec
        if path == "sub" and (rec.claims is None or "sub" not in rec.claims):  # the subject
            if rec.is_cut(_AUTH + "/principalSubject"):
                raise _Unknown("claim sub cut for the event's size")
            return rec.subject
        if path.startswith("act."):
            return _actor_claim(rec, path)
        claims = rec.claims
        if claims is None or path not in claims:
            raise _Unknown(f"claim {path} not recorded")
        if rec.is_cut(CLAIMS_READ + pointer("claims", path)):
            raise _Unknown(f"claim {path} cut for the event's size")
        value = claims[path]
        if value is None:
            return MISSING
        if _hashed(value):
            return _Opaque(value)
        return value

    def holds(self, kind: str, name: str) -> bool:
        """Whether the principal holds group (scope) ``name``; ``_Unknown`` when the event did
        not record it (a name no live or shadow policy named: shadow the candidate first)."""
        recorded = self.rec.claim_names
        if recorded is not None and self.names is not None:
            if recorded.get(kind) != self.names[kind]:
                raise _Unknown(
                    f"the issuer's claims mapping changed ({kind}: claim "
                    f"{recorded.get(kind)} -> {self.names[kind]})"
                )
        held = self.rec.groups if kind == "groups" else self.rec.scopes
        if held is None or self.rec.is_cut(f"{CLAIMS_READ}/{kind}"):
            raise _Unknown(f"{kind} not recorded")
        if name in held:
            return held[name]
        if any(_hashed(k) for k in held):
            if self.key is None:
                raise _Unknown(f"{kind} are keyed hashes and no audit key was given")
            hashed = _hash_literal(name, self.key)
            if hashed in held:
                return held[hashed]
        if kind in self.rec.complete:
            return False
        raise _Unknown(f"{kind[:-1]} {name} not recorded")


_AUTH = pointer("protoPayload", "authenticationInfo")


def _actor_claim(rec: Recorded, path: str) -> Any:
    """A claim under ``act`` (``act.sub``, ``act.act.sub``, ``act.team``), from the actors the
    event records (``serviceAccountDelegationInfo``): nested objects only, as ``claim_value``."""
    parts = path.split(".")
    depth = 0
    while parts and parts[0] == "act":
        depth, parts = depth + 1, parts[1:]
    if not parts:
        raise _Unknown(f"claim {path} not recorded")
    if depth > len(rec.actors):
        return MISSING
    sub, others = rec.actors[depth - 1]
    where = f"{_AUTH}/serviceAccountDelegationInfo/{depth - 1}"
    if parts == ["sub"]:
        if rec.is_cut(where + "/principalSubject"):
            raise _Unknown(f"claim {path} cut for the event's size")
        return sub if sub is not None else MISSING
    if rec.is_cut(where + "/thirdPartyPrincipal"):
        raise _Unknown(f"claim {path} cut for the event's size")
    node: Any = others or {}
    for part in parts:
        if _hashed(node):  # a claim bound to a redacted parameter: its keyed hash
            raise _Unknown(f"claim {path} is within a claim recorded as a keyed hash")
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    if node is None:
        return MISSING
    return _Opaque(node) if _hashed(node) else node


def _hashed(value: Any) -> bool:
    if isinstance(value, str):
        return bool(HASHED.match(value))
    return isinstance(value, list) and bool(value) and all(_hashed(v) for v in value)


# -- roles, three-valued ------------------------------------------------------------------------
def _claim_test(view: _View, path: str, test: ClaimValue) -> bool:
    actual = view.claim(path)
    if not isinstance(actual, _Opaque):
        return claim_holds(actual, test)
    if isinstance(test, ClaimTest):
        if test.present:
            return True
        raise _Unknown(f"claim {path} is a keyed hash: a matches test cannot be judged")
    if view.key is None:
        raise _Unknown(f"claim {path} is a keyed hash and no audit key was given")
    hashes = actual.recorded if isinstance(actual.recorded, list) else [actual.recorded]
    wanted = test if isinstance(test, list) else [test]
    return any(_hash_literal(w, view.key) in hashes for w in wanted)


def _hash_literal(value: Any, key: bytes) -> str:
    """A policy's value hashed as the trail hashes a claim's (``event.redacted_claim``)."""
    return str(redacted_claim(value, key))


def _any_held(view: _View, kind: str, names: Any, every: bool = False) -> bool:
    """Whether any of ``names`` is held (``every``: whether any is not); ``_Unknown`` when that
    turns on a name the event did not record."""
    unknown: _Unknown | None = None
    for name in names:
        try:
            if view.holds(kind, name) != every:
                return True
        except _Unknown as exc:
            unknown = unknown or exc
    if unknown is not None:
        raise unknown
    return False


def _judges(entry: RoleEntry, delegated: bool, deny: bool) -> bool:
    delegation = entry.delegation
    if not delegated or delegation == "any":
        return True
    return delegation == "default" and deny


def _entry(view: _View, entry: RoleEntry, deny: bool) -> bool | None:
    """True, False, or None (unknown; why in ``view.unknown``)."""
    if not _judges(entry, view.rec.delegated, deny):
        return False
    unknown = False
    tests: list[Any] = []
    if entry.issuer is not None:
        tests.append(lambda: view.issuer == entry.issuer)
    if entry.groups is not None:
        groups = entry.groups
        tests.append(lambda: _any_held(view, "groups", groups))
    if entry.scopes is not None:
        scopes = entry.scopes
        tests.append(lambda: not _any_held(view, "scopes", scopes, every=True))
    for path, test in (entry.claims or {}).items():
        tests.append(lambda p=path, t=test: _claim_test(view, p, t))
    for check in tests:
        try:
            if not check():
                return False
        except _Unknown as exc:
            view.unknown.append(exc.why)
            unknown = True
    return None if unknown else True


def _role(view: _View, policy: CompiledPolicy, name: str, deny: bool) -> bool | None:
    role = policy.model.roles.get(name)
    unknown = False
    for entry in role.any_of if role else ():
        verdict = _entry(view, entry, deny)
        if verdict:
            return True
        unknown = unknown or verdict is None
    return None if unknown else False


def _verdict(
    view: _View, policy: CompiledPolicy, route: CompiledRoute
) -> tuple[str | None, str | None, tuple[str, ...]] | NotReplayed:
    """(the refusal's reason or None, the rule, the unknown roles that might be the rule
    instead), or NotReplayed naming the unknown roles when allow or deny itself is unknown. A
    deny role that holds denies whatever an earlier unknown deny role is; an allow role that
    holds allows when no deny role is unknown, whatever an earlier unknown allow role is: then
    only the rule is uncertain."""
    pending: list[str] = []
    for name in route.model.deny:
        verdict = _role(view, policy, name, deny=True)
        if verdict is None:
            pending.append(name)
        elif verdict:
            return ("denied-by-role", name, tuple(pending))
    denies_unknown = bool(pending)
    for name in route.model.allow:
        verdict = _role(view, policy, name, deny=False)
        if verdict is None:
            pending.append(name)
        elif verdict:
            blocked = _blocked(view, pending) if denies_unknown else None
            return blocked or (None, name, tuple(pending))
    return _blocked(view, pending) or ("no-allow-role", None, ())


def _blocked(view: _View, pending: list[str]) -> NotReplayed | None:
    if not pending:
        return None
    return NotReplayed("; ".join(dict.fromkeys(view.unknown)), tuple(pending))


# -- parameters ---------------------------------------------------------------------------------
def _typed(spec: ParamSpec, raw: Any, from_text: bool) -> Any:
    value = coerce(spec.ptype, raw, from_text=from_text)
    check_constraints(spec, value)
    return value


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _inputs(rec: Recorded) -> tuple[dict[str, Any], bool]:
    """The caller's values the event recorded: name -> (raw, from_text) or ``_Opaque``; and
    whether they are all of them (the call was bound)."""
    live = rec.live
    http = rec.transport == "http"
    text = http and rec.method not in BODY_METHODS  # a query string's values: text
    # over HTTP the live route's path parameters came from the path, which the candidate routes
    skip = set(template_params(live.route.split(" ", 1)[1])) if live.route and http else set()
    values: dict[str, Any] = {}
    for name, value in live.ignored.items():
        where = IGNORED + pointer(name)
        values[name] = _Opaque(value) if rec.is_cut(where) or _hashed(value) else (value, text)
    if live.params is None:
        return values, False
    for name, entry in live.params.items():
        if not isinstance(entry, Mapping) or entry.get("from") != "caller" or name in skip:
            continue
        if entry.get("defaulted"):
            continue
        value = entry.get("value")
        where = PARAMS + pointer(name, "value")
        if rec.is_cut(where) or _hashed(value):
            values[name] = _Opaque(value)
        elif "sent" in entry:  # what the caller sent, before the live type converted it
            sent = entry["sent"]
            cut = rec.is_cut(PARAMS + pointer(name, "sent"))
            values[name] = _Opaque(value) if cut else (sent, entry.get("text") is True)
        elif text:  # an older event: the query string's text, as far as it can be rebuilt
            values[name] = (_as_text(value), True)
        else:
            values[name] = (value, False)
    return values, True


def _as_text(value: Any) -> Any:
    """A recorded JSON value as the query string held it (``5`` was ``"5"``)."""
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _bind(
    view: _View, route: CompiledRoute, path: Mapping[str, str]
) -> tuple[dict[str, tuple[str, Any]] | None, bool, tuple[str, ...]]:
    """(the bound parameters, or None when the caller's values are not known; whether they are;
    the parameters taken as recorded); ``_Refused`` with the reason of a refusal."""
    rec = view.rec
    inputs, known = _inputs(rec)
    specs = route.query.params
    # name -> text, or _Opaque: a segment the live policy redacted was recorded as its hash
    segments: dict[str, Any] = {
        name: _Opaque(text) if HASHED.match(text) else text for name, text in path.items()
    }
    if rec.transport == "mcp":  # the route's path parameters are arguments of the tool
        segments = {}
        for name in route.path_params:
            given = inputs.pop(name, None)
            if isinstance(given, tuple):
                raw = given[0]
                raw = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
                if not isinstance(raw, str):
                    raise _Refused("path-invalid")
                try:
                    check_param_segment(raw)
                except PathInvalid:
                    raise _Refused("path-invalid") from None
                segments[name] = raw
            elif isinstance(given, _Opaque):
                segments[name] = given
    if known:
        for name in inputs:
            spec = specs.get(name)
            if spec is None:
                raise _Refused("param-unknown")
            if spec.claim is None and name in segments:
                raise _Refused("param-invalid")
    bound: dict[str, tuple[str, Any]] = {}
    unchecked: list[str] = []
    caller_unknown = False
    if rec.cursor not in (None, "none") and route.query.paging is None:
        raise _Refused("param-unknown")  # the caller's cursor is an unknown parameter here
    if rec.live.approval == "approval.presented" and rec.transport == "mcp":
        if not takes_approval_id(route) and APPROVAL_ARGUMENT not in specs:
            raise _Refused("param-unknown")  # its approval_id is an unknown argument here
    for name, spec in specs.items():
        if spec.cursor is not None:  # the cursor's values are never recorded
            bound[name] = ("cursor", None)
            continue
        if spec.claim is not None:
            claim = view.claim(spec.claim)
            if claim is MISSING or claim is None:
                raise _Refused("claim-missing")
            if isinstance(claim, _Opaque):
                bound[name] = ("claim", claim.recorded)
                unchecked.append(name)
                continue
            try:
                bound[name] = ("claim", json_value(_typed(spec, claim, False)))
            except TypeProblem:
                raise _Refused("claim-invalid") from None
            continue
        segment = segments.get(name)
        given = segment if isinstance(segment, _Opaque) else (segment, True)
        if segment is None:
            given = inputs.get(name)
        if isinstance(given, _Opaque):
            bound[name] = ("caller", given.recorded)
            unchecked.append(name)
        elif given is not None:
            try:
                bound[name] = ("caller", json_value(_typed(spec, given[0], given[1])))
            except TypeProblem:
                raise _Refused("param-invalid") from None
        elif not known:
            caller_unknown = True
        elif spec.has_default:
            bound[name] = ("caller", json_value(spec.default))
        elif spec.nullable:
            bound[name] = ("caller", None)
        else:
            raise _Refused("param-missing")
    if caller_unknown:
        return None, False, tuple(unchecked)
    return bound, True, tuple(unchecked)


# -- the decision -------------------------------------------------------------------------------
def _issuer(policy: CompiledPolicy, rec: Recorded) -> tuple[str | None, bool]:
    """(the candidate's issuer of the recorded ``iss`` URL, the recorded name first when two
    share it; whether it was found by its name instead). By name only when the candidate's URL
    of that name is a stand-in (an unset ``${VAR}``, a ``${VAR:-default}``'s default): the same
    issuer at the URL a deployment sets. A URL written out that differs refuses the token, as
    the shadow policy does."""
    issuers = policy.model.issuers
    found = candidate_issuer(issuers, rec.issuer, rec.iss)
    if found is not None or rec.issuer not in issuers:
        return found, False
    if ("issuers", rec.issuer, "issuer") in policy.loaded.stand_ins:
        return rec.issuer, True
    return None, False


def _route(policy: CompiledPolicy, rec: Recorded) -> tuple[CompiledRoute, dict[str, str]] | str:
    """The candidate's route and path parameters, or the refusal's reason; ``_Unknown``."""
    if rec.transport == "mcp":
        if rec.tool is None or rec.is_cut("/protoPayload/metadata/mcp/tool"):
            raise _Unknown("the tool's name was not recorded whole")
        route = policy.tool(rec.tool)
        return (route, {}) if route is not None else "no-route"
    if rec.is_cut("/httpRequest/requestUrl") or rec.is_cut("/httpRequest/requestMethod"):
        raise _Unknown("the path cut for the event's size")
    found = match_route(policy, rec.method, rec.path)
    if isinstance(found, GatewayError):
        return found.code
    return found


def replay(policy: CompiledPolicy, rec: Recorded, key: bytes | None) -> Replayed | NotReplayed:
    """The decision ``policy`` makes on the recorded call (see the module docstring)."""
    if rec.transport == "mcp" and rec.live.reason == "path-invalid":
        return NotReplayed("the tool's arguments were not recorded (refused as path-invalid)")
    issuer, by_name = _issuer(policy, rec)
    if issuer is None:
        return Replayed(False, "issuer-unknown")
    found = _replay(policy, rec, key, issuer)
    return replace(found, issuer_by_name=True) if by_name else found


def _replay(
    policy: CompiledPolicy, rec: Recorded, key: bytes | None, issuer: str
) -> Replayed | NotReplayed:
    live = rec.live
    accepted = policy.model.issuers[issuer].audiences
    if rec.audience is not None and rec.audience and set(rec.audience).isdisjoint(accepted):
        return NotReplayed(
            f"the token's audience {list(rec.audience)} is not one issuer {issuer!r} accepts"
        )
    names = effective_names(policy.model.issuers[issuer], rec.introspected)
    view = _View(rec, key, issuer, {"groups": names.groups, "scopes": names.scopes})
    try:
        found = _route(policy, rec)
    except _Unknown as exc:
        return NotReplayed(exc.why)
    if isinstance(found, str):
        return Replayed(False, found)
    route, path = found
    shown = f"{route.model.method} {route.template}"
    query = route.query_name
    verdict = _verdict(view, policy, route)
    if isinstance(verdict, NotReplayed):
        return verdict
    refused, rule, uncertain = verdict
    if refused is not None:
        return Replayed(False, refused, rule, shown, query, rule_uncertain=uncertain)
    try:
        params, known, unchecked = _bind(view, route, path)
    except _Refused as exc:
        return Replayed(False, exc.reason, rule, shown, query, rule_uncertain=uncertain)
    except _Unknown as exc:
        return NotReplayed(exc.why)
    if not known and live.reason in _CALLER_REASONS and query == live.query:
        return Replayed(
            False,
            live.reason,
            rule,
            shown,
            query,
            params_known=False,
            assumed=True,
            rule_uncertain=uncertain,
        )
    masked = _masked(view, policy, route)
    return Replayed(
        True,
        "allowed",
        rule,
        shown,
        query,
        params,
        known,
        unchecked,
        masked=masked,
        rule_uncertain=uncertain,
        approval=route.model.approval is not None,
    )


def _masked(view: _View, policy: CompiledPolicy, route: CompiledRoute) -> tuple[str, ...] | None:
    """The columns the candidate masks for the caller: a mask holds unless one of its
    ``unless`` roles does; None when that turns on a role that cannot be judged."""
    masked: list[str] = []
    for column, mask in route.query.model.mask.items():
        verdicts = [_role(view, policy, name, deny=False) for name in mask.unless]
        if any(verdicts):
            continue
        if None in verdicts:
            return None
        masked.append(column)
    return tuple(masked)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _same(live: Any, candidate: Any, key: bytes | None) -> bool:
    if _canonical(live) == _canonical(candidate):  # true is not 1
        return True
    for hashed, clear in ((live, candidate), (candidate, live)):
        if isinstance(hashed, str) and HASHED.match(hashed) and key is not None:
            if not (isinstance(clear, str) and HASHED.match(clear)):
                return redacted(clear, key) == hashed
    return False


def changes(rec: Recorded, outcome: Replayed, key: bytes | None) -> list[str]:
    """How the recomputed decision differs from the recorded one: ``allow->deny``,
    ``deny->allow``, or (not flipping) any of ``query``, ``params``, ``reason``, ``masked``,
    ``approval``."""
    live = rec.live
    if live.allow != outcome.allow:
        return ["allow->deny" if live.allow else "deny->allow"]
    found: list[str] = []
    if live.query != outcome.query and (live.allow or live.query is not None):
        found.append("query")
    if live.allow and outcome.params_known and not _same_params(live.params, outcome, key):
        found.append("params")
    other_rule = live.rule != outcome.rule and not outcome.rule_uncertain
    if not live.allow and (live.reason != outcome.reason or other_rule):
        found.append("reason")
    if live.allow and outcome.masked is not None and set(live.masked) != set(outcome.masked):
        found.append("masked")
    if live.allow and (live.approval is not None) != outcome.approval:
        found.append("approval")
    return found


def _same_params(recorded: Mapping[str, Any] | None, outcome: Replayed, key: bytes | None) -> bool:
    bound = outcome.params or {}
    recorded = recorded or {}
    if set(recorded) != set(bound):
        return False
    for name, (source, value) in bound.items():
        entry = recorded[name]
        if not isinstance(entry, Mapping) or entry.get("from") != source:
            return False
        if not _same(entry.get("value"), value, key):
            return False
    return True
