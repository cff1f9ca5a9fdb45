"""The load error for an allow role that lets in every caller of an issuer anyone can get tokens
from. Pure.

Google signs an ID token for any audience a service account of any project asks for, and GitHub
an Actions token for any audience a workflow of any repository asks for: under ``preset: google``
and ``preset: github-actions`` the audience proves only that the token was minted for this
gateway, not by whom. So every entry of a role that a route allows, when it can hold for a token
of such an issuer (it names that issuer, or no issuer at all), must say who the caller is: test
one of the preset's ``PINS`` claims (``email``; ``repository_owner``, ``repository``, ``sub``...)
with a value or a pattern (``present: true`` pins nothing), or test ``groups``/``scopes`` that the
issuer's ``claims:`` maps onto such a claim. An entry that tests ``groups`` or ``scopes`` the
issuer does not read (the workload presets read none) never holds for its tokens. Deny roles
and mask ``unless`` roles grant nothing by themselves and are not checked.
"""

from __future__ import annotations

from gateway.auth.presets import PINS, claim_names
from gateway.policy.constraints import Finding
from gateway.policy.model import ClaimTest, Issuer, Policy, RoleEntry

__all__ = ["pin_findings"]


def _pinned(entry: RoleEntry, issuer: Issuer, pins: frozenset[str]) -> bool:
    """The entry says who the caller is, or can never hold for this issuer's tokens (it tests
    groups or scopes, which the issuer's preset and ``claims:`` do not read)."""
    for path, test in (entry.claims or {}).items():
        if path in pins and not (isinstance(test, ClaimTest) and test.present):
            return True
    names = claim_names(issuer)
    if (entry.groups and names.groups is None) or (entry.scopes and names.scopes is None):
        return True
    return bool(
        (entry.groups and names.groups in pins) or (entry.scopes and names.scopes in pins)
    )


def pin_findings(policy: Policy) -> list[Finding]:
    """Every allowing role entry that can hold for any caller of a google or github-actions
    issuer, as (document path, message)."""
    allowing: dict[str, list[int]] = {}
    for i, route in enumerate(policy.routes):
        for role_name in route.allow:
            allowing.setdefault(role_name, []).append(i)
    open_issuers = {n: i for n, i in policy.issuers.items() if i.preset in PINS}
    found: list[Finding] = []
    if not open_issuers:
        return found
    for name, routes in allowing.items():
        role = policy.roles.get(name)
        if role is None:
            continue  # an unknown role: reported by validate_policy
        for k, entry in enumerate(role.any_of):
            names = [entry.issuer] if entry.issuer is not None else list(open_issuers)
            for issuer_name in names:
                issuer = open_issuers.get(issuer_name)
                if issuer is None:
                    continue
                pins = PINS[issuer.preset]
                if _pinned(entry, issuer, pins):
                    continue
                who = (
                    "service account of any Google Cloud project"
                    if issuer.preset == "google"
                    else "workflow of any repository on GitHub"
                )
                shown = ", ".join(f"routes[{i}]" for i in routes[:3])
                found.append((("roles", name, *role.entry_path(k)), (
                    f"this entry of role {name} (allowed by {shown}) holds for any token of "
                    f"issuer '{issuer_name}' (preset {issuer.preset}), and any {who} can get "
                    "one for the gateway's audience: test who the caller is, a claim among "
                    f"{', '.join(sorted(pins))}"
                    + ("" if entry.issuer else f", or name another issuer than '{issuer_name}'")
                )))
    return found
