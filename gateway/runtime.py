"""Assemble a Gateway from settings: the real components behind the app's seams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx

from gateway.app import Gateway, create_app
from gateway.audit.chain import Chain
from gateway.audit.sinks import FileSink, Sink, StdoutSink
from gateway.audit.trail import AuditTrail
from gateway.auth.jwks import JwksCache
from gateway.auth.verify import TokenVerifier
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.model import FileSink as FileSinkConfig
from gateway.policy.model import Issuer, SpannerTarget
from gateway.reload import PolicyReloader
from gateway.settings import Settings
from gateway.spanner.execute import Executor
from gateway.spanner.identities import ClientFactory, Databases, default_client_factory

__all__ = ["build_gateway", "load_compiled", "spanner_target"]


def load_compiled(path: Path, env: Mapping[str, str]) -> CompiledPolicy:
    return compile_policy(load_policy(path, env=env))


def spanner_target(settings: Settings, policy: CompiledPolicy) -> SpannerTarget:
    """The policy's target with SPANGATE_SPANNER_PROJECT/INSTANCE/DATABASE applied."""
    base = policy.model.spanner
    return SpannerTarget(
        project=settings.spanner_project or base.project,
        instance=settings.spanner_instance or base.instance,
        database=settings.spanner_database or base.database,
    )


def _sinks(settings: Settings, policy: CompiledPolicy) -> list[Sink]:
    sinks: list[Sink] = []
    first_file = True
    for config in policy.model.audit.sinks:
        if isinstance(config, FileSinkConfig):
            path = Path(config.path)
            if first_file and settings.audit_path is not None:
                path = settings.audit_path
            elif not path.is_absolute():
                path = policy.base_dir / path
            first_file = False
            sinks.append(FileSink(path))
        else:
            sinks.append(StdoutSink())
    return sinks


def build_gateway(
    settings: Settings,
    *,
    env: Mapping[str, str],
    client_factory: ClientFactory | None = None,
    http: httpx.AsyncClient | None = None,
) -> Gateway:
    """Load the policy and wire the real verifier, executor and audit trail (no I/O yet:
    keys are fetched and identities warmed at start-up)."""
    policy = load_compiled(settings.policy, env)
    own_http = http is None
    client = http or httpx.AsyncClient(
        timeout=settings.http_timeout_seconds, follow_redirects=False
    )

    def make_cache(name: str, cfg: Issuer) -> JwksCache:
        return JwksCache(
            name=name,
            issuer=cfg.issuer,
            client=client,
            jwks_uri=cfg.jwks_uri,
            refresh_seconds=settings.jwks_refresh_seconds,
            stale_seconds=settings.jwks_stale_seconds,
            min_refetch_seconds=settings.jwks_min_refetch_seconds,
        )

    def make_verifier(policy: CompiledPolicy, caches: Mapping[str, JwksCache]) -> TokenVerifier:
        """The one place a verifier is built: at start-up and on every reload."""
        return TokenVerifier(policy.model.issuers, caches, leeway=settings.leeway_seconds)

    caches = {name: make_cache(name, cfg) for name, cfg in policy.model.issuers.items()}
    verifier = make_verifier(policy, caches)
    emulator = settings.spanner_emulator_host
    databases = Databases(
        spanner_target(settings, policy),
        policy.model.identities,
        client_factory or default_client_factory(emulator),
    )
    executor = Executor(databases, threads=settings.spanner_threads, emulator=bool(emulator))
    key = settings.audit_key.get_secret_value().encode() if settings.audit_key else None
    audit = AuditTrail(_sinks(settings, policy), Chain(key))
    closers: list[Callable[[], Awaitable[None]]] = [client.aclose] if own_http else []
    app = create_app(
        settings,
        policy,
        verifier=verifier,
        executor=executor,
        audit=audit,
        audit_key=key,
        closers=closers,
    )
    reloader = PolicyReloader(
        app,
        path=settings.policy,
        env=env,
        make_cache=make_cache,
        make_verifier=make_verifier,
        watch=settings.watch_policy,
    )
    app.reloader = reloader
    app.on_startup.append(reloader.start)
    closers.insert(0, reloader.stop)
    return app
