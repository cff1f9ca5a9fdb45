"""One Spanner ``Database`` per identity, per process, opened at start-up and warmed.

Contract:

- Each identity's Database carries its ``database_role`` (Spanner fine-grained access control):
  the client sends it as ``creator_role`` with every session that Database creates, so every
  statement of that identity runs with that role's grants and no others.
- On GCP an identity's ``service_account`` is impersonated (google-auth impersonated credentials
  over the ambient credentials: workload identity or ADC); no key file is ever read from the
  policy. One client per distinct service account; identities without one use the ambient
  credentials. Against the emulator (``SPANNER_EMULATOR_HOST``) credentials are anonymous and
  service accounts are not used (the emulator records the role but does not enforce it).
- The executor's clients are ``google.cloud.spanner_v1.AsyncClient`` (asyncio; ``execute.py`` says
  why): ``aio(identity)``. Their ``database()`` is a coroutine, so these Databases are created by
  ``open()`` on the event loop at start-up, never on the request path.
- ``get(identity)`` is the same identity's *blocking* Database (``google.cloud.spanner``), for code
  that runs in its own thread (the audit trail's Spanner sink); it is created on first use, without
  an RPC.
- ``aclose()`` closes every Database (cancels its multiplexed-session maintenance task and deletes
  the session), bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.policy.model import Identity, SpannerTarget

__all__ = [
    "SPANNER_SCOPE",
    "impersonated",
    "AsyncClientFactory",
    "ClientFactory",
    "Databases",
    "default_async_client_factory",
    "default_client_factory",
]

log = logging.getLogger("spangate.spanner")

SPANNER_SCOPE = "https://www.googleapis.com/auth/spanner.data"
CONNECT_TIMEOUT_SECONDS = 10.0

# (project, service_account or None) -> a blocking google.cloud.spanner.Client
ClientFactory = Callable[[str, str | None], Any]
# (project, service_account or None) -> a google.cloud.spanner_v1.AsyncClient
AsyncClientFactory = Callable[[str, str | None], Awaitable[Any]]


def impersonated(source: Any, service_account: str | None) -> Any:
    """``source`` credentials, or ``service_account`` impersonated over them (short-lived
    tokens minted by IAM; ``source`` needs roles/iam.serviceAccountTokenCreator on it)."""
    if service_account is None:
        return source
    from google.auth import impersonated_credentials

    return impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
        source_credentials=source,
        target_principal=service_account,
        target_scopes=[SPANNER_SCOPE],
    )


def _gcp_credentials(service_account: str | None) -> Any:
    """Ambient credentials (workload identity / ADC), impersonating ``service_account`` when set.

    Blocking (it may read files or ask the metadata server): call it in a thread."""
    import google.auth

    source, _ = google.auth.default(scopes=[SPANNER_SCOPE])
    return impersonated(source, service_account)


def _emulator_sessions(emulator_host: str | None) -> None:
    if emulator_host:
        # Concurrent read-write transactions on a multiplexed session fail on the emulator with
        # non-retryable errors; regular sessions work. The client reads this per transaction.
        os.environ.setdefault("GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_FOR_RW", "false")


def default_client_factory(emulator_host: str | None) -> ClientFactory:
    """Blocking clients for the emulator (anonymous) or GCP (ambient credentials, impersonated)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import spanner

    _emulator_sessions(emulator_host)

    def make(project: str, service_account: str | None) -> Any:
        if emulator_host:
            return spanner.Client(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": emulator_host},
                disable_builtin_metrics=True,
            )
        return spanner.Client(project=project, credentials=_gcp_credentials(service_account))

    return make


