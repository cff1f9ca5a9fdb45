"""Launch and use the local Okta-shaped OpenID provider (``dev/idp/server.js``, node-oidc-provider).

``start_idp`` spawns ``node server.js`` on 127.0.0.1, waits for its ``READY <issuer>`` line and
returns an ``IdpProcess`` (a context manager; ``stop()`` ends it). ``fetch_token`` gets a
client-credentials access token from it, ``load_clients`` reads the persona file
(``dev/idp/clients.json``). Prerequisites: Node.js (Debian packages ``nodejs`` and ``npm``) and
``npm ci --prefix dev/idp``.

    python -m gateway.dev.idp [--port N]    # run it in the foreground until Ctrl-C

The provider's issuer is ``http://127.0.0.1:<port>/oauth2/default``; Okta's routes sit under it:
``/v1/token``, ``/v1/keys`` (JWKS), ``/v1/introspect``, ``/v1/revoke`` and the discovery
documents ``/.well-known/openid-configuration`` and ``/.well-known/oauth-authorization-server``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote_plus

import httpx

from gateway.dev.keys import write_signing_keys
from gateway.dev.ports import HOST, free_port, port_is_free
from gateway.dev.processes import StoppedOnExit, terminate_group

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_IDP_DIR = REPO_ROOT / "dev" / "idp"
DEFAULT_CLIENTS = DEFAULT_IDP_DIR / "clients.json"
ISSUER_PATH = "/oauth2/default"
DEFAULT_RESOURCE = "api://shop"
OPAQUE_RESOURCE = "api://shop-opaque"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN, not a secret
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN, not a secret
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN, not a secret

_STDERR_TAIL = 8000


class IdpError(RuntimeError):
    """The provider could not be started (missing prerequisite, bad config, crash, timeout)."""


class TokenError(RuntimeError):
    """The token endpoint refused a request. ``error`` is the OAuth error code when there is one
    (``invalid_scope``, ``invalid_client``, ``invalid_target``...), ``body`` the parsed JSON body
    (or the raw text)."""

    def __init__(self, message: str, *, status_code: int, error: str | None, body: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.body = body


def issuer_for(port: int, host: str = HOST) -> str:
    """The issuer the provider announces when it listens on ``host:port``."""
    return f"http://{host}:{port}{ISSUER_PATH}"


def _pump(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    """Copy ``stream``'s lines into ``lines``, then put None at end of file."""
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):  # closed under us by stop()
        pass
    finally:
        lines.put(None)


def _tail(stderr_file: IO[bytes], limit: int = _STDERR_TAIL) -> str:
    """The last ``limit`` bytes written to ``stderr_file``, without moving the offset the child
    process shares with us (``os.pread``)."""
    fd = stderr_file.fileno()
    size = os.fstat(fd).st_size
    start = max(0, size - limit)
    data = os.pread(fd, size - start, start)
    text = data.decode("utf-8", errors="replace")
    return ("...\n" if start else "") + text


def _finalize(process: subprocess.Popen[bytes], stderr_file: IO[bytes]) -> None:
    """Last resort (garbage collection or interpreter exit): end and reap the provider."""
    terminate_group(process, timeout=2.0)
    if process.stdout is not None:
        process.stdout.close()
    stderr_file.close()


class IdpProcess(StoppedOnExit):
    """A running provider started by ``start_idp``.

    ``issuer`` is ``http://127.0.0.1:<port>/oauth2/default``; ``pid`` the node process id (the
    leader of its own process group); ``startup_seconds`` the time from spawn to ``READY``.
    ``stop()`` ends it (SIGTERM, then SIGKILL after ``timeout``) and is idempotent; leaving a
    ``with`` block calls it. A provider never stopped is killed when this object is garbage
    collected or at interpreter exit.
    """

    issuer: str
    port: int
    startup_seconds: float

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        issuer: str,
        port: int,
        stderr_file: IO[bytes],
        reader: threading.Thread,
        startup_seconds: float,
    ) -> None:
        self.issuer = issuer
        self.port = port
        self.startup_seconds = startup_seconds
        self._process = process
        self._stderr_file = stderr_file
        self._reader = reader
        self._lock = threading.Lock()
        self._stopped = False
        self._stderr_after_stop = ""
        self._finalizer = weakref.finalize(self, _finalize, process, stderr_file)

    @property
    def pid(self) -> int:
        """The node process id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the node process is still alive."""
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended (negative: killed by that signal)."""
        return self._process.poll()

    @property
    def token_endpoint(self) -> str:
        """``{issuer}/v1/token``."""
        return f"{self.issuer}/v1/token"

    @property
    def jwks_uri(self) -> str:
        """``{issuer}/v1/keys``."""
        return f"{self.issuer}/v1/keys"

    @property
    def introspection_endpoint(self) -> str:
        """``{issuer}/v1/introspect``."""
        return f"{self.issuer}/v1/introspect"

    @property
    def revocation_endpoint(self) -> str:
        """``{issuer}/v1/revoke``."""
        return f"{self.issuer}/v1/revoke"

    def stderr_text(self) -> str:
        """The tail of what the provider wrote to stderr (also available after ``stop()``)."""
        with self._lock:
            if self._stopped:
                return self._stderr_after_stop
            return _tail(self._stderr_file)

    def stop(self, timeout: float = 5.0) -> None:
        """End the provider: SIGTERM, wait up to ``timeout`` s, then SIGKILL; reap it and close
        its pipes. Safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._finalizer.detach()
            terminate_group(self._process, timeout)
            self._reader.join(timeout=2.0)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._stderr_after_stop = _tail(self._stderr_file)
            self._stderr_file.close()


    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<IdpProcess pid={self.pid} issuer={self.issuer} {state}>"


def _check_prerequisites(idp_dir: Path) -> str:
    """Return the path of ``node``; raise IdpError saying what to install when it is missing."""
    node = shutil.which("node")
    if node is None:
        raise IdpError(
            "Node.js is not installed (no `node` on PATH): the local OpenID provider needs it. "
            "Install it, e.g. `apt-get install nodejs npm` on Debian, then run "
            "`npm ci --prefix dev/idp`."
        )
    if not (idp_dir / "server.js").is_file():
        raise IdpError(
            f"{idp_dir / 'server.js'} not found: idp_dir must be the repository's dev/idp"
        )
    if not (idp_dir / "node_modules" / "oidc-provider" / "package.json").is_file():
        try:
            prefix = str(idp_dir.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            prefix = str(idp_dir)
        raise IdpError(
            f"{idp_dir / 'node_modules'} is missing or incomplete: run `npm ci --prefix {prefix}` "
            "(it installs oidc-provider from package-lock.json)."
        )
    return node


def _spawn(
    node: str, idp_dir: Path, keys_path: Path, port: int, clients_path: Path | None, timeout: float
) -> IdpProcess:
    """Start one provider on ``port`` and wait for READY; raise IdpError on failure."""
    env = dict(os.environ)
    env.update({"IDP_HOST": HOST, "IDP_PORT": str(port), "IDP_KEYS": str(keys_path)})
    env.pop("IDP_CLIENTS", None)
    if clients_path is not None:
        env["IDP_CLIENTS"] = str(clients_path)
    expected = issuer_for(port)

    stderr_file = tempfile.TemporaryFile(prefix="spangate-idp-", suffix=".stderr")
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [node, "server.js"],
            cwd=idp_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            start_new_session=True,
        )
    except BaseException:
        stderr_file.close()
        raise
    assert process.stdout is not None
    lines: queue.Queue[bytes | None] = queue.Queue()
    reader = threading.Thread(
        target=_pump, args=(process.stdout, lines), name=f"idp-stdout-{process.pid}", daemon=True
    )
    reader.start()
    idp = IdpProcess(
        process,
        issuer=expected,
        port=port,
        stderr_file=stderr_file,
        reader=reader,
        startup_seconds=0.0,
    )

    other_output: list[str] = []
    deadline = started + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IdpError(
                    f"the OpenID provider did not print READY within {timeout:g} s "
                    f"(pid {process.pid}, port {port}).\nstdout: {other_output}\n"
                    f"stderr:\n{idp.stderr_text()}"
                )
            try:
                raw = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if raw is None:  # stdout closed: the process has ended (or is ending)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5.0)
                raise IdpError(
                    f"the OpenID provider exited with status {process.returncode} before it was "
                    f"ready (port {port}).\nstdout: {other_output}\nstderr:\n{idp.stderr_text()}"
                )
            line = raw.decode("utf-8", errors="replace").strip()
            if line.startswith("READY "):
                announced = line.removeprefix("READY ").strip()
                if announced != expected:
                    raise IdpError(
                        f"the provider announced issuer {announced}, expected {expected}"
                    )
                idp.startup_seconds = time.monotonic() - started
                return idp
            other_output.append(line)
    except BaseException:
        idp.stop()
        raise


