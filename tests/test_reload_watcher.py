"""The policy watcher keeps going (gateway.reload_triggers): it reloads once its watch is set up,
is restarted when it fails, a poll of the files' SHA-256 catches what it misses and retries a
reload refused for an issuer that cannot be reached yet; and which folders it watches, for every
layout a policy can be mounted in (a file, a folder, a ConfigMap's, links to elsewhere:
gateway.reload_paths)."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reloading import gateway_on, with_new_route

from gateway.app import Gateway
from gateway.dev.ports import free_port
from gateway.reload import PolicyReloader
from gateway.reload_paths import policy_change, watch_folders
from gateway.reload_triggers import Watcher

WAIT_SECONDS = 30.0  # bounds every wait (a loaded machine), never asserted on


@pytest.fixture
def policy_copy(tmp_path: Path, repo: Path) -> Path:
    folder = tmp_path / "policy"
    folder.mkdir()
    path = folder / "policy.yaml"
    path.write_text((repo / "policy.example.yaml").read_text())
    return path


@pytest.fixture
async def own_gateway(
    policy_copy: Path, demo_database: str, idp: Any, tmp_path: Path, audit_key: str
) -> AsyncIterator[Gateway]:
    async with gateway_on(
        policy_copy, database=demo_database, idp=idp, tmp_path=tmp_path, audit_key=audit_key
    ) as app:
        yield app


@pytest.fixture
async def watching(own_gateway: Gateway) -> AsyncIterator[Callable[..., Awaitable[PolicyReloader]]]:
    """A watching reloader for the gateway (its own reloader, as runtime builds it, does not
    watch), with the given watcher and poll interval; stopped at the end."""
    started: list[PolicyReloader] = []
    own = own_gateway.reloader

    async def start(*, watcher: Watcher | None = None, poll_seconds: float = 0.0) -> PolicyReloader:
        reloader = PolicyReloader(
            own_gateway,
            path=own.path,
            env=own.env,
            make_cache=own.make_cache,
            make_verifier=own.make_verifier,
            watch=True,
            poll_seconds=poll_seconds,
            watcher=watcher,
        )
        own_gateway.reloader = reloader
        started.append(reloader)
        await reloader.start()
        return reloader

    try:
        yield start
    finally:
        for reloader in started:
            await reloader.stop()


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


def serves_new_route(gateway: Gateway) -> Callable[[], bool]:
    return lambda: "/v1/tenant" in {r.template for r in gateway.policy.routes}


async def test_a_change_while_starting_is_reloaded_once_the_watch_is_set_up(
    own_gateway: Gateway, policy_copy: Path, watching: Callable[..., Awaitable[PolicyReloader]]
) -> None:
    """Regression: a change between reading the policy and setting up the watch was missed until
    the next one. No poll here: the reload after the watch is set up alone must catch it."""
    policy_copy.write_text(with_new_route(policy_copy.read_text()))  # before the watch exists
    reloader = await watching()
    await until(serves_new_route(own_gateway), "the change made while starting was reloaded")
    assert reloader.reloads == 1


def failing_once(failures: list[str]) -> Watcher:
    """watchfiles.awatch, but its first watch fails as a watch can (the inotify watch limit)."""
    from watchfiles import awatch

    def watcher(*folders: Path, **options: Any) -> AsyncIterator[set[tuple[Any, str]]]:
        if not failures:
            failures.append("failed")

            async def broken() -> AsyncIterator[set[tuple[Any, str]]]:
                raise OSError(28, "inotify watch limit reached")
                yield set()  # an async generator, as awatch is

            return broken()
        return awatch(*folders, **options)

    return watcher


async def test_the_watcher_is_restarted_when_it_fails(
    own_gateway: Gateway, policy_copy: Path, watching: Callable[..., Awaitable[PolicyReloader]]
) -> None:
    """Regression: an error in the watch ended it, silently, and reloads with it, for good."""
    failures: list[str] = []
    reloader = await watching(watcher=failing_once(failures))
    await until(lambda: reloader.watcher_restarts == 1, "the failed watcher was restarted")
    assert failures == ["failed"]
    policy_copy.write_text(with_new_route(policy_copy.read_text()))
    await until(serves_new_route(own_gateway), "a change after the restart was reloaded")


def deaf(*folders: Path, stop_event: asyncio.Event, **options: Any) -> AsyncIterator[Any]:
    """A watcher that misses every event (a network file system, a watch over its limit)."""

    async def nothing() -> AsyncIterator[Any]:
        while not stop_event.is_set():
            await asyncio.sleep(0.05)
        return
        yield set()

    return nothing()


async def test_the_poll_catches_a_change_the_watcher_missed(
    own_gateway: Gateway, policy_copy: Path, watching: Callable[..., Awaitable[PolicyReloader]]
) -> None:
    reloader = await watching(watcher=deaf, poll_seconds=0.2)
    await until(lambda: reloader._seen is not None, "the first reload read the files")
    policy_copy.write_text(with_new_route(policy_copy.read_text()))
    await until(serves_new_route(own_gateway), "the poll noticed the change")
    assert reloader.reloads == 1


@pytest.fixture
def jwks_later(idp: Any) -> Iterator[tuple[int, Callable[[], None]]]:
    """A port where nothing answers yet, and a function that starts serving the OpenID
    provider's published keys there (an identity provider that comes up late)."""
    port = free_port()
    keys = httpx.get(f"{idp.issuer}/v1/keys").content
    assert json.loads(keys)["keys"]

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(keys)))
            self.end_headers()
            self.wfile.write(keys)

        def log_message(self, *args: Any) -> None:
            pass

    servers: list[http.server.ThreadingHTTPServer] = []

    def start() -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Keys)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    try:
        yield port, start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


