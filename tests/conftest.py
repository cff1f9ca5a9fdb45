"""Session fixtures: the real Spanner emulator, the real OpenID provider, the real gateway.

Started once per test session on free loopback ports and stopped (by PID) at the end; redis-server
too, for shared budgets. Tests call the gateway through httpx's ASGI transport (and once through a
real uvicorn, in test_server.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import hypothesis
import pytest
from served import CURSOR_KEYS, Served, served

from gateway.app import Gateway
from gateway.dev.database import create_database, load_demo_sql
from gateway.dev.emulator import EmulatorProcess, start_emulator
from gateway.dev.idp import IdpProcess, fetch_token, load_clients, start_idp
from gateway.dev.keys import write_signing_keys
from gateway.dev.redis import RedisProcess, start_redis
from gateway.policy.compiled import compile_policy
from gateway.policy.load import load_policy
from gateway.runtime import build_gateway
from gateway.settings import Settings
from gateway.spanner.ddl import shipped_ddl

REPO = Path(__file__).resolve().parent.parent

# Property tests: no per-example deadline (2 busy cores make timings meaningless), and in CI
# (CI=true) a fixed sequence of examples, so a run is repeatable; locally they explore at random.
hypothesis.settings.register_profile("default", deadline=None)
hypothesis.settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "default")
PROJECT, INSTANCE, DATABASE = "demo-project", "demo", "shop"

# The example policy paginates list_orders, and a gateway serving pagination refuses to start
# without SPANGATE_CURSOR_KEYS: every gateway of the session has the tests' key, whether built
# in-process (Settings reads the environment) or run as `spangate serve` (which inherits it). A
# test of its absence leaves it out of the environment it gives.
os.environ.setdefault("SPANGATE_CURSOR_KEYS", CURSOR_KEYS)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with start_emulator(log_path=log) as process:
        yield process


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server on a free loopback port (shared budgets). Missing: the test fails,
    saying what to install (apt-get install redis-server); never skipped."""
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    with start_redis(log_path=log) as process:
        yield process


@pytest.fixture(scope="session")
def demo_database(emulator: EmulatorProcess) -> str:
    """The demo shop schema and seed on the session's emulator; returns the emulator host."""
    ddl, dml = load_demo_sql(REPO)
    policy = compile_policy(
        load_policy(REPO / "policy.example.yaml", env={"OKTA_ISSUER": "http://127.0.0.1:1/x"})
    )
    create_database(
        emulator.host,
        project=PROJECT,
        instance=INSTANCE,
        database=DATABASE,
        ddl=[*ddl, *shipped_ddl(policy)],  # as `make demo` does: the gateway's tables too
        dml=dml,
    )
    return emulator.host


@pytest.fixture(scope="session")
def idp_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("idp") / "keys.json"
    write_signing_keys(path)
    return path


@pytest.fixture(scope="session")
def idp(idp_keys: Path) -> Iterator[IdpProcess]:
    with start_idp(idp_dir=REPO / "dev" / "idp", keys_path=idp_keys) as process:
        yield process


@pytest.fixture(scope="session")
def personas() -> dict[str, dict[str, object]]:
    return {c["client_id"]: c for c in load_clients(REPO / "dev" / "idp" / "clients.json")}


@pytest.fixture(scope="session")
def token_for(idp: IdpProcess, personas: dict[str, dict[str, object]]) -> Callable[..., str]:
    """``token_for("order-agent")``: a fresh token from the real provider, with all the client's scopes."""

    def get(client_id: str, *, scope: str | None = None) -> str:
        client = personas[client_id]
        scopes = client.get("scopes") or []
        assert isinstance(scopes, list)
        wanted = scope if scope is not None else (" ".join(scopes) or None)
        return fetch_token(idp.issuer, client_id, str(client["client_secret"]), scope=wanted)

    return get


@pytest.fixture(scope="session")
def audit_key() -> str:
    """The audit key every test gateway runs with (the example policies redact a parameter,
    which the gateway refuses without a key): pass it as ``Settings(audit_key=...)`` or as
    ``SPANGATE_AUDIT_KEY`` to a ``spangate serve`` subprocess."""
    return "test-audit-key-not-a-secret"


@pytest.fixture(scope="session")
def audit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.jsonl"


@pytest.fixture(scope="session")
def settings(demo_database: str, audit_path: Path, audit_key: str) -> Settings:
    return Settings(
        policy=REPO / "policy.example.yaml",
        spanner_emulator_host=demo_database,
        audit_path=audit_path,
        audit_key=audit_key,
        jwks_min_refetch_seconds=1.0,
    )


@pytest.fixture(scope="session")
async def gateway(settings: Settings, idp: IdpProcess) -> AsyncIterator[Gateway]:
    app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


@pytest.fixture(scope="session")
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield http


@pytest.fixture
def audit_lines(audit_path: Path) -> Callable[[], list[dict[str, object]]]:
    def read() -> list[dict[str, object]]:
        if not audit_path.exists():
            return []
        return [json.loads(line) for line in audit_path.read_text().splitlines() if line]

    return read


@pytest.fixture(scope="module")
def example_server(
    demo_database: str, idp: IdpProcess, tmp_path_factory: pytest.TempPathFactory, audit_key: str
) -> Iterator[Served]:
    """A real ``spangate serve`` on the example policy, one per test module (its audit file is
    shared by the module's tests: find a test's events by request id)."""
    folder = tmp_path_factory.mktemp("served")
    with served(folder, database=demo_database, issuer=idp.issuer, audit_key=audit_key) as server:
        yield server
