"""The policy the gateway has accepted, kept for the workers that start later (``--workers N``).

A worker that replaces one that died must serve what the gateway serves: the policy of the last
load or reload that was accepted, not the file as it is now on disk, which may since have been
edited into a broken or unreviewed version that nobody has reloaded (a SIGHUP or the watcher
would have put it through the reload's checks; a restart must not skip them). So the supervisor
writes the policy it checked before starting any worker, and every worker writes the one it
swaps in on each accepted reload, to ``accepted-policy.json`` in the workers' private directory
(0700, ``gateway.workers``): the bytes of each of its files (and the shadow policy's), as read
when it was loaded, with their paths and the policy's SHA-256. A worker starting loads and
validates those bytes (``load_policy_sources``: the same policy, positions and SHA-256), and
refuses a snapshot whose hash does not match. Written atomically (a temporary file renamed over
it); the last worker to accept a reload writes last.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy_sources

__all__ = ["ACCEPTED_FILE", "load_accepted", "save_accepted"]

log = logging.getLogger("spangate.workers")

ACCEPTED_FILE = "accepted-policy.json"


def _encode(policy: CompiledPolicy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    loaded = policy.loaded
    return {
        "sha256": loaded.sha256,
        "base_dir": str(loaded.base_dir),
        "files": [
            {"path": str(path), "name": name, "raw": base64.b64encode(raw).decode("ascii")}
            for path, name, raw in loaded.sources
        ],
    }


def _decode(
    entry: Mapping[str, Any] | None, path: Path, env: Mapping[str, str]
) -> CompiledPolicy | None:
    if entry is None:
        return None
    sources = [
        (Path(f["path"]), str(f["name"]), base64.b64decode(f["raw"])) for f in entry["files"]
    ]
    loaded = load_policy_sources(path, sources, base_dir=Path(entry["base_dir"]), env=env)
    if loaded.sha256 != entry["sha256"]:
        raise ValueError(f"{ACCEPTED_FILE}: the files do not hash to the policy's SHA-256")
    return compile_policy(loaded)


def save_accepted(run_dir: Path, policy: CompiledPolicy, shadow: CompiledPolicy | None) -> None:
    """Keep ``policy`` (and ``shadow``) as the accepted one(s), atomically."""
    data = json.dumps({"policy": _encode(policy), "shadow": _encode(shadow)})
    fd, temporary = tempfile.mkstemp(prefix=".accepted-", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(data)
        os.replace(temporary, run_dir / ACCEPTED_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_accepted(
    run_dir: Path, *, policy_path: Path, shadow_path: Path | None, env: Mapping[str, str]
) -> tuple[CompiledPolicy, CompiledPolicy | None] | None:
    """The accepted policy and shadow policy, loaded from their kept bytes; None when none was
    kept. Raises ``PolicyError`` (it no longer validates, e.g. a ``${VAR}`` now unset) or
    ``ValueError`` (a damaged snapshot)."""
    try:
        text = (run_dir / ACCEPTED_FILE).read_text()
    except FileNotFoundError:
        return None
    data = json.loads(text)
    policy = _decode(data["policy"], policy_path, env)
    if policy is None:
        raise ValueError(f"{ACCEPTED_FILE} holds no policy")
    shadow = _decode(data["shadow"], shadow_path, env) if shadow_path is not None else None
    return policy, shadow
