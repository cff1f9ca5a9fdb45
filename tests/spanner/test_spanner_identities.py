"""Identities: each statement runs in a session created with its identity's database role.

The emulator does not enforce roles, so the proof is in what it receives: an emulator started with
``--log_requests`` logs every RPC; each session's ``creator_role`` (CreateSession) is matched with
the sessions that ran each query's SQL (ExecuteSql), whose request options carry the tags and the
priority.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.auth import impersonated_credentials
from google.auth.credentials import AnonymousCredentials
from spanner_stack import Token, bearer, gateway_on, make_database, policy_text

from gateway.dev.emulator import start_emulator
from gateway.spanner.identities import SPANNER_SCOPE, impersonated

POLICY = """\
identities:
  reader: {database_role: shop_reader}
  writer: {database_role: shop_writer}
  boss: {database_role: shop_boss}
queries:
  read_it:
    identity: reader
    sql: SELECT Id FROM Items WHERE Id = @id
    params: {id: {type: INT64}}
  write_it:
    identity: writer
    sql: INSERT INTO Items (Id) VALUES (@id)
    params: {id: {type: INT64}}
    priority: low
  count_it:
    identity: boss
    sql: SELECT COUNT(*) AS n FROM Items
    priority: medium
routes:
  - {path: "/items/{id}", method: GET, query: read_it, allow: [tester]}
  - {path: /items, method: POST, query: write_it, allow: [tester]}
  - {path: /count, method: GET, query: count_it, allow: [tester]}
"""

_ENTRY = re.compile(r"^I\d+ [\d:.]+\s+(\d+) handler\.h:\d+\] (Request|Response)\[Spanner\.(\w+)\]$")


@dataclass
class Rpc:
    thread: str
    kind: str
    method: str
    lines: list[str] = field(default_factory=list)

    def values(self, key: str) -> list[str]:
        pattern = re.compile(rf'^\s*{key}: "?([^"]*)"?$')
        return [m.group(1) for line in self.lines if (m := pattern.match(line))]


def parse_log(path: Path) -> list[Rpc]:
    rpcs: list[Rpc] = []
    for line in path.read_text(errors="replace").splitlines():
        m = _ENTRY.match(line)
        if m:
            rpcs.append(Rpc(m.group(1), m.group(2), m.group(3)))
        elif rpcs:
            rpcs[-1].lines.append(line)
    return rpcs


def session_roles(rpcs: list[Rpc]) -> dict[str, str]:
    """Session name -> creator_role, pairing each session-creating response with its request
    (the emulator logs both from the handler's thread)."""
    pending: dict[tuple[str, str], list[str]] = {}
    roles: dict[str, str] = {}
    for rpc in rpcs:
        if rpc.method not in ("CreateSession", "BatchCreateSessions"):
            continue
        key = (rpc.thread, rpc.method)
        if rpc.kind == "Request":
            pending.setdefault(key, []).append((rpc.values("creator_role") or [""])[0])
        elif pending.get(key):
            role = pending[key].pop(0)
            for name in rpc.values("name"):
                roles[name] = role
    return roles


async def test_each_identity_runs_under_its_database_role(
    tmp_path: Path, idp: Any, token_for: Token
) -> None:
    log = tmp_path / "requests.log"
    emulator = start_emulator(extra_args=["--log_requests"], log_path=log)
    try:
        make_database(emulator.host, "roles", ["CREATE TABLE Items (Id INT64) PRIMARY KEY (Id)"])
        headers = bearer(token_for("support-console"))
        policy = policy_text("roles", POLICY)
        async with gateway_on(tmp_path, emulator.host, policy, issuer=idp.issuer) as (_, http):
            wrote = await http.post(
                "/items", json={"id": 5}, headers={**headers, "X-Request-ID": "req-write-1"}
            )
            assert wrote.status_code == 200, wrote.text
            read = await http.get("/items/5", headers={**headers, "X-Request-ID": "req-read-1"})
            assert read.json()["rows"] == [{"Id": 5}]
            counted = await http.get("/count", headers=headers)
            assert counted.json()["rows"] == [{"n": 1}]
    finally:
        emulator.stop()
    rpcs = parse_log(log)
    roles = session_roles(rpcs)
    assert {"shop_reader", "shop_writer", "shop_boss"} <= set(roles.values()), roles
    executed = [
        r for r in rpcs if r.kind == "Request" and r.method in ("ExecuteSql", "ExecuteStreamingSql")
    ]

    def run_of(sql_start: str) -> Rpc:
        found = [r for r in executed if any(v.startswith(sql_start) for v in r.values("sql"))]
        plans = [r for r in found if r.values("query_mode") != ["PLAN"]]
        assert plans, f"no execution of {sql_start!r}"
        return plans[-1]

    read_rpc = run_of("SELECT Id FROM Items")
    write_rpc = run_of("INSERT INTO Items")
    count_rpc = run_of("SELECT COUNT(*)")
    assert roles[read_rpc.values("session")[0]] == "shop_reader"
    assert roles[write_rpc.values("session")[0]] == "shop_writer"
    assert roles[count_rpc.values("session")[0]] == "shop_boss"
    # Tags name the request id, the query and the route; priority per query.
    assert read_rpc.values("request_tag") == ["req-read-1 read_it GET /items/{id}"]
    assert write_rpc.values("request_tag") == ["req-write-1 write_it POST /items"]
    assert write_rpc.values("transaction_tag") == ["write_it POST /items"]
    assert write_rpc.values("priority") == ["PRIORITY_LOW"]
    assert count_rpc.values("priority") == ["PRIORITY_MEDIUM"]
    assert read_rpc.values("priority") == []  # none declared: Spanner's default
    commits = [r for r in rpcs if r.kind == "Request" and r.method == "Commit"]
    assert any(c.values("transaction_tag") == ["write_it POST /items"] for c in commits)
    # Every statement was PLAN-analysed at start-up under its own role, too.
    planned = [r for r in executed if r.values("query_mode") == ["PLAN"]]
    assert {roles[r.values("session")[0]] for r in planned} >= {"shop_reader", "shop_writer"}


def test_service_accounts_are_impersonated_over_ambient_credentials() -> None:
    """Construction only: impersonation itself needs GCP (ambient credentials, IAM)."""
    source = AnonymousCredentials()  # type: ignore[no-untyped-call]
    credentials = impersonated(source, "shop-writer@demo-project.iam.gserviceaccount.com")
    assert isinstance(credentials, impersonated_credentials.Credentials)
    assert credentials.service_account_email == "shop-writer@demo-project.iam.gserviceaccount.com"
    assert isinstance(credentials._source_credentials, AnonymousCredentials)  # no key file
    assert list(credentials._target_scopes) == [SPANNER_SCOPE]
    assert impersonated(source, None) is source
