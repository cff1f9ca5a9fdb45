"""Assemble a Gateway from settings: the real components behind the app's seams."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.accepted import load_accepted, save_accepted
from gateway.app import Gateway, create_app
from gateway.audit.configure import audit_keys, build_trail, check_audit_key, unkeyed_warning
from gateway.auth.introspect import introspectors
from gateway.auth.jwks import JwksCache
from gateway.auth.presets import is_org_server
from gateway.auth.verify import TokenVerifier
from gateway.budgets.check import Budgets
from gateway.budgets.core import UNKEYED_WARNING as UNKEYED_BUDGETS
from gateway.budgets.core import derive_hash_key
from gateway.budgets.store import BudgetStore, MemoryStore
from gateway.errors import ConfigError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.masking import hash_masks
from gateway.policy.model import Issuer, SpannerTarget
from gateway.policy.pagination import paginated_queries
from gateway.reload import PolicyReloader, load_shadow, log_policy_warnings
from gateway.settings import Settings
from gateway.shaping.cursors import CursorKeys
from gateway.shaping.masks import MaskKey
from gateway.spanner.execute import Executor
from gateway.spanner.identities import (
    AsyncClientFactory,
    ClientFactory,
    Databases,
    default_async_client_factory,
    default_client_factory,
)
from gateway.tracing import Tracing, check_tracing, tracing_from_env

__all__ = [
    "budget_store",
    "build_budgets",
    "Startup",
    "build_gateway",
    "check_startup",
    "cursor_keys",
    "load_compiled",
    "mask_key",
    "spanner_target",
]

log = logging.getLogger("spangate")


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


def budget_store(settings: Settings) -> BudgetStore:
    """Redis when SPANGATE_REDIS_URL is set (one budget for every replica), else this process."""
    if settings.redis_url is None:
        return MemoryStore()
    from gateway.budgets.redis_store import RedisStore

    return RedisStore(
        settings.redis_url.get_secret_value(), timeout=settings.redis_timeout_seconds
    )


def build_budgets(settings: Settings) -> Budgets:
    """The budgets' store, and the key of principal hashes in its keys: derived from
    SPANGATE_AUDIT_KEY, so every replica that shares the audit key (as replicas sharing one
    Redis must) names a principal alike. Redis without it: a warning (log and ``/readyz``)."""
    secret = settings.audit_key.get_secret_value().encode() if settings.audit_key else None
    key = derive_hash_key(secret)
    if key is None and settings.redis_url is not None:
        log.warning("%s", UNKEYED_BUDGETS)
    return Budgets(budget_store(settings), key=key)


MASK_KEY_MIN_LENGTH = 16


def mask_key(settings: Settings, policy: CompiledPolicy) -> MaskKey | None:
    """The key of ``hash`` masks from ``SPANGATE_MASK_KEY``; ConfigError when the policy has
    ``hash`` masks and no key, or the key is shorter than 16 characters (never shown)."""
    secret = settings.mask_key.get_secret_value() if settings.mask_key is not None else None
    if secret is not None and len(secret) < MASK_KEY_MIN_LENGTH:
        raise ConfigError(
            f"SPANGATE_MASK_KEY is shorter than {MASK_KEY_MIN_LENGTH} characters: with a short "
            "key anyone who sees a masked hash can try every candidate value. Use e.g. 32 random "
            "bytes in hex from your secret store"
        )
    hashed = hash_masks(policy.model)
    if hashed and secret is None:
        raise ConfigError(
            f"the policy masks {', '.join(hashed)} with hash, which needs SPANGATE_MASK_KEY (an "
            "HMAC key: without one a hash of an email or a number is reversed by hashing every "
            "candidate). Set SPANGATE_MASK_KEY (e.g. 32 random bytes in hex from your secret "
            "store), or mask with redact, null or last4"
        )
    return MaskKey.from_secret(secret.encode("utf-8")) if secret is not None else None


def cursor_keys(settings: Settings, policy: CompiledPolicy | None) -> CursorKeys | None:
    """The keys of pagination cursors from ``SPANGATE_CURSOR_KEYS``; ConfigError when a key is
    not a base64url 256-bit key (its position named, never its text), or when ``policy`` has
    paginated queries and no keys are set: cursors must open on every replica, so keys made up
    here would not do."""
    text = settings.cursor_keys.get_secret_value() if settings.cursor_keys is not None else None
    keys = None
    if text is not None:
        try:
            keys = CursorKeys.parse(text)
        except ValueError as exc:
            raise ConfigError(
                f"SPANGATE_CURSOR_KEYS: {exc}. Give comma-separated base64url keys of 32 random "
                "bytes each (e.g. python -c \"import secrets, base64; "
                "print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())\")"
            ) from None
    paginated = paginated_queries(policy.model) if policy is not None else []
    if paginated and keys is None:
        raise ConfigError(
            f"the policy paginates {', '.join(paginated)}, whose cursors are sealed with "
            "SPANGATE_CURSOR_KEYS, which is not set: set it (comma-separated base64url 256-bit "
            "keys, the same on every replica; see docs/pagination.md)"
        )
    return keys


@dataclass(frozen=True)
class Startup:
    """What ``check_startup`` found good to serve."""

    policy: CompiledPolicy
    shadow: CompiledPolicy | None
    mask_key: MaskKey | None
    cursor_keys: CursorKeys | None


def check_startup(
    settings: Settings, env: Mapping[str, str], *, run_dir: Path | None = None
) -> Startup:
    """Every check of the settings and the policy that needs no I/O but reading the policy, in
    one order, for ``spangate serve`` in one process (``build_gateway``) and for the supervisor
    of ``--workers N`` before it starts a worker: the same refusal, message and exit code (2)
    either way. Raises ``PolicyError`` (the policy or the shadow policy has problems) or
    ``ConfigError``: the policy (or shadow) redacts without an audit key, masks with ``hash``
    without a mask key, paginates without cursor keys, has budgets under ``--workers`` without
    Redis; an ``OTEL_*`` variable the tracing cannot honour.

    ``run_dir`` (a worker of ``--workers N``): the policy the gateway has accepted, kept there
    (``gateway.accepted``), rather than the files as they are now."""
    accepted = None
    if run_dir is not None:
        accepted = load_accepted(
            run_dir, policy_path=settings.policy, shadow_path=settings.shadow_policy, env=env
        )
    shadow = None
    if accepted is not None:
        policy, shadow = accepted
    else:
        policy = load_compiled(settings.policy, env)
    if settings.shadow_policy is not None:  # a candidate with problems: no start (exit 2)
        if shadow is None:
            shadow = load_shadow(settings.shadow_policy, env)
        check_audit_key(settings, shadow)  # a shadow that redacts needs the key too (exit 2)
    check_audit_key(settings, policy)
    masking = mask_key(settings, policy)
    cursors = cursor_keys(settings, policy)
    if settings.workers > 1 and policy.model.budgets and settings.redis_url is None:
        raise ConfigError(
            "the policy has budgets: with --workers, each worker would count them on its own "
            "(N times the limit); set SPANGATE_REDIS_URL to count them once for all workers"
        )
    check_tracing(env)
    return Startup(policy, shadow, masking, cursors)


async def _analyze(executor: Executor, app: Gateway) -> None:
    analysis = await executor.analyze(app.policy)
    for warning in analysis.warnings:  # the loader's were logged when it was built
        log.warning("policy %s", warning.as_warning())


async def _close_caches(app: Gateway) -> None:
    for cache in app.verifier.caches.values():
        await cache.aclose()
    for introspector in app.verifier.introspectors.values():
        await introspector.aclose()


def build_gateway(
    settings: Settings,
    *,
    env: Mapping[str, str],
    client_factory: ClientFactory | None = None,
    async_client_factory: AsyncClientFactory | None = None,
    http: httpx.AsyncClient | None = None,
    worker: int | None = None,
    run_dir: Path | None = None,
    tracing: Tracing | None = None,
) -> Gateway:
    """Load the policy and wire the real verifier, executor and audit trail (no I/O yet:
    keys are fetched and identities warmed at start-up).

    ``worker``: this process's number under ``spangate serve --workers N`` (its audit chain and
    file, ``/readyz``'s ``worker``), and ``run_dir`` the workers' shared private directory (see
    ``gateway.workers``); None for a single process.

    Traces: ``tracing`` when given (tests: an in-memory exporter), else as the ``OTEL_*``
    variables of ``env`` ask (``tracing_from_env``: off unless they name an exporter); the
    Spanner client's spans go to the same provider. ConfigError for an exporter it cannot load.

    ``settings.shadow_policy``: a candidate decided beside the live policy (``gateway.policy.
    shadow``), loaded and validated as it is: one with problems raises ``PolicyError``.

    Raises ``ConfigError`` when the policy redacts audit values and there is no audit key (an
    unkeyed trail without redactions is allowed, with a warning here and in ``/readyz``), masks
    a column with ``hash`` and there is no mask key (``mask_key``), or paginates a query and
    there are no cursor keys (``cursor_keys``)."""
    checked = check_startup(settings, env, run_dir=run_dir)
    policy, shadow = checked.policy, checked.shadow
    masking, cursors = checked.mask_key, checked.cursor_keys
    if shadow is not None:
        log.info("shadow policy %s: sha256 %s", settings.shadow_policy, shadow.sha256[:12])
        log_policy_warnings(shadow, shadow=True)
    if tracing is None:
        tracing = tracing_from_env(env)
    if (warning := unkeyed_warning(settings)) is not None:
        log.warning("%s; set SPANGATE_AUDIT_KEY", warning)
    log_policy_warnings(policy)
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
            enabled=not is_org_server(cfg),  # an Okta org server's tokens are introspected
            deadline_seconds=settings.http_timeout_seconds,
            background=True,  # retried while cold or failing, so readiness follows the IdP
            retry_max_seconds=settings.jwks_retry_max_seconds,
        )

    # Opaque tokens that fit no introspecting issuer: one count for the process, across reloads.
    refusals: Counter[str] = Counter()

    def make_verifier(
        policy: CompiledPolicy,
        caches: Mapping[str, JwksCache],
        previous: TokenVerifier | None = None,
    ) -> TokenVerifier:
        """The one place a verifier is built: at start-up and on every reload. ``previous`` (the
        verifier being replaced) lends its Introspectors to the issuers whose introspection did
        not change, as the reloader lends unchanged issuers' key caches."""
        return TokenVerifier(
            policy.model.issuers,
            caches,
            introspectors=introspectors(
                policy.model.issuers,
                client,
                cache_seconds=settings.introspection_cache_seconds,
                leeway=settings.leeway_seconds,
                rate=settings.introspection_rate,
                burst=settings.introspection_burst,
                max_concurrency=settings.introspection_concurrency,
                deadline_seconds=settings.http_timeout_seconds,
                previous=None if previous is None else previous.introspectors,
            ),
            leeway=settings.leeway_seconds,
            max_token_bytes=settings.max_token_bytes,
            refusals=refusals,
        )

    caches = {name: make_cache(name, cfg) for name, cfg in policy.model.issuers.items()}
    verifier = make_verifier(policy, caches)
    emulator = settings.spanner_emulator_host
    databases = Databases(
        spanner_target(settings, policy),
        policy.model.identities,
        client_factory or default_client_factory(emulator),
        async_client_factory
        or default_async_client_factory(
            emulator, tracing.spanner_options if tracing is not None else None
        ),
    )
    executor = Executor(
        databases,
        emulator=bool(emulator),
        max_settling=settings.max_settling_writes,
        direct_reads=settings.spanner_direct_reads,
    )
    audit = build_trail(settings, policy, databases, worker=worker, run_dir=run_dir)
    closers: list[Callable[[], Awaitable[None]]] = [client.aclose] if own_http else []
    closers.append(executor.aclose)  # the gateway closes its tracing last (Gateway.shutdown)
    app = create_app(
        settings,
        policy,
        verifier=verifier,
        executor=executor,
        audit=audit,
        audit_key=audit_keys(settings).redact,
        closers=closers,
        budgets=build_budgets(settings),
        tracing=tracing,
        mask_key=masking,
        shadow=shadow,
        cursor_keys=cursors,
    )
    reloader = PolicyReloader(
        app,
        path=settings.policy,
        env=env,
        make_cache=make_cache,
        make_verifier=make_verifier,
        watch=settings.watch_policy,
        poll_seconds=settings.policy_poll_seconds,
        shadow_path=settings.shadow_policy,
    )
    if run_dir is not None:  # a worker: what it accepts is what a replacement will load
        accepted_dir = run_dir
        reloader.on_accepted = lambda policy, shadow: save_accepted(accepted_dir, policy, shadow)
    app.reloader = reloader
    app.worker = worker
    # Every statement PLAN-analysed by Spanner before /readyz says ready (a misspelt column fails
    # the start naming its query); runs after the identities are warmed.
    app.on_startup.insert(0, lambda: _analyze(executor, app))
    app.on_startup.append(reloader.start)
    app.on_startup.append(audit.start)  # open the sinks, read each predecessor's last hash
    closers.insert(0, lambda: _close_caches(app))
    closers.insert(0, reloader.stop)
    if app.metrics.multiprocess is not None:  # several workers: each publishes for the others
        publisher = _Background(lambda: app.metrics.publish_every(app))
        app.on_startup.append(publisher.start)
        closers.append(publisher.stop)
    return app


class _Background:
    """One task for the process's lifetime: started at start-up, cancelled at shutdown."""

    def __init__(self, run: Callable[[], Awaitable[None]]) -> None:
        self._run = run
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
