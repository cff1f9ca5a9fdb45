"""The policy watcher follows a Kubernetes ConfigMap mount, update after update.

The kubelet projects a ConfigMap with its atomic writer (pkg/volume/util/atomic_writer.go): the
files live in a hidden timestamped folder ``..2026_12_01_10_00_00.123``, ``..data`` is a symlink
to it, and each top-level name is a symlink ``policy.yaml -> ..data/policy.yaml`` (or, for an
item with a ``path`` in a folder, ``rules -> ..data/rules``) that never changes. An update writes
a new timestamped folder, points a new ``..data_tmp`` at it, renames that over ``..data``
(atomic), adds the symlinks of new names, removes those of dropped ones and deletes the old
folder. ``atomic_write`` below does the same steps in the same order, and a real ``spangate
serve`` with ``SPANGATE_WATCH_POLICY`` must reload after each of two updates, the policy given as
the file, as the mount, and as a folder inside the mount; and a policy file that is a symlink to
a file in another folder must reload when that file is replaced.

What each case guards against: a watch on the file's first inode (the first watcher) sees the
first update and then nothing: the "file" case. The "nested" case also fails with the watch of the
policy's folder that replaced it, since that folder is a timestamped one, deleted at the first
update. The "folder" case (the mount itself) passes with either older watcher (a watch of the
mount, recursive or not, sees the ``..data`` swap): it stays as a guard for the layout the chart
uses. The poll is off in all of them (``SPANGATE_POLICY_POLL_SECONDS=0``): the watcher alone must
see each update.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from reloading import with_new_route
from served import EXAMPLE_POLICY, Served, served

from gateway.policy.load import load_policy
from gateway.reload_paths import policy_change


def atomic_write(target: Path, payload: dict[str, bytes]) -> None:
    """Project ``payload`` (path -> content; a path may name a folder: ``rules/a.yaml``) into
    ``target`` as the kubelet's AtomicWriter does."""
    data = target / "..data"
    old = os.readlink(data) if data.is_symlink() else ""
    current = {
        str(p.relative_to(target / old)): p.read_bytes()
        for p in (target / old).rglob("*")
        if old and p.is_file()
    }
    if old and current == payload:
        return  # unchanged: the kubelet writes nothing
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    fresh.chmod(0o755)
    for key, content in payload.items():
        (fresh / key).parent.mkdir(parents=True, exist_ok=True)
        (fresh / key).write_bytes(content)
        (fresh / key).chmod(0o644)
    os.symlink(fresh.name, target / "..data_tmp")
    os.rename(target / "..data_tmp", data)
    tops = {key.split("/")[0] for key in payload}
    for top in sorted(tops):
        if not (target / top).is_symlink():
            os.symlink(f"..data/{top}", target / top)
    for top in {key.split("/")[0] for key in current} - tops:
        (target / top).unlink()
    if old:
        shutil.rmtree(target / old)


def test_atomic_write_lays_out_what_the_kubelet_does(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"a.yaml": b"1", "b.yaml": b"2"})
    first = os.readlink(tmp_path / "..data")
    assert first.startswith("..") and os.readlink(tmp_path / "a.yaml") == "..data/a.yaml"
    atomic_write(tmp_path, {"a.yaml": b"3"})
    second = os.readlink(tmp_path / "..data")
    assert second != first and not (tmp_path / first).exists()
    assert (tmp_path / "a.yaml").read_bytes() == b"3" and not (tmp_path / "b.yaml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["..data", second, "a.yaml"])
    atomic_write(tmp_path, {"rules/a.yaml": b"4"})  # an item whose path is in a folder
    third = os.readlink(tmp_path / "..data")
    assert os.readlink(tmp_path / "rules") == "..data/rules" and not (tmp_path / "a.yaml").exists()
    assert (tmp_path / "rules" / "a.yaml").read_bytes() == b"4"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["..data", third, "rules"])


def _sha_of(path: Path) -> str:
    return load_policy(path, env={}, placeholders=True).sha256


