"""Policy tests: YAML cases beside a policy, run against its decisions (``spangate policy test``).

A case file (see ``policy-format.md``)::

    policy: ../policy.example.yaml          # relative to this file: a policy file or folder
    cases:
      - name: support reads an order of its tenant
        claims: {iss: okta, groups: [support], tenant: t1}
        request: GET /v1/orders/O-1?x=1      # the raw target, percent-encoded as sent
        body: {order_id: O-2}                # POST, PUT, PATCH only
      - name: the agent's MCP tool call     # request: MCP <tool name>, with its arguments
        claims: {iss: okta, scp: [orders.read], tenant: t1}
        request: MCP list_orders
        arguments: {status: PAID}
        expect: {allow: true, reason: allowed, query: get_order,
                 params: {tenant: t1, order_id: O-1}, roles: [support], rule: support,
                 masked: [], paginated: false}

``expect.allow`` is required; every other key is compared only when given. ``params`` lists
every bound parameter (defaults and claims included) and compares typed values, so ``"12.5"``
equals ``"12.50"`` for a NUMERIC; ``roles`` is the exact set of roles that hold; ``rule`` is the
role that allowed or denied; ``masked`` is the exact set of result columns masked for the
caller (``[]``: every masked column is clear for it), on a case that expects ``allow: true``
only (a denied call runs nothing and masks nothing: ``masked`` there could never fail, and is a
located problem); ``paginated`` whether the route's query pages by keyset. A case decides a
paginated query's first page (its cursor parameters bound to null): a request carrying a
``cursor`` is refused as a problem of the case file, since a cursor is sealed and opened by a
running gateway only. ``approval`` is ``required`` when the call is allowed and its route waits
for approval (the gateway answers 202 ``approval-required``), else ``none``; ``may_approve``
whether the case's token may approve or reject requests to the route it reached
(``policy.approval.decider_verdict``, and its token binds the approval's ``match`` parameters:
it decides requests that share those values; the requester check needs a request, which a case
has not).
Claims become a Principal as in ``simulate.py``.

Coverage, per policy over all its case files: the routes no case reached, the roles that held in
no case, the role entries that held in no case, and the claims a parameter is bound from that no
case's token carries (a misspelt ``claim.tenat`` binds nothing in any case). An entry of a deny
role of the route a case matched counts when it held as a deny role (for a delegated token, an
entry that leaves ``delegated`` out denies without holding: ``EntryResult.holds_for_deny``). The decisions are
``decide``'s own, so the reason codes are those of the HTTP problem bodies and the audit trail.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.auth.principal import MISSING, Principal
from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.approval import decider_verdict, match_names
from gateway.policy.bind import claim_values
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import Decision, Reason, decide
from gateway.policy.load import load_policy
from gateway.policy.shape import shape_problems
from gateway.policy.simulate import SimulationError, principal_for, request_facts
from gateway.policy.source import Document, SourceMap, parse_document
from gateway.policy.types import TypeProblem, coerce, json_value, same_value
from gateway.policy.validate import did_you_mean

__all__ = [
    "CaseFile",
    "CaseOutcome",
    "Coverage",
    "PolicyCase",
    "Suite",
    "find_case_files",
    "load_case_file",
    "run_case_files",
]



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Strict):
    allow: bool
    reason: Reason | None = None
    query: str | None = Field(None, description="The query of the route the request reached.")
    params: dict[str, Any] | None = Field(None, description="Every bound parameter, typed.")
    roles: list[str] | None = Field(None, description="Exactly the roles that hold.")
    rule: str | None = Field(None, description="The role that allowed or denied.")
    masked: list[str] | None = Field(
        None,
        description="Exactly the result columns masked for this caller (of the query's masks; "
        "[]: it sees them all clear). Only with allow: true: a denied call masks nothing.",
    )
    paginated: bool | None = Field(
        None,
        description="Whether the query the request reached pages by keyset (pagination:). A "
        "case decides the first page: its cursor parameters are bound to null.",
    )
    approval: Literal["required", "none"] | None = Field(
        None,
        description="required: the call is allowed and its route waits for approval (the "
        "gateway answers 202 approval-required); none: anything else.",
    )
    may_approve: bool | None = Field(
        None,
        description="Whether this token may approve or reject requests to the route the "
        "request reached (an approver role holds, no deny role of the route does, and the "
        "token binds the approval's match parameters, such as the tenant), had someone else "
        "with the same match values made them. False for a route without approval.",
    )


class PolicyCase(_Strict):
    name: str = Field(min_length=1)
    claims: dict[str, Any] = Field(description="The verified token's claims; iss names an issuer.")
    request: str = Field(description="METHOD /raw/path?query, or MCP tool_name")
    body: dict[str, Any] | None = None
    arguments: dict[str, Any] | None = Field(
        None, description="An MCP call's arguments (request: MCP tool_name)."
    )
    expect: Expect


class CaseFile(_Strict):
    policy: str = Field(min_length=1, description="The policy, relative to this file.")
    cases: list[PolicyCase] = Field(min_length=1)


@dataclass(frozen=True)
class CaseOutcome:
    """One case run: ``lines`` is the diff (``-`` expected, ``+`` actual), empty when it passed."""

    where: str  # file:line:column of the case
    name: str
    request: str
    decision: Decision
    lines: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.lines


@dataclass
class Coverage:
    """What no case exercised, each as (what, file:line:column). Entries are counted only for
    roles with several (a single entry is exercised exactly when its role is); ``totals``
    counts what could be exercised: routes, roles, entries."""

    routes: list[tuple[str, str]] = field(default_factory=list)
    roles: list[tuple[str, str]] = field(default_factory=list)
    entries: list[tuple[str, str]] = field(default_factory=list)
    # claims a parameter is bound from (``from: claim.NAME``) that no case's token carries: a
    # misspelt claim (claim.tenat) binds nothing in any case, and so shows here
    claims: list[tuple[str, str]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not (self.routes or self.roles or self.entries or self.claims)


@dataclass
class Suite:
    """Every case of every case file of one policy, with the policy's coverage."""

    policy: Path
    files: list[Path]
    outcomes: list[CaseOutcome]
    coverage: Coverage
    warnings: tuple[PolicyProblem, ...] = ()  # the policy's (LoadedPolicy.warnings)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if not o.passed]


