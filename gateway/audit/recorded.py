"""Recorded calls: audit events read back as the inputs of a decision (``spangate policy replay``).

``read_trail(paths)`` reads audit files as ``spangate audit verify`` does (a file and its rotations
are one trail, in rotation order; ``audit.wN.jsonl``, one trail per worker, each its own) and
yields each event with where it is. A line that is not a JSON object is unusable input
(``TrailUnreadable``), except a last line cut short by a crash (no newline): skipped, with a note.

``recorded(event)`` is the call an event records, as far as replay needs it, or why the event
records no decision (``Skipped``): a follow-up event (``metadata.settlement``: its request is
counted once, by its own event), no principal (no valid token: the policy was never consulted),
or a refusal that was no decision of the policy (a malformed body… after a route matched: the
reason is not one of ``decide.REASONS``). A call the policy allowed and the gateway refused
after (a budget, a cursor, the audit sink) records ``allow: true``: replayed as allowed. An
object that is no spangate audit event is unusable input. Pure, apart from ``read_trail``'s reading.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.bounds import pointer
from gateway.audit.rotation import trail_groups
from gateway.policy.decide import REASONS

__all__ = [
    "CLAIMS_READ",
    "HASHED",
    "LiveDecision",
    "Recorded",
    "Skipped",
    "TrailUnreadable",
    "read_trail",
    "recorded",
]

CLAIMS_READ = pointer("protoPayload", "metadata", "claimsRead")
PARAMS = pointer("protoPayload", "request", "params")
IGNORED = pointer("protoPayload", "request", "ignoredCallerValues")
# A value the trail holds as a hash (``event.redacted``): what a redacted parameter or claim is.
HASHED = re.compile(r"^redacted:(?:hmac-sha256|sha256):[0-9a-f]{64}$")


class TrailUnreadable(ValueError):
    """An audit file that cannot be replayed: it names the file and line."""


@dataclass(frozen=True)
class Skipped:
    # follow-up | no-principal | not-a-decision | approvals (a call to /approvals: an approver's
    # or requester's call to the gateway's own endpoints, no route of the policy)
    why: str


@dataclass(frozen=True)
class LiveDecision:
    allow: bool
    reason: str
    rule: str | None
    roles: tuple[str, ...]  # the roles that held
    route: str | None  # "GET /v1/orders/{order_id}", the live route, when one matched
    query: str | None
    params: Mapping[str, Any] | None  # request.params as recorded; None: not bound
    ignored: Mapping[str, Any]  # request.ignoredCallerValues as recorded
    masked: tuple[str, ...] = ()  # metadata.masked: the result columns masked (absent: none)
    approval: str | None = None  # allowed, and it waited for an approval: ``approval_step``


@dataclass(frozen=True)
class Recorded:
    """One recorded decision's inputs. ``cut`` holds the JSON Pointers of values the event holds
    cut or dropped (``metadata.truncated``): such a value is not what the caller sent."""

    request_id: str
    where: str  # FILE:LINE
    transport: str  # http | mcp
    method: str
    path: str
    tool: str | None
    issuer: str
    iss: str
    subject: str
    delegated: bool
    actors: tuple[tuple[Any, Any], ...]  # (sub, other claims) of each actor, the current first
    claims: Mapping[str, Any] | None  # claimsRead.claims; None: not recorded (an older event)
    # group (scope) name, or its keyed hash -> whether the principal holds it; None: not
    # recorded. An older event's list of all the principal's groups: complete (others False)
    groups: Mapping[str, bool] | None
    scopes: Mapping[str, bool] | None
    live: LiveDecision
    policy_sha256: str | None
    cut: frozenset[str] = field(default_factory=frozenset)
    complete: frozenset[str] = frozenset()  # groups, scopes: recorded whole (an older event)
    # metadata.pagination.cursor: none | opened | refused | not-checked; None: no paginated route
    cursor: str | None = None
    # thirdPartyPrincipal.audience: the token's audiences the live issuer accepted; None: not
    # recorded (an older event, or a token without aud)
    audience: tuple[str, ...] | None = None
    # thirdPartyPrincipal.claimNames: the claims groups and scopes were read from ({groups,
    # scopes}); None: not recorded (an older event)
    claim_names: Mapping[str, Any] | None = None
    introspected: bool = False  # thirdPartyPrincipal.introspected: an opaque token

    def is_cut(self, where: str) -> bool:
        """Whether the value at ``where`` (or anything in it) is cut or dropped."""
        return any(c == where or c.startswith(where + "/") for c in self.cut)


def read_trail(paths: Sequence[Path], notes: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every event of the files, each trail in order, as (``FILE:LINE``, event). Streamed: one
    line at a time, and the next one read ahead (is this line the last?)."""
    for group in trail_groups(paths):
        for path in group:
            with path.open("rb") as f:
                number, raw = 0, f.readline()
                while raw:
                    number, following = number + 1, f.readline()
                    found = _event(path, number, raw, not following, notes)
                    if found is not None:
                        yield f"{path}:{number}", found
                    raw = following


