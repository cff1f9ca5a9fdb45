"""``spangate policy check | test | explain | diff | replay``: tools for the people who write
policies.

Exit codes: ``check`` 0 valid; ``test`` 0 every case passed (and, with ``--require-coverage``,
everything was exercised), 1 otherwise; ``explain`` 0 allowed, 1 denied; ``diff`` 0 no change,
1 changes; ``replay`` (``gateway.cli.replay``) 0 nothing flips, 1 something does. 2 always
means the input could not be used (a policy or case file with problems, bad claims, a malformed
token, an audit file that holds no audit events). None of them imports the Spanner client or
touches the network, except ``check --database`` (``gateway.cli.db``).

They run without real secrets: an unset ``${VAR}`` in a policy is a warning, and the text ``${VAR}``
stands in for its value (``load_policy(..., placeholders=True)``); only ``check --database``, which
reaches Spanner as the server would, and ``spangate serve`` refuse it. Warnings go to stderr as
``file:line:column: warning: ...`` and do not change the exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.cli.files import read_text
from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.masking import hash_masks
from gateway.policy.pagination import paginated_queries

__all__ = ["load_candidate", "register"]


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="policy tools: check, test, explain, diff, replay")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser(
        "check", help="validate a policy; print every problem with file:line:column"
    )
    check.add_argument("path", type=Path)
    check.add_argument(
        "--database",
        action="store_true",
        help="also have Spanner PLAN every statement (reaches the policy's database)",
    )
    check.set_defaults(handler=_check)

    test = psub.add_parser("test", help="run policy test cases (YAML files with cases:)")
    test.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="case files or folders")
    test.add_argument(
        "--require-coverage",
        action="store_true",
        help="also fail when a route, role or role entry is exercised by no case",
    )
    test.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    test.set_defaults(handler=_test)

    explain = psub.add_parser("explain", help="trace the decision on one request")
    explain.add_argument("--policy", type=Path, required=True, help="policy file or folder")
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--claims", help="the token's claims as JSON (or @file); iss names an issuer")
    who.add_argument("--token", help="a JWT, decoded WITHOUT verifying it ('-' reads stdin)")
    explain.add_argument("--body", help="the JSON body of a POST, PUT or PATCH (or @file)")
    explain.add_argument(
        "--arguments", help="an MCP call's arguments, JSON (or @file): METHOD MCP, PATH the tool"
    )
    explain.add_argument("--json", action="store_true", help="print the trace as JSON")
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument(
        "target", metavar="PATH", help="the raw path, with ?query if any (MCP: the tool's name)"
    )
    explain.set_defaults(handler=_explain)

    diff = psub.add_parser("diff", help="what changes between two policies, for a reviewer")
    diff.add_argument("old", type=Path)
    diff.add_argument("new", type=Path)
    diff.add_argument("--json", action="store_true", help="print the changes as JSON")
    diff.add_argument(
        "--audit",
        type=Path,
        nargs="+",
        metavar="AUDIT_FILE",
        help="annotate each (route, role) change with the recorded calls it touches",
    )
    diff.set_defaults(handler=_diff)

    from gateway.cli.replay import add_replay

    add_replay(psub)


def _warn(warnings: Iterable[PolicyProblem]) -> None:
    for warning in warnings:
        print(warning.as_warning(), file=sys.stderr)


def _load(path: Path, *, placeholders: bool = True) -> CompiledPolicy:
    policy = compile_policy(load_policy(path, env=os.environ, placeholders=placeholders))
    _warn(policy.loaded.warnings)
    return policy


def load_candidate(path: Path) -> CompiledPolicy:
    """A policy as the policy tools load it: without real secrets, warnings on stderr."""
    return _load(path)


def _traffic_json(seen: Any) -> dict[str, Any]:
    """``policy diff --audit --json``'s ``traffic`` of one (route, role): ``calls`` and
    ``allowed`` (null when not known, ``unknown`` saying why)."""
    out = {"calls": seen.calls, "allowed": seen.allowed}
    if seen.unknown is not None:
        out["unknown"] = seen.unknown
    return out


def _fail(message: str) -> int:
    print(f"spangate: {message}", file=sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> int:
    policy = _load(args.path, placeholders=not args.database)
    model = policy.model
    ok = (
        f"{args.path}: ok ({len(model.routes)} routes, {len(model.queries)} queries, "
        f"{len(model.roles)} roles, sha256 {policy.sha256[:12]})"
    )
    needs = (
        ("audit.redact", list(model.audit.redact), "needs", "SPANGATE_AUDIT_KEY"),
        ("the hash masks", hash_masks(model), "need", "SPANGATE_MASK_KEY"),
        ("the paginated queries", paginated_queries(model), "need", "SPANGATE_CURSOR_KEYS"),
    )
    for what, names, verb, setting in needs:
        if names and not os.environ.get(setting):
            print(
                f"note: {what} ({', '.join(names)}) {verb} {setting}, which is not set here: "
                "`spangate serve` refuses to start without it",
                file=sys.stderr,
            )
    if args.database:  # "ok" only once Spanner has accepted every statement too
        from gateway.cli.db import check_on_database

        return check_on_database(policy, ok_line=ok)
    print(ok)
    return 0


def _test(args: argparse.Namespace) -> int:
    from gateway.policy.testing import run_case_files

    try:
        suites = run_case_files(args.paths, env=os.environ, placeholders=True)
    except PolicyError as exc:
        print(
            f"spangate: {len(exc.problems)} problem(s) in the cases or the policy:", file=sys.stderr
        )
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    ok = True
    for suite in suites:
        _warn(suite.warnings)
        for outcome in suite.outcomes:
            if outcome.passed:
                if args.verbose:
                    print(f"ok    {outcome.where}  {outcome.name}")
                continue
            ok = False
            print(f"FAIL  {outcome.where}  {outcome.name}")
            print(f"        {outcome.request}")
            print("\n".join(f"        {line}" for line in outcome.lines))
        cov = suite.coverage
        failed = len(suite.failed)
        print(
            f"{suite.policy}: {len(suite.outcomes)} cases, {len(suite.outcomes) - failed} passed, "
            f"{failed} failed"
        )
        t = cov.totals
        print(
            f"  coverage: routes {t['routes'] - len(cov.routes)}/{t['routes']}, "
            f"roles {t['roles'] - len(cov.roles)}/{t['roles']}, "
            f"entries of roles with several {t['entries'] - len(cov.entries)}/{t['entries']}, "
            f"claims parameters are bound from {t['claims'] - len(cov.claims)}/{t['claims']}"
        )
        missed = [("route", *r) for r in cov.routes] + [("role", *r) for r in cov.roles]
        missed += [("entry", *e) for e in cov.entries] + [("claim", *c) for c in cov.claims]
        if missed:
            print("  not exercised by any case:")
            for kind, what, where in missed:
                print(f"    {kind:5} {what}  ({where})")
            ok = ok and not args.require_coverage
    return 0 if ok else 1


def _json_arg(text: str, what: str) -> Any:
    if text.startswith("@"):
        text = read_text(Path(text[1:]), what)
    from gateway import strictjson

    try:  # as strictly as the gateway reads a body or a token's claims
        return strictjson.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None


def _explain(args: argparse.Namespace) -> int:
    from gateway.policy.explain import (
        explain,
        explanation_record,
        render_explanation,
        unverified_claims,
    )
    from gateway.policy.simulate import SimulationError, principal_for, request_facts

    policy = _load(args.policy)
    try:
        notes: list[str] = []
        if args.token is not None:
            from_stdin = args.token.strip() == "-"
            token = (sys.stdin.read() if from_stdin else args.token).strip()
            now = dt.datetime.now(dt.UTC)
            claims, notes = unverified_claims(policy.model, token, now=now)
        else:
            claims = _json_arg(args.claims, "--claims")
            if not isinstance(claims, dict):
                return _fail("--claims must be a JSON object")
            notes = ["claims given with --claims: no token was verified"]
        body = _json_arg(args.body, "--body") if args.body is not None else None
        if body is not None and not isinstance(body, dict):
            return _fail("--body must be a JSON object")
        arguments = _json_arg(args.arguments, "--arguments") if args.arguments else None
        if arguments is not None and not isinstance(arguments, dict):
            return _fail("--arguments must be a JSON object")
        principal = principal_for(policy.model, claims)
        facts = request_facts(f"{args.method.upper()} {args.target}", body, arguments)
    except (SimulationError, ValueError, OSError) as exc:
        return _fail(str(exc))
    ex = explain(policy, facts, principal, notes)
    if args.json:
        print(json.dumps(explanation_record(ex, policy), indent=2, ensure_ascii=False, default=str))
    else:
        sys.stdout.write(render_explanation(policy, ex))
    return 0 if ex.decision.allow else 1


def _diff(args: argparse.Namespace) -> int:
    from gateway.policy.diff import diff_policies, render_diff

    problems = []
    loaded = []
    for path in (args.old, args.new):
        try:
            loaded.append(load_policy(path, env=os.environ, placeholders=True))
        except PolicyError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PolicyError(problems)
    for policy in loaded:
        _warn(policy.warnings)
    result = diff_policies(loaded[0].policy, loaded[1].policy)
    traffic: dict[Any, Any] = {}
    if args.audit:
        from gateway.cli.replay import audit_traffic

        redefined = [
            (route, change.name)
            for change in result.changes
            if change.section == "roles"
            for route in change.routes
        ]
        found = audit_traffic(
            args.audit,
            result.access,
            live_roles=loaded[0].policy.roles.keys(),
            redefined=redefined,
        )
        if isinstance(found, str):
            return _fail(found)
        traffic = found
    if args.json:
        record = dataclasses.asdict(result)
        if args.audit:
            for entry, change in zip(record["access"], result.access, strict=True):
                entry["traffic"] = _traffic_json(traffic[(change.route, change.role)])
            for entry, other in zip(record["changes"], result.changes, strict=True):
                if other.routes:
                    entry["traffic"] = {
                        route: _traffic_json(traffic[(route, other.name)]) for route in other.routes
                    }
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render_diff(result, traffic if args.audit else None))
    return 0 if result.empty else 1
