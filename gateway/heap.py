"""The garbage collector, once the server has started: what start-up built is set aside.

By the end of start-up the process holds ~175,000 objects tracked by the cyclic garbage collector
(the Spanner and gRPC clients, protobuf descriptors, pydantic models, the compiled policy), nearly
all of them for the life of the process. Left in the collector's oldest generation, each full
collection walks them all, on the event loop's thread, with every request waiting: measured at 32
callers on 2 cores, a full collection every ~5 s, each holding the loop ~70 ms, which was the
gateway's p99 latency. ``freeze_startup_heap`` collects once (start-up's own garbage) and freezes
what remains (``gc.freeze``: kept out of every later collection), so a full collection walks only
what serving has made since (~0.5-0.8 ms measured). It also raises the youngest generation's
threshold (``YOUNG_THRESHOLD``): at 32 callers Python's default ran ~36 young collections a
second, ~0.28 ms each, walking the live objects of the requests in flight; at 7,000 they are rare
(a cycle's garbage waits for at most 7,000 more objects before it is collected).

What it costs: a frozen object is still freed when its last reference goes, but a reference cycle
among frozen objects is never collected while they are frozen. Whatever start-up built and a
reload later drops (the start-up policy, its analysis, a verifier's key caches) stays in memory
if it holds a cycle: bounded by what start-up built, since nothing made later is frozen, and what
the gateway drops it closes explicitly (nothing waits for a finalizer). ``unfreeze_heap`` (after
the server's shutdown) gives them back to the collector, so the interpreter's exit finalizes them.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["YOUNG_THRESHOLD", "freeze_startup_heap", "unfreeze_heap"]

# Objects tracked (allocated less freed) before the youngest generation is collected: Python's
# 700 is reached every few requests by what requests in flight hold, not by garbage (most of it
# is freed by reference counting), and each of those collections walks the requests' live objects.
YOUNG_THRESHOLD = 7_000

log = logging.getLogger("spangate.server")


def freeze_startup_heap() -> None:
    """Collect start-up's garbage, freeze what is left, raise the young generation's threshold
    (see the module docstring)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.debug(
        "start-up heap frozen: %d objects out of later garbage collections (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )


def unfreeze_heap() -> None:
    """Give the frozen objects back to the collector (the server has shut down)."""
    gc.unfreeze()
