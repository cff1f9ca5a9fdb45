"""The processes of a run: the emulator with its database, the OpenID provider and its tokens, and
the two HTTP targets (``spangate serve``, the hand-written service) or a raw client's driver.
Tokens are fetched afresh for every phase (a run may outlast their hour), and cached through it.

Everything listens on 127.0.0.1 on a free port, runs in a process group of its own (a Ctrl-C of
the suite does not reach it half-way) and is stopped by its pid. The gateway is started as
production starts it, ``python -m gateway serve`` with settings from ``SPANGATE_*`` variables and
its defaults otherwise; only what a run must set is set: the emulator, the issuer, an audit file
and key in the run's folder, and no drain at shutdown (it serves no more once its phase is over).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.e2e.workload import (
    DATABASE,
    INSTANCE,
    ORDER_ID,
    PATH,
    PERSONAS,
    PROJECT,
    REPO,
    extra_orders,
)

__all__ = [
    "Caller",
    "Driver",
    "Server",
    "StackError",
    "callers",
    "fresh_database",
    "gateway",
    "handwritten",
    "identity_provider",
    "start_driver",
]

STARTUP_SECONDS = 60.0
AUDIT_KEY = "bench-audit-key-not-a-secret"  # the example policy redacts a parameter
# the example policy paginates list_orders: its cursors need a key (32 bytes, base64url)
CURSOR_KEYS = "YmVuY2gtY3Vyc29yLWtleS1ub3QtYS1zZWNyZXQhISE"


class StackError(RuntimeError):
    """A process of the run did not start, or answered wrongly."""


@dataclass(frozen=True)
class Caller:
    persona: str
    tenant: str
    token: str


def fresh_database(folder: Path, policy: Path) -> Any:
    """A new emulator holding the demo database (the gateway's own tables too, as ``make demo``
    creates them) with ``workload.ROWS`` orders; returns the ``EmulatorProcess``."""
    from gateway.dev.database import create_database, load_demo_sql
    from gateway.dev.emulator import start_emulator
    from gateway.policy.compiled import compile_policy
    from gateway.policy.load import load_policy
    from gateway.spanner.ddl import shipped_ddl

    compiled = compile_policy(load_policy(policy, env={"OKTA_ISSUER": "http://127.0.0.1:1/x"}))
    ddl, dml = load_demo_sql(REPO)
    emulator = start_emulator(log_path=folder / "emulator.log")
    try:
        create_database(
            emulator.host, project=PROJECT, instance=INSTANCE, database=DATABASE,
            ddl=[*ddl, *shipped_ddl(compiled)], dml=[*dml, *extra_orders()],
        )  # fmt: skip
    except BaseException:
        emulator.stop()
        raise
    return emulator


@contextmanager
def identity_provider(folder: Path) -> Iterator[Any]:
    """The repository's OpenID provider (an ``IdpProcess``), stopped at the block's end."""
    from gateway.dev.idp import start_idp
    from gateway.dev.keys import write_signing_keys

    keys = folder / "idp-keys.json"
    write_signing_keys(keys)
    with start_idp(idp_dir=REPO / "dev" / "idp", keys_path=keys) as idp:
        yield idp


def callers(issuer: str) -> list[Caller]:
    """A new token for each persona of ``PERSONAS``, with all its client's scopes."""
    from gateway.dev.idp import fetch_token, load_clients

    clients = {c["client_id"]: c for c in load_clients(REPO / "dev" / "idp" / "clients.json")}
    found = []
    for persona in PERSONAS:
        client = clients[persona]
        scopes = " ".join(client.get("scopes") or []) or None
        token = fetch_token(issuer, persona, str(client["client_secret"]), scope=scopes)
        found.append(Caller(persona, str(client["claims"]["tenant"]), token))
    return found


@dataclass
class Server:
    """An HTTP target: ``spangate serve`` or the hand-written service."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGINT (as Ctrl-C), then SIGKILL to its group after 20 s."""
        _stop(self.process, signal.SIGINT)

    def check(self, callers: list[Caller]) -> None:
        """Each caller's token gets 200 and the one order of its tenant: the target is measured
        only once it answers what the others answer."""
        with httpx.Client(timeout=10.0) as http:
            for caller in callers:
                answer = http.get(self.url, headers={"Authorization": f"Bearer {caller.token}"})
                rows = answer.json().get("rows") if answer.status_code == 200 else None
                if not rows or len(rows) != 1 or rows[0].get("OrderId") != ORDER_ID:
                    raise StackError(
                        f"{self.name} answered {caller.persona}'s read with {answer.status_code} "
                        f"{answer.text[:500]}\n(log: {self.log})"
                    )


