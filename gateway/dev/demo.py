"""``spangate dev`` (``make demo``): the whole stack on this machine, with tokens to try.

Starts the Cloud Spanner emulator (unless SPANNER_EMULATOR_HOST points at one), creates the demo
database from ``dev/schema.sql`` and ``dev/seed.sql`` (or ``--schema`` and ``--seed``: a policy
author's own tables and rows; the emulator's refusal of them is exit 2), in the policy's
``spanner.dialect`` (the PostgreSQL shop is ``dev/schema-postgresql.sql`` and
``dev/seed-postgresql.sql``, served with ``policy.example.postgresql.yaml`` by ``--dialect
postgresql``), starts the repository's OpenID provider with
fresh keys and a redis-server on a free loopback port for the budgets (unless SPANGATE_REDIS_URL
names one), serves the policy with uvicorn, and prints a curl line per persona, and for MCP a
``.mcp.json`` with the order-agent's token and a curl line for ``tools/list``. Ctrl-C stops every
process it started, by PID (the emulator's and redis-server's whole process groups).

The audit trail is ``.run/audit.jsonl``, keyed (the example policy redacts a parameter, which the
gateway refuses without a key) with ``SPANGATE_AUDIT_KEY`` when it is set, else with a dev key
made once, at random, in ``.run/audit.key`` and reused by later demos, so one
``spangate audit verify --key-file .run/audit.key .run/audit.jsonl*`` checks them all.

The example policy paginates ``list_orders``: its cursors are sealed with ``SPANGATE_CURSOR_KEYS``
when it is set, else with a key made at random for this demo (one process: its cursors open
until the demo stops).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import signal
import sys
from pathlib import Path

from google.api_core.exceptions import GoogleAPICallError
from pydantic import SecretStr

from gateway.dev.database import SeedError, create_database, load_demo_sql, split_statements
from gateway.dev.emulator import EmulatorError, EmulatorProcess, start_emulator
from gateway.dev.idp import IdpError, IdpProcess, fetch_token, load_clients, start_idp
from gateway.dev.keys import write_signing_keys
from gateway.dev.ports import free_port
from gateway.dev.redis import RedisMissing, RedisProcess, RedisStartError, start_redis
from gateway.logs import configure_logging
from gateway.policy.model import FileSink as FileSinkConfig
from gateway.server import run_server
from gateway.settings import Settings
from gateway.spanner.ddl import shipped_ddl

__all__ = ["mcp_config", "mcp_curl", "run_demo"]

# What each persona tries in the printed curl lines.
_TRIES: dict[str, tuple[str, str, str | None]] = {
    "support-console": ("GET", "/v1/orders/O-1001", None),
    "support-lead": ("GET", "/v1/customers/C-1", None),  # the email clear; support gets "***"
    "order-agent": ("GET", "/v1/orders?status=PAID&limit=5", None),
    "order-writer": (
        "POST",
        "/v1/orders",
        '{"order_id": "O-4242", "customer_id": "C-1", "total_cents": 1999}',
    ),
    "outsider": ("GET", "/v1/orders/O-1001", None),
}


def _say(text: str = "") -> None:
    print(text, flush=True)


def _curl(
    base: str,
    token: str,
    method: str,
    path: str,
    body: str | None,
    *headers: str,
    globoff: bool = False,
) -> str:
    parts = ["curl", "-g", "-sS", "-i"] if globoff else ["curl", "-sS", "-i"]
    if method != "GET":
        parts += ["-X", method]
    parts += ["-H", f"Authorization: Bearer {token}"]
    for header in headers:
        parts += ["-H", header]
    if body is not None:
        parts += ["-H", "Content-Type: application/json", "-d", body]
    parts.append(base + path)
    return " ".join(shlex.quote(p) for p in parts)


def mcp_config(base: str, token: str) -> str:
    """A ``.mcp.json`` for an MCP client (Claude Code's format) that calls this gateway."""
    server = {"type": "http", "url": f"{base}/mcp", "headers": {"Authorization": f"Bearer {token}"}}
    return json.dumps({"mcpServers": {"spangate": server}})


def mcp_curl(base: str, token: str) -> str:
    """A curl line for ``tools/list`` on /mcp (stateless: no initialize needed)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    return _curl(
        base,
        token,
        "POST",
        "/mcp",
        body,
        "Accept: application/json, text/event-stream",
        "MCP-Protocol-Version: 2025-11-25",
    )


def _dev_key(path: Path) -> str:
    """The demo's audit key: ``path``'s, or a new random one written there (owner-only)."""
    if path.is_file() and (key := path.read_text().strip()):
        return key
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


DEFAULT_POLICIES = {
    "googlesql": Path("policy.example.yaml"),
    "postgresql": Path("policy.example.postgresql.yaml"),
}


def _database_sql(
    repo: Path, dialect: str, schema: Path | None, seed: Path | None
) -> tuple[list[str], list[str], str]:
    """The demo database's DDL and DML, and what they are: the demo shop's, or ``schema``'s and
    ``seed``'s (split in ``dialect``; with a schema of one's own and no seed, no rows)."""
    if schema is None and seed is None:
        ddl, dml = load_demo_sql(repo, dialect)
        return ddl, dml, "demo schema, seed"
    dml = split_statements(seed.read_text("utf-8"), dialect) if seed else []
    if schema is not None:
        ddl = split_statements(schema.read_text("utf-8"), dialect)
    else:  # rows of one's own in the shop's tables
        ddl = load_demo_sql(repo, dialect)[0]
    what = f"schema {schema}" if schema else "demo schema"
    return ddl, dml, what + (f", seed {seed}" if seed else ", no seed")


def run_demo(
    *,
    policy: Path | None,
    port: int,
    repo: Path,
    dialect: str | None = None,
    schema: Path | None = None,
    seed: Path | None = None,
) -> int:
    """The demo on ``policy`` (default: the example policy of ``dialect``, GoogleSQL's when
    None); its database in the policy's dialect, which ``dialect`` (when given) must be, made
    from the demo shop's schema and seed or from ``schema`` and ``seed``."""
    policy = policy or repo / DEFAULT_POLICIES[dialect or "googlesql"]  # the repository's example
    repo = repo.resolve()
    # SIGTERM must stop what the demo started, as Ctrl-C does: uvicorn re-raises the signal it
    # caught after shutting down, and the default SIGTERM action would end the process before
    # the `finally` below stops the emulator and the provider.
    signal.signal(signal.SIGTERM, _interrupt)
    run_dir = repo / ".run"
    run_dir.mkdir(exist_ok=True)
    emulator: EmulatorProcess | None = None
    idp: IdpProcess | None = None
    redis: RedisProcess | None = None
    try:
        emulator_host = os.environ.get("SPANNER_EMULATOR_HOST")
        if emulator_host:
            _say(f"using the emulator at {emulator_host} (SPANNER_EMULATOR_HOST)")
        else:
            emulator = start_emulator(log_path=run_dir / "emulator.log")
            emulator_host = emulator.host
            _say(f"Spanner emulator on {emulator_host} (pid {emulator.pid})")
        redis_url = os.environ.get("SPANGATE_REDIS_URL")
        if redis_url:
            _say("using the Redis of SPANGATE_REDIS_URL for the budgets")
        else:
            redis = start_redis(log_path=run_dir / "redis.log")
            redis_url = redis.url
            _say(f"redis-server on {redis.url} for the budgets (pid {redis.pid})")
        settings = Settings(
            policy=policy.resolve(),
            port=port or free_port(),
            spanner_emulator_host=emulator_host,
            audit_path=run_dir / "audit.jsonl",
            redis_url=SecretStr(redis_url),
            drain_seconds=0,  # Ctrl-C stops the demo at once: no load balancer to tell
        )
        configure_logging(settings.log_format, settings.log_level)
        key_file = run_dir / "audit.key"
        if settings.audit_key is None:
            key = SecretStr(_dev_key(key_file))
            settings = settings.model_copy(update={"audit_key": key})
            key_note = f"keyed with {key_file}, a dev key made for demos only"
            verify = f"spangate audit verify --key-file {key_file} {settings.audit_path}*"
        else:
            key_note = "keyed with SPANGATE_AUDIT_KEY"
            verify = f"spangate audit verify {settings.audit_path}*"
        if settings.cursor_keys is None:  # a key for this demo only (docs/pagination.md)
            cursor_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
            settings = settings.model_copy(update={"cursor_keys": SecretStr(cursor_key)})
        from gateway.runtime import build_gateway, load_compiled, spanner_target

        env = dict(os.environ)
        keys = run_dir / "idp-keys.json"
        write_signing_keys(keys)
        idp = start_idp(idp_dir=repo / "dev" / "idp", keys_path=keys)
        env["OKTA_ISSUER"] = idp.issuer
        _say(f"OpenID provider at {idp.issuer} (pid {idp.pid})")
        compiled = load_compiled(settings.policy, env)
        target = spanner_target(settings, compiled)
        wanted = compiled.model.spanner.dialect
        if dialect is not None and dialect != wanted:
            print(
                f"spangate dev: --dialect {dialect}, but {policy}'s statements are {wanted} "
                f"(spanner.dialect): give a {dialect} policy, or leave --policy out",
                file=sys.stderr,
            )
            return 2
        ddl, dml, what = _database_sql(repo, wanted, schema, seed)
        # The schema plus the gateway's own tables (what `spangate init-db` creates).
        try:
            create_database(
                emulator_host,
                project=target.project,
                instance=target.instance,
                database=target.database,
                ddl=[*ddl, *shipped_ddl(compiled)],
                dml=dml,
                dialect=wanted,
            )
        except (GoogleAPICallError, SeedError) as exc:
            if schema is None and seed is None:
                raise
            given = " or ".join(
                f"{option} {path}" for option, path in (("--schema", schema), ("--seed", seed))
                if path is not None
            )  # fmt: skip
            words = exc.message if isinstance(exc, GoogleAPICallError) else str(exc)
            print(f"spangate dev: the emulator refused {given} ({wanted}): {words}", file=sys.stderr)
            return 2
        _say(
            f"database {target.project}/{target.instance}/{target.database} ({wanted}): {what} "
            "and the gateway's tables applied"
        )
        app = build_gateway(settings, env=env)
        base = f"http://{settings.host}:{settings.port}"
        clients = {c["client_id"]: c for c in load_clients(repo / "dev" / "idp" / "clients.json")}
        _say()
        _say(f"spangate serves {policy} at {base}")
        sinks = compiled.model.audit.sinks
        if any(isinstance(sink, FileSinkConfig) for sink in sinks):
            _say(f"audit trail: {settings.audit_path} ({key_note}); check it: {verify}")
        else:  # the policy's own sinks (stdout by default): no file to point at
            kinds = ", ".join(sink.type for sink in sinks)
            _say(f"audit trail: the policy's sinks ({kinds}; {key_note}): no file sink")
        # The example's calls for the example; for another policy, its own routes (one to try
        # per persona, its {parameters} to fill in: curl -g sends the braces as they are).
        example = policy.resolve() in {(repo / p).resolve() for p in DEFAULT_POLICIES.values()}
        if example:
            tries = _TRIES
            _say("Try these (tokens are fresh, valid for an hour):")
        else:
            first = compiled.routes[0] if compiled.routes else None
            _say("The policy's routes (fill in each {parameter}):")
            for route in compiled.routes:
                _say(f"  {route.model.method} {base}{route.template}")
            _say("A token per persona (fresh, valid for an hour), on the first route:")
            tries = {
                c: (first.model.method, first.template, "{}" if first.model.method != "GET"
                    else None) if first else ("GET", "/readyz", None)
                for c in _TRIES
            }  # fmt: skip
        tokens: dict[str, str] = {}
        for client_id, (method, path, body) in tries.items():
            client = clients[client_id]
            scopes = client.get("scopes") or []
            token = tokens[client_id] = fetch_token(
                idp.issuer, client_id, client["client_secret"], scope=" ".join(scopes) or None
            )
            _say(f"\n# {client_id}: {client.get('description', '')}")
            _say(_curl(base, token, method, path, body, globoff=not example))
        agent = tokens["order-agent"]
        _say("\n# mcp: an MCP client as the order-agent (.mcp.json; docs/agents/index.md)")
        _say(mcp_config(base, agent))
        _say("# mcp: the tools the order-agent's token may call (tools/list)")
        _say(mcp_curl(base, agent))
        _say(f"\nOpenAPI: {base}/docs   readiness: {base}/readyz   Ctrl-C stops everything.\n")
        # The same server, limits and all, as `spangate serve` (gateway.server).
        # Its log on stderr: a line per request, readable in a terminal (SPANGATE_LOG_FORMAT).
        return run_server(app, settings)
    except (EmulatorError, IdpError, RedisMissing, RedisStartError) as exc:
        print(f"spangate dev: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if idp is not None:
            idp.stop()
        if redis is not None:
            redis.stop()
        if emulator is not None:
            emulator.stop()
        _say("stopped the processes this demo started")