async def test_the_poll_retries_a_reload_refused_for_an_issuer_not_reachable_yet(
    own_gateway: Gateway,
    policy_copy: Path,
    watching: Callable[..., Awaitable[PolicyReloader]],
    jwks_later: tuple[int, Callable[[], None]],
) -> None:
    port, start_serving = jwks_later
    issuer = (
        "  partner:\n"
        f"    issuer: http://127.0.0.1:{port}/partner\n"
        f"    jwks_uri: http://127.0.0.1:{port}/keys\n"
        "    audience: api://shop\n"
    )
    text = with_new_route(policy_copy.read_text())
    policy_copy.write_text(text.replace("\nidentities:", "\n" + issuer + "\nidentities:", 1))
    reloader = await watching(watcher=deaf, poll_seconds=0.2)
    await until(lambda: reloader.failures >= 1, "the reload was refused")
    assert reloader.retry and "issuer 'partner'" in (reloader.last_error or "")
    assert not serves_new_route(own_gateway)()
    start_serving()
    await until(serves_new_route(own_gateway), "the refused reload was retried")
    assert own_gateway.verifier.caches["partner"].state().ready
    assert reloader.retry is False and reloader.last_error is None


# --- which folders, for every layout ------------------------------------------------------------


def _link(link: Path, target: str) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def _configmap(mount: Path, files: dict[str, str]) -> None:
    """A ConfigMap volume as the kubelet lays it out (``items[].path`` may hold a folder)."""
    stamp = mount / "..2026_12_01_10_00_00.1"
    for name, content in files.items():
        (stamp / name).parent.mkdir(parents=True, exist_ok=True)
        (stamp / name).write_text(content)
    _link(mount / "..data", stamp.name)
    for top in {name.split("/")[0] for name in files}:
        _link(mount / top, f"..data/{top}")


def test_a_plain_file_or_folder_is_watched_in_its_folder(tmp_path: Path) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text("x")
    assert watch_folders(file) == [tmp_path]
    assert watch_folders(tmp_path) == [tmp_path]


def test_a_configmap_is_watched_at_its_mount_never_in_a_timestamped_folder(tmp_path: Path) -> None:
    mount = tmp_path / "policy"
    _configmap(mount, {"policy.yaml": "x", "rules/more.yaml": "y"})
    assert watch_folders(mount / "policy.yaml") == [mount]
    assert watch_folders(mount) == [mount]
    # A policy folder inside the mount (an item with a path): the ..data swap happens in the
    # mount, while the folder itself is a timestamped one, deleted at the next update.
    assert watch_folders(mount / "rules") == [mount]
    relevant = policy_change(mount / "rules")
    assert relevant(str(mount / "..data")) and relevant(str(mount / "rules"))
    assert relevant(str(mount / "rules" / "more.yaml"))
    assert not relevant(str(mount / "rules" / "._more.yaml"))


def test_a_policy_linked_to_another_folder_is_watched_there_too(tmp_path: Path) -> None:
    """Regression: `/etc/x/policy.yaml -> /srv/cfg/policy.yaml` was watched in /etc/x only, where
    an edit of the file in /srv/cfg makes no event."""
    real = tmp_path / "srv" / "cfg"
    real.mkdir(parents=True)
    (real / "policy.yaml").write_text("x")
    link = _link(tmp_path / "etc" / "x" / "policy.yaml", str(real / "policy.yaml"))
    assert set(watch_folders(link)) == {real, link.parent}
    relevant = policy_change(link)
    assert relevant(str(real / "policy.yaml")) and not relevant(str(real / "other.yaml"))
    # Linked into a ConfigMap mounted elsewhere: the mount, not its timestamped folder.
    mount = tmp_path / "mnt"
    _configmap(mount, {"policy.yaml": "x"})
    chained = _link(tmp_path / "etc" / "y" / "policy.yaml", str(mount / "policy.yaml"))
    assert set(watch_folders(chained)) == {mount, chained.parent}


async def test_a_removed_shadow_file_does_not_hide_a_change_of_the_live_policy(
    own_gateway: Gateway, policy_copy: Path, tmp_path: Path, repo: Path
) -> None:
    """Each file is fingerprinted on its own: with the shadow's file gone (unreadable), the
    poll still sees the live policy change."""
    shadow = tmp_path / "candidate" / "candidate.yaml"
    shadow.parent.mkdir()
    shadow.write_text((repo / "policy.example.yaml").read_text())
    own = own_gateway.reloader
    reloader = PolicyReloader(
        own_gateway,
        path=own.path,
        env=own.env,
        make_cache=own.make_cache,
        make_verifier=own.make_verifier,
        watch=True,
        poll_seconds=0.2,
        watcher=deaf,
        shadow_path=shadow,
    )
    own_gateway.reloader = reloader
    await reloader.start()
    try:
        await until(lambda: own_gateway.shadow is not None, "the shadow was loaded")
        kept = own_gateway.shadow
        shadow.unlink()
        await until(lambda: reloader.shadow_failures >= 1, "the poll noticed the shadow gone")
        policy_copy.write_text(with_new_route(policy_copy.read_text()))
        await until(serves_new_route(own_gateway), "the poll noticed the live change")
        assert own_gateway.shadow is kept  # the shadow that was deciding keeps deciding
    finally:
        await reloader.stop()
