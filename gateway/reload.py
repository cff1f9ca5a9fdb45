"""Hot reload of the policy: SIGHUP, and (when enabled) a change to the policy file or folder.

Contract:

- The new policy is loaded and validated fully (off the event loop) before anything changes; a
  policy with problems is refused, its problems are logged with file:line:column, the failure is
  counted (``failures``, ``last_error``: ``spangate_policy_reloads_total{result="refused"}`` and
  ``/readyz``'s ``policy_reload_error``), and the old policy keeps serving. Nothing a reload does
  raises out of ``reload()``: an unexpected error is logged and counted as a refusal too.
- Issuers whose ``issuer``/``jwks_uri``/``preset`` are unchanged keep their JWKS cache (warm keys,
  no refetch); new or changed issuers get a new cache whose keys are fetched before the swap, and
  if any of them cannot verify tokens then (its identity provider unreachable, no usable key) the
  reload is refused: swapping it in would turn ``/readyz`` 503 on every pod at once. Such a
  refusal (and an unexpected error) is retried by the watcher's poll (``retry``) until it passes
  or the files change. Issuers whose ``issuer``/``preset``/``audience``/``introspection`` are
  unchanged keep their Introspector (cached answers, call budget, back-off, counters:
  ``make_verifier`` is given the old verifier); dropped caches and introspectors are closed after
  the swap, and the new ones of a refused reload at once.
- The policy and its verifier are swapped as one (``Gateway.swap``); requests in flight finish on
  the policy they started with.
- Every statement is PLAN-analysed by Spanner first, as at start-up (a misspelt column or table
  refuses the reload, naming the query).
- Reloads are serialised: a SIGHUP during a reload waits for it.
- New identities get their Database (and first session) before the swap; identities that are
  dropped stay open for the requests still using them; a refused reload leaves none of its new
  ones behind. Changing an identity that is in use, or ``spanner:`` or ``audit:``, needs a
  restart: such a reload is refused with a message saying so, rather than half-applied; so are
  the others that take effect on restart only (``gateway.reload_checks``).
- The warnings of a policy that loads (``LoadedPolicy.warnings``, and those of its analysis,
  ``Analysis.warnings``) are logged, at start-up (``log_policy_warnings``, called by
  ``runtime``) and on every reload that swaps it in.
- A policy whose files are byte for byte the ones being served (the same SHA-256) is "unchanged":
  nothing more is done (no swap), so a spurious trigger of the watcher costs one read and parse.
  SIGHUP also PLAN-analyses an unchanged policy again, so that after a schema change the
  gateway knows the statements' result columns as they now are (a masked query answers 500
  while its result's columns differ from the analysed ones, ``call_shaping.masked``); problems
  found then are logged and counted as a refused reload, and the earlier analysis stays.
- A shadow policy (``--shadow-policy``, ``shadow_path``) is reloaded with the live one, by the
  same triggers, loaded and validated the same way (its statements never run, so they are not
  PLAN-analysed). A shadow with problems is refused and logged (``shadow_failures``,
  ``shadow_last_error``: ``/readyz``'s ``shadow_policy_reload_error``) and the shadow that was
  deciding keeps deciding; the live policy's reload goes on as if there were no shadow. A reload
  that changes only the shadow swaps it in beside the same live policy, and so does a reload
  whose live policy is refused: the refusal is counted and logged as any, and a new valid shadow
  is still swapped in (logged) beside the live policy that keeps serving.

What triggers a reload (SIGHUP, the watcher of ``SPANGATE_WATCH_POLICY``, its poll) is
``gateway.reload_triggers``, the base of ``PolicyReloader``; which folders and changes the
watcher heeds (a Kubernetes ConfigMap's symlinks), ``gateway.reload_paths``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from gateway.app import Gateway
from gateway.audit.configure import check_audit_key
from gateway.auth.jwks import JwksCache
from gateway.auth.verify import TokenVerifier
from gateway.errors import ConfigError, PolicyError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.model import Issuer
from gateway.reload_checks import NeedsRestart, refuse_restart_only_changes
from gateway.reload_triggers import POLL_SECONDS, ReloadTriggers, Watcher
from gateway.spanner.analyze import Analysis

__all__ = ["PolicyReloader", "load_shadow", "log_policy_warnings"]

log = logging.getLogger("spangate.reload")

CacheFactory = Callable[[str, Issuer], JwksCache]
# What a JWKS cache depends on: the same values keep the cache (and its warm keys) on reload.
# ``preset`` decides whether the cache is used at all (an Okta org server's tokens are introspected).
_KEY_FIELDS = {"issuer", "jwks_uri", "preset"}
# (policy, key caches, the verifier being replaced: its unchanged issuers' Introspectors are kept)
VerifierFactory = Callable[
    [CompiledPolicy, Mapping[str, JwksCache], TokenVerifier | None], TokenVerifier
]


def log_policy_warnings(
    policy: CompiledPolicy, analysis: Analysis | None = None, *, shadow: bool = False
) -> None:
    """Log, one line each, what the policy loads with but should not say (``analysis``: and
    what Spanner's analysis of it found; ``shadow``: said of the shadow policy)."""
    found = (*policy.loaded.warnings, *(analysis.warnings if analysis is not None else ()))
    for warning in found:
        log.warning("%s %s", "shadow policy" if shadow else "policy", warning.as_warning())


def load_shadow(path: Path, env: Mapping[str, str]) -> CompiledPolicy:
    """A shadow policy, loaded and validated as the live one is (``PolicyError`` naming
    file:line:column); its statements never run, so Spanner does not analyse them."""
    return compile_policy(load_policy(path, env=env))


class PolicyReloader(ReloadTriggers):
    """Reloads the policy (and the shadow policy) as the module docstring says; its triggers
    are ``ReloadTriggers``'."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        path: Path,
        env: Mapping[str, str],
        make_cache: CacheFactory,
        make_verifier: VerifierFactory,
        watch: bool = False,
        poll_seconds: float = POLL_SECONDS,
        watcher: Watcher | None = None,
        shadow_path: Path | None = None,
    ) -> None:
        super().__init__(
            path,
            shadow_path=shadow_path,
            watch=watch,
            poll_seconds=poll_seconds,
            watcher=watcher,
        )
        self.gateway = gateway
        self.shadow_failures = 0
        self.shadow_last_error: str | None = None
        self.env = env
        self.make_cache = make_cache
        self.make_verifier = make_verifier
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self._what = "the new policy"  # what a PolicyError during a reload is about
        # Told the policy and shadow policy served after each accepted change (gateway.accepted)
        self.on_accepted: Callable[[CompiledPolicy, CompiledPolicy | None], None] | None = None
        self._lock = asyncio.Lock()

    # -- the reload ---------------------------------------------------------------------------
    async def reload(self, *, reanalyse: bool = False) -> bool:
        """Load, validate and swap in the policy at ``path``; False (old policy kept) when it is
        refused. Never raises (but CancelledError): whatever fails is a refusal, logged.
        ``reanalyse`` (SIGHUP): an unchanged policy is PLAN-analysed again (the schema may have
        changed since; a masked query's answers need its result columns to be as analysed).
        The shadow at ``shadow_path`` is reloaded with it; a shadow with problems is refused on
        its own (``shadow_failures``): the old shadow stays."""
        async with self._lock:
            shadow: CompiledPolicy | None = None
            loaded = False  # the shadow to decide after this reload is known
            try:
                self._seen = await asyncio.to_thread(self._fingerprint)
                self._what = "the new policy"
                shadow = await self._load_shadow()
                loaded = True
                return await self._reload(shadow, reanalyse=reanalyse)
            except PolicyError as exc:
                self._failed(f"{self._what} has {len(exc.problems)} problem(s)", exc)
            except NeedsRestart as exc:
                self._failed(str(exc), None)
            except _KeysUnavailable as exc:
                self._failed(str(exc), None, retry=True)
            except Exception as exc:
                log.exception("policy reload failed")
                self._failed(f"{type(exc).__name__}: {exc}", None, retry=True)
            if loaded:
                # The live policy was refused, not the shadow: a new valid shadow still decides,
                # beside the live policy that keeps serving.
                self._swap_shadow(shadow, beside_refused=True)
            return False

    async def _reload(self, shadow: CompiledPolicy | None, *, reanalyse: bool = False) -> bool:
        # Reading, validating and compiling are CPU work (80-120 ms at 10,000 routes): off the
        # event loop.
        policy = await asyncio.to_thread(
            lambda: compile_policy(load_policy(self.path, env=self.env))
        )
        current = self.gateway.active
        if policy.sha256 == current.policy.sha256:
            log.info("policy unchanged (sha256 %s)", policy.sha256[:12])
            if reanalyse:
                self._what = "the policy being served, analysed again,"
                analysis = await self.gateway.executor.analyze(current.policy, fresh=True)
                log.info("policy analysed again against the database")
                for warning in analysis.warnings:
                    log.warning("policy %s", warning.as_warning())
            self._swap_shadow(shadow)
            self.retry = False
            return True
        refuse_restart_only_changes(self.gateway, policy)
        databases = self.gateway.executor.databases
        added = databases.add(policy.model.identities)
        fresh: list[JwksCache] = []
        verifier: TokenVerifier | None = None
        try:
            if added:  # their Databases and first sessions, before the swap
                await databases.warm()
                log.info("new identities: %s", ", ".join(added))
            await self.gateway.executor.analyze(policy)
            caches = await self._caches_for(policy, fresh)
            cold = [cache for cache in fresh if not cache.state().ready]
            if cold:
                raise _KeysUnavailable(cold)
            verifier = self.make_verifier(policy, caches, current.verifier)
            self.gateway.swap(policy, verifier, shadow)
            self._accepted()
        except BaseException:
            # Refused (or failed): nothing of it stays behind.
            for cache in fresh:
                await cache.aclose()
            if verifier is not None:
                await _close_introspectors(verifier, keep=current.verifier)
            await databases.discard(added)
            raise
        kept = {id(cache) for cache in verifier.caches.values()}
        for cache in current.verifier.caches.values():
            if id(cache) not in kept:
                await cache.aclose()  # its background retries end with it
        await _close_introspectors(current.verifier, keep=verifier)
        self.reloads += 1
        self.last_error = None
        self.retry = False
        log.info(
            "policy reloaded: sha256 %s -> %s", current.policy.sha256[:12], policy.sha256[:12]
        )
        log_policy_warnings(policy, self.gateway.executor.analysis(policy))
        return True

    async def _load_shadow(self) -> CompiledPolicy | None:
        """The shadow policy to decide beside the live one after this reload: the one at
        ``shadow_path``, or the current one when that one has problems (refused and logged)."""
        current = self.gateway.active.shadow
        path = self.shadow_path
        if path is None:
            return None
        try:
            shadow = await asyncio.to_thread(lambda: load_shadow(path, self.env))
        except PolicyError as exc:
            self._shadow_failed(f"the shadow policy has {len(exc.problems)} problem(s)", exc)
            return current
        except Exception as exc:
            log.exception("shadow policy reload failed")
            self._shadow_failed(f"{type(exc).__name__}: {exc}", None)
            return current
        try:  # a shadow that redacts needs the audit key, as the live policy does
            check_audit_key(self.gateway.settings, shadow)
        except ConfigError as exc:
            self._shadow_failed(str(exc), None)
            return current
        self.shadow_last_error = None
        if current is None or shadow.sha256 != current.sha256:
            log.info("shadow policy %s: sha256 %s", path, shadow.sha256[:12])
            log_policy_warnings(shadow, shadow=True)
            return shadow
        return current

    def _swap_shadow(self, shadow: CompiledPolicy | None, *, beside_refused: bool = False) -> None:
        """Swap ``shadow`` in beside the live policy being served (when it is another one);
        ``beside_refused``: the live policy's reload was refused (said in the log)."""
        active = self.gateway.active
        if shadow is not active.shadow:
            self.gateway.swap(active.policy, active.verifier, shadow)
            if beside_refused:
                log.info(
                    "shadow policy swapped in (sha256 %s) beside the policy being served "
                    "(sha256 %s), whose reload was refused",
                    shadow.sha256[:12] if shadow is not None else None,
                    active.policy.sha256[:12],
                )
            self._accepted()

    def _accepted(self) -> None:
        """Tell ``on_accepted`` what is served now; a failure is logged (the swap stands)."""
        if self.on_accepted is None:
            return
        active = self.gateway.active
        try:
            self.on_accepted(active.policy, active.shadow)
        except Exception:
            log.exception("the accepted policy could not be kept for workers started later")

    def _shadow_failed(self, message: str, exc: PolicyError | None) -> None:
        self.shadow_failures += 1
        if exc is not None:
            message += ": " + "; ".join(str(p) for p in exc.problems[:3])
        self.shadow_last_error = message
        log.error(
            "shadow policy %s refused, the shadow that was deciding keeps deciding: %s",
            self.shadow_path,
            message,
        )
        if exc is not None:
            for problem in exc.problems:
                log.error("  %s", problem)

    def _failed(self, message: str, exc: PolicyError | None, *, retry: bool = False) -> None:
        self.failures += 1
        self.retry = retry
        if exc is not None:
            message += ": " + "; ".join(str(p) for p in exc.problems[:3])
        self.last_error = message
        log.error("policy reload refused, the old policy keeps serving: %s", message)
        if exc is not None:
            for problem in exc.problems:
                log.error("  %s", problem)

    async def _caches_for(
        self, policy: CompiledPolicy, fresh: list[JwksCache]
    ) -> dict[str, JwksCache]:
        """The key caches of ``policy``'s issuers: the served one where nothing it depends on
        changed, else a new one, started (its keys fetched) and appended to ``fresh``."""
        old = self.gateway.active
        caches: dict[str, JwksCache] = {}
        for name, cfg in policy.model.issuers.items():
            previous = old.policy.model.issuers.get(name)
            cache = old.verifier.caches.get(name)
            if (
                cache is not None
                and previous is not None
                and previous.model_dump(include=_KEY_FIELDS) == cfg.model_dump(include=_KEY_FIELDS)
            ):
                caches[name] = cache
            else:
                cache = self.make_cache(name, cfg)
                fresh.append(cache)
                caches[name] = cache
                await cache.start()
        return caches


async def _close_introspectors(verifier: TokenVerifier, *, keep: TokenVerifier) -> None:
    """Close ``verifier``'s Introspectors that ``keep`` does not also use."""
    kept = {id(one) for one in keep.introspectors.values()}
    for introspector in verifier.introspectors.values():
        if id(introspector) not in kept:
            await introspector.aclose()



class _KeysUnavailable(Exception):
    """New or changed issuers whose keys could not be had: the reload is refused (and retried)."""

    def __init__(self, caches: Sequence[JwksCache]) -> None:
        said = "; ".join(
            f"issuer '{cache.name}' ({cache.issuer}): "
            f"{cache.state().last_error or 'no usable signing key'}"
            for cache in caches
        )
        super().__init__(
            f"the signing keys of new or changed issuers cannot be fetched ({said}): swapped in, "
            "they could verify no token and /readyz would say 503 on every replica. The reload "
            "was refused and the old policy keeps serving; it is retried (the watcher's poll, "
            "SIGHUP) until the keys can be had"
        )
