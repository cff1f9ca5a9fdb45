"""`schemathesis run` against a real `spangate serve` on the example policy finds nothing.

Schemathesis reads /openapi.json (built from the policy) and sends generated requests, valid and
invalid, checking every answer against the documented responses: no 500s, no undocumented
statuses or shapes, no accepted invalid data. It runs once per persona that can reach routes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dev.ports import free_port

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def served(
    demo_database: str,
    idp: Any,
    repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    audit_key: str,
) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "SPANGATE_DRAIN_SECONDS": "0",  # stopped without a drain (tests/served.py)
        "SPANNER_EMULATOR_HOST": demo_database,
        "OKTA_ISSUER": idp.issuer,
        "SPANGATE_AUDIT_PATH": str(tmp_path_factory.mktemp("schemathesis") / "audit.jsonl"),
        "SPANGATE_AUDIT_KEY": audit_key,
        "SPANGATE_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--policy",
            str(repo / "policy.example.yaml"),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "spangate serve exited"
            time.sleep(0.1)
        else:
            raise AssertionError("the gateway never became ready")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


@pytest.mark.timeout(300)
@pytest.mark.parametrize("persona", ["support-console", "order-writer"])
def test_schemathesis_finds_nothing(
    served: str, token_for: Callable[..., str], repo: Path, persona: str, tmp_path: Path
) -> None:
    out = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(repo / "schemathesis.toml"),
            "run",
            f"{served}/openapi.json",
            "-H",
            f"Authorization: Bearer {token_for(persona)}",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=280,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    tested = re.search(r"Tested: (\d+)", report)
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert tested and int(tested.group(1)) == 5, report[-3000:]  # every route of the policy
    assert cases and int(cases.group(1)) > 100 and cases.group(1) == cases.group(2), report[-3000:]
