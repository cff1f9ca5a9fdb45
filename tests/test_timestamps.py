"""gateway.timestamps: the same text as datetime's strftime, faster (a cached second)."""

from __future__ import annotations

import datetime as dt
import random
import time

import pytest

from gateway import timestamps
from gateway.timestamps import rfc3339_utc, utc_now

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def reference(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime(FORMAT)


def test_same_text_as_datetime_rounding_included() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test values
    values = [rng.uniform(0, 4_102_444_800) for _ in range(20_000)]  # up to 2100
    values += [1_764_690_649.0, 1_764_690_649.9999995, 1_764_690_649.9999994, 1_764_690_649.0000005]
    values += [1_764_690_649 + k / 1e6 for k in range(-3, 4)] + [0.0, 0.5e-6, 951_782_400.25]
    for value in values:
        assert rfc3339_utc(value) == reference(value), value


def test_the_cached_second_is_replaced_when_the_second_changes() -> None:
    assert rfc3339_utc(1_764_690_649.25) == "2025-12-02T15:50:49.250000Z"
    assert rfc3339_utc(1_764_690_650.5) == "2025-12-02T15:50:50.500000Z"
    assert rfc3339_utc(1_764_690_649.75) == "2025-12-02T15:50:49.750000Z"  # back again
    assert timestamps._second[0] == 1_764_690_649


def test_utc_now_is_now() -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    text = utc_now()
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    parsed = dt.datetime.strptime(text, FORMAT)
    assert before <= parsed <= after
    assert text.endswith("Z") and len(text) == 27


def test_utc_now_truncates_the_clock_as_datetime_now_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_764_690_649_999_999_999)
    assert utc_now() == "2025-12-02T15:50:49.999999Z"
