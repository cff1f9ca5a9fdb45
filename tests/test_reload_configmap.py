"""The policy watcher follows a Kubernetes ConfigMap mount, update after update.

The kubelet projects a ConfigMap with its atomic writer (pkg/volume/util/atomic_writer.go): the
files live in a hidden timestamped folder ``..2026_12_01_10_00_00.123``, ``..data`` is a symlink
to it, and each key is a symlink ``policy.yaml -> ..data/policy.yaml`` that never changes. An update
writes a new timestamped folder, points a new ``..data_tmp`` at it, renames that over ``..data``
(atomic), adds the symlinks of new keys, removes those of dropped keys and deletes the old folder.
``atomic_write`` below does the same steps in the same order, and a real ``spangate serve
--watch`` must reload after each of two updates (a watch on the file's first inode sees the
first and then nothing: the regression this guards against), with the policy given as the file
and as the folder.
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
from served import EXAMPLE_POLICY, served

from gateway.policy.load import load_policy
from gateway.reload import policy_change

NEW_ROUTE = """
  tenant_name:
    identity: shop_reader
    sql: SELECT Name FROM Tenants WHERE TenantId = @tenant
    params:
      tenant: {type: STRING, from: claim.tenant}
"""
NEW_ROUTE_ENTRY = """  - path: /v1/tenant
    method: GET
    query: tenant_name
    allow: [support]
"""


def atomic_write(target: Path, payload: dict[str, bytes]) -> None:
    """Project ``payload`` (key -> content) into ``target`` as the kubelet's AtomicWriter does."""
    data = target / "..data"
    old = os.readlink(data) if data.is_symlink() else ""
    old_keys = {p.name for p in (target / old).iterdir()} if old else set()
    current = {key: (target / old / key).read_bytes() for key in old_keys}
    if old and current == payload:
        return  # unchanged: the kubelet writes nothing
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    fresh.chmod(0o755)
    for key, content in payload.items():
        (fresh / key).write_bytes(content)
        (fresh / key).chmod(0o644)
    os.symlink(fresh.name, target / "..data_tmp")
    os.rename(target / "..data_tmp", data)
    for key in payload:
        if not (target / key).is_symlink():
            os.symlink(f"..data/{key}", target / key)
    for key in old_keys - payload.keys():
        (target / key).unlink()
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


@pytest.mark.parametrize("given", ["file", "folder"])
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
    base = EXAMPLE_POLICY.read_text()
    atomic_write(mount, {"policy.yaml": base.encode()})
    policy = mount / "policy.yaml" if given == "file" else mount
    assert (mount / "policy.yaml").is_symlink()
    with served(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=policy,
        env={"SPANGATE_WATCH_POLICY": "true"},
    ) as server:
        _wait_for_sha(server.base, _sha_of(policy))
        token = token_for("support-console")
        tenant = f"{server.base}/v1/tenant"
        assert httpx.get(tenant, headers={"Authorization": f"Bearer {token}"}).status_code == 404

        # Update 1: a new route.
        first = base.replace("\nqueries:\n", "\nqueries:" + NEW_ROUTE, 1)
        first = first.replace("\nroutes:\n", "\nroutes:\n" + NEW_ROUTE_ENTRY, 1)
        assert first.count("tenant_name") == 2
        atomic_write(mount, {"policy.yaml": first.encode()})
        _wait_for_sha(server.base, _sha_of(policy))
        answer = httpx.get(tenant, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text

        # Update 2: the same route withdrawn. A watch on the first file's inode stops here.
        atomic_write(mount, {"policy.yaml": base.encode()})
        _wait_for_sha(server.base, _sha_of(policy))
        assert httpx.get(tenant, headers={"Authorization": f"Bearer {token}"}).status_code == 404
        assert server.process.poll() is None


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
