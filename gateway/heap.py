"""The garbage collector, once the server has started: what start-up built is set aside.

By the end of start-up the process holds ~175,000 objects tracked by the cyclic garbage collector
(the Spanner and gRPC clients, protobuf descriptors, pydantic models, the compiled policy), nearly
all of them for the life of the process. Left in the collector's oldest generation, each full
collection walks them all, on the event loop's thread, with every request waiting: measured at 32
callers on 2 cores, a full collection every ~5 s, each holding the loop ~70 ms, which was the
gateway's p99 latency. ``settle_heap`` collects once (start-up's own garbage) and freezes what
remains (``gc.freeze``: kept out of every later collection), so a full collection walks only what
serving has made since (~0.5-0.8 ms measured). It also raises the youngest generation's threshold
(``YOUNG_THRESHOLD``): at 32 callers Python's default ran ~36 young collections a second, ~0.28 ms
each, walking the live objects of the requests in flight; at 7,000 they are rare (a cycle's
garbage waits for at most 7,000 more objects before it is collected).

Frozen objects are still freed when their last reference goes; only a reference cycle among them
is never collected. Start-up's policy becomes such garbage after a reload when it holds a cycle:
at most that one policy stays in memory (later policies are not frozen).
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

# Objects tracked (allocated less freed) before the youngest generation is collected: Python's
# 700 is reached every few requests by what requests in flight hold, not by garbage (most of it
# is freed by reference counting), and each of those collections walks the requests' live objects.
YOUNG_THRESHOLD = 7_000

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Collect start-up's garbage, then freeze what is left (see the module docstring)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.debug(
        "heap settled: %d objects frozen in %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )
