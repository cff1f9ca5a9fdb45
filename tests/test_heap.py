"""The served gateway freezes its start-up heap once started (gateway.heap): start-up's garbage
collected, the rest frozen out of later collections, the young generation's threshold raised;
unfrozen after the shutdown."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.heap import YOUNG_THRESHOLD
from tests.served import start_served

# In a process of its own: a frozen heap would keep this test process's cycles forever. The
# collector is off, so only freeze_startup_heap's own collection can free the cycle.
PROBE = """
import gc, json, weakref
gc.disable()
from gateway.heap import freeze_startup_heap, unfreeze_heap

class Node:
    pass

cycle = Node()
cycle.self = cycle
dead = weakref.ref(cycle)
del cycle
kept = Node()
kept.self = kept
before = gc.get_threshold()
freeze_startup_heap()
later = Node()
later.self = later
frozen = gc.get_freeze_count()
walked = gc.get_objects()
result = {
    "cycle_collected": dead() is None,
    "frozen": frozen,
    "threshold": gc.get_threshold(),
    "before": before,
    "later_walked": any(o is later for o in walked),
    "kept_walked": any(o is kept for o in walked),
}
del walked
unfreeze_heap()
result["unfrozen"] = gc.get_freeze_count() == 0 and any(o is kept for o in gc.get_objects())
print(json.dumps(result))
"""


def _probe() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_freeze_collects_then_freezes_raises_the_young_threshold_and_unfreezes() -> None:
    result = _probe()
    assert result["cycle_collected"]  # start-up's garbage went first, not frozen with the rest
    assert result["frozen"] > 1_000  # the interpreter's and the imported modules' objects
    assert not result["kept_walked"]  # what was alive is out of the collector's generations
    assert result["later_walked"]  # what is made after stays in them
    assert result["threshold"] == [YOUNG_THRESHOLD, *result["before"][1:]]
    assert result["unfrozen"]  # after the shutdown: the collector's again


def test_spangate_serve_freezes_its_start_up_heap_once_started(
    demo_database: str, idp: Any, tmp_path: Path, audit_key: str
) -> None:
    served = start_served(
        tmp_path, database=demo_database, issuer=idp.issuer, audit_key=audit_key,
        env={"SPANGATE_LOG_LEVEL": "debug"},
    )  # fmt: skip
    try:
        log = served.log_with("start-up heap frozen")
    finally:
        served.stop()
    lines = log.splitlines()
    frozen = [i for i, line in enumerate(lines) if "start-up heap frozen" in line]
    assert len(frozen) == 1, log[-3000:]
    count = re.search(r"frozen: (\d+) objects", lines[frozen[0]])
    assert count is not None and int(count.group(1)) > 50_000  # the clients, models, the policy
    started = [i for i, line in enumerate(lines) if "Application startup complete" in line]
    assert started and started[0] < frozen[0], log[-3000:]  # after start-up, not during it
