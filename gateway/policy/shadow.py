"""A shadow policy's disagreement with the live one, on one call. Pure.

``spangate serve --shadow-policy CANDIDATE`` decides every call under the candidate too
(``decide``: no statement runs under it) and answers with the live decision, always. Two
decisions disagree when they differ in any of: allow, reason, the rule (the role that allowed or
denied), the query, the bound parameters (names, where each came from, values), the result
columns masked for the caller (``masked``, recorded with the shadow's decision), or whether an
allowed call waits for an approval (``approval``: the route's ``approval:``, added or removed). A
disagreement becomes the audit event's ``metadata.shadow`` and one count of
``spangate_shadow_disagreements_total{route, live, shadow}``.

Calls the live policy refused before deciding (no route, a method the path does not take, a
path it cannot route) are decided by the candidate too, on what the transport had read by then:
the path and query string, or the tool's name and arguments; never a body it did not read.

The candidate decides on the token as its own issuers would read it (``shadow_principal``): the
live policy's issuer is found among the candidate's by its URL (``iss``; the same name first,
when two share it), so renaming an issuer is no disagreement; the principal is rebuilt with that
issuer's preset and claim names when they differ (groups, scopes…; an introspected token's as
an RFC 7662 answer is read, ``introspection_names``), and refused with the
code that preset's rules give when they refuse it (``email-unverified``...). A candidate with no
issuer of that URL refuses the token: its decision is ``issuer-unknown``; one whose issuer takes
none of the token's audiences (``aud``), ``audience-mismatch``. Either is a disagreement. A
gateway works that mapping out once per swap of either policy (``ShadowIssuers``, kept on
``Active``): a call costs a look-up, not a comparison of claim names (a pydantic copy each).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.auth.presets import (
    claim_names,
    effective_names,
    principal_for_issuer,
    principal_from_claims,
)
from gateway.auth.principal import Principal
from gateway.errors import AuthError
from gateway.policy.bind import Bound
from gateway.policy.decide import Decision
from gateway.policy.model import ClaimNames, Issuer, Policy
from gateway.policy.types import same_value

__all__ = [
    "ROUTING_REASONS",
    "Disagreement",
    "ShadowIssuers",
    "candidate_issuer",
    "disagreement",
    "shadow_principal",
    "waits_for_approval",
]

# The live policy's refusals before a decision that the candidate decides too.
ROUTING_REASONS = frozenset({"no-route", "method-not-allowed", "path-invalid"})


@dataclass(frozen=True)
class Disagreement:
    route: str  # the metric's label: the live route's template, else the shadow's, else ""
    live: str  # the live reason code
    shadow: str  # the shadow's reason code
    record: dict[str, Any]  # the audit event's metadata.shadow


def candidate_issuer(issuers: Mapping[str, Issuer], name: str, iss: str) -> str | None:
    """The candidate's name for the issuer at URL ``iss`` (``name`` when it has one of that
    name and URL), else None."""
    if name in issuers and issuers[name].issuer == iss:
        return name
    return next((n for n, cfg in issuers.items() if cfg.issuer == iss), None)


def _audiences(claims: Mapping[str, Any]) -> set[str] | None:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return set(aud)
    return None  # not in the token (an introspection answer may have none): not checked


@dataclass(frozen=True)
class _Reading:
    """How the candidate reads a token of one live issuer at one URL: worked out once per swap
    (``ShadowIssuers``), not per call (comparing claim names copies a pydantic model)."""

    iss: str  # the URL this was worked out for
    name: str | None  # the candidate's issuer of that URL; None: it refuses, issuer-unknown
    config: Issuer | None  # that issuer's configuration
    reread: bool  # a JWT principal is rebuilt (the preset or the claim names differ)
    introspection: ClaimNames | None  # an introspected one is rebuilt with these; None: kept


def _reading(candidate: Policy, name: str, before: Issuer | None, iss: str) -> _Reading:
    found = candidate_issuer(candidate.issuers, name, iss)
    if found is None:
        return _Reading(iss, None, None, False, None)
    config = candidate.issuers[found]
    if before is None:
        return _Reading(iss, found, config, False, None)
    names = effective_names(config, introspected=True)
    return _Reading(
        iss,
        found,
        config,
        before.preset != config.preset or claim_names(before) != claim_names(config),
        names if effective_names(before, introspected=True) != names else None,
    )


def _read(reading: _Reading, principal: Principal) -> Principal | str:
    name, config = reading.name, reading.config
    if name is None or config is None:
        return "issuer-unknown"
    audiences = _audiences(principal.claims)
    if audiences is not None and audiences.isdisjoint(config.audiences):
        return "audience-mismatch"
    if principal.introspected:  # an RFC 7662 answer: read with the introspection names
        if reading.introspection is not None:
            return principal_from_claims(
                name, reading.introspection, principal.claims, introspected=True
            )
    elif reading.reread:
        try:
            return principal_for_issuer(name, config, principal.claims)
        except AuthError as exc:  # the candidate's preset refuses the token (email-unverified...)
            return exc.code
    return principal if name == principal.issuer else replace(principal, issuer=name)


def shadow_principal(principal: Principal, live: Policy, candidate: Policy) -> Principal | str:
    """The principal as the candidate's issuers read the token, or the code the candidate
    refuses it with (``issuer-unknown``, ``audience-mismatch``); see the module docstring.
    Works the mapping out on every call: a gateway uses ``ShadowIssuers``, worked out once."""
    before = live.issuers.get(principal.issuer)
    return _read(_reading(candidate, principal.issuer, before, principal.iss), principal)


class ShadowIssuers:
    """``shadow_principal`` for one pair of policies, its mapping of each live issuer to the
    candidate's worked out once (when the live or the shadow policy is swapped in): a call
    costs a dict look-up, and the token's own checks (audience, the preset's rules)."""

    def __init__(self, live: Policy, candidate: Policy) -> None:
        self._live = live
        self._candidate = candidate
        self._by_name = {
            name: _reading(candidate, name, config, config.issuer)
            for name, config in live.issuers.items()
        }

    def principal(self, principal: Principal) -> Principal | str:
        """As ``shadow_principal(principal, live, candidate)``."""
        reading = self._by_name.get(principal.issuer)
        if reading is None or reading.iss != principal.iss:  # not a principal of ``live``'s
            return shadow_principal(principal, self._live, self._candidate)
        return _read(reading, principal)


def _changed_params(live: Bound | None, shadow: Bound | None) -> list[str] | None:
    if live is None or shadow is None:  # one side did not bind: allow or reason differ already
        return None
    a, b = live.values, shadow.values
    names = [
        n
        for n in dict.fromkeys([*a, *b])
        if n not in a
        or n not in b
        or (n in live.claim_bound) != (n in shadow.claim_bound)
        or not same_value(a[n], b[n])
    ]
    return sorted(names) or None


def _names(bound: Bound | None) -> Mapping[str, Any]:
    return bound.values if bound is not None else {}


def waits_for_approval(decision: Decision | None) -> bool:
    """Whether ``decision`` lets its call run only once approved: allowed, to a route with
    ``approval:`` (without an Approval-Id the call answers 202 and runs nothing)."""
    return (
        decision is not None
        and decision.allow
        and decision.route is not None
        and decision.route.model.approval is not None
    )


def disagreement(
    live: Decision | None, live_reason: str, shadow: Decision, sha256: str
) -> Disagreement | None:
    """How ``shadow`` (the candidate's decision, ``sha256`` its policy) differs from the live
    decision (None when the live policy refused with ``live_reason`` before deciding); None when
    they agree."""
    allow = live.allow if live is not None else False
    reason = live.reason if live is not None else live_reason
    rule = live.rule if live is not None else None
    query = live.query_name if live is not None else None
    params = _changed_params(live.bound if live is not None else None, shadow.bound)
    masked = live.masked if live is not None else ()
    if (
        shadow.allow == allow
        and shadow.reason == reason
        and shadow.rule == rule
        and shadow.query_name == query
        and params is None
        and set(shadow.masked) == set(masked)
        and waits_for_approval(shadow) == waits_for_approval(live)
    ):
        return None
    route = live.route if live is not None and live.route is not None else shadow.route
    return Disagreement(
        route.template if route is not None else "",
        reason,
        shadow.reason,
        {
            "allow": shadow.allow,
            "reason": shadow.reason,
            "rule": shadow.rule,
            "query": shadow.query_name,
            "params": params,
            "masked": list(shadow.masked),
            "approval": waits_for_approval(shadow),
            "policySha256": sha256,
        },
    )
