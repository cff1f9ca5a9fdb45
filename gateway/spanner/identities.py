"""One Spanner ``Database`` per identity, per process, created at start-up and warmed.

Each identity's Database carries its ``database_role`` (Spanner fine-grained access control): the
role is sent with every session the Database creates. On GCP an identity's ``service_account`` is
impersonated over the ambient credentials (workload identity / ADC): one Client per distinct
service account. Against the emulator (``SPANNER_EMULATOR_HOST``) credentials are anonymous and
service accounts are ignored (the emulator sends the role but does not enforce it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import spanner

from gateway.policy.model import Identity, SpannerTarget

__all__ = ["Databases", "ClientFactory", "default_client_factory"]

log = logging.getLogger("spangate.spanner")

SPANNER_SCOPE = "https://www.googleapis.com/auth/spanner.data"

ClientFactory = Callable[[str, str | None], Any]  # (project, service_account) -> spanner.Client


def default_client_factory(emulator_host: str | None) -> ClientFactory:
    """Clients for the emulator (anonymous) or for GCP (ADC, optionally impersonated)."""
    if emulator_host:
        # Concurrent read-write transactions on a multiplexed session fail on the emulator with
        # non-retryable errors; regular sessions work. The client reads this per transaction.
        os.environ.setdefault("GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_FOR_RW", "false")

    def make(project: str, service_account: str | None) -> Any:
        if emulator_host:
            return spanner.Client(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": emulator_host},
                disable_builtin_metrics=True,
            )
        if service_account is None:
            return spanner.Client(project=project)
        import google.auth
        from google.auth import impersonated_credentials

        source, _ = google.auth.default()
        credentials = impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
            source_credentials=source,
            target_principal=service_account,
            target_scopes=[SPANNER_SCOPE],
        )
        return spanner.Client(project=project, credentials=credentials)

    return make


class Databases:
    """The Database of each identity; ``get(name)`` never creates one on the request path."""

    def __init__(
        self,
        target: SpannerTarget,
        identities: Mapping[str, Identity],
        client_factory: ClientFactory,
    ) -> None:
        self.target = target
        self._clients: dict[str | None, Any] = {}
        self._databases: dict[str, Any] = {}
        self.roles: dict[str, str | None] = {}
        for name, identity in identities.items():
            sa = identity.service_account
            if sa not in self._clients:
                self._clients[sa] = client_factory(target.project, sa)
            instance = self._clients[sa].instance(target.instance)
            self._databases[name] = instance.database(
                target.database, database_role=identity.database_role
            )
            self.roles[name] = identity.database_role

    def get(self, identity: str) -> Any:
        return self._databases[identity]

    def warm(self) -> None:
        """Open each identity's first session with a trivial read (blocking: run it in a thread)."""
        for name, database in self._databases.items():
            with database.snapshot() as snapshot:
                list(
                    snapshot.execute_sql(
                        "SELECT 1", request_options={"request_tag": "spangate-warmup"}
                    )
                )
            log.debug("identity %s warmed", name)

    def close(self) -> None:
        """Forget the Databases. ``Database.close()`` is not called: in google-cloud-spanner 3.71
        it joins the multiplexed-session maintenance thread, which sleeps 10 minutes between
        checks; that daemon thread ends with the process, and the server expires the session."""
        self._databases.clear()
        self._clients.clear()
