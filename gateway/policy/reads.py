"""Which claims a policy's decisions read. Pure.

The audit trail records, on every event with a principal, the values of these claims
(``metadata.claimsRead``), so that the decision can be recomputed later under another policy
(``spangate policy replay``) without ever storing the token:

- every claim path a role entry's ``claims`` tests (``tenant``, ``act.sub``, ``org.id``);
- every claim a parameter is bound to (``from: claim.tenant``);
- of the principal's ``groups`` and ``scopes`` (as its issuer's claim names give them), only
  the ones some role entry names: whether the principal holds each (never its other groups).

The issuer and whether the token is delegated are in every event already
(``authenticationInfo``). A claim bound to a parameter that ``audit.redact`` names is
``redacted``: the trail records its keyed hash, never the value (the parameter's own value is
hashed; its claim must not give it away); so is a claim ``audit.redact`` names as
``claim.PATH``, and the group or scope names when it names ``claim.groups`` or
``claim.scopes`` (each name hashed on its own). ``SPANGATE_AUDIT_CLAIMS=off`` records none of
it (``NO_READS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.model import Policy

__all__ = ["NO_READS", "ClaimReads", "claim_reads"]


@dataclass(frozen=True)
class ClaimReads:
    paths: tuple[str, ...]  # claim paths, each once, in the order the policy names them
    groups: frozenset[str] = frozenset()  # the group names role entries test
    scopes: frozenset[str] = frozenset()  # the scope names role entries require
    redacted: frozenset[str] = frozenset()  # paths recorded as their keyed hash (or groups, scopes)
    recorded: bool = True  # False: SPANGATE_AUDIT_CLAIMS=off, nothing recorded

    def union(self, other: ClaimReads) -> ClaimReads:
        """What either reads (a live policy and its shadow: the trail serves replays of both)."""
        return ClaimReads(
            tuple(dict.fromkeys((*self.paths, *other.paths))),
            self.groups | other.groups,
            self.scopes | other.scopes,
            self.redacted | other.redacted,
            self.recorded and other.recorded,
        )


def claim_reads(policy: Policy) -> ClaimReads:
    """The claims ``policy``'s roles and bindings read (see the module docstring)."""
    paths: dict[str, None] = {}
    groups: set[str] = set()
    scopes: set[str] = set()
    for role in policy.roles.values():
        for entry in role.any_of:
            groups.update(entry.groups or ())
            scopes.update(entry.scopes or ())
            paths.update(dict.fromkeys(entry.claims or ()))
    redact = set(policy.audit.redact)
    redacted = {n.removeprefix("claim.") for n in redact if n.startswith("claim.")}
    for query in policy.queries.values():
        for name, param in query.params.items():
            if param.claim is not None:
                paths[param.claim] = None
                if name in redact:
                    redacted.add(param.claim)
    return ClaimReads(tuple(paths), frozenset(groups), frozenset(scopes), frozenset(redacted))


NO_READS = ClaimReads((), recorded=False)