def _wait_for_sha(base: str, sha: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{base}/readyz", timeout=2.0).json().get("policy_sha256")
            if last == sha:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the gateway never served policy {sha[:12]} (it serves {last})")


WATCH_ONLY = {"SPANGATE_WATCH_POLICY": "true", "SPANGATE_POLICY_POLL_SECONDS": "0"}


def _two_updates(server: Served, policy: Path, update: Callable[[str], None], token: str) -> None:
    """Update 1 adds a route, update 2 withdraws it: each must be served (the watcher alone)."""
    base = EXAMPLE_POLICY.read_text()
    _wait_for_sha(server.base, _sha_of(policy))
    tenant = f"{server.base}/v1/tenant"
    assert httpx.get(tenant, headers={"Authorization": f"Bearer {token}"}).status_code == 404
    update(with_new_route(base))
    _wait_for_sha(server.base, _sha_of(policy))
    answer = httpx.get(tenant, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    update(base)  # a watch on the first file's inode, or on a deleted folder, stops before this
    _wait_for_sha(server.base, _sha_of(policy))
    assert httpx.get(tenant, headers={"Authorization": f"Bearer {token}"}).status_code == 404
    assert server.process.poll() is None


@pytest.mark.parametrize("given", ["file", "folder", "nested"])
def test_a_configmap_update_is_reloaded_every_time(
    given: str,
    tmp_path: Path,
    demo_database: str,
    idp: Any,
    audit_key: str,
    token_for: Callable[..., str],
) -> None:
    mount = tmp_path / "policy"  # the ConfigMap's volume, as the pod sees it
    mount.mkdir()
    # "nested": the item's path puts the file in a folder of the mount (items: [{key: policy.yaml,
    # path: rules/policy.yaml}]), and SPANGATE_POLICY is that folder.
    key = "rules/policy.yaml" if given == "nested" else "policy.yaml"

    def update(text: str) -> None:
        atomic_write(mount, {key: text.encode()})

    update(EXAMPLE_POLICY.read_text())
    policy = {"file": mount / "policy.yaml", "folder": mount, "nested": mount / "rules"}[given]
    assert (mount / key.split("/")[0]).is_symlink()
    with served(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=policy,
        env=WATCH_ONLY,
    ) as server:
        _two_updates(server, policy, update, token_for("support-console"))


def test_a_policy_file_linked_to_another_folder_is_reloaded_when_that_file_changes(
    tmp_path: Path,
    demo_database: str,
    idp: Any,
    audit_key: str,
    token_for: Callable[..., str],
) -> None:
    """``/etc/x/policy.yaml -> /srv/cfg/policy.yaml``: an edit in /srv/cfg makes no event in
    /etc/x, the folder the watcher watched alone."""
    real = tmp_path / "srv" / "cfg"
    real.mkdir(parents=True)
    (real / "policy.yaml").write_text(EXAMPLE_POLICY.read_text())
    policy = tmp_path / "etc" / "x" / "policy.yaml"
    policy.parent.mkdir(parents=True)
    policy.symlink_to(real / "policy.yaml")

    def update(text: str) -> None:  # as an editor saves: a new file renamed over the old one
        (real / ".policy.yaml.tmp").write_text(text)
        os.rename(real / ".policy.yaml.tmp", real / "policy.yaml")

    with served(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=policy,
        env=WATCH_ONLY,
    ) as server:
        _two_updates(server, policy, update, token_for("support-console"))


def test_only_changes_that_can_change_the_policy_trigger_a_reload(tmp_path: Path) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text("x: 1\n")
    as_file = policy_change(file)
    assert as_file(str(file))
    assert as_file(str(tmp_path / "..data")) and as_file(str(tmp_path / "..data_tmp"))
    assert as_file(str(tmp_path / "..2026_12_01_10_00_00.123"))
    assert not as_file(str(tmp_path / "audit.jsonl"))  # the audit file beside the policy
    assert not as_file(str(tmp_path / "other.yaml"))  # not part of a one-file policy
    as_folder = policy_change(tmp_path)
    assert as_folder(str(tmp_path / "other.yaml")) and as_folder(str(tmp_path / "b.yml"))
    assert as_folder(str(tmp_path / "..data"))
    assert not as_folder(str(tmp_path / "audit.jsonl"))
    assert not as_folder(str(tmp_path / ".policy.yaml.swp"))