def default_async_client_factory(
    emulator_host: str | None, observability: Mapping[str, Any] | None = None
) -> AsyncClientFactory:
    """Asyncio clients for the emulator (anonymous) or GCP (ambient credentials, impersonated).
    ``observability``: the client's ``observability_options`` (``Tracing.spanner_options``:
    its spans go to the gateway's tracer provider); None: the client's default (the global
    provider, a no-op unless something set one)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.spanner_v1 import AsyncClient

    _emulator_sessions(emulator_host)
    options = dict(observability) if observability else None

    async def make(project: str, service_account: str | None) -> Any:
        if emulator_host:
            return AsyncClient(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": emulator_host},
                disable_builtin_metrics=True,
                observability_options=options,
            )
        credentials = await asyncio.to_thread(_gcp_credentials, service_account)
        return AsyncClient(project=project, credentials=credentials, observability_options=options)

    return make


class Databases:
    """The Database of each identity of one policy, against one Spanner database."""

    def __init__(
        self,
        target: SpannerTarget,
        identities: Mapping[str, Identity],
        client_factory: ClientFactory,
        async_client_factory: AsyncClientFactory,
    ) -> None:
        self.target = target
        self.identities = dict(identities)
        self.roles: dict[str, str | None] = {n: i.database_role for n, i in identities.items()}
        self._factory = async_client_factory
        self._clients: dict[str | None, Any] = {}
        self._databases: dict[str, Any] = {}
        self._open_lock: asyncio.Lock | None = None
        self._blocking_factory = client_factory
        self._blocking_clients: dict[str | None, Any] = {}
        self._blocking: dict[str, Any] = {}

    def add(self, identities: Mapping[str, Identity]) -> list[str]:
        """Add the identities not known yet (a reloaded policy's new ones); ``open()`` then creates
        their Databases. Known names are left alone: an identity never changes under a request
        that is in flight. Returns the names added."""
        added = [name for name in identities if name not in self.identities]
        for name in added:
            self.identities[name] = identities[name]
            self.roles[name] = identities[name].database_role
        return added

    async def discard(self, names: Sequence[str], timeout: float = 5.0) -> None:
        """Undo ``add(...)`` for ``names`` (a reload that was refused): forget them and close
        their asyncio Databases."""
        for name in names:
            self.identities.pop(name, None)
            self.roles.pop(name, None)
            self._blocking.pop(name, None)
            database = self._databases.pop(name, None)
            if database is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(database.close(), timeout)

    @property
    def is_open(self) -> bool:
        return len(self._databases) == len(self.identities)

    async def open(self) -> None:
        """Create the client(s) and each identity's Database (idempotent; no RPC is made)."""
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            for name, identity in self.identities.items():
                if name in self._databases:
                    continue
                sa = identity.service_account
                if sa not in self._clients:
                    self._clients[sa] = await self._factory(self.target.project, sa)
                instance = self._clients[sa].instance(self.target.instance)
                self._databases[name] = await instance.database(
                    self.target.database, database_role=identity.database_role
                )

    def get(self, identity: str) -> Any:
        """The identity's blocking Database (for code in its own thread); KeyError if unknown."""
        database = self._blocking.get(identity)
        if database is None:
            spec = self.identities[identity]
            sa = spec.service_account
            if sa not in self._blocking_clients:
                self._blocking_clients[sa] = self._blocking_factory(self.target.project, sa)
            instance = self._blocking_clients[sa].instance(self.target.instance)
            database = instance.database(self.target.database, database_role=spec.database_role)
            self._blocking[identity] = database
        return database

    def aio(self, identity: str) -> Any:
        """The identity's asyncio Database; KeyError if unknown, RuntimeError before open()."""
        database = self._databases.get(identity)
        if database is None:
            if identity not in self.identities:
                raise KeyError(identity)
            raise RuntimeError("Databases.open() has not run: the gateway has not started")
        return database

    def items(self) -> list[tuple[str, Any]]:
        return list(self._databases.items())

    async def connect(self, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        """Open, then wait until every channel is connected; ``ServiceUnavailable`` naming the
        target after ``timeout`` s (the client's own calls would retry without end)."""
        await self.open()
        from google.api_core import exceptions as gexc

        channels = {
            id(c): c
            for c in (d.spanner_api.transport.grpc_channel for d in self._databases.values())
        }
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(c.channel_ready() for c in channels.values()))
        except TimeoutError:
            raise gexc.ServiceUnavailable(  # type: ignore[no-untyped-call]
                f"cannot connect to Spanner for {self.target.project}/{self.target.instance}/"
                f"{self.target.database} within {timeout:g} s"
            ) from None

    async def warm(self, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        """Connect, then create each identity's first session with a trivial read (in
        parallel), all within ``timeout`` s."""
        await self.connect(timeout)

        async def one(name: str, database: Any) -> None:
            async with database.snapshot() as snapshot:
                results = await snapshot.execute_sql(
                    "SELECT 1", request_options={"request_tag": "spangate warm-up"}
                )
                async for _ in results:
                    pass
            log.debug("identity %s (role %s) warmed", name, self.roles.get(name))

        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one(n, d) for n, d in self._databases.items()))

    def channel_state(self, identity: str) -> str | None:
        """The gRPC connectivity state of the identity's channel (``READY``, ``CONNECTING``,
        ``TRANSIENT_FAILURE``, ``IDLE``...), or None when unknown. Asks an idle channel to connect.
        The executor fails fast on ``TRANSIENT_FAILURE`` and tells a deadline spent reconnecting
        (503) from a slow statement (504)."""
        database = self._databases.get(identity)
        if database is None:
            return None
        try:
            channel = database.spanner_api.transport.grpc_channel
            state = channel.get_state(try_to_connect=True)
        except Exception:  # noqa: BLE001 - unknown is a fine answer for a diagnostic
            return None
        name = getattr(state, "name", None)
        return name if isinstance(name, str) else None

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close every asyncio Database (maintenance tasks, multiplexed sessions), then forget
        them. Blocking Databases are forgotten, not closed: in google-cloud-spanner 3.71 their
        ``close()`` joins a maintenance thread that sleeps 10 minutes between checks (a daemon
        thread: it ends with the process, and Spanner expires the session)."""
        databases = list(self._databases.values())
        self._databases.clear()
        self._clients.clear()
        self._blocking.clear()
        self._blocking_clients.clear()
        for database in databases:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(database.close(), timeout)
