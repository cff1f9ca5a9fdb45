"""``run_server``'s exit code after a clean stop: 0, or 1 when the app's last audit flush lost
events (``app.audit.lost``). A real uvicorn on a free loopback port, stopped by SIGINT once it
answers; the app is a minimal ASGI app with the gateway's ``audit`` seam."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.dev.ports import free_port
from gateway.server import run_server
from gateway.settings import Settings

WAIT_SECONDS = 30  # bounds the wait for the server, never asserted on


class _Trail:
    def __init__(self, lost: int) -> None:
        self.lost = 0
        self._lost = lost

    def close(self) -> None:
        self.lost = self._lost  # what the last flush could not write


class _App:
    def __init__(self, lost: int) -> None:
        self.audit = _Trail(lost)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.audit.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _stop_once_answering(port: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """run_server installs the process's log (gateway.logs): taken down again after."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    from gateway import logs

    logs._stop()
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.mark.parametrize(("lost", "code"), [(0, 0), (3, 1)])
def test_the_exit_code_says_whether_the_last_audit_flush_lost_events(lost: int, code: int) -> None:
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, drain_seconds=0, admin_port=0)
    stopper = threading.Thread(target=_stop_once_answering, args=(port,))
    stopper.start()
    try:
        # freeze_heap off: this test process's heap is not the server's to freeze (gateway.heap)
        assert run_server(_App(lost), settings, freeze_heap=False) == code
    finally:
        stopper.join()
