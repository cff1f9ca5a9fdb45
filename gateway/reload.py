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
  restart: such a reload is refused with a message saying so, rather than half-applied. So is a
  policy with budgets under ``--workers`` without Redis (each worker would count them on its
  own), a policy that masks a column with ``hash`` when the gateway started without
  ``SPANGATE_MASK_KEY``, and one that paginates a query when it started without
  ``SPANGATE_CURSOR_KEYS``.
- The warnings of a policy that loads (``LoadedPolicy.warnings``, and those of its analysis,
  ``Analysis.warnings``) are logged, at start-up (``log_policy_warnings``, called by
  ``runtime``) and on every reload that swaps it in.
- A policy whose files are byte for byte the ones being served (the same SHA-256) is "unchanged":
  nothing more is done (no swap), so a spurious trigger of the watcher costs one read and parse.
  SIGHUP also PLAN-analyses an unchanged policy again, so that after a schema change the
  gateway knows the statements' result columns as they now are (a masked query answers 500
  while its result's columns differ from the analysed ones, ``call_shaping.masked``); problems
  found then are logged and counted as a refused reload, and the earlier analysis stays.

The watcher (``SPANGATE_WATCH_POLICY``):

- It watches *folders*, never a file's inode: an editor that saves by renaming, and Kubernetes,
  which updates a mounted ConfigMap by renaming a new ``..data`` symlink over the old one (the
  file ``policy.yaml`` is a symlink ``..data/policy.yaml`` and never changes itself), replace the
  file's inode, and a watch on it would see the first update and then nothing. Which folders
  (``watch_folders``): the one holding the policy's files once every symlink is followed, and
  the one holding each symlink met on the way (a policy file linked to another folder, a policy
  folder that is itself a symlink, as a ConfigMap item with a ``path`` in a sub-folder is), but
  never a folder under a ``..``-name (the atomic writer's timestamped folders, deleted at the
  next update). Only changes that can change the policy count (``policy_change``): the policy's
  names and its links' names, ``*.yaml``/``*.yml`` (not dotfiles) for a policy folder, and the
  ``..``-names of Kubernetes' atomic writer; an audit file beside the policy does not.
- Once its watches are set up, and again after each restart, it reloads once: a change made
  while it was starting (or down) is not missed, and an unchanged policy costs one read.
- It never stops for good: an error in it (an inotify limit, a folder gone) is logged and it is
  restarted with back-off (1 s doubling to 60 s), and counted (``watcher_restarts``).
- A poll (``poll_seconds``, ``SPANGATE_POLICY_POLL_SECONDS``, 30 s) compares a SHA-256 of the
  policy's files (``source.fingerprint``) with the one of the last reload, and reloads when they
  differ (an event any watcher missed: network file systems, a watch limit), or while a refusal
  is to be retried; it also restarts the watcher when the symlinks now lead to other folders.
