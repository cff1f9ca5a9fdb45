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

A test pins only when each value it accepts names the owner (``_RULES``): any value does,
a pattern only when each of its alternatives spells the owner out literally (``literals.py``),
since a pattern is easily wider than meant (``.*``, ``.+@.+``, ``repo:.*``):

- an ``email`` pattern ends with ``@PROJECT.iam.gserviceaccount.com``, spelled out (the dots
  escaped), the domain of one project's own service accounts: not a domain every project shares
  (``developer``, ``appspot``, ``cloudbuild.gserviceaccount.com``, a ``gcp-sa-`` service agent's);
- a ``repository`` or ``workflow_ref`` pattern starts with ``OWNER/``;
- ``repository_owner``, ``enterprise``, the ids, a Google ``sub``: only literal alternatives
  (``octo-org|octo-labs``);
- GitHub builds ``sub`` from a template the repository's owner chooses
  (``include_claim_keys``): anyone can get ``environment:prod`` or ``ref:refs/heads/main``, so a
  ``sub`` value pins only when it starts with ``repo:OWNER/`` or holds
  ``repository_owner_id:ID`` or ``repository_id:ID`` as one of its ``key:value`` pairs, and a
  ``sub`` pattern only when it spells that out at its start.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gateway.auth.presets import PINS, claim_names
from gateway.policy.constraints import Finding
from gateway.policy.literals import Atoms, branches, literal_prefix, literal_suffix
from gateway.policy.model import ClaimTest, ClaimValue, Issuer, Policy, RoleEntry

__all__ = ["number_findings", "pin_findings"]

_SUB_REPO = re.compile(r"repo:[^:/]+/")
_SUB_ID = re.compile(r"(?:^|:)repository(?:_owner)?_id:[0-9]+(?::|$)")
_SUB_ID_OPEN = re.compile(r"(?:^|:)repository(?:_owner)?_id:[0-9]+:")
_PROJECT_DOMAIN = re.compile(r"@(?!gcp-sa-)[a-z0-9.-]+\.iam\.gserviceaccount\.com")
_OWNER_PREFIX = re.compile(r"[^/]+/")

_Rule = tuple[Callable[[str], bool], Callable[[Atoms], bool], str]


def _any_value(value: str) -> bool:
    return True


def _no_branch(atoms: Atoms) -> bool:
    return False


def _github_sub(value: str) -> bool:
    return bool(_SUB_REPO.match(value) or _SUB_ID.search(value))


def _github_sub_branch(atoms: Atoms) -> bool:
    prefix = literal_prefix(atoms)
    return bool(_SUB_REPO.match(prefix) or _SUB_ID_OPEN.search(prefix))


def _owner_prefix_branch(atoms: Atoms) -> bool:
    return bool(_OWNER_PREFIX.match(literal_prefix(atoms)))


def _email_branch(atoms: Atoms) -> bool:
    suffix = literal_suffix(atoms)
    at = suffix.rfind("@")
    return at >= 0 and bool(_PROJECT_DOMAIN.fullmatch(suffix[at:]))


_LITERAL_ONLY: _Rule = (
    _any_value,
    _no_branch,
    "a pattern on it must list the values literally (a|b), or use a list of values",
)
_OWNER_FIRST: _Rule = (
    _any_value,
    _owner_prefix_branch,
    "a pattern on it must spell out the owner literally at its start (octo-org/.*)",
)

# (preset, claim) -> (whether a value names the owner, whether an alternative of a pattern that
# is not one literal text does, what to write instead); a pin claim not listed: _LITERAL_ONLY.
_RULES: dict[tuple[str, str], _Rule] = {
    ("google", "email"): (
        _any_value,
        _email_branch,
        "an email pattern must end with one project's service-account domain, spelled out: "
        "@PROJECT\\.iam\\.gserviceaccount\\.com (dots escaped; not developer., appspot., "
        "cloudbuild.gserviceaccount.com nor a gcp-sa- service agent's, which every project shares)",
    ),
    ("google", "sub"): _LITERAL_ONLY,
    ("github-actions", "sub"): (
        _github_sub,
        _github_sub_branch,
        "it names the caller only when it starts with repo:OWNER/ (a pattern: spelled out "
        "literally) or holds repository_owner_id:ID or repository_id:ID, since a repository's "
        "owner chooses the template GitHub builds sub from",
    ),
    ("github-actions", "repository"): _OWNER_FIRST,
    ("github-actions", "workflow_ref"): _OWNER_FIRST,
    ("github-actions", "repository_owner"): _LITERAL_ONLY,
    ("github-actions", "repository_owner_id"): _LITERAL_ONLY,
    ("github-actions", "repository_id"): _LITERAL_ONLY,
    ("github-actions", "enterprise"): _LITERAL_ONLY,
    ("github-actions", "enterprise_id"): _LITERAL_ONLY,
}


# Claims that look like pins and are not: what to say about them.
_NOT_PINS = {
    ("github-actions", "job_workflow_ref"): "job_workflow_ref names the reusable workflow a job "
    "calls, the same for every repository allowed to call it: test it beside "
    "repository_owner_id or repository_id",
}


def _names_owner(preset: str, claim: str, test: ClaimValue) -> bool:
    """Whether every value ``test`` accepts for ``claim`` names the caller's owner."""
    value_ok, branch_ok, _ = _RULES.get((preset, claim), _LITERAL_ONLY)
    if isinstance(test, ClaimTest):
        if test.matches is None:  # present: true
            return False
        found = branches(test.matches)
        return found is not None and all(
            value_ok("".join(a for a in atoms if a is not None))
            if None not in atoms
            else branch_ok(atoms)
            for atoms in found
        )
    values = test if isinstance(test, list) else [test]
    # a value that is no string never equals a string claim: such a test never holds
    return all(not isinstance(v, str) or value_ok(v) for v in values)


def _pinned(entry: RoleEntry, issuer: Issuer, pins: frozenset[str]) -> bool:
    """The entry says who the caller is, or can never hold for this issuer's tokens (it tests
    groups or scopes, which the issuer's preset and ``claims:`` do not read)."""
    preset = issuer.preset
    for path, test in (entry.claims or {}).items():
        if path in pins and _names_owner(preset, path, test):
            return True
    names = claim_names(issuer)
    if (entry.groups and names.groups is None) or (entry.scopes and names.scopes is None):
        return True
    if entry.groups and names.groups in pins:  # any of the groups: each must name the owner
        if _names_owner(preset, names.groups, list(entry.groups)):
            return True
    return bool(  # all of the scopes: one that names the owner is enough
        entry.scopes
        and names.scopes in pins
        and any(_names_owner(preset, names.scopes, s) for s in entry.scopes)
    )


def _why(preset: str, path: str, test: ClaimValue) -> str:
    if (preset, path) in _NOT_PINS:
        return _NOT_PINS[preset, path]
    if isinstance(test, ClaimTest) and test.present:
        return f"{path}: present: true says nothing"
    return f"{path}: {_RULES.get((preset, path), _LITERAL_ONLY)[2]}"


def _advice(entry: RoleEntry, issuer: Issuer, pins: frozenset[str]) -> str:
    """Why the pin claims the entry tests do not pin, when it tests some."""
    claims = entry.claims or {}
    tested = sorted(p for p in claims if p in pins or (issuer.preset, p) in _NOT_PINS)
    if not tested:
        return ""
    why = "; ".join(_why(issuer.preset, p, claims[p]) for p in tested)
    tests = "its test of {} does" if len(tested) == 1 else "its tests of {} do"
    return f"; {tests.format(', '.join(tested))} not say who ({why})"


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
                    + _advice(entry, issuer, pins)
                )))
    return found


