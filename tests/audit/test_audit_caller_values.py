"""What callers send ends up in the trail bounded, once, as sent, and never splits a line.

Through the real app on the emulator with real tokens from the OpenID provider: a huge user agent
without a token, tenant overrides on refused requests, a percent-encoded path, line separators in
a user agent and in parameters. Each trail then passes ``spangate audit verify``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import request_id
from served import served as serving

from gateway.audit.chain import Chain
from gateway.audit.schema import AuditEvent
from gateway.audit.verify import verify_trail
from gateway.cli import main
from gateway.errors import BadRequest
from gateway.http import parse_json
from gateway.settings import Settings

Token = Callable[..., str]
DEFAULT_MAX_EVENT_BYTES = 16384


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def trail_lines(path: Path) -> list[str]:
    """The trail as any line-splitting reader sees it (str.splitlines splits on U+0085/2028/2029)."""
    return path.read_bytes().decode("utf-8").splitlines()


def verified(path: Path, capsys: pytest.CaptureFixture[str], key: str) -> str:
    key_file = path.with_name("audit.key")
    key_file.write_text(key)
    code = main(["audit", "verify", str(path), "--key-file", str(key_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def truncations(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = event["protoPayload"]["metadata"]["truncated"]
    return {t["field"]: {"bytes": t["bytes"], "sha256": t["sha256"]} for t in found}


def digest(text: str) -> dict[str, Any]:
    data = text.encode()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_a_huge_user_agent_and_path_without_a_token_leave_one_bounded_event(
    make_settings: Callable[..., Settings],
    serve: Any,
    audit_file: Path,
    capsys: pytest.CaptureFixture[str],
    audit_key: str,
) -> None:
    agent = "A" * (1 << 20)
    path = "/v1/orders/" + "é" * 10_000  # sent percent-encoded: 60 KB of path
    async with serve(make_settings()) as (_, http):
        response = await http.get(path, headers={"User-Agent": agent})
    assert response.status_code == 401 and response.json()["code"] == "token-missing"
    (line,) = trail_lines(audit_file)
    assert len(line.encode()) + 1 <= DEFAULT_MAX_EVENT_BYTES  # with its newline
    event = json.loads(line)
    AuditEvent.model_validate(event)
    http_request = event["httpRequest"]
    assert http_request["userAgent"] == agent[:512]
    raw_path = "/v1/orders/" + "%C3%A9" * 10_000
    assert http_request["requestUrl"] == raw_path[:512]
    assert truncations(event) == {
        "/httpRequest/userAgent": digest(agent),
        "/httpRequest/requestUrl": digest(raw_path),
    }
    metadata = event["protoPayload"]["requestMetadata"]  # stored once: in httpRequest only
    assert "callerSuppliedUserAgent" not in metadata and "path" not in metadata["requestAttributes"]
    assert request_id(event) == response.headers["x-request-id"]
    verified(audit_file, capsys, audit_key)


async def test_a_string_is_cut_at_a_character_boundary(
    make_settings: Callable[..., Settings], serve: Any, audit_file: Path
) -> None:
    agent = "x" + "€" * 400  # its UTF-8 bytes, read as Latin-1, are 1 + 2 * 1200 bytes of UTF-8
    async with serve(make_settings()) as (_, http):
        response = await http.get("/v1/orders/O-1", headers={"User-Agent": agent.encode()})
    assert response.status_code == 401
    (event,) = [json.loads(line) for line in trail_lines(audit_file)]
    # The header's bytes are read as Latin-1 (as HTTP defines them); byte 512 falls inside a
    # character, which is left out whole.
    sent = agent.encode().decode("latin-1")
    kept = event["httpRequest"]["userAgent"]
    assert sent.startswith(kept) and len(kept.encode()) <= 512 < len(kept.encode()) + 4
    assert truncations(event)["/httpRequest/userAgent"] == digest(sent)


async def test_huge_ignored_values_are_dropped_to_their_digest(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    audit_file: Path,
    capsys: pytest.CaptureFixture[str],
    audit_key: str,
) -> None:
    tenants = [f"t{i}-" + "y" * 600 for i in range(1000)]  # 600 KB of tenant overrides
    async with serve(make_settings(max_body_bytes=1 << 20)) as (_, http):
        response = await http.post(
            "/v1/orders",
            headers=bearer(token_for("order-writer")),
            json={"order_id": "O-1", "tenant": tenants},  # customer_id missing: 400
        )
    assert response.status_code == 400 and response.json()["code"] == "param-missing"
    (line,) = trail_lines(audit_file)
    assert len(line.encode()) + 1 <= DEFAULT_MAX_EVENT_BYTES
    event = json.loads(line)
    AuditEvent.model_validate(event)
    assert event["protoPayload"]["request"]["ignoredCallerValues"] == {"tenant": None}
    full = json.dumps(tenants, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert truncations(event) == {"/protoPayload/request/ignoredCallerValues/tenant": digest(full)}
    verified(audit_file, capsys, audit_key)


async def test_a_smaller_maximum_event_size_drops_the_largest_values_first(
    make_settings: Callable[..., Settings], serve: Any, token_for: Token, audit_file: Path
) -> None:
    tenants = [f"t{i}" for i in range(600)]  # no string is long: the value as a whole is
    async with serve(make_settings(audit_max_event_bytes=4096)) as (_, http):
        response = await http.get(
            "/v1/orders/O-1001",
            params=[("tenant", t) for t in tenants],
            headers=bearer(token_for("support-console")),
        )
    assert response.status_code == 200
    (line,) = trail_lines(audit_file)
    assert len(line.encode()) + 1 <= 4096
    event = json.loads(line)
    AuditEvent.model_validate(event)
    statement = event["protoPayload"]["request"]
    assert statement["ignoredCallerValues"] == {"tenant": None}
    full = json.dumps(tenants, separators=(",", ":"))
    assert truncations(event) == {"/protoPayload/request/ignoredCallerValues/tenant": digest(full)}
    assert statement["params"] == {  # what the statement ran with is kept
        "tenant": {"value": "t1", "from": "claim"},
        "order_id": {"value": "O-1001", "from": "caller"},
    }


# -- item 12: the tenant override is recorded whatever the answer ---------------------------------

REFUSED = [
    ("no role", "outsider", "GET", "/v1/orders/O-1001?tenant=t2", None, 403, "no-allow-role"),
    ("another parameter unknown", "support-console", "GET",
     "/v1/orders/O-1001?colour=red&tenant=t2", None, 400, "param-unknown"),
    ("another parameter invalid", "support-console", "GET",
     "/v1/orders/" + "O" * 40 + "?tenant=t2", None, 400, "param-invalid"),
    ("no role, in a body", "outsider", "POST", "/v1/orders",
     {"order_id": "O-1", "customer_id": "C-1", "total_cents": 1, "tenant": "t2"}, 403,
     "no-allow-role"),
    ("another parameter missing, in a body", "order-writer", "POST", "/v1/orders",
     {"tenant": "t2", "order_id": "O-1"}, 400, "param-missing"),
]  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
async def test_a_refused_request_still_records_the_ignored_tenant(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    audit_file: Path,
    case: tuple[Any, ...],
) -> None:
    _, persona, method, path, body, status, code = case
    async with serve(make_settings()) as (_, http):
        response = await http.request(method, path, headers=bearer(token_for(persona)), json=body)
    assert response.status_code == status and response.json()["code"] == code
    (event,) = [json.loads(line) for line in trail_lines(audit_file)]
    AuditEvent.model_validate(event)
    assert event["protoPayload"]["metadata"]["decision"]["reason"] == code
    assert event["protoPayload"]["request"]["ignoredCallerValues"] == {"tenant": "t2"}
    assert event["protoPayload"]["request"]["params"] is None  # nothing was bound


# -- item 13: the path as routed ------------------------------------------------------------------


async def test_the_path_is_recorded_as_routed_still_percent_encoded(
    make_settings: Callable[..., Settings], serve: Any, token_for: Token, audit_file: Path
) -> None:
    async with serve(make_settings()) as (_, http):
        response = await http.get(
            "/v1/orders/O-1%3Ftenant=t2", headers=bearer(token_for("support-console"))
        )
    assert response.status_code == 200 and response.json()["rows"] == []
    (event,) = [json.loads(line) for line in trail_lines(audit_file)]
    assert event["httpRequest"]["requestUrl"] == "/v1/orders/O-1%3Ftenant=t2"
    statement = event["protoPayload"]["request"]
    assert statement["params"]["order_id"] == {"value": "O-1?tenant=t2", "from": "caller"}
    assert statement["ignoredCallerValues"] is None  # no override was attempted


# -- item 14: one event, one line, for every line splitter ------------------------------------------


async def test_line_separators_from_callers_never_split_an_event(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    audit_file: Path,
    capsys: pytest.CaptureFixture[str],
    audit_key: str,
) -> None:
    headers = bearer(token_for("support-console"))
    async with serve(make_settings()) as (_, http):
        answers = [
            await http.get("/v1/orders/O-1001", headers={"User-Agent": b"agent\x85one"}),
            await http.get(
                "/v1/orders/O-1001",
                headers={**headers, "User-Agent": "agent\u2028two".encode()},
            ),
            await http.get(  # U+2028 in a parameter, U+0085 and U+2029 in an ignored value
                "/v1/orders/O-%E2%80%A8?tenant=t%C2%85%E2%80%A9", headers=headers
            ),
        ]
    assert [a.status_code for a in answers] == [401, 200, 200]
    lines = trail_lines(audit_file)
    assert len(lines) == 3  # exactly one line per event
    raw = audit_file.read_bytes()
    for separator in ("\u0085", "\u2028", "\u2029"):
        assert separator.encode() not in raw  # written escaped
    one, two, three = (json.loads(line) for line in lines)
    assert one["httpRequest"]["userAgent"] == "agent\x85one"  # the same text, escaped
    assert two["httpRequest"]["userAgent"] == "agent\u00e2\u0080\u00a8two"  # UTF-8 read as Latin-1
    statement = three["protoPayload"]["request"]
    assert statement["params"]["order_id"]["value"] == "O-\u2028"
    assert statement["ignoredCallerValues"] == {"tenant": "t\x85\u2029"}
    assert three["httpRequest"]["requestUrl"] == "/v1/orders/O-%E2%80%A8"
    assert "ok: 3 events" in verified(audit_file, capsys, audit_key)


def test_lines_written_before_the_escaping_still_verify(tmp_path: Path) -> None:
    """An older trail has U+2028 raw in its lines; it verifies, and so do new lines after it."""
    path = tmp_path / "audit.jsonl"
    chain = Chain(None)
    old = [chain.seal({"ua": f"old\u2028{i}\u0085"})[1] for i in range(2)]
    raw = [line.decode().replace("\\u2028", "\u2028").replace("\\u0085", "\u0085") for line in old]
    assert all("\u2028" in r for r in raw)
    new = chain.seal({"ua": "new\u2029"})[1]
    assert b"\\u2029" in new
    path.write_bytes("".join(raw).encode() + new)
    report = verify_trail([path], None)
    assert report.ok and report.events == 3, report.broken


@pytest.mark.parametrize("persona", ["order-writer", "outsider"])
async def test_a_deeply_nested_body_is_refused_before_it_reaches_the_trail(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Token,
    audit_file: Path,
    persona: str,
) -> None:
    deep = "[" * 600 + "]" * 600  # JSON any reader parses; too deep to bind or audit
    body = f'{{"order_id": "O-1", "customer_id": "C-1", "total_cents": 1, "tenant": {deep}}}'
    headers = {**bearer(token_for(persona)), "Content-Type": "application/json"}
    async with serve(make_settings()) as (_, http):
        response = await http.post("/v1/orders", headers=headers, content=body)
    (event,) = [json.loads(line) for line in trail_lines(audit_file)]
    if persona == "outsider":  # the roles before the body: 403 whatever the body holds
        assert response.status_code == 403 and response.json()["code"] == "no-allow-role"
        assert event["protoPayload"]["status"]["message"] == "no-allow-role"
        return
    assert response.status_code == 400 and response.json()["code"] == "body-invalid"
    assert "100 levels" in response.json()["detail"]
    assert event["protoPayload"]["status"]["message"] == "body-invalid"


def test_a_body_may_nest_a_hundred_levels() -> None:
    assert parse_json(b'{"a":' + b"[" * 99 + b"]" * 99 + b"}")  # the object is one level
    with pytest.raises(BadRequest, match="more than 100 levels"):
        parse_json(b'{"a":' + b"[" * 100 + b"]" * 100 + b"}")
    with pytest.raises(BadRequest, match="more than 100 levels"):
        parse_json(b"[" * 5000 + b"]" * 5000)  # past what the parser itself can take


# -- the same through a real `spangate serve` (uvicorn's raw_path, real header bytes) ------------


@pytest.fixture
def served(
    demo_database: str, idp: Any, tmp_path: Path, audit_key: str
) -> Iterator[tuple[str, Path]]:
    with serving(tmp_path, database=demo_database, issuer=idp.issuer, audit_key=audit_key) as server:
        yield server.base, server.audit


def test_spangate_serve_records_caller_values_bounded_raw_and_one_per_line(
    served: tuple[str, Path], token_for: Token, audit_key: str
) -> None:
    base, audit = served
    agent = b"agent\x85" + b"A" * 8000
    with httpx.Client(base_url=base, timeout=30) as http:
        read = http.get(
            "/v1/orders/O-1%3Ftenant=t2",
            headers={**bearer(token_for("support-console")), "User-Agent": agent},
        )
        refused = http.get("/v1/orders/O-1001?tenant=t2", headers=bearer(token_for("outsider")))
    assert (read.status_code, read.json()["rows"]) == (200, [])
    assert refused.status_code == 403
    lines = trail_lines(audit)
    assert len(lines) == 2 and all(len(line.encode()) < DEFAULT_MAX_EVENT_BYTES for line in lines)
    first, second = (json.loads(line) for line in lines)
    assert first["httpRequest"]["requestUrl"] == "/v1/orders/O-1%3Ftenant=t2"
    assert first["protoPayload"]["request"]["params"]["order_id"]["value"] == "O-1?tenant=t2"
    assert first["protoPayload"]["request"]["ignoredCallerValues"] is None
    sent = agent.decode("latin-1")
    assert first["httpRequest"]["userAgent"] == cut_to_512(sent)
    assert truncations(first) == {"/httpRequest/userAgent": digest(sent)}
    assert second["protoPayload"]["request"]["ignoredCallerValues"] == {"tenant": "t2"}
    verify = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", str(audit)],
        env={**os.environ, "SPANGATE_AUDIT_KEY": audit_key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("ok: 2 events"), verify.stdout


def cut_to_512(text: str) -> str:
    kept = ""
    for char in text:
        if len((kept + char).encode()) > 512:
            return kept
        kept += char
    return kept