- A shadow policy (``--shadow-policy``, ``shadow_path``) is reloaded with the live one, by the
  same triggers (the watcher watches its folders too, the poll fingerprints its files too),
  loaded and validated the same way (its statements never run, so they are not PLAN-analysed).
  A shadow with problems is refused and logged (``shadow_failures``, ``shadow_last_error``:
  ``/readyz``'s ``shadow_policy_reload_error``) and the shadow that was deciding keeps
  deciding; the live policy's reload goes on as if there were no shadow. A reload that changes
  only the shadow swaps it in beside the same live policy, and so does a reload whose live
  policy is refused: the refusal is counted and logged as any, and a new valid shadow is still
  swapped in (logged) beside the live policy that keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.audit.configure import check_audit_key
from gateway.auth.jwks import JwksCache
from gateway.auth.verify import TokenVerifier
from gateway.errors import ConfigError, PolicyError
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy
from gateway.policy.masking import hash_masks
from gateway.policy.model import Issuer
from gateway.policy.pagination import paginated_queries
from gateway.policy.source import fingerprint
from gateway.spanner.analyze import Analysis

__all__ = [
    "PolicyReloader",
    "Watcher",
    "load_shadow",
    "log_policy_warnings",
    "policy_change",
    "watch_folders",
]

log = logging.getLogger("spangate.reload")

CacheFactory = Callable[[str, Issuer], JwksCache]
# What a JWKS cache depends on: the same values keep the cache (and its warm keys) on reload.
# ``preset`` decides whether the cache is used at all (an Okta org server's tokens are introspected).
_KEY_FIELDS = {"issuer", "jwks_uri", "preset"}
# (policy, key caches, the verifier being replaced: its unchanged issuers' Introspectors are kept)
VerifierFactory = Callable[
    [CompiledPolicy, Mapping[str, JwksCache], TokenVerifier | None], TokenVerifier
]
# watchfiles.awatch's shape: (*folders, watch_filter=, recursive=, stop_event=, debounce=) ->
# batches of (change, path). Injected in tests (a watcher that fails); awatch otherwise.
Watcher = Callable[..., AsyncIterator[set[tuple[Any, str]]]]

POLL_SECONDS = 30.0  # SPANGATE_POLICY_POLL_SECONDS' default
_RESTART_MAX_SECONDS = 60.0  # the watcher's restart back-off: 1 s doubling to this
_HEALTHY_SECONDS = 60.0  # a watch that ran this long before failing restarts the back-off
_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS


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
        poll_seconds: float = POLL_SECONDS,
        watcher: Watcher | None = None,
        shadow_path: Path | None = None,
    ) -> None:
        self.gateway = gateway
        self.path = path
        self.shadow_path = shadow_path
        self.shadow_failures = 0
        self.shadow_last_error: str | None = None
        self.env = env
        self.make_cache = make_cache
        self.make_verifier = make_verifier
        self.watch = watch
        self.poll_seconds = poll_seconds
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        # The last refusal may pass with the files unchanged (issuer keys, an error): retried.
        self.retry = False
        self.watcher_restarts = 0
        self._what = "the new policy"  # what a PolicyError during a reload is about
        self._watcher = watcher
        # the files' fingerprints (each, or None) when the last reload read them
        self._seen: tuple[str | None, ...] | None = None
        self._watching: list[Path] = []
        # Told the policy and shadow policy served after each accepted change (gateway.accepted)
        self.on_accepted: Callable[[CompiledPolicy, CompiledPolicy | None], None] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._rewatch = asyncio.Event()  # ends the current watch (stop, or folders changed)

    # -- triggers -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Install the SIGHUP handler and, when enabled, the file watcher and the poll (call on
        the loop)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.warning("SIGHUP reload is not available in this process")
        if self.watch:
            self._spawn(self._watch_forever(), "policy watcher")
            if self.poll_seconds > 0:
                self._spawn(self._poll_forever(), "policy poll")

    async def stop(self) -> None:
        """Stop the watcher, the poll and any reload in progress (at shutdown)."""
        self._stop.set()
        self._rewatch.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task, outcome in zip(
            tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True
        ):
            if isinstance(outcome, Exception):
                log.error("%s had failed: %s", task.get_name(), outcome, exc_info=outcome)
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError):
            pass

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """A task of the reloader ended: it is forgotten, and if it was not stopped, said (the
        watcher and the poll catch everything but cancellation, so this is never expected)."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("the %s failed: %s", task.get_name(), error, exc_info=error)
        elif not self._stop.is_set() and task.get_name() != "policy reload":
            log.error("the %s stopped", task.get_name())

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        self._reload_soon(reanalyse=True)

    def _reload_soon(self, *, reanalyse: bool = False) -> None:
        if not self._stop.is_set():
            self._spawn(self.reload(reanalyse=reanalyse), "policy reload")

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _watch_forever(self) -> None:
        """Watch until stopped; a watch that fails or ends is restarted (with back-off after a
        failure), and each (re)start reloads once."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stop.is_set():
            began = loop.time()
            self._rewatch.clear()
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watcher must outlive anything: logged, restarted
                if loop.time() - began >= _HEALTHY_SECONDS:
                    failures = 0
                wait = min(2.0**failures, _RESTART_MAX_SECONDS)
                failures += wait < _RESTART_MAX_SECONDS
                self.watcher_restarts += 1
                log.error(
                    "the policy watcher failed (%s: %s): restarting it in %g s%s",
                    type(exc).__name__,
                    exc,
                    wait,
                    f"; the poll every {self.poll_seconds:g} s covers the gap"
                    if self.poll_seconds > 0
                    else "",
                    exc_info=exc,
                )
                if await self._stopped_within(wait):
                    return
            else:
                if self._stop.is_set():
                    return
                self.watcher_restarts += 1
                log.info("watching the policy again: %s", ", ".join(map(str, self._watching)))

    async def _watch_once(self) -> None:
        watcher = self._watcher
        if watcher is None:
            from watchfiles import awatch

            watcher = awatch
        folders = self._watching = self._folders()
        tests = [policy_change(path) for path in self._paths()]
        # Runs once the watcher has set up its watches (it does so before its first wait): a
        # change since the policy was read, or while no watch was running, is reloaded.
        asyncio.get_running_loop().call_soon(self._reload_soon)
        async for _changes in watcher(
            *folders,
            watch_filter=lambda _change, changed: any(test(changed) for test in tests),
            recursive=False,
            stop_event=self._rewatch,
            debounce=200,
        ):
            log.info("%s changed: reloading", self.path)
            await self.reload()

    async def _poll_forever(self) -> None:
        while not await self._stopped_within(self.poll_seconds):
            try:
                current = await asyncio.to_thread(self._fingerprint)
                if current != self._seen or self.retry:
                    log.info(
                        "%s: %s; reloading",
                        self.path,
                        "retrying the refused reload" if current == self._seen else "changed",
                    )
                    await self.reload()
                folders = await asyncio.to_thread(self._folders)
                if folders != self._watching:
                    log.info("the policy's symlinks lead elsewhere now: watching them again")
                    self._rewatch.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poll must outlive anything: logged, polled again
                log.exception("the policy poll failed; polling again in %g s", self.poll_seconds)

    def _paths(self) -> list[Path]:
        """The live policy's path, and the shadow's when there is one."""
        return [p for p in (self.path, self.shadow_path) if p is not None]

    def _folders(self) -> list[Path]:
        folders: list[Path] = []
        for path in self._paths():
            folders += [f for f in watch_folders(path) if f not in folders]
        return folders

    def _fingerprint(self) -> tuple[str | None, ...]:
        """The policy's fingerprint and the shadow's, each on its own (None: that file cannot
        be read): a shadow file removed, or unreadable, never hides a change of the live one."""
        return tuple(fingerprint(path) for path in self._paths())

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
            except _NeedsRestart as exc:
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
        self._refuse_restart_only_changes(policy)
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


