"""What changes between two policies, for the reviewer of a policy pull request. Pure.

Access, per (route, role): a role's effect on a route is ``allow`` (named in ``allow`` and not in
``deny``: its holders get in, unless a deny role of theirs holds), ``deny`` (named in ``deny``:
its holders are refused) or ``none`` (not named, or no such route: the role alone grants
nothing). Every pair whose effect changes is listed, including the pairs of added and removed
routes. Routes are matched by method and path shape, so renaming a path parameter is no change.

Access also changes without any route changing when a role's entries change (who holds the
role; the summary says when the entries that delegated tokens can hold change, as a
``delegated`` key or a claims test under ``act`` does, and when the entries that deny delegated
tokens change for a role some route's ``deny`` names, as ``delegated: false`` does, and names
the routes the role allows or denies and the masks whose ``unless`` names it: who sees those
columns clear changes) or a route's statement changes: roles, queries (SQL, parameters,
identity, limits), identities, issuers, the Spanner target, the budgets and the audit settings
are compared too.

Column masks are their own section, ``masks``, one item per ``query.column`` (not part of the
query's change): a mask added, removed (the column is now clear for every caller of the query),
or changed (its mode, its ``unless`` roles: who now sees it clear and who no longer does, its
hash ``domain``).

Secrets (fields marked by ``model.secret_fields``: an introspection ``client_secret``) are compared
by value but never shown, in the text or the JSON: ``(secret)`` in an added or removed item,
``(secret, changed)`` or ``(secret, unchanged)`` in a changed one. An unset ``${VAR}`` loaded with
placeholders compares as its text, so two policies naming the same variable agree.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from gateway.policy.model import Mask, Policy, Role, Route, secret_fields
from gateway.policy.sqltoken import POSTGRESQL
from gateway.policy.validate import template_shape

__all__ = ["AccessChange", "Change", "PolicyDiff", "diff_policies", "render_diff"]

Effect = Literal["allow", "deny", "none"]
_RouteKey = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class AccessChange:
    route: str  # "GET /v1/orders/{order_id}", the new template when the route still exists
    role: str
    old: Effect
    new: Effect


@dataclass(frozen=True)
class Change:
    """One changed item: ``kind`` is ``+`` (added), ``-`` (removed) or ``~`` (changed)."""

    section: str  # routes, roles, queries, masks, budgets, identities, issuers, spanner, audit
    name: str
    kind: Literal["+", "-", "~"]
    summary: str
    lines: tuple[str, ...] = ()  # a diff, "- old" / "+ new"
    # a role's entries changed: the routes (method and path) whose allow or deny names it
    routes: tuple[str, ...] = ()


@dataclass
class PolicyDiff:
    access: list[AccessChange] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.access and not self.changes


def _effect(route: Route | None, role: str) -> Effect:
    if route is None:
        return "none"
    if role in route.deny:
        return "deny"
    return "allow" if role in route.allow else "none"


def _routes(policy: Policy) -> dict[_RouteKey, Route]:
    return {(r.method, template_shape(r.path)): r for r in policy.routes}


def _show(route: Route) -> str:
    return f"{route.method} {route.path}"


@dataclass(frozen=True)
class _Secret:
    """A secret's value in a dump: equal when the values are, never rendered."""

    value: Any = field(repr=False)


