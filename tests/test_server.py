"""The real processes: `spangate serve` under uvicorn, and `spangate dev` (what `make demo` runs)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dev.ports import free_port

SPANGATE = [sys.executable, "-m", "gateway"]


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read() if process.stdout else None}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


def _stop(process: subprocess.Popen[str], how: signal.Signals = signal.SIGINT) -> None:
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture
def served(
    demo_database: str, idp: Any, tmp_path: Path, repo: Path, audit_key: str
) -> Iterator[tuple[str, Path]]:
    port = free_port()
    audit = tmp_path / "audit.jsonl"
    env = {
        **os.environ,
        "SPANGATE_DRAIN_SECONDS": "0",  # stopped without a drain (tests/served.py)
        "SPANNER_EMULATOR_HOST": demo_database,
        "OKTA_ISSUER": idp.issuer,
        "SPANGATE_AUDIT_PATH": str(audit),
        "SPANGATE_AUDIT_KEY": audit_key,
        "SPANGATE_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [*SPANGATE, "serve", "--policy", str(repo / "policy.example.yaml"), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
        yield f"http://127.0.0.1:{port}", audit
    finally:
        _stop(process)


def test_spangate_serve_answers_over_http(
    served: tuple[str, Path], token_for: Callable[..., str]
) -> None:
    base, audit = served
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    response = httpx.get(f"{base}/v1/orders/O-1001", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["rows"][0]["TotalCents"] == 7499
    assert "server" not in response.headers
    denied = httpx.get(f"{base}/v1/orders/O-1001")
    assert denied.status_code == 401
    assert len(audit.read_text().splitlines()) == 2


def test_version() -> None:
    out = subprocess.run([*SPANGATE, "--version"], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"spangate \d+\.\d+\.\d+\S*\n", out.stdout)


def test_serve_refuses_a_bad_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nroutes: []\nunknown: 1\n")
    out = subprocess.run([*SPANGATE, "serve", "--policy", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{bad}:3:1" in out.stderr and "unknown" in out.stderr


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state letter is Z.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_prints_curl_lines_that_work_and_stops_everything(
    repo: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    # Its own emulator, and its own cursor key (the example policy paginates list_orders).
    own = ("SPANNER_EMULATOR_HOST", "SPANGATE_CURSOR_KEYS")
    env = {k: v for k, v in os.environ.items() if k not in own}
    process = subprocess.Popen(
        [*SPANGATE, "dev", "--repo", str(repo), "--policy", str(repo / "policy.example.yaml")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    lines: list[str] = []
    pids: list[int] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "the demo exited early:\n" + "".join(lines)
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
        assert len(pids) == 3, text  # the emulator, the OpenID provider and redis-server
        assert re.search(r"redis-server on redis://127\.0\.0\.1:\d+/0 for the budgets", text)
        base = re.search(r"spangate serves .* at (http://127\.0\.0\.1:\d+)", text)
        assert base is not None
        keyed = re.search(r"audit trail: \S+ \(keyed with (\S+audit\.key), a dev key", text)
        assert keyed is not None, text  # the example policy redacts: the demo must have a key
        assert Path(keyed.group(1)).stat().st_mode & 0o077 == 0  # owner-only
        _wait_ready(base.group(1) + "/readyz", process)
        curls = {}
        persona = None
        for line in lines:
            if line.startswith("# "):
                persona = line[2:].split(":")[0]
            elif line.startswith("curl ") and persona:
                curls[persona] = shlex.split(line)
        assert set(curls) == {
            "support-console", "support-lead", "order-agent", "order-writer", "outsider", "mcp"
        }  # fmt: skip
        statuses = {name: _run_curl(argv) for name, argv in curls.items()}
        assert statuses == {
            "support-console": 200, "support-lead": 200, "order-agent": 200, "order-writer": 200,
            "outsider": 403, "mcp": 200,  # tools/list
        }  # fmt: skip
        # The demo seals list_orders' cursors with a key of its own: the next page opens.
        name, value = curls["order-agent"][curls["order-agent"].index("-H") + 1].split(": ", 1)
        orders = base.group(1) + "/v1/orders"
        first = httpx.get(orders, params={"limit": 1}, headers={name: value}).json()
        second = httpx.get(orders, params={"limit": 1, "cursor": first["next_cursor"]},
                           headers={name: value})  # fmt: skip
        assert second.status_code == 200, second.text
        lead = subprocess.run(curls["support-lead"], capture_output=True, text=True, check=True)
        (customer,) = json.loads(lead.stdout.split("\n\n", 1)[1])["rows"]
        assert customer["Email"] == "wile@acme.example"  # a support lead sees it clear
        listed = subprocess.run(curls["mcp"], capture_output=True, text=True, check=True)
        tools = json.loads(listed.stdout.split("\n\n", 1)[1])["result"]["tools"]
        assert {t["name"] for t in tools} == {"get_order", "list_orders", "list_order_items"}
        (config,) = [json.loads(line) for line in lines if line.startswith('{"mcpServers"')]
        server = config["mcpServers"]["spangate"]
        assert server["url"] == base.group(1) + "/mcp"
        authorization = curls["mcp"][curls["mcp"].index("-H") + 1]
        assert authorization == "Authorization: " + server["headers"]["Authorization"]
        # The demo runs the server configuration of `spangate serve`: X-Forwarded-For from
        # loopback (no SPANGATE_TRUSTED_PROXIES) does not become the audited client address.
        rid = f"xff-{os.getpid()}-{time.monotonic_ns()}"
        spoofed = httpx.get(
            base.group(1) + "/v1/orders/O-1001",
            headers={"X-Forwarded-For": "203.0.113.66", "X-Request-ID": rid},
        )
        assert spoofed.status_code == 401
        trail = (repo / ".run" / "audit.jsonl").read_text().splitlines()
        (event,) = [json.loads(line) for line in trail if rid in line]
        assert event["httpRequest"]["remoteIp"] == "127.0.0.1"
    finally:
        _stop(process, stop)
    survivors = [pid for pid in pids if _running(pid)]
    for pid in survivors:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0
    assert not survivors, f"processes {survivors} outlived the demo"


TICKETS_POLICY = """\
version: 1
spanner: {project: demo-project, instance: demo, database: tickets}
issuers:
  okta:
    issuer: ${OKTA_ISSUER}
    audience: api://shop
    preset: okta
