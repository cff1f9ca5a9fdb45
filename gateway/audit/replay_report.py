"""What ``spangate policy replay`` reports, and what ``policy diff --audit`` counts. Pure.

``ReplayReport.add`` takes each recorded call with its recomputed decision (``replay``) and
groups what changed per kind, route and role, with counts, the transports (http, mcp) and a few
example request ids:

- ``allow->deny``: the role is the one that allowed under the live policy;
- ``deny->allow``: the role that allows under the candidate (its parameters not known when the
  live policy refused before binding: counted as ``params_unknown``);
- ``query``, ``params`` (both allowed, another statement or other bound values), ``reason``
  (both refused, for another reason or by another role), ``masked``, ``approval`` (both
  allowed, waiting for an approval under one only: "approval required -> none" or the reverse):
  the live policy's rule, else the candidate's.

Calls that could not be recomputed are counted by why, and per route and candidate role;
events that record no decision are counted by kind (``skipped``); the live policies the trail
was written under, by hash.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.recorded import Recorded, Skipped
from gateway.audit.replay import NotReplayed, Replayed, changes
from gateway.policy.diff import AccessChange
from gateway.policy.validate import template_shape

__all__ = ["EXAMPLES", "KINDS", "UNKNOWN_ROLE", "Group", "ReplayReport", "Traffic", "traffic"]

EXAMPLES = 3  # request ids kept per group
KINDS = ("allow->deny", "deny->allow", "query", "params", "reason", "masked", "approval")
FLIPS = KINDS[:2]


@dataclass
class Group:
    kind: str
    route: str
    role: str | None
    count: int = 0
    transports: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # "live -> candidate"
    examples: list[str] = field(default_factory=list)

    def add(self, rec: Recorded, reason: str | None) -> None:
        self.count += 1
        self.transports[rec.transport] += 1
        if reason is not None:
            self.reasons[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(rec.request_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "route": self.route,
            "role": self.role,
            "count": self.count,
            "transports": dict(self.transports),
            "reasons": dict(self.reasons),
            "examples": list(self.examples),
        }


def _approval_shift(outcome: Replayed) -> str:
    return "none -> approval required" if outcome.approval else "approval required -> none"


def _decided(reason: str, rule: str | None) -> str:
    return f"{reason} ({rule})" if rule else reason


@dataclass
class ReplayReport:
    candidate: str  # the candidate's sha256
    events: int = 0
    replayed: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    policies: Counter[str] = field(default_factory=Counter)  # live policy sha256 -> decisions
    groups: dict[tuple[str, str, str | None], Group] = field(default_factory=dict)
    not_replayed: Counter[str] = field(default_factory=Counter)  # why -> calls
    not_replayed_roles: dict[tuple[str, str | None], Group] = field(default_factory=dict)
    params_unknown: int = 0  # deny->allow flips whose parameters were not recorded
    unchecked: int = 0  # calls with parameters taken as recorded (hashes, cut values)
    assumed: int = 0  # refusals for a caller's parameter assumed unchanged
    issuer_by_name: int = 0  # calls whose issuer was found by name (its URL a stand-in)
    notes: list[str] = field(default_factory=list)

    @property
    def decisions(self) -> int:
        return self.replayed + sum(self.not_replayed.values())

    @property
    def flips(self) -> int:
        return sum(g.count for g in self.groups.values() if g.kind in FLIPS)

    def count(self, kind: str) -> int:
        return sum(g.count for g in self.groups.values() if g.kind == kind)

    def skip(self, skipped: Skipped) -> None:
        self.skipped[skipped.why] += 1

    def add(self, rec: Recorded, outcome: Replayed | NotReplayed, key: bytes | None) -> None:
        live = rec.live
        self.policies[rec.policy_sha256 or "unknown"] += 1
        self.issuer_by_name += outcome.issuer_by_name
        route = live.route or "(no route)"
        if isinstance(outcome, NotReplayed):
            self.not_replayed[outcome.why] += 1
            for role in outcome.roles or (None,):
                key_ = (route, role)
                group = self.not_replayed_roles.setdefault(key_, Group("not-replayed", *key_))
                group.add(rec, None)
            return
        self.replayed += 1
        self.unchecked += bool(outcome.unchecked)
        self.assumed += outcome.assumed
        found = changes(rec, outcome, key)
        if not found:
            self.unchanged += 1
            return
        route = live.route or outcome.route or "(no route)"  # never one group per raw path
        rule = outcome.rule
        if rule is not None and outcome.rule_uncertain:  # another role might be the rule
            rule = f"{rule}, or {' or '.join(outcome.rule_uncertain)}?"
        shift = f"{_decided(live.reason, live.rule)} -> {_decided(outcome.reason, rule)}"
        for kind in found:
            role = outcome.rule if kind == "deny->allow" else live.rule or outcome.rule
            if kind == "deny->allow" and not outcome.params_known:
                self.params_unknown += 1
            group = self.groups.setdefault((kind, route, role), Group(kind, route, role))
            group.add(rec, _approval_shift(outcome) if kind == "approval" else shift)

    # -- output -----------------------------------------------------------------------------------
    def as_json(self) -> dict[str, Any]:
        ordered = sorted(self.groups.values(), key=lambda g: (KINDS.index(g.kind), -g.count))
        return {
            "candidateSha256": self.candidate,
            "events": self.events,
            "decisions": self.decisions,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "flips": {kind: self.count(kind) for kind in FLIPS},
            "changes": {kind: self.count(kind) for kind in KINDS[2:]},
            "groups": [g.as_json() for g in ordered],
            "notReplayed": {
                "count": sum(self.not_replayed.values()),
                "why": dict(self.not_replayed.most_common()),
                "byRouteAndRole": [
                    {k: v for k, v in g.as_json().items() if k not in ("kind", "reasons")}
                    for g in sorted(self.not_replayed_roles.values(), key=lambda g: -g.count)
                ],
            },
            "paramsUnknown": self.params_unknown,
            "paramsUnchecked": self.unchecked,
            "refusalsAssumed": self.assumed,
            "issuerMatchedByName": self.issuer_by_name,
            "skipped": dict(self.skipped),
            "policies": dict(self.policies.most_common()),
            "notes": list(self.notes),
        }

    def render(self) -> str:
        out = [
            f"{self.decisions} recorded decisions ({self.events} events), candidate sha256 "
            f"{self.candidate[:12]}: {self.replayed} replayed, {self.unchanged} unchanged",
            f"  flips: {self.count('allow->deny')} allow -> deny, "
            f"{self.count('deny->allow')} deny -> allow",
            f"  other changes: {self.count('query')} query, {self.count('params')} params, "
            f"{self.count('reason')} reason, {self.count('masked')} masked, "
            f"{self.count('approval')} approval",
        ]
        missed = sum(self.not_replayed.values())
        out.append(f"  could not be replayed: {missed}")
        out.append(f"  issuer matched by name, URL differs: {self.issuer_by_name}")
        for kind in KINDS:
            groups = sorted(
                (g for g in self.groups.values() if g.kind == kind), key=lambda g: -g.count
            )
            if not groups:
                continue
            out.append(f"{kind.replace('->', ' -> ')}:")
            for g in groups:
                out.append(f"  {g.route}  role {g.role or '(none)'}: {_calls(g)}")
                for shift, n in g.reasons.most_common():
                    out.append(f"      {shift}: {n}")
                out.append(f"      e.g. {', '.join(g.examples)}")
        if self.params_unknown:
            out.append(
                f"note: {self.params_unknown} deny -> allow call(s) were refused before their "
                "parameters were bound: the candidate's roles let them in; whether their "
                "parameters bind is not known"
            )
        if self.unchecked:
            out.append(
                f"note: {self.unchecked} call(s) have parameters recorded as a hash or cut: "
                "taken as recorded, not re-checked against the candidate's constraints"
            )
        if self.assumed:
            out.append(
                f"note: {self.assumed} refusal(s) for a caller's parameter were assumed "
                "unchanged (the caller's values were not recorded)"
            )
        if self.issuer_by_name:
            out.append(
                f"note: {self.issuer_by_name} call(s) were replayed under the candidate's issuer "
                "of the same name, whose URL is a ${VAR} stand-in: check the URL the deployment "
                "sets is the recorded one"
            )
        if missed:
            out.append(f"could not be replayed ({missed}):")
            for why, n in self.not_replayed.most_common():
                out.append(f"  {why}: {n}")
            for g in sorted(self.not_replayed_roles.values(), key=lambda g: -g.count):
                role = f"role {g.role}" if g.role else "(no role)"
                out.append(f"  {g.route}  {role}: {_calls(g)}, e.g. {', '.join(g.examples)}")
        if self.skipped:
            shown = ", ".join(f"{why} {n}" for why, n in sorted(self.skipped.items()))
            out.append(f"events that record no decision of the policy (skipped): {shown}")
        if len(self.policies) > 1:
            shown = ", ".join(f"{sha[:12]} ({n})" for sha, n in self.policies.most_common())
            out.append(f"recorded under {len(self.policies)} policies: {shown}")
        out += [f"note: {note}" for note in self.notes]
        return "\n".join(out) + "\n"


def _calls(group: Group) -> str:
    by = ", ".join(f"{t} {n}" for t, n in sorted(group.transports.items()))
    return f"{group.count} call{'s' if group.count != 1 else ''} ({by})"


# -- policy diff --audit ------------------------------------------------------------------------
# Why the traffic of a (route, role) is not known: the recorded events name the roles their
# principal held under the live policy, which has no such role.
UNKNOWN_ROLE = "role not in the live policy"


@dataclass(frozen=True)
class Traffic:
    calls: int | None  # recorded calls on the route by holders of the role; None: not known
    allowed: int | None  # of which the live policy allowed
    unknown: str | None = None  # why not known


def _shape(route: str) -> tuple[str, tuple[str, ...]]:
    method, _, path = route.partition(" ")
    return method, template_shape(path)


def traffic(
    recs: Iterable[Recorded],
    access: Iterable[AccessChange],
    *,
    live_roles: Collection[str] | None = None,
    redefined: Iterable[tuple[str, str]] = (),
) -> dict[tuple[str, str], Traffic]:
    """For each (route, role) of the diff's access changes, and of ``redefined`` (a role whose
    entries changed, on each route naming it): the recorded calls on that route (matched by
    method and path shape) whose principal held the role (or that it denied), as the live
    policy defined it. A role not in ``live_roles`` (the live policy's) was never judged when
    the calls were recorded: its traffic is unknown, not 0."""
    pairs = [*((a.route, a.role) for a in access), *redefined]
    unknown = {p for p in pairs if live_roles is not None and p[1] not in live_roles}
    wanted = {(_shape(route), role): (route, role) for route, role in pairs}
    wanted = {k: v for k, v in wanted.items() if v not in unknown}
    calls: Counter[tuple[str, str]] = Counter()
    allowed: Counter[tuple[str, str]] = Counter()
    for rec in recs:
        if rec.live.route is None:
            continue
        shape = _shape(rec.live.route)
        for role in {*rec.live.roles, *([rec.live.rule] if rec.live.rule else [])}:
            change = wanted.get((shape, role))
            if change is not None:
                calls[change] += 1
                allowed[change] += rec.live.allow
    found = {k: Traffic(calls[k], allowed[k]) for k in wanted.values()}
    return found | {k: Traffic(None, None, UNKNOWN_ROLE) for k in unknown}
