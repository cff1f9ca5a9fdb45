"""`schemathesis run` against a real `spangate serve` on the example policy finds nothing.

Schemathesis reads /openapi.json (built from the policy) and sends generated requests, valid and
invalid, checking every answer against the documented responses: no 500s, no undocumented
statuses or shapes, no accepted invalid data. It runs once per persona that can reach routes,
and tests every operation: each route of the example policy and, since a route there waits for
approval, the four operations of /approvals.

One worker (``--workers 1``): with two, the worker threads generate the coverage phase's cases of
the twin operations ``POST /approvals/{id}/approve`` and ``/reject`` in lockstep, and both make
hypothesis describe schemathesis' path-parameter filter (a lambda in
``schemathesis/specs/openapi/coverage/_schema.py``, ``_negative_type``, for the ``id`` path
parameter's wrong-type values) at the same moment. hypothesis parses that module's source with
``ast`` to describe a lambda, once per thread (its caches are thread-local), and CPython 3.11.7's
``ast`` is not thread-safe (gh-106905): two concurrent parses raise ``SystemError: AST
constructor recursion depth mismatch``. Measured here (2 cores), one worker is no slower than two:
19-30 s a persona against 23-40 s.
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
from gateway.policy.compiled import compile_policy
from gateway.policy.load import load_policy

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# The approvers' endpoints (gateway.approvals.endpoints), served when a route waits for approval.
APPROVALS_OPERATIONS = {
    ("GET", "/approvals"),
    ("GET", "/approvals/{id}"),
    ("POST", "/approvals/{id}/approve"),
    ("POST", "/approvals/{id}/reject"),
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def expected_operations(repo: Path, issuer: str) -> set[tuple[str, str]]:
    """Every operation the example policy's OpenAPI document must describe."""
    policy = compile_policy(load_policy(repo / "policy.example.yaml", env={"OKTA_ISSUER": issuer}))
    routes = {(r.model.method, r.template) for r in policy.routes}
    waits = any(r.model.approval is not None for r in policy.routes)
    return routes | (APPROVALS_OPERATIONS if waits else set())


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
    served: str,
    token_for: Callable[..., str],
    repo: Path,
    persona: str,
    tmp_path: Path,
    idp: Any,
) -> None:
    expected = expected_operations(repo, idp.issuer)
    doc = httpx.get(f"{served}/openapi.json", timeout=30).json()
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == expected
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
            "1",  # see the module's docstring
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
    assert tested and int(tested.group(1)) == len(expected), report[-3000:]  # every operation
    assert cases and int(cases.group(1)) > 100 and cases.group(1) == cases.group(2), report[-3000:]