def _stop(process: subprocess.Popen[Any], sig: signal.Signals, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own group (start_new_session)
            process.wait()


def _inherited() -> dict[str, str]:
    """The driver's environment without its ``SPANGATE_*`` settings: the gateway measured runs on
    the run's settings and ``--gateway-env`` alone, whatever the shell that started it holds."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SPANGATE_")}


def _serve(
    name: str, argv: list[str], env: Mapping[str, str], folder: Path, port: int, ready: str,
    cwd: Path = REPO,
) -> Server:  # fmt: skip
    log = folder / f"{name}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=cwd, env={**_inherited(), **env}, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Server(name, process, port, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=2.0).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{name} was not ready within {STARTUP_SECONDS:g} s: {log}")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


def gateway(
    folder: Path, *, emulator_host: str, issuer: str, policy: Path, env: Mapping[str, str],
    code: Path | None = None,
) -> Server:  # fmt: skip
    """``python -m gateway serve`` on ``policy``, ready (``/readyz`` 200). ``env``: more
    ``SPANGATE_*`` settings, which win over the run's. ``code``: another checkout whose
    ``gateway`` package serves instead of this one's (first on ``PYTHONPATH`` and the working
    directory, so the console script and ``-m`` both import it), on this environment's packages."""
    from gateway.dev.ports import free_port

    port = free_port()
    variables = {
        "SPANNER_EMULATOR_HOST": emulator_host,
        "OKTA_ISSUER": issuer,
        "SPANGATE_AUDIT_PATH": str(folder / f"audit-{port}.jsonl"),
        "SPANGATE_AUDIT_KEY": AUDIT_KEY,
        "SPANGATE_CURSOR_KEYS": CURSOR_KEYS,
        "SPANGATE_DRAIN_SECONDS": "0",
        **env,
    }
    if code is not None:
        variables["PYTHONPATH"] = str(code)
    # The console script the image runs (ENTRYPOINT spangate), installed beside this Python.
    script = Path(sys.executable).with_name("spangate")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway"]
    argv = [*command, "serve", "--policy", str(policy), "--port", str(port)]
    return _serve("gateway", argv, variables, folder, port, "/readyz", cwd=code or REPO)


def handwritten(folder: Path, *, emulator_host: str, issuer: str) -> Server:
    """The hand-written FastAPI service (``bench.e2e.handwritten``), ready (``/healthz`` 200:
    its lifespan has fetched the keys and made its first read)."""
    from gateway.dev.ports import free_port

    port = free_port()
    variables = {"SPANNER_EMULATOR_HOST": emulator_host, "HANDWRITTEN_ISSUER": issuer}
    argv = [sys.executable, "-m", "bench.e2e.handwritten", "--port", str(port)]
    return _serve("fastapi", argv, variables, folder, port, "/healthz")


@dataclass
class Driver:
    """A raw client's closed-loop driver (``bench.e2e.driver``), connected and warmed up."""

    name: str
    process: subprocess.Popen[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def run(self, seconds: float) -> dict[str, Any]:
        """Start the load; the driver's summary once it has ended (the process still runs)."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write("GO\n")
        stdin.flush()
        line = _line(self.process, seconds + 60)
        if not line.startswith("RESULT "):
            self.stop()
            raise StackError(f"{self.name} driver said {line!r}: {self.log.read_text()}")
        result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
        return result

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        _stop(self.process, signal.SIGTERM, timeout=10.0)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_driver(
    folder: Path, *, mode: str, emulator_host: str, conc: int, seconds: int, warmup: int,
    tenants: list[str],
) -> Driver:  # fmt: skip
    """Start the driver and wait until it has connected and warmed up (``READY``)."""
    log = folder / f"raw-{mode}.log"
    argv = [
        sys.executable, "-m", "bench.e2e.driver", "--mode", mode, "--host", emulator_host,
        "--conc", str(conc), "--seconds", str(seconds), "--warmup", str(warmup),
        "--tenants", ",".join(tenants),
    ]  # fmt: skip
    with log.open("wb") as err:
        process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            text=True, start_new_session=True,
        )  # fmt: skip
    driver = Driver(f"raw-{mode}", process, log)
    line = _line(process, STARTUP_SECONDS + warmup)
    if line.strip() != "READY":
        driver.stop()
        raise StackError(f"the raw-{mode} driver did not start ({line!r}): {log.read_text()}")
    return driver


def _line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line the process prints, or "" when it prints none within ``timeout``."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""
