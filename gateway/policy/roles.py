"""Claims -> roles. Pure: a Principal and the policy's role table in, the roles that hold out.

A role holds if ANY of its entries holds; an entry holds if ALL of its keys hold:

- ``issuer``: the token came from the issuer of that name;
- ``groups``: the principal is in ANY of the groups;
- ``scopes``: the principal has ALL of the scopes;
- ``claims``: each claim (dotted path allowed) passes its test:
  - a value: the claim equals it; a list of values means any of. When the token's claim is itself
    an array, it holds if ANY element equals ANY value. Types are compared strictly: ``true``
    never equals ``"true"`` or ``1``;
  - ``{matches: REGEX}``: the whole claim matches the regular expression (RE2, linear time, a
    full match as a parameter's ``pattern``: ``regex.py``); an array claim holds if ANY string
    element matches; a claim that is not a string (a number, a boolean, an object) never matches;
  - ``{present: true}``: the token has the claim with any value but null;
- ``authenticated: true``: any verified token;
- ``delegated``: which tokens the other keys judge. A delegated token (RFC 8693: it has an
  ``act`` claim, an actor acting for the token's subject) never holds an entry on the subject's
  claims alone:

  ===========================  ============  ===================  ==================
  the entry says               direct token  delegated: granting  delegated: denying
  ===========================  ============  ===================  ==================
  nothing (the default)        judged        never holds          judged
  ``delegated: false``         judged        never holds          never holds
  ``delegated: true``          judged        judged               judged
  a ``claims`` test under act  fails (*)     judged               judged
  ===========================  ============  ===================  ==================

  "Denying" is the view of a route's ``deny``: a deny role bites an agent acting for a person it
  denies (``held(..., deny=True)``), unless its entry says ``delegated: false``. (*) a direct
  token has no ``act``, so the test fails as any absent claim does. Claim paths under ``act``
  read the nested object only (``claim_value``), never a flat claim named ``act.sub``.

``RoleTable`` is compiled once per policy: ``held`` is the request path (predicates only, stops
at each role's first holding entry); ``trace`` evaluates every key of every entry and says why,
for ``spangate policy explain`` and the policy tests. Both use the same predicates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.auth.principal import MISSING, Principal
from gateway.policy.model import ClaimTest, ClaimValue, Role, RoleEntry
from gateway.policy.regex import Regex, compile_regex

__all__ = [
    "EntryResult",
    "KeyResult",
    "RoleResult",
    "RoleTable",
    "entry_keys",
    "evaluate_roles",
    "held_roles",
]

_Check = Callable[[Principal], bool]


@dataclass(frozen=True)
class KeyResult:
    """One key of an entry: ``key`` is ``issuer``, ``groups``, ``scopes``, ``authenticated``,
    ``claims.<path>`` or ``delegated`` (shown when the token is delegated or the entry says
    ``delegated:``)."""

    key: str
    holds: bool
    why: str


@dataclass(frozen=True)
class EntryResult:
    index: int
    holds: bool
    why: str  # what held, or every key that failed and why
    keys: tuple[KeyResult, ...] = ()
    denies: bool | None = None  # as a deny role (see the module doc); None: the same as holds

    @property
    def holds_for_deny(self) -> bool:
        return self.holds if self.denies is None else self.denies


@dataclass(frozen=True)
class RoleResult:
    role: str
    holds: bool
    entries: tuple[EntryResult, ...]

    @property
    def denies(self) -> bool:
        """Whether the role holds as a route's ``deny`` role (differs from ``holds`` only for a
        delegated token and entries that leave ``delegated`` out)."""
        return any(e.holds_for_deny for e in self.entries)

    @property
    def held_by(self) -> EntryResult | None:
        """The first entry that holds, or None."""
        return next((e for e in self.entries if e.holds), None)


def _same(a: Any, b: Any) -> bool:
    if type(a) is type(b):
        return bool(a == b)
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def _equals(actual: Any, expected: Any) -> bool:
    wanted = expected if isinstance(expected, list) else [expected]
    candidates = actual if isinstance(actual, list) else [actual]
    return any(_same(c, w) for c in candidates for w in wanted)


def _matches(actual: Any, pattern: Regex) -> bool:
    candidates = actual if isinstance(actual, list) else [actual]
    return any(isinstance(c, str) and pattern.fullmatch(c) for c in candidates)


def claim_holds(actual: Any, test: ClaimValue) -> bool:
    """Whether a claim value (``MISSING`` when absent) passes one ``claims:`` test."""
    if isinstance(test, ClaimTest):
        if test.present:
            return actual is not MISSING and actual is not None
        assert test.matches is not None
        return actual is not MISSING and _matches(actual, compile_regex(test.matches))
    return actual is not MISSING and _equals(actual, test)


def _claim_check(path: str, test: ClaimValue) -> _Check:
    if isinstance(test, ClaimTest) and test.present:
        return lambda p: p.claim(path) not in (MISSING, None)
    if isinstance(test, ClaimTest):
        assert test.matches is not None
        pattern = compile_regex(test.matches)
        return lambda p: _matches(p.claim(path), pattern)
    return lambda p: (actual := p.claim(path)) is not MISSING and _equals(actual, test)


@dataclass(frozen=True)
class _Entry:
    checks: tuple[_Check, ...]
    delegation: Literal["default", "direct", "any"]

    def judges(self, delegated: bool, deny: bool) -> bool:
        """Whether the checks decide for this token (else the entry does not hold)."""
        if not delegated or self.delegation == "any":
            return True
        return self.delegation == "default" and deny


def _checks(entry: RoleEntry) -> tuple[_Check, ...]:
    checks: list[_Check] = []
    if entry.issuer is not None:
        issuer = entry.issuer
        checks.append(lambda p: p.issuer == issuer)
    if entry.groups is not None:
        groups = frozenset(entry.groups)
        checks.append(lambda p: not p.groups.isdisjoint(groups))
    if entry.scopes is not None:
        scopes = frozenset(entry.scopes)
        checks.append(lambda p: scopes <= p.scopes)
    for path, test in (entry.claims or {}).items():
        checks.append(_claim_check(path, test))
    return tuple(checks)  # authenticated: true adds nothing: every principal is authenticated


def _show_test(test: ClaimValue) -> str:
    if isinstance(test, ClaimTest):
        return "present" if test.present else f"matching {test.matches!r}"
    return f"any of {test!r}" if isinstance(test, list) else repr(test)


def entry_keys(entry: RoleEntry, principal: Principal) -> tuple[KeyResult, ...]:
    """The verdict of every key of ``entry``, in the order issuer, groups, scopes, claims,
    authenticated, delegated (when the token is delegated or the entry says ``delegated:``),
    each with the reason, for ``explain``."""
    out: list[KeyResult] = []
    if entry.issuer is not None:
        ok = principal.issuer == entry.issuer
        out.append(
            KeyResult(
                "issuer",
                ok,
                f"issuer is {principal.issuer!r}" + ("" if ok else f", not {entry.issuer!r}"),
            )
        )
    if entry.groups is not None:
        common = sorted(principal.groups.intersection(entry.groups))
        why = f"in group {common[0]!r}" if common else f"in none of the groups {entry.groups}"
        out.append(KeyResult("groups", bool(common), why))
    if entry.scopes is not None:
        missing = [s for s in entry.scopes if s not in principal.scopes]
        why = f"missing scopes {missing}" if missing else f"has scopes {entry.scopes}"
        out.append(KeyResult("scopes", not missing, why))
    for path, test in (entry.claims or {}).items():
        actual = principal.claim(path)
        ok = claim_holds(actual, test)
        if actual is MISSING:
            why = f"claim {path} is absent"
        else:
            why = f"claim {path} is {actual!r}, " + ("" if ok else "not ") + _show_test(test)
        out.append(KeyResult(f"claims.{path}", ok, why))
    if entry.authenticated:
        out.append(KeyResult("authenticated", True, "the token is verified"))
    if principal.delegated or entry.delegated is not None:
        out.append(_delegated_key(entry, principal))
    return tuple(out)


def _token_kind(principal: Principal) -> str:
    if not principal.delegated:
        return "a direct token (no act claim)"
    actors = principal.actors
    if not actors:
        return "a delegated token (act is not an object)"
    shown = ", then ".join(repr(a) if a is not None else "an actor without sub" for a in actors)
    return f"a delegated token: {shown} acting for {principal.subject!r}"


def _delegated_key(entry: RoleEntry, principal: Principal) -> KeyResult:
    kind = _token_kind(principal)
    if not principal.delegated:
        return KeyResult("delegated", True, kind)
    if entry.delegation == "any":
        said = (
            "delegated: true"
            if entry.delegated
            else f"the entry names the actor ({entry.actor_claims[0]})"
        )
        return KeyResult("delegated", True, f"{kind}; {said}")
    if entry.delegation == "direct":
        return KeyResult("delegated", False, f"{kind}; the entry says delegated: false")
    return KeyResult(
        "delegated", False, f"{kind}; the entry neither names the actor nor says delegated: true"
    )


def _entry_result(index: int, entry: RoleEntry, principal: Principal) -> EntryResult:
    keys = entry_keys(entry, principal)
    failed = [k for k in keys if not k.holds]
    denies = None
    if principal.delegated and entry.delegation == "default":  # deny ignores this `delegated`
        denies = all(k.holds for k in keys if k.key != "delegated")
    if failed:
        return EntryResult(index, False, "; ".join(k.why for k in failed), keys, denies)
    shown = [k.key for k in keys if k.key != "delegated" or entry.delegation == "any"]
    return EntryResult(index, True, "matched " + ", ".join(shown), keys, denies)


class RoleTable:
    """The roles of a policy, compiled once: name -> entries -> predicates."""

    def __init__(self, roles: Mapping[str, Role]) -> None:
        self._roles = dict(roles)
        self._items = tuple(
            (name, tuple(_Entry(_checks(e), e.delegation) for e in role.any_of))
            for name, role in roles.items()
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._roles)

    def held(self, principal: Principal, *, deny: bool = False) -> frozenset[str]:
        """The names of the roles that hold for ``principal``; ``deny``: as deny roles (for a
        delegated token, entries that leave ``delegated`` out are judged too)."""
        delegated = principal.delegated
        out = []
        for name, entries in self._items:  # plain loops: this runs on every request
            for entry in entries:
                if not entry.judges(delegated, deny):
                    continue
                for check in entry.checks:
                    if not check(principal):
                        break
                else:
                    out.append(name)
                    break
        return frozenset(out)

    def trace(self, principal: Principal, names: Iterable[str] | None = None) -> list[RoleResult]:
        """Every role (or those named, in that order), with the verdict of each entry."""
        out = []
        for name in self._roles if names is None else names:
            role = self._roles.get(name)
            entries = tuple(
                _entry_result(i, e, principal) for i, e in enumerate(role.any_of if role else ())
            )
            out.append(RoleResult(name, any(e.holds for e in entries), entries))
        return out


def held_roles(roles: Mapping[str, Role], principal: Principal) -> frozenset[str]:
    """The roles that hold (compiles the table each call: prefer a ``RoleTable`` built once)."""
    return RoleTable(roles).held(principal)


def evaluate_roles(
    roles: Mapping[str, Role], principal: Principal, names: Iterable[str] | None = None
) -> list[RoleResult]:
    """Every role (or those named), each with the verdict of each entry: the trace for explain."""
    return RoleTable(roles).trace(principal, names)