def _shown(value: Any) -> str:
    if isinstance(value, _Secret):
        return "(secret)"
    raise TypeError(f"not JSON: {type(value).__name__}")


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return _hide_secrets(value, dumped)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def _hide_secrets(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """``dumped`` (the dump of ``model``) with the secret fields of ``model`` and of the models it
    holds wrapped in ``_Secret``."""
    out = dict(dumped)
    secret = secret_fields(type(model))
    for name, info in type(model).model_fields.items():
        key = info.alias or name
        if key not in out:
            continue
        if key in secret:
            out[key] = _Secret(out[key])
        elif isinstance(inner := getattr(model, name), BaseModel) and isinstance(out[key], dict):
            out[key] = _hide_secrets(inner, out[key])
    return out


def _text(value: Any) -> str:
    return json.dumps(_dump(value), ensure_ascii=False, sort_keys=True, default=_shown)


def _secret_lines(key: str, old: Any, new: Any, indent: str = "") -> list[str]:
    if old is None or new is None:
        sign = "-" if new is None else "+"
        return [f"{indent}{sign} {key}: (secret)"]
    if old == new:
        return [f"{indent}  {key}: (secret, unchanged)"]
    return [f"{indent}~ {key}: (secret, changed)"]


def _lines(old: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    diff = difflib.ndiff(list(old), list(new))
    return tuple(line.rstrip("\n") for line in diff if line[:1] in "-+")


def _access(old: Policy, new: Policy) -> tuple[list[AccessChange], list[Change]]:
    before, after = _routes(old), _routes(new)
    access: list[AccessChange] = []
    changes: list[Change] = []
    for key in list(after) + [k for k in before if k not in after]:
        a, b = before.get(key), after.get(key)
        route = b if b is not None else a
        assert route is not None
        shown = _show(route)
        roles = dict.fromkeys([*(a.allow + a.deny if a else []), *(b.allow + b.deny if b else [])])
        for role in roles:
            if _effect(a, role) != _effect(b, role):
                access.append(AccessChange(shown, role, _effect(a, role), _effect(b, role)))
        if a is None and b is not None:
            summary = f"-> {b.query} (allow {b.allow}, deny {b.deny})"
            changes.append(Change("routes", shown, "+", summary))
        elif b is None and a is not None:
            changes.append(Change("routes", shown, "-", f"was -> {a.query}"))
        elif a is not None and b is not None:
            what = [f"query {a.query} -> {b.query}"] if a.query != b.query else []
            what += [f"path {a.path} -> {b.path}"] if a.path != b.path else []
            if what:
                changes.append(Change("routes", shown, "~", "; ".join(what)))
    return access, changes


def _named(section: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    out: list[Change] = []
    for name in dict.fromkeys([*new, *old]):
        if name not in old:
            out.append(Change(section, name, "+", _text(new[name])))
        elif name not in new:
            out.append(Change(section, name, "-", _text(old[name])))
        elif _dump(old[name]) != _dump(new[name]):
            a, b = _dump(old[name]), _dump(new[name])
            keys = [k for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k)]
            lines: list[str] = []
            for k in keys:
                lines += _field_lines(k, a.get(k), b.get(k))
            out.append(Change(section, name, "~", "changed: " + ", ".join(keys), tuple(lines)))
    return out


def _field_lines(key: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, _Secret) or isinstance(new, _Secret):
        return _secret_lines(key, old, new)
    if isinstance(old, str) and isinstance(new, str) and ("\n" in old or "\n" in new):
        return [f"{key}:", *(f"  {line}" for line in _lines(old.splitlines(), new.splitlines()))]
    if isinstance(old, list) and isinstance(new, list):
        return [f"{key}:", *(f"  {x}" for x in _lines(map(_text, old), map(_text, new)))]
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{key}:"]
        for k in dict.fromkeys([*new, *old]):
            if isinstance(old.get(k), _Secret) or isinstance(new.get(k), _Secret):
                out += _secret_lines(k, old.get(k), new.get(k), "  ")
            elif old.get(k) != new.get(k):
                out += [f"  - {k}: {_text(old[k])}"] if k in old else []
                out += [f"  + {k}: {_text(new[k])}"] if k in new else []
        return out
    out = [f"- {key}: {_text(old)}"] if old is not None else []
    return out + ([f"+ {key}: {_text(new)}"] if new is not None else [])


def _delegated_entries(role: Role | None) -> list[int]:
    """The entries that hold for a delegated token (RFC 8693 ``act``) when they allow."""
    return [i for i, e in enumerate(role.any_of if role else ()) if e.delegation == "any"]


def _deny_entries(role: Role | None) -> list[int]:
    """The entries that judge a delegated token when a route's ``deny`` names the role: all but
    those that say ``delegated: false``."""
    return [i for i, e in enumerate(role.any_of if role else ()) if e.delegation != "direct"]


def _delegation(old: Role | None, new: Role, *, denying: bool = False) -> str:
    """What changes for delegated tokens: the entries that hold for them when granting, and (for
    a changed role that a route's ``deny`` names, ``denying``) those that deny them."""
    a, b = _delegated_entries(old), _delegated_entries(new)
    out = ""
    if a != b and not b:
        out = "; delegated tokens (act) no longer hold it"
    elif a != b and not a:
        out = f"; delegated tokens (act) now hold it (entries {b})"
    elif a != b:
        out = f"; the entries that hold for delegated tokens (act) were {a}, now {b}"
    if old is None or not denying:
        return out
    a, b = _deny_entries(old), _deny_entries(new)
    if a != b and not b:
        out += "; as a deny role it no longer denies delegated tokens (act)"
    elif a != b and not a:
        out += f"; as a deny role it now denies delegated tokens (act) (entries {b})"
    elif a != b:
        out += f"; the entries that deny delegated tokens (act) as a deny role were {a}, now {b}"
    return out


def _mask_text(mask: Mask) -> str:
    clear = f"clear for {', '.join(mask.unless)}" if mask.unless else "for every caller"
    domain = f", domain {mask.domain}" if mask.domain is not None else ""
    return f"{mask.with_}, {clear}{domain}"


def _mask_change(a: Mask, b: Mask) -> list[str]:
    what = []
    if a.with_ != b.with_:
        what.append(f"with {a.with_} -> {b.with_}")
    if a.unless != b.unless:
        gained = [r for r in b.unless if r not in a.unless]
        lost = [r for r in a.unless if r not in b.unless]
        words = [f"now clear for {', '.join(gained)}"] if gained else []
        words += [f"no longer clear for {', '.join(lost)}"] if lost else []
        what.append(f"unless {a.unless} -> {b.unless} ({'; '.join(words) or 'reordered'})")
    if a.domain != b.domain:
        own = "(the column's own key)"
        what.append(f"domain {a.domain or own} -> {b.domain or own}: its hashes change")
    if a.description != b.description:
        what.append("description")
    return what


def _masks(old: Policy, new: Policy) -> list[Change]:
    """One change per ``query.column`` whose mask was added, removed or changed."""
    out: list[Change] = []
    for name in dict.fromkeys([*new.queries, *old.queries]):
        a = old.queries[name].mask if name in old.queries else {}
        b = new.queries[name].mask if name in new.queries else {}
        gone = name not in new.queries
        for column in dict.fromkeys([*b, *a]):
            item = f"{name}.{column}"
            if column not in a:
                out.append(Change("masks", item, "+", "masked: " + _mask_text(b[column])))
            elif column not in b:
                summary = f"no longer masked (was {_mask_text(a[column])})" + (
                    ": the query is removed" if gone else ": now clear for every caller"
                )
                out.append(Change("masks", item, "-", summary))
            elif what := _mask_change(a[column], b[column]):
                out.append(Change("masks", item, "~", "; ".join(what)))
    return out


def _unmasked(policy: Policy) -> Policy:
    """``policy`` with its queries' masks left out (the ``masks`` section shows them)."""
    queries = {n: q.model_copy(update={"mask": {}}) for n, q in policy.queries.items()}
    return policy.model_copy(update={"queries": queries})


def _bindings(params: Iterable[str]) -> str:
    return ", ".join(f"${k} -> {name}" for k, name in enumerate(params, start=1)) or "none"


def _placeholders(old: Policy, new: Policy, changes: list[Change]) -> list[Change]:
    """``changes`` (the queries section) with, for a PostgreSQL policy, each query whose
    declared parameters changed order: ``$k`` binds the k-th declared parameter, so reordering
    ``params`` (which a dict comparison does not see) changes what each placeholder binds."""
    if POSTGRESQL not in (old.spanner.dialect, new.spanner.dialect):
        return changes
    out = list(changes)
    for name, b in new.queries.items():
        a = old.queries.get(name)
        if a is None or list(a.params) == list(b.params):
            continue
        lines = (f"- {_bindings(a.params)}", f"+ {_bindings(b.params)}")
        for i, c in enumerate(out):
            if c.name == name and c.kind == "~":
                out[i] = replace(c, summary=c.summary + ", placeholders", lines=(*c.lines, *lines))
                break
        else:
            summary = "changed: placeholders ($k binds the k-th declared parameter)"
            out.append(Change("queries", name, "~", summary, lines))
    return out


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    """Every change from ``old`` to ``new`` that matters to access or to what runs."""
    access, changes = _access(old, new)

    def used_by(role: str) -> str:
        routes = [
            f"{_show(r)} ({_effect(r, role)})" for r in new.routes if _effect(r, role) != "none"
        ]
        masks = [
            f"{q}.{c}"
            for q, query in new.queries.items()
            for c, mask in query.mask.items()
            if role in mask.unless
        ]
        out = f"; who holds it changes for {', '.join(routes)}" if routes else ""
        if masks:
            out += f"; who sees {', '.join(masks)} clear changes (unless)"
        return out

    for name in dict.fromkeys([*new.roles, *old.roles]):
        a, b = old.roles.get(name), new.roles.get(name)
        if a is None and b is not None:
            summary = _text(b.any_of) + _delegation(None, b) + used_by(name)
            changes.append(Change("roles", name, "+", summary))
        elif b is None and a is not None:
            changes.append(Change("roles", name, "-", _text(a.any_of)))
        elif a is not None and b is not None and _dump(a.any_of) != _dump(b.any_of):
            lines = _lines(map(_text, a.any_of), map(_text, b.any_of))
            denying = any(name in r.deny for r in (*old.routes, *new.routes))
            summary = "entries changed" + _delegation(a, b, denying=denying) + used_by(name)
            used = tuple(_show(r) for r in new.routes if _effect(r, name) != "none")
            changes.append(Change("roles", name, "~", summary, lines, used))
    changes += _placeholders(
        old, new, _named("queries", _unmasked(old).queries, _unmasked(new).queries)
    )
    changes += _masks(old, new)
    changes += _named("budgets", old.budgets, new.budgets)
    changes += _named("identities", old.identities, new.identities)
    changes += _named("issuers", old.issuers, new.issuers)
    changes += _named("spanner", {"target": old.spanner}, {"target": new.spanner})
    changes += _named("audit", {"audit": old.audit}, {"audit": new.audit})
    return PolicyDiff(access, changes)


_WORDS = {
    ("none", "allow"): "now allowed",
    ("deny", "allow"): "now allowed (was denied)",
    ("allow", "none"): "no longer allowed",
    ("allow", "deny"): "now denied (was allowed)",
    ("none", "deny"): "now denied, whatever else allows",
    ("deny", "none"): "deny lifted: its holders get in when another of their roles allows",
}


class Touched(Protocol):
    """Recorded traffic of one (route, role) (``gateway.audit.replay_report.Traffic``):
    ``calls`` and ``allowed`` None when not known, ``unknown`` saying why."""

    @property
    def calls(self) -> int | None: ...

    @property
    def allowed(self) -> int | None: ...

    @property
    def unknown(self) -> str | None: ...


def _recorded(seen: Touched, holders: str = "by its holders") -> str:
    if seen.calls is None:
        return f"[recorded: unknown ({seen.unknown})]"
    calls = f"{seen.calls} call{'s' if seen.calls != 1 else ''}"
    return f"[recorded: {calls} {holders}, {seen.allowed} allowed]"


def render_diff(
    diff: PolicyDiff, traffic: Mapping[tuple[str, str], Touched] | None = None
) -> str:
    """The diff as text: access first, then the other changes by section; with ``traffic``
    (``policy diff --audit``), each access change with the recorded calls it touches, and each
    role whose entries changed with the recorded calls of its holders (as the live policy
    defines it) on each route that names it."""
    if diff.empty:
        return "no changes\n"
    out: list[str] = []
    if diff.access:
        out.append("access (route, role):")
        width = max(len(a.route) for a in diff.access)
        for a in diff.access:
            words = _WORDS[(a.old, a.new)]
            line = f"  {a.route:{width}}  {a.role}: {a.old} -> {a.new}  ({words})"
            seen = traffic.get((a.route, a.role)) if traffic is not None else None
            if seen is not None:
                line += "  " + _recorded(seen)
            out.append(line)
    section = None
    for c in diff.changes:
        if c.section != section:
            section = c.section
            out.append(f"{section}:")
        out.append(f"  {c.kind} {c.name}: {c.summary}")
        out += [f"      {line}" for line in c.lines]
        for route in c.routes:
            seen = traffic.get((route, c.name)) if traffic is not None else None
            if seen is not None:
                held = "by its holders as the live policy defines it"
                out.append(f"      {route}  {_recorded(seen, held)}")
    return "\n".join(out) + "\n"