def _show_position(file: str, line: int | None, column: int | None) -> str:
    return file + (f":{line}" if line else "") + (f":{column}" if line and column else "")


def find_case_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and in folders (recursively) every ``*.yaml``/``*.yml`` with ``cases:``,
    but none under a dot-name (``._x.yaml``, and a ConfigMap mount's ``..data`` and timestamped
    folders, which hold the same files again)."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        for file in sorted(
            p
            for p in path.rglob("*")
            if p.suffix in (".yaml", ".yml")
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ):
            try:
                text = file.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError):
                found.append(file)  # reading it again reports the problem
                continue
            if any(line.startswith("cases:") for line in text.splitlines()):
                found.append(file)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class _Parsed:
    """What a case file holds that can be used, with its problems (located)."""

    policy: str | None
    cases: list[tuple[int, PolicyCase]]
    source: SourceMap
    problems: list[PolicyProblem]


def _parse(path: Path, env: Mapping[str, str]) -> _Parsed:
    problems: list[PolicyProblem] = []
    empty = SourceMap((str(path), None, None), {}, {})
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(PolicyProblem(str(path), None, None, "", f"cannot read: {exc.strerror}"))
        return _Parsed(None, [], empty, problems)
    doc: Document | None = parse_document(path, path.name, raw, env, problems)
    if doc is None or problems:
        return _Parsed(None, [], empty, problems)
    source = SourceMap(doc.nodes[()], doc.nodes, doc.keys)
    try:
        whole = CaseFile.model_validate(doc.data)
    except ValidationError as exc:
        problems.extend(shape_problems(exc, doc.data, source, root=CaseFile))
    else:
        return _Parsed(whole.policy, list(enumerate(whole.cases)), source, problems)
    # Keep the valid cases, so that their own problems are reported in the same run.
    policy = doc.data.get("policy")
    raw_cases = doc.data.get("cases")
    cases = []
    for i, item in enumerate(raw_cases if isinstance(raw_cases, list) else []):
        try:
            cases.append((i, PolicyCase.model_validate(item)))
        except ValidationError:
            continue
    return _Parsed(policy if isinstance(policy, str) and policy else None, cases, source, problems)


def load_case_file(path: Path, env: Mapping[str, str]) -> tuple[CaseFile, SourceMap]:
    """Parse and validate one case file; PolicyError with every problem, located."""
    parsed = _parse(path, env)
    if parsed.problems or parsed.policy is None:
        raise PolicyError(parsed.problems)
    return CaseFile(policy=parsed.policy, cases=[c for _, c in parsed.cases]), parsed.source