def _event(
    path: Path, number: int, raw: bytes, last: bool, notes: list[str]
) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        event = json.loads(raw)
    except ValueError:
        if last and not raw.endswith(b"\n"):
            notes.append(f"{path}:{number}: a last line cut short (skipped)")
            return None
        raise TrailUnreadable(f"{path}:{number}: not a JSON audit event") from None
    if not isinstance(event, dict):
        raise TrailUnreadable(f"{path}:{number}: not a JSON audit event")
    return event


def _get(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# The gateway's own approvals endpoints (``approvals.endpoints.APPROVALS_PATH``, reserved: no
# policy route is under it); their events record an approver's (or requester's) call, no decision.
APPROVALS_PATH = "/approvals"


def _approvals_endpoint(url: Any, metadata: Mapping[str, Any]) -> bool:
    if metadata.get("transport") == "mcp" or not isinstance(url, str):
        return False
    return url == APPROVALS_PATH or url.startswith(APPROVALS_PATH + "/")


def approval_step(decision: Mapping[str, Any], metadata: Mapping[str, Any]) -> str | None:
    """The approval step of an allowed call that waited for an approval under the live policy,
    as its event records it (``metadata.approval``, set before anything else can refuse such a
    call): ``approval.requested`` (the 202) or ``approval.presented`` (a call with Approval-Id,
    MCP ``approval_id``); None for any other call."""
    step = _get(metadata, "approval", "event")
    if decision.get("allow") is True and step in ("approval.requested", "approval.presented"):
        return str(step)
    return None


def recorded(event: Mapping[str, Any], where: str) -> Recorded | Skipped:
    """The decision ``event`` records (see the module docstring); ``TrailUnreadable`` when it is
    no spangate audit event."""
    payload = event.get("protoPayload")
    metadata = _get(payload, "metadata")
    decision = _get(metadata, "decision")
    http = event.get("httpRequest")
    if not (
        isinstance(payload, Mapping)
        and isinstance(metadata, Mapping)
        and isinstance(decision, Mapping)
        and isinstance(http, Mapping)
        and isinstance(decision.get("reason"), str)
    ):
        raise TrailUnreadable(f"{where}: not a spangate audit event")
    if metadata.get("settlement") is not None:
        return Skipped("follow-up")
    auth = payload.get("authenticationInfo")
    if not isinstance(auth, Mapping):
        return Skipped("no-principal")
    if _approvals_endpoint(http.get("requestUrl"), metadata):
        return Skipped("approvals")
    reason = decision["reason"]
    if reason not in REASONS:
        return Skipped("not-a-decision")
    third = _get(auth, "thirdPartyPrincipal")
    cut = frozenset(
        t["field"]
        for t in metadata.get("truncated") or ()
        if isinstance(t, Mapping) and isinstance(t.get("field"), str)
    )
    read = metadata.get("claimsRead")
    read = read if isinstance(read, Mapping) else {}
    claims = read.get("claims")
    statement = payload.get("request")
    statement = statement if isinstance(statement, Mapping) else {}
    authorization = payload.get("authorizationInfo") or []
    resource = _get(authorization[0], "resource") if authorization else None
    params = statement.get("params")
    ignored = statement.get("ignoredCallerValues")
    rid = _get(payload, "requestMetadata", "requestAttributes", "id")
    return Recorded(
        request_id=str(rid),
        where=where,
        transport="mcp" if metadata.get("transport") == "mcp" else "http",
        method=str(http.get("requestMethod")),
        path=str(http.get("requestUrl")),
        tool=_text(_get(metadata, "mcp", "tool")),
        issuer=str(_get(third, "issuer")),
        iss=str(_get(third, "iss")),
        subject=str(auth.get("principalSubject")),
        delegated=bool(auth.get("serviceAccountDelegationInfo")),
        actors=tuple(
            (_get(a, "principalSubject"), _get(a, "thirdPartyPrincipal", "thirdPartyClaims"))
            for a in auth.get("serviceAccountDelegationInfo") or ()
        ),
        claims=claims if isinstance(claims, Mapping) else None,
        groups=_held(read.get("groups")),
        scopes=_held(read.get("scopes")),
        live=LiveDecision(
            allow=decision.get("allow") is True,
            reason=reason,
            rule=_text(decision.get("rule")),
            roles=tuple(r for r in decision.get("roles") or () if isinstance(r, str)),
            route=_text(resource),
            query=_text(statement.get("query")),
            params=params if isinstance(params, Mapping) else None,
            ignored=ignored if isinstance(ignored, Mapping) else {},
            masked=tuple(_strings(metadata.get("masked")) or ()),
            approval=approval_step(decision, metadata),
        ),
        policy_sha256=_text(metadata.get("policySha256")),
        cut=cut,
        complete=frozenset(k for k in ("groups", "scopes") if isinstance(read.get(k), list)),
        cursor=_text(_get(metadata, "pagination", "cursor")),
        audience=_tuple(_strings(_get(third, "audience"))),
        claim_names=_mapping(_get(third, "claimNames")),
        introspected=_get(third, "introspected") is True,
    )


def _held(value: Any) -> Mapping[str, bool] | None:
    """``claimsRead.groups``: ``{name: held}``; an older event's list of names: all held."""
    if isinstance(value, Mapping) and all(isinstance(v, bool) for v in value.values()):
        return value
    listed = _strings(value)
    return dict.fromkeys(listed, True) if listed is not None else None


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _tuple(value: list[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None