def _symlinks(path: Path) -> tuple[list[Path], Path]:
    """The symlinks met resolving ``path`` (each as its own, resolved, path) and where ``path``
    leads; a loop or a chain longer than the kernel's stops the walk where it is."""
    parts = list(Path(os.path.abspath(path)).parts)
    current = Path(parts[0])
    pending = parts[1:]
    links: list[Path] = []
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent
            continue
        if part in ("", "."):
            continue
        candidate = current / part
        if candidate.is_symlink() and len(links) < _SYMLINK_HOPS:
            links.append(candidate)
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path(target.parts[0])
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
            continue
        current = candidate
    return links, current


def _transient(folder: Path) -> bool:
    """A folder under a ``..``-name: Kubernetes' atomic writer deletes it at the next update."""
    return any(part.startswith("..") and part != ".." for part in folder.parts)


def watch_folders(path: Path) -> list[Path]:
    """The folders the watcher watches for the policy at ``path`` (a file or a folder): the one
    holding its files once every symlink is followed, and the one holding each symlink on the
    way; none under a ``..``-name (see the module docstring)."""
    links, real = _symlinks(path)
    folders: list[Path] = []
    for folder in [real if real.is_dir() else real.parent, *(link.parent for link in links)]:
        if not _transient(folder) and folder not in folders:
            folders.append(folder)
    if not folders:  # every folder is a timestamped one: watch where the path says
        folders.append(Path(os.path.abspath(path if path.is_dir() else path.parent)))
    return folders


def policy_change(path: Path) -> Callable[[str], bool]:
    """Which changed paths, in the folders the watcher watches, can change the policy at ``path``
    (a file or a folder): its own name and its symlinks' names, a ``*.yaml``/``*.yml`` (not a
    dotfile) for a policy folder, and the names Kubernetes' atomic writer swaps (``..data``,
    ``..data_tmp``, ``..<timestamp>``)."""
    folder = path.is_dir()
    links, real = _symlinks(path)
    names = {Path(os.path.abspath(path)).name, real.name, *(link.name for link in links)}

    def relevant(changed: str) -> bool:
        name = Path(changed).name
        if name.startswith(".."):
            return True
        if name in names:
            return True
        return folder and not name.startswith(".") and Path(name).suffix in (".yaml", ".yml")

    return relevant


class _NeedsRestart(Exception):
    pass


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
