"""Hot reload of the policy: SIGHUP, and (when enabled) a change to the policy file or folder.

Contract:

- The new policy is loaded and validated fully (off the event loop) before anything changes; a
  policy with problems is refused, its problems are logged with file:line:column, the failure is
  counted (``failures``, ``last_error``), and the old policy keeps serving.
- Issuers whose ``issuer``/``jwks_uri``/``preset`` are unchanged keep their JWKS cache (warm keys,
  no refetch); new or changed issuers get a new cache whose keys are fetched before the swap.
  Likewise issuers whose ``issuer``/``preset``/``audience``/``introspection`` are unchanged keep
  their Introspector (cached answers, call budget, back-off, counters: ``make_verifier`` is given
  the old verifier); dropped caches and introspectors are closed after the swap.
- The policy and its verifier are swapped as one (``Gateway.swap``); requests in flight finish on
  the policy they started with.
- Every statement is PLAN-analysed by Spanner first, as at start-up (a misspelt column or table
  refuses the reload, naming the query).
- Reloads are serialised: a SIGHUP during a reload waits for it.
- New identities get their Database (and first session) before the swap; identities that are
  dropped stay open for the requests still using them. Changing an identity that is in use, or
  ``spanner:`` or ``audit:``, needs a restart: such a reload is refused with a message saying so,
  rather than half-applied. So is a policy with budgets under ``--workers`` without Redis (each
  worker would count them on its own), a policy that masks a column with ``hash`` when the
  gateway started without ``SPANGATE_MASK_KEY``, and one that paginates a query when it started
  without ``SPANGATE_CURSOR_KEYS``.
- The warnings of a policy that loads (``LoadedPolicy.warnings``) are logged, at start-up
  (``log_policy_warnings``, called by ``runtime``) and on every reload that swaps it in.
- A policy whose files are byte for byte the ones being served (the same SHA-256) is "unchanged":
  nothing more is done (no PLAN analysis, no swap), so a spurious trigger costs one read and parse.
- The watcher watches the *folder* (the policy folder, or the folder holding the policy file),
  not the file: an editor that saves by renaming, and Kubernetes, which updates a mounted
  ConfigMap by renaming a new ``..data`` symlink over the old one (the file ``policy.yaml`` is a
  symlink ``..data/policy.yaml`` and never changes itself), replace the file's inode, and a watch
  on the old inode would see the first update and then nothing. Only changes that can change the
  policy count (``policy_change``): the policy file's own name, ``*.yaml``/``*.yml`` in a policy
  folder, and the ``..``-names of Kubernetes' atomic writer; an audit file beside the policy
  does not.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.app import Gateway
from gateway.auth.jwks import JwksCache
from gateway.auth.verify import TokenVerifier
from gateway.errors import PolicyError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.masking import hash_masks
from gateway.policy.model import Issuer
from gateway.policy.pagination import paginated_queries

__all__ = ["PolicyReloader", "log_policy_warnings", "policy_change"]

log = logging.getLogger("spangate.reload")

CacheFactory = Callable[[str, Issuer], JwksCache]
# What a JWKS cache depends on: the same values keep the cache (and its warm keys) on reload.
# ``preset`` decides whether the cache is used at all (an Okta org server's tokens are introspected).
_KEY_FIELDS = {"issuer", "jwks_uri", "preset"}
# (policy, key caches, the verifier being replaced: its unchanged issuers' Introspectors are kept)
VerifierFactory = Callable[
    [CompiledPolicy, Mapping[str, JwksCache], TokenVerifier | None], TokenVerifier
]


def log_policy_warnings(policy: CompiledPolicy) -> None:
    """Log, one line each, what the policy loads with but should not say."""
    for warning in policy.loaded.warnings:
        log.warning("policy %s", warning.as_warning())


class PolicyReloader:
    def __init__(
        self,
        gateway: Gateway,
        *,
        path: Path,
        env: Mapping[str, str],
        make_cache: CacheFactory,
        make_verifier: VerifierFactory,
        watch: bool = False,
    ) -> None:
        self.gateway = gateway
        self.path = path
        self.env = env
        self.make_cache = make_cache
        self.make_verifier = make_verifier
        self.watch = watch
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # -- triggers -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Install the SIGHUP handler and, when enabled, the file watcher (call on the loop)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.warning("SIGHUP reload is not available in this process")
        if self.watch:
            self._watcher = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError):
            pass

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        task = asyncio.ensure_future(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        from watchfiles import awatch

        folder = self.path if self.path.is_dir() else self.path.parent
        relevant = policy_change(self.path)
        async for _changes in awatch(
            folder,
            watch_filter=lambda _change, changed: relevant(changed),
            recursive=False,
            stop_event=self._stop,
            debounce=200,
        ):
            log.info("%s changed: reloading", self.path)
            await self.reload()

    # -- the reload ---------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Load, validate and swap in the policy at ``path``; False (old policy kept) on error."""
        async with self._lock:
            try:
                # Reading, validating and compiling are CPU work (80-120 ms at 10,000 routes):
                # off the event loop.
                policy = await asyncio.to_thread(
                    lambda: compile_policy(load_policy(self.path, env=self.env))
                )
                if policy.sha256 == self.gateway.active.policy.sha256:
                    log.info("policy unchanged (sha256 %s)", policy.sha256[:12])
                    return True
                self._refuse_restart_only_changes(policy)
                await self._prepare_identities_and_analyze(policy)
            except PolicyError as exc:
                self._failed(f"the new policy has {len(exc.problems)} problem(s)", exc)
                return False
            except _NeedsRestart as exc:
                self._failed(str(exc), None)
                return False
            except Exception as exc:
                log.exception("policy reload failed")
                self._failed(f"{type(exc).__name__}: {exc}", None)
                return False
            current = self.gateway.active
            verifier = await self._verifier_for(policy)
            self.gateway.swap(policy, verifier)
            kept = {id(cache) for cache in verifier.caches.values()}
            for cache in current.verifier.caches.values():
                if id(cache) not in kept:
                    await cache.aclose()  # its background retries end with it
            kept = {id(one) for one in verifier.introspectors.values()}
            for introspector in current.verifier.introspectors.values():
                if id(introspector) not in kept:
                    await introspector.aclose()
            self.reloads += 1
            self.last_error = None
            log.info(
                "policy reloaded: sha256 %s -> %s", current.policy.sha256[:12], policy.sha256[:12]
            )
            log_policy_warnings(policy)
            return True

    def _failed(self, message: str, exc: PolicyError | None) -> None:
        self.failures += 1
        if exc is not None:
            message += ": " + "; ".join(str(p) for p in exc.problems[:3])
        self.last_error = message
        log.error("policy reload refused, the old policy keeps serving: %s", message)
        if exc is not None:
            for problem in exc.problems:
                log.error("  %s", problem)

    async def _prepare_identities_and_analyze(self, policy: CompiledPolicy) -> None:
        """Open the new identities, then have Spanner PLAN-analyse every statement (a misspelt
        column refuses the reload naming its query). If anything fails, the identities opened
        here are closed again: a refused reload leaves nothing behind."""
        databases = self.gateway.executor.databases
        added = databases.add(policy.model.identities)
        try:
            if added:  # their Databases and first sessions, before the swap
                await databases.warm()
                log.info("new identities: %s", ", ".join(added))
            await self.gateway.executor.analyze(policy)
        except BaseException:
            await databases.discard(added)
            raise

    def _refuse_restart_only_changes(self, policy: CompiledPolicy) -> None:
        old = self.gateway.policy.model
        new = policy.model
        hashed = hash_masks(new)
        if hashed and self.gateway.mask_key is None:
            raise _NeedsRestart(
                f"the new policy masks {', '.join(hashed)} with hash, which needs "
                "SPANGATE_MASK_KEY: this gateway started without one; set it and restart. "
                "The reload was refused and the old policy keeps serving"
            )
        paginated = paginated_queries(new)
        if paginated and self.gateway.cursor_keys is None:
            raise _NeedsRestart(
                f"the new policy paginates {', '.join(paginated)}, whose cursors need "
                "SPANGATE_CURSOR_KEYS: this gateway started without them; set them and restart. "
                "The reload was refused and the old policy keeps serving"
            )
        # Against what is open, not only the policy being served: an identity dropped by an
        # earlier reload keeps its Database (and role) for the requests that were using it.
        opened = self.gateway.executor.databases.identities
        changed = [
            section
            for section, a, b in (
                ("spanner", old.spanner, new.spanner),
                (
                    "identities already in use",
                    {n: i for n, i in opened.items() if n in new.identities},
                    {n: i for n, i in new.identities.items() if n in opened},
                ),
                ("audit", old.audit, new.audit),
            )
            if a != b
        ]
        gateway = self.gateway
        if new.budgets and gateway.worker is not None and gateway.settings.redis_url is None:
            raise _NeedsRestart(
                "the new policy has budgets: with --workers, each worker would count them on its "
                "own (N times the limit); set SPANGATE_REDIS_URL and restart. The reload was "
                "refused and the old policy keeps serving"
            )
        if changed:
            raise _NeedsRestart(
                f"changes to {', '.join(changed)} take effect on restart only; "
                "the reload was refused and the old policy keeps serving"
            )

    async def _verifier_for(self, policy: CompiledPolicy) -> TokenVerifier:
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
                caches[name] = self.make_cache(name, cfg)
                await caches[name].start()
        return self.make_verifier(policy, caches, old.verifier)


def policy_change(path: Path) -> Callable[[str], bool]:
    """Which changed paths, in the folder the watcher watches, can change the policy at ``path``
    (a file or a folder): the file itself, a ``*.yaml``/``*.yml`` of the folder, and the names
    Kubernetes' atomic writer swaps (``..data``, ``..data_tmp``, ``..<timestamp>``)."""
    folder = path.is_dir()

    def relevant(changed: str) -> bool:
        name = Path(changed).name
        if name.startswith(".."):
            return True
        if folder:
            return Path(name).suffix in (".yaml", ".yml")
        return name == path.name

    return relevant


class _NeedsRestart(Exception):
    pass