# Claims the presets' issuers write as strings, numeric ids included ("repository_id": "123"):
# a number in the policy never equals them.
_STRINGS: dict[str, frozenset[str]] = {
    "google": PINS["google"],
    "github-actions": PINS["github-actions"]
    | {"actor_id", "run_id", "run_number", "run_attempt", "job_workflow_ref"},
}


def number_findings(policy: Policy) -> list[Finding]:
    """Every role entry naming a google or github-actions issuer that tests one of its string
    claims with a number or a boolean: the test never holds (an allow that never allows, a deny
    that never denies)."""
    found: list[Finding] = []
    for name, role in policy.roles.items():
        for k, entry in enumerate(role.any_of):
            issuer = policy.issuers.get(entry.issuer or "")
            if issuer is None or issuer.preset not in _STRINGS:
                continue
            for path, test in (entry.claims or {}).items():
                values = test if isinstance(test, list) else [test]
                bad = [v for v in values if not isinstance(v, (str, ClaimTest))]
                if path in _STRINGS[issuer.preset] and bad:
                    where = ("roles", name, *role.entry_path(k), "claims", path)
                    found.append((where, (
                        f"the token's {path} is a string (preset {issuer.preset}), which "
                        f"{bad[0]!r} never equals: quote it ({path}: \"{bad[0]}\")"
                    )))
    return found
