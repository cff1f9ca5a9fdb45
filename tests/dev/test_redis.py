"""The development stack's redis-server: ours, on its own port, stopped by its pid."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.dev.redis import RedisStartError, start_redis


def test_a_server_already_on_the_port_is_never_taken_for_ours(tmp_path: Path) -> None:
    """Regression: the launcher took any PONG on its port for its own server, so a race for a
    free port could hand the tests someone else's Redis (which they then flush)."""
    with start_redis(log_path=tmp_path / "first.log") as first:
        with pytest.raises(RedisStartError, match="did not answer as process"):
            start_redis(log_path=tmp_path / "second.log", port=first.port, timeout=10)
        assert first.is_running()


def test_it_answers_as_itself_and_stops(tmp_path: Path) -> None:
    with start_redis(log_path=tmp_path / "redis.log") as server:
        assert server.is_running() and server.url.endswith(f":{server.port}/0")
    assert not server.is_running()