def start_idp(
    *,
    idp_dir: Path,
    keys_path: Path,
    port: int | None = None,
    clients_path: Path | None = None,
    timeout: float = 20.0,
) -> IdpProcess:
    """Start ``node server.js`` from ``idp_dir`` on 127.0.0.1 and return once it is ready.

    ``keys_path``: the private key set (``gateway.dev.keys.write_signing_keys``). ``port``:
    None picks a free port (``free_port``: bind test plus a connect test) and retries with
    another if that one is taken meanwhile; an explicit port must be free or IdpError is raised.
    ``clients_path``: the personas file, default ``dev/idp/clients.json``. The process runs in a
    session (process group) of its own, so a Ctrl-C aimed at the caller does not reach it.

    Raises IdpError when node or ``idp_dir/node_modules`` is missing (saying what to install),
    or when the provider exits or stays silent for ``timeout`` seconds (with its stderr).
    """
    idp_dir = Path(idp_dir)
    node = _check_prerequisites(idp_dir)
    keys_path = Path(keys_path).resolve()
    if clients_path is not None:
        clients_path = Path(clients_path).resolve()
    if port is not None:
        if not port_is_free(port):
            raise IdpError(f"port {port} on {HOST} is in use (something binds it or answers on it)")
        return _spawn(node, idp_dir, keys_path, port, clients_path, timeout)

    attempts = 3
    for attempt in range(1, attempts + 1):
        chosen = free_port()
        try:
            return _spawn(node, idp_dir, keys_path, chosen, clients_path, timeout)
        except IdpError as err:
            # Another process took the port between free_port() and node's listen().
            if "EADDRINUSE" not in str(err) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def fetch_token(
    issuer: str,
    client_id: str,
    client_secret: str,
    *,
    scope: str | None = None,
    resource: str | None = DEFAULT_RESOURCE,
    timeout: float = 10.0,
) -> str:
    """Return an access token from ``{issuer}/v1/token`` (client-credentials grant).

    Authenticates with client_secret_basic (id and secret form-encoded, RFC 6749 2.3.1).
    ``scope``: space-separated scopes, or None to request none. ``resource``: the resource
    indicator, ``api://shop`` (JWT) by default, ``api://shop-opaque`` for an opaque token, None
    to send none (the provider then defaults to ``api://shop``). Raises TokenError carrying the
    provider's error body on any non-200 answer.
    """
    data = {"grant_type": "client_credentials"}
    if resource is not None:
        data["resource"] = resource
    if scope is not None:
        data["scope"] = scope
    credentials = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    headers = {
        "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
        "Accept": "application/json",
    }
    response = httpx.post(f"{issuer}/v1/token", data=data, headers=headers, timeout=timeout)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.status_code != 200:
        error = body.get("error") if isinstance(body, dict) else None
        raise TokenError(
            f"token request for client {client_id!r} failed: HTTP {response.status_code} {body}",
            status_code=response.status_code,
            error=error if isinstance(error, str) else None,
            body=body,
        )
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise TokenError(
            f"token response for client {client_id!r} has no access_token: {body}",
            status_code=response.status_code,
            error=None,
            body=body,
        )
    return token


