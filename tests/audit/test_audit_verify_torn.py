"""`spangate audit verify` on a trail whose last line has no newline (a write in progress, or
torn by a crash): not a break, but a note naming the file and line, and a trail with no complete
event at all is not called ok (exit 1): a verifier that read nothing has verified nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_helpers import lines, put, write_chain

from gateway.audit.chain import AuditKeys
from gateway.audit.configure import worker_path
from gateway.cli import main

SECRET = b"torn-test-secret"
CHAIN_KEY = AuditKeys.from_secret(SECRET).chain  # what the gateway chains with
NOTE = "the last line has no newline (a write in progress or torn by a crash, never acknowledged)"


def _verify(capsys: pytest.CaptureFixture[str], folder: Path, *files: Path) -> tuple[int, str, str]:
    key_file = folder / "secret"
    key_file.write_bytes(SECRET)
    code = main(["audit", "verify", "--key-file", str(key_file), *map(str, files)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_trail_whose_only_line_is_torn_is_not_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write_chain(path, 1, key=CHAIN_KEY)
    put(path, [lines(path)[0].rstrip(b"\n")])  # the whole event, but no newline yet
    code, out, err = _verify(capsys, tmp_path, path)
    assert code == 1, out
    assert out == (
        f"not verified: no complete event in {path} (the trail is empty, or its only line has "
        "no newline: a write in progress or torn)\n"
    )
    assert f"note: {path}:1: {NOTE}: not verified\n" in err


def test_an_empty_trail_is_not_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    code, out, err = _verify(capsys, tmp_path, path)
    assert (code, err) == (1, "")
    assert out.startswith(f"not verified: no complete event in {path} "), out


def test_a_torn_last_line_after_events_is_a_note_and_the_rest_is_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write_chain(path, 3, key=CHAIN_KEY)
    content = lines(path)
    put(path, [*content, content[-1][:30]])  # a fourth write cut short
    code, out, err = _verify(capsys, tmp_path, path)
    assert code == 0, out
    assert out.startswith("ok: 3 events in 1 file(s), 1 chain(s), HMAC-SHA256\n")
    assert err == f"note: {path}:4: {NOTE}: not verified\n"


def test_a_worker_trail_with_no_complete_event_fails_the_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w1, w2 = worker_path(tmp_path / "audit.jsonl", 1), worker_path(tmp_path / "audit.jsonl", 2)
    write_chain(w1, 2, key=CHAIN_KEY)
    write_chain(w2, 1, key=CHAIN_KEY)
    put(w2, [lines(w2)[0][:-1]])
    code, out, err = _verify(capsys, tmp_path, w1, w2)
    assert code == 1, out
    printed = out.splitlines()
    assert "  ok: 2 events in 1 file(s), 1 chain(s), HMAC-SHA256" in printed
    assert any(line.startswith(f"  not verified: no complete event in {w2} ") for line in printed)
    assert printed[-1] == "2 trails: 1 ok, 1 with no complete event"
    assert f"note: {w2}:1: {NOTE}" in err
