"""Helpers for audit tests: write trails with the real Chain, tamper with their lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.audit.chain import GENESIS, Chain, canonical, event_hash

KEY = b"k" * 32


def write_chain(
    path: Path, count: int, *, key: bytes | None = KEY, predecessor: str | None = None
) -> Chain:
    """Append ``count`` sealed events of a new chain (one process) to ``path``."""
    chain = Chain(key)
    chain.start(predecessor)
    with path.open("ab") as f:
        for i in range(count):
            f.write(chain.seal({"n": i, "chain_start": predecessor or GENESIS})[1])
    return chain


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def put(path: Path, content: list[bytes]) -> None:
    path.write_bytes(b"".join(content))


def event(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(raw)
    return value


def reseal(ev: dict[str, Any], key: bytes | None) -> bytes:
    """What someone holding ``key`` (or anyone, when None) can do: re-hash an edited event."""
    ev = {k: v for k, v in ev.items() if k != "hash"}
    ev["hash"] = event_hash(ev, key)
    return canonical(ev) + b"\n"