def _params_lines(expected: Mapping[str, Any], decision: Decision) -> list[str]:
    bound = decision.bound.values if decision.bound else {}
    specs = decision.route.query.params if decision.route else {}
    lines: list[str] = []
    for name in sorted(set(expected) | set(bound)):
        if name not in expected:
            lines.append(f"+ params.{name}: {_show(json_value(bound[name]))}")
            continue
        want = expected[name]
        if name not in bound:
            lines.append(f"- params.{name}: {_show(want)}")
            continue
        spec = specs.get(name)
        try:
            typed = coerce(spec.ptype, want, from_text=False) if spec else want
        except TypeProblem:
            typed = want
        if same_value(typed, bound[name]):
            lines.append(f"  params.{name}: {_show(want)}")
        else:
            lines.append(f"- params.{name}: {_show(want)}")
            lines.append(f"+ params.{name}: {_show(json_value(bound[name]))}")
    return lines


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _compare(
    expect: Expect, decision: Decision, held: frozenset[str], may_approve: bool = False
) -> tuple[str, ...]:
    """The diff of one case, or () when every expected key matches."""
    route = decision.route
    waits = decision.allow and route is not None and route.model.approval is not None
    actual: dict[str, Any] = {
        "allow": decision.allow,
        "reason": decision.reason,
        "query": decision.query_name,
        "roles": sorted(held),
        "rule": decision.rule,
        "masked": sorted(decision.masked),
        "paginated": decision.route is not None and decision.route.query.paging is not None,
        "approval": "required" if waits else "none",
        "may_approve": may_approve,
    }
    lines: list[str] = []
    failed = False
    keys = ("allow", "reason", "query", "roles", "rule", "masked", "paginated", "approval",
            "may_approve")
    for key in keys:
        want = getattr(expect, key)
        if want is None and key != "allow":
            continue
        want = sorted(set(want)) if key in ("roles", "masked") else want
        if want == actual[key] and type(want) is type(actual[key]):
            lines.append(f"  {key}: {_show(want)}")
        else:
            failed = True
            lines += [f"- {key}: {_show(want)}", f"+ {key}: {_show(actual[key])}"]
    if expect.params is not None:
        if decision.bound is None:
            failed = True
            lines += [f"- params: {_show(expect.params)}", "+ params: null  (nothing was bound)"]
        else:
            params = _params_lines(expect.params, decision)
            failed = failed or any(not line.startswith(" ") for line in params)
            lines += params
    if not failed:
        return ()
    if decision.problem is not None:
        lines.append(f"  ({decision.reason}: {decision.problem.detail})")
    return tuple(lines)


def _may_approve(policy: CompiledPolicy, decision: Decision, principal: Principal) -> bool:
    """Whether ``principal`` may decide requests to the route ``decision`` reached."""
    route = decision.route
    if route is None or route.model.approval is None:
        return False
    verdict = decider_verdict(policy.roles, route.model, route.model.approval, principal)
    names = match_names(route.model.approval, route.query.model.params)
    # and its token binds the match values (the tenant): it decides the requests that share them
    return verdict.problem is None and claim_values(route.query.params, names, principal) is not None


def _references(
    cases: Sequence[tuple[int, PolicyCase]], source: SourceMap, policy: CompiledPolicy
) -> list[PolicyProblem]:
    """Names in ``expect`` that the policy does not have (a typo would fail forever)."""
    model = policy.model
    found = []
    for i, case in cases:
        where = ("cases", i, "expect")
        e = case.expect
        if e.query is not None and e.query not in model.queries:
            hint = did_you_mean(e.query, model.queries)
            found.append(source.problem((*where, "query"), f"unknown query '{e.query}'{hint}"))
        named: list[tuple[tuple[str | int, ...], str]] = []
        if e.rule is not None:
            named.append(((*where, "rule"), e.rule))
        named += [((*where, "roles", k), r) for k, r in enumerate(e.roles or [])]
        for at, role in named:
            if role not in model.roles:
                hint = did_you_mean(role, model.roles)
                found.append(source.problem(at, f"unknown role '{role}'{hint}"))
        if e.masked is not None and not e.allow:
            found.append(source.problem((*where, "masked"), (
                "masked on a case expected to be denied: a denied call runs nothing and masks "
                "nothing, so this could never fail; expect allow: true, or leave masked out"
            )))
        masked = {c for q in model.queries.values() for c in q.mask}
        for k, column in enumerate(e.masked or []):
            if column not in masked:
                hint = did_you_mean(column, masked)
                found.append(source.problem(
                    (*where, "masked", k), f"no query masks a column '{column}'{hint}"
                ))
    return found


@dataclass
class _Tally:
    policy: CompiledPolicy
    files: list[Path] = field(default_factory=list)
    outcomes: list[CaseOutcome] = field(default_factory=list)
    routes: set[int] = field(default_factory=set)
    entries: set[tuple[str, int]] = field(default_factory=set)
    claims: set[str] = field(default_factory=set)  # claim paths some case's token carries


def _bound_claims(policy: CompiledPolicy) -> dict[str, tuple[str, str]]:
    """Each claim path a parameter is bound from -> the first (query, parameter) binding it."""
    found: dict[str, tuple[str, str]] = {}
    for name, query in policy.model.queries.items():
        for pname, param in query.params.items():
            if param.claim is not None:
                found.setdefault(param.claim, (name, pname))
    return found