def _basic(client_id: str, client_secret: str) -> str:
    credentials = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def exchange_token(
    issuer: str,
    actor_id: str,
    actor_secret: str,
    subject_token: str,
    *,
    scope: str | None = None,
    resource: str | None = None,
    requested_token_type: str | None = None,
    timeout: float = 10.0,
) -> str:
    """RFC 8693 token exchange at ``{issuer}/v1/token``: the actor (authenticated with
    client_secret_basic) gets a token for ``subject_token``'s subject carrying ``act: {sub:
    actor_id}`` (see dev/idp/server.js); ``requested_token_type=ID_TOKEN_TYPE`` returns an ID
    token instead. Raises TokenError with the provider's error body on any non-200 answer."""
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
    }
    for name, value in (
        ("scope", scope),
        ("resource", resource),
        ("requested_token_type", requested_token_type),
    ):
        if value is not None:
            data[name] = value
    headers = {"Authorization": _basic(actor_id, actor_secret), "Accept": "application/json"}
    response = httpx.post(f"{issuer}/v1/token", data=data, headers=headers, timeout=timeout)
    body: Any = (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else response.text
    )
    token = body.get("access_token") if isinstance(body, dict) else None
    if response.status_code != 200 or not isinstance(token, str):
        error = body.get("error") if isinstance(body, dict) else None
        raise TokenError(
            f"token exchange by {actor_id!r} failed: HTTP {response.status_code} {body}",
            status_code=response.status_code,
            error=error if isinstance(error, str) else None,
            body=body,
        )
    return token


def revoke_token(
    issuer: str, client_id: str, client_secret: str, token: str, *, timeout: float = 10.0
) -> None:
    """Revoke ``token`` at ``{issuer}/v1/revoke`` (RFC 7009) as its own client; the provider then
    introspects it as ``{"active": false}``. Raises TokenError unless the answer is 200."""
    response = httpx.post(
        f"{issuer}/v1/revoke",
        data={"token": token},
        headers={"Authorization": _basic(client_id, client_secret)},
        timeout=timeout,
    )
    if response.status_code != 200:
        raise TokenError(
            f"revocation failed: HTTP {response.status_code} {response.text}",
            status_code=response.status_code,
            error=None,
            body=response.text,
        )


def load_clients(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Read a clients file (default ``dev/idp/clients.json``): a list of objects each with at
    least a string ``client_id`` and ``client_secret`` (and ``description``, ``scopes``,
    ``claims``, optional ``alg``, ``access_token_ttl`` and ``auth_method``: client_secret_basic, the
    default, or client_secret_post; a workload client adds ``shape``: kubernetes, google or
    github-actions, ``subject`` and ``audiences``, see ``dev/idp/server.js``). Raises ValueError
    when malformed."""
    file = Path(path) if path is not None else DEFAULT_CLIENTS
    doc = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(doc, list):
        raise ValueError(f"{file}: expected a JSON list of clients")
    clients: list[dict[str, Any]] = []
    for i, client in enumerate(doc):
        if not isinstance(client, dict):
            raise ValueError(f"{file}: client #{i} is not a JSON object")
        for field in ("client_id", "client_secret"):
            if not isinstance(client.get(field), str) or not client[field]:
                raise ValueError(f"{file}: client #{i} has no {field}")
        clients.append(client)
    return clients


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.dev.idp``: run the provider in the foreground until Ctrl-C/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m gateway.dev.idp", description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument(
        "--keys",
        type=Path,
        default=REPO_ROOT / ".run" / "idp-keys.json",
        help="private key set; generated when missing (default: .run/idp-keys.json)",
    )
    parser.add_argument("--clients", type=Path, default=None, help="clients file")
    parser.add_argument("--idp-dir", type=Path, default=DEFAULT_IDP_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not args.keys.exists():
        args.keys.parent.mkdir(parents=True, exist_ok=True)
        write_signing_keys(args.keys)
        print(f"wrote new signing keys to {args.keys}", file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with start_idp(
            idp_dir=args.idp_dir, keys_path=args.keys, port=args.port, clients_path=args.clients
        ) as idp:
            print(f"issuer {idp.issuer} (pid {idp.pid}, ready in {idp.startup_seconds:.2f} s)")
            for client in load_clients(args.clients):
                print(f"  {client['client_id']:<20} {client.get('description', '')}")
            sys.stdout.flush()
            while not stop.wait(0.5):
                if not idp.running:
                    print(f"provider exited:\n{idp.stderr_text()}", file=sys.stderr)
                    return 1
    except KeyboardInterrupt:  # Ctrl-C: leaving the with block has stopped the provider
        pass
    except IdpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
