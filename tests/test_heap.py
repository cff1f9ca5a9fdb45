"""The served gateway settles its heap once started (gateway.heap): start-up's garbage collected,
the rest frozen out of later collections, the young generation's threshold raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from gateway.dev.ports import free_port
from gateway.heap import YOUNG_THRESHOLD
from tests.test_server import SPANGATE, _stop, _wait_ready

# In a process of its own: a frozen heap would keep this test process's cycles forever.
PROBE = """
import gc, json, weakref
from gateway.heap import settle_heap

class Node:
    pass

cycle = Node()
cycle.self = cycle
dead = weakref.ref(cycle)
del cycle
kept = Node()
kept.self = kept
before = gc.get_threshold()
settle_heap()
later = Node()
later.self = later
frozen = gc.get_freeze_count()
print(json.dumps({
    "cycle_collected": dead() is None,
    "frozen": frozen,
    "threshold": gc.get_threshold(),
    "before": before,
    "later_collectable": any(o is later for o in gc.get_objects()),
    "frozen_not_walked": all(o is not kept for o in gc.get_objects()),
}))
"""


def _probe() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_settle_heap_collects_then_freezes_and_raises_the_young_threshold() -> None:
    result = _probe()
    assert result["cycle_collected"]  # start-up's garbage went first, not frozen with the rest
    assert result["frozen"] > 1_000  # the interpreter's and the imported modules' objects
    assert result["frozen_not_walked"]  # what was alive is out of the collector's generations
    assert result["later_collectable"]  # what is made after stays in them
    assert result["threshold"] == [YOUNG_THRESHOLD, *result["before"][1:]]


def test_spangate_serve_settles_its_heap_once_started(
    demo_database: str, idp: Any, tmp_path: Path, repo: Path, audit_key: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SPANGATE_DRAIN_SECONDS": "0",
        "SPANNER_EMULATOR_HOST": demo_database,
        "OKTA_ISSUER": idp.issuer,
        "SPANGATE_AUDIT_PATH": str(tmp_path / "audit.jsonl"),
        "SPANGATE_AUDIT_KEY": audit_key,
        "SPANGATE_LOG_LEVEL": "debug",
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*SPANGATE, "serve", "--policy", str(repo / "policy.example.yaml"),
             "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", process)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5.0).status_code == 200
    finally:
        _stop(process)
    settled = [line for line in log.read_text().splitlines() if "heap settled" in line]
    assert len(settled) == 1, log.read_text()[-3000:]
    assert "objects frozen" in settled[0]