def _coverage(tally: _Tally) -> Coverage:
    policy = tally.policy
    loaded, model = policy.loaded, policy.model
    cov = Coverage()

    def at(where: tuple[str | int, ...]) -> str:
        return _show_position(*loaded.locate(where))

    for route in policy.routes:
        if route.index not in tally.routes:
            text = f"routes[{route.index}] {route.model.method} {route.model.path}"
            cov.routes.append((text, at(("routes", route.index))))
    entries = 0
    for name, role in model.roles.items():
        if not any((name, k) in tally.entries for k in range(len(role.any_of))):
            cov.roles.append((name, at(("roles", name))))
        if len(role.any_of) == 1:
            continue  # the role's own coverage says it all
        for k in range(len(role.any_of)):
            entries += 1
            if (name, k) not in tally.entries:
                where = ("roles", name, *role.entry_path(k))
                cov.entries.append((f"roles.{name}[{k}]", at(where)))
    bound = _bound_claims(policy)
    for path, (query, param) in bound.items():
        if path not in tally.claims:
            cov.claims.append((f"claim.{path}", at(("queries", query, "params", param, "from"))))
    cov.totals = {
        "routes": len(policy.routes),
        "roles": len(model.roles),
        "entries": entries,
        "claims": len(bound),
    }
    return cov


def run_case_files(
    paths: Sequence[Path], *, env: Mapping[str, str], placeholders: bool = False
) -> list[Suite]:
    """Run every case of the case files at ``paths`` (files or folders), one Suite per policy.
    ``placeholders`` is passed to ``load_policy`` (an unset ``${VAR}`` in a policy is a warning).

    Raises PolicyError (every problem of every file at once) when a case file or a policy
    cannot be loaded, or a case names a role, a query or an issuer the policy lacks.
    """
    files = find_case_files(paths)
    if not files:
        shown = ", ".join(str(p) for p in paths)
        raise PolicyError([PolicyProblem(shown, None, None, "", "no case files (cases:) found")])
    problems: list[PolicyProblem] = []
    tallies: dict[Path, _Tally] = {}
    broken: set[Path] = set()
    for file in files:
        parsed = _parse(file, env)
        problems.extend(parsed.problems)
        if parsed.policy is None:
            continue
        target = (file.parent / parsed.policy).resolve()
        if target in broken:
            continue  # its problems are already reported
        if target not in tallies:
            try:
                loaded = load_policy(target, env=env, placeholders=placeholders)
                tallies[target] = _Tally(compile_policy(loaded))
            except PolicyError as exc:
                problems.extend(exc.problems)
                broken.add(target)
                continue
        tally = tallies[target]
        source = parsed.source
        found = _references(parsed.cases, source, tally.policy)
        runs = []
        for i, case in parsed.cases:
            try:
                principal = principal_for(tally.policy.model, case.claims)
                facts = request_facts(case.request, case.body, case.arguments)
            except SimulationError as exc:
                found.append(source.problem(("cases", i, exc.key), str(exc)))
                continue
            runs.append((i, case, principal, facts))
        problems.extend(found)
        if found or parsed.problems:
            continue
        decided = [(i, c, p, decide(tally.policy, facts, p)) for i, c, p, facts in runs]
        cursors = [
            source.problem(("cases", i, "request"), (
                "a policy test decides a paginated query's first page: leave the cursor out "
                "(a cursor is sealed and opened by a running gateway, with its keys)"
            ))
            for i, _, _, decision in decided
            if decision.cursor is not None
        ]
        if cursors:
            problems.extend(cursors)
            continue
        tally.files.append(file)
        for i, case, principal, decision in decided:
            trace = tally.policy.roles.trace(principal)
            held = frozenset(r.role for r in trace if r.holds)
            denying = frozenset(decision.route.model.deny) if decision.route else frozenset()
            tally.entries.update(
                (r.role, e.index)
                for r in trace
                for e in r.entries
                if e.holds or (r.role in denying and e.holds_for_deny)  # a deny role's view
            )
            if decision.route is not None:
                tally.routes.add(decision.route.index)
            tally.claims.update(
                path for path in _bound_claims(tally.policy) if principal.claim(path) is not MISSING
            )
            tally.outcomes.append(
                CaseOutcome(
                    where=_show_position(*source.at(("cases", i))),
                    name=case.name,
                    request=case.request,
                    decision=decision,
                    lines=_compare(
                        case.expect, decision, held, _may_approve(tally.policy, decision, principal)
                    ),
                )
            )
    if problems:
        unique = dict.fromkeys(problems)
        raise PolicyError(sorted(unique, key=lambda p: (p.file, p.line or 0, p.column or 0)))
    return [
        Suite(path, t.files, t.outcomes, _coverage(t), t.policy.loaded.warnings)
        for path, t in tallies.items()
    ]