identities:
  reader: {database_role: tickets_reader}
roles:
  support: [{groups: [support]}]
queries:
  get_ticket:
    identity: reader
    sql: SELECT Id, Title FROM Tickets WHERE Tenant = @tenant AND Id = @id
    params:
      tenant: {type: STRING, from: claim.tenant}
      id: {type: INT64}
routes:
  - {path: "/tickets/{id}", method: GET, query: get_ticket, allow: [support]}
"""


def _demo_lines(process: subprocess.Popen[str]) -> list[str]:
    """What the demo prints until it serves (or exits)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return lines


def test_the_demo_serves_a_policy_on_its_authors_own_schema_and_seed(
    repo: Path, tmp_path: Path
) -> None:
    """``spangate dev --schema --seed``: a policy author tries a policy on their own tables."""
    policy, schema, seed = tmp_path / "p.yaml", tmp_path / "schema.sql", tmp_path / "seed.sql"
    policy.write_text(TICKETS_POLICY)
    schema.write_text(
        "-- tickets; a ';' in a comment\nCREATE TABLE Tickets (Tenant STRING(8) NOT NULL,\n"
        "  Id INT64 NOT NULL, Title STRING(64)) PRIMARY KEY (Tenant, Id);\n"
    )
    seed.write_text(
        "INSERT INTO Tickets (Tenant, Id, Title) VALUES ('t1', 1, 'printer; on fire');\n"
        "INSERT INTO Tickets (Tenant, Id, Title) VALUES ('t2', 1, 'not yours');\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPANNER_EMULATOR_HOST"}
    argv = [*SPANGATE, "dev", "--repo", str(repo), "--policy", str(policy),
            "--schema", str(schema), "--seed", str(seed)]  # fmt: skip
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    try:
        lines = _demo_lines(process)
        text = "".join(lines)
        assert f"schema {schema}, seed {seed} and the gateway's tables applied" in text, text
        base = re.search(r"spangate serves .* at (http://127\.0\.0\.1:\d+)", text)
        assert base is not None, text
        # its own routes, not the shop's; its sinks (stdout by default), not a file never written
        assert f"  GET {base.group(1)}/tickets/{{id}}" in text, text
        assert "/v1/orders" not in text.split("# mcp")[0], text
        assert "audit trail: the policy's sinks (stdout; " in text and "no file sink" in text
        _wait_ready(base.group(1) + "/readyz", process)
        support = next(
            shlex.split(line) for i, line in enumerate(lines)
            if line.startswith("curl ") and lines[i - 1].startswith("# support-console")
        )  # fmt: skip
        assert support[:2] == ["curl", "-g"] and support[-1] == base.group(1) + "/tickets/{id}"
        authorization = support[support.index("-H") + 1].split(": ", 1)[1]
        got = httpx.get(base.group(1) + "/tickets/1", headers={"Authorization": authorization})
        assert got.status_code == 200, got.text
        assert got.json()["rows"] == [{"Id": 1, "Title": "printer; on fire"}]  # tenant t1's
    finally:
        _stop(process, signal.SIGINT)
    assert process.returncode == 0


