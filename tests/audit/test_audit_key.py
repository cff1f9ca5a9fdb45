"""An unkeyed audit trail: ``audit.redact`` without ``SPANGATE_AUDIT_KEY`` is refused at start-up
(a plain SHA-256 of a small value is reversed by trying them all), and a trail without a key is
allowed but warned about: in the log at start-up, in ``/readyz`` and in ``audit verify``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import POLICY, REPO

from gateway.audit.chain import UNKEYED_WARNING
from gateway.cli import main
from gateway.errors import ConfigError
from gateway.runtime import build_gateway
from gateway.settings import Settings

SPANGATE = [sys.executable, "-m", "gateway"]


def _env_without_key() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPANGATE_AUDIT_KEY"}
    env["OKTA_ISSUER"] = "https://idp.invalid/oauth2/default"  # never reached: refused first
    return env


@pytest.fixture
def unredacted_policy(tmp_path: Path) -> Path:
    """The audit tests' policy without its ``audit.redact``."""
    text = POLICY.read_text()
    assert "  redact: [total_cents]\n" in text
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace("  redact: [total_cents]\n", ""))
    return path


def test_serve_refuses_redact_without_a_key(tmp_path: Path) -> None:
    """Through the real `spangate serve`: exit 2 and a message naming the setting, before any
    port is bound or any Spanner or IdP is reached."""
    out = subprocess.run(
        [*SPANGATE, "serve", "--policy", str(REPO / "policy.example.yaml"), "--port", "0"],
        env=_env_without_key(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert "audit.redact (total_cents) needs SPANGATE_AUDIT_KEY" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_empty_key_is_no_key(make_settings: Callable[..., Settings], idp: Any) -> None:
    with pytest.raises(ConfigError, match="needs SPANGATE_AUDIT_KEY"):
        build_gateway(make_settings(audit_key=""), env={"OKTA_ISSUER": idp.issuer})


def test_policy_check_notes_that_redact_needs_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SPANGATE_AUDIT_KEY", raising=False)
        env.setenv("OKTA_ISSUER", "https://idp.invalid/oauth2/default")
        assert main(["policy", "check", str(REPO / "policy.example.yaml")]) == 0
        assert "audit.redact (total_cents) needs SPANGATE_AUDIT_KEY" in capsys.readouterr().err
        env.setenv("SPANGATE_AUDIT_KEY", "a-key")
        assert main(["policy", "check", str(REPO / "policy.example.yaml")]) == 0
        assert "SPANGATE_AUDIT_KEY" not in capsys.readouterr().err


async def test_an_unkeyed_trail_is_warned_about_at_start_in_readyz_and_by_verify(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Callable[..., str],
    unredacted_policy: Path,
    audit_file: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    with caplog.at_level(logging.WARNING, logger="spangate"):
        async with serve(make_settings(policy=unredacted_policy, audit_key=None)) as (_, http):
            ready = await http.get("/readyz")
            read = await http.get("/v1/orders/O-1001", headers=headers)
    assert read.status_code == 200
    assert ready.status_code == 200  # allowed, but said
    audit = ready.json()["audit"]
    assert (audit["keyed"], audit["warning"]) == (False, UNKEYED_WARNING)
    assert any(UNKEYED_WARNING in r.getMessage() for r in caplog.records)
    assert main(["audit", "verify", "--no-key", str(audit_file)]) == 0
    ok = capsys.readouterr().out.splitlines()[0]
    assert ok.startswith("ok: 1 events in 1 file(s), 1 chain(s), SHA-256 without a key: ")
    assert "proves nothing against anyone who can write the files" in ok


async def test_a_keyed_trail_is_ready_without_a_warning(
    make_settings: Callable[..., Settings], serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="spangate"):
        async with serve(make_settings()) as (_, http):
            ready = await http.get("/readyz")
    assert ready.status_code == 200
    audit = ready.json()["audit"]
    assert (audit["keyed"], audit["warning"]) == (True, None)
    assert not any(UNKEYED_WARNING in r.getMessage() for r in caplog.records)