def test_the_demo_says_when_the_emulator_refuses_the_schema(repo: Path, tmp_path: Path) -> None:
    policy, schema = tmp_path / "p.yaml", tmp_path / "schema.sql"
    policy.write_text(TICKETS_POLICY)
    schema.write_text("CREATE TABLE Tickets (Id INT64 NOT NULL) PRIMARY KEY (Nope);\n")
    env = {k: v for k, v in os.environ.items() if k != "SPANNER_EMULATOR_HOST"}
    out = subprocess.run(
        [*SPANGATE, "dev", "--repo", str(repo), "--policy", str(policy), "--schema", str(schema)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"spangate dev: the emulator refused --schema {schema} (googlesql): " in out.stderr
    assert "Traceback" not in out.stderr
    schema.write_text("CREATE TABLE Tickets (Id INT64 NOT NULL) PRIMARY KEY (Id);\n")
    seed = tmp_path / "seed.sql"
    seed.write_text("INSERT INTO Tickets (Id) VALUES (1);\nINSERT INTO Nope (x) VALUES (1);\n")
    bad_seed = subprocess.run(
        [*SPANGATE, "dev", "--repo", str(repo), "--policy", str(policy), "--schema", str(schema),
         "--seed", str(seed)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert bad_seed.returncode == 2, bad_seed.stdout + bad_seed.stderr
    assert "the emulator refused --schema" in bad_seed.stderr and "seed statement #2" in bad_seed.stderr
    assert "Traceback" not in bad_seed.stderr
    missing = subprocess.run(
        [*SPANGATE, "dev", "--repo", str(repo), "--seed", str(tmp_path / "none.sql")],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and "--seed" in missing.stderr, missing.stderr
    assert "emulator on" not in missing.stdout  # refused before anything started


def _run_curl(argv: list[str]) -> int:
    """Run a printed curl line as printed, with curl itself; return the HTTP status."""
    out = subprocess.run(
        [argv[0], "-o", "/dev/null", "-w", "%{http_code}", *[a for a in argv[1:] if a != "-i"]],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return int(out.stdout)


def test_demo_says_what_to_install_when_the_emulator_is_missing(repo: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPANNER_EMULATOR_HOST"}
    env["SPANGATE_EMULATOR_DIR"] = str(tmp_path / "nowhere")
    out = subprocess.run(
        [*SPANGATE, "dev", "--repo", str(repo)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "google-cloud-cli-spanner-emulator" in out.stderr
    assert "SPANNER_EMULATOR_HOST" in out.stderr


def test_demo_says_what_to_install_when_redis_server_is_missing(
    repo: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPANGATE_REDIS_URL"}
    env["SPANNER_EMULATOR_HOST"] = "127.0.0.1:1"  # skip the emulator: redis-server comes next
    env["PATH"] = str(tmp_path)  # no redis-server on it
    out = subprocess.run(
        [*SPANGATE, "dev", "--repo", str(repo)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "apt-get install redis-server" in out.stderr


def test_spanner_commands_without_credentials_say_so(repo: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPANNER_EMULATOR_HOST"}
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "missing.json")
    out = subprocess.run(
        [*SPANGATE, "grants", "--policy", str(repo / "policy.example.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "SPANNER_EMULATOR_HOST" in out.stderr
