"""`spangate audit verify` on the trails of `spangate serve --workers N`: one file per worker
(each with its rotations) is one trail, verified on its own; a break in one is named and fails
the whole; `--anchor` (one trail's hash) with several trails is a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_helpers import lines, put, write_chain

from gateway.audit.chain import AuditKeys
from gateway.audit.configure import worker_path
from gateway.audit.verify import trail_groups
from gateway.cli import main

SECRET = b"workers-test-secret"
CHAIN_KEY = AuditKeys.from_secret(SECRET).chain  # what the gateway chains with


def _trails(folder: Path) -> tuple[Path, Path, Path]:
    """audit.w1.jsonl (a rotated file, then two processes' chains) and audit.w2.jsonl."""
    w1, w2 = worker_path(folder / "audit.jsonl", 1), worker_path(folder / "audit.jsonl", 2)
    rotated = w1.with_name(w1.name + ".000001")
    first = write_chain(rotated, 3, key=CHAIN_KEY)
    second = write_chain(w1, 2, key=CHAIN_KEY, predecessor=first.last_hash)
    write_chain(w1, 2, key=CHAIN_KEY, predecessor=second.last_hash)  # the replacement's chain
    write_chain(w2, 4, key=CHAIN_KEY)
    return w1, rotated, w2


def _verify(
    capsys: pytest.CaptureFixture[str], folder: Path, *args: str
) -> tuple[int, str, str]:
    key_file = folder / "secret"
    key_file.write_bytes(SECRET)
    code = main(["audit", "verify", "--key-file", str(key_file), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_worker_files_are_named_after_the_configured_one(tmp_path: Path) -> None:
    assert worker_path(tmp_path / "audit.jsonl", None) == tmp_path / "audit.jsonl"
    assert worker_path(tmp_path / "audit.jsonl", 3) == tmp_path / "audit.w3.jsonl"
    assert worker_path(tmp_path / "trail", 1) == tmp_path / "trail.w1"


def test_each_worker_file_and_its_rotations_are_one_trail(tmp_path: Path) -> None:
    w1, rotated, w2 = _trails(tmp_path)
    assert trail_groups([w2, w1, rotated]) == [[rotated, w1], [w2]]


def test_every_worker_trail_verifies_on_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w1, rotated, w2 = _trails(tmp_path)
    files = [str(w2), str(w1), str(rotated)]
    code, out, _ = _verify(capsys, tmp_path, *files)
    assert code == 0, out
    printed = out.splitlines()
    assert printed[0] == f"trail {w1}:"
    assert "  ok: 7 events in 2 file(s), 3 chain(s), HMAC-SHA256" in printed
    assert f"trail {w2}:" in printed
    assert "  ok: 4 events in 1 file(s), 1 chain(s), HMAC-SHA256" in printed
    assert printed[-1] == "2 trails: 2 ok"
    code, out, _ = _verify(capsys, tmp_path, "--from-genesis", *files)
    assert code == 0, out  # each trail starts at its own genesis
    code, out, _ = _verify(capsys, tmp_path, str(w1), str(w2))  # w1's rotated file left out
    assert code == 0, out  # w1 now starts later (said in its starts: line), w2 is whole
    assert "not genesis" in out


def test_a_break_in_one_worker_trail_fails_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w1, rotated, w2 = _trails(tmp_path)
    content = lines(w2)
    put(w2, content[:1] + content[2:])  # an event of worker 2 deleted
    code, out, _ = _verify(capsys, tmp_path, str(w1), str(rotated), str(w2))
    assert code == 1
    assert f"  {w2}:2: seq 3 deleted: event(s) 2 of chain" in out
    assert out.splitlines()[-1] == "2 trails: 1 ok, 1 broken"


def test_an_anchor_is_one_trails_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w1, _, w2 = _trails(tmp_path)
    code, _, err = _verify(capsys, tmp_path, "--anchor", "0" * 64, str(w1), str(w2))
    assert code == 2 and "2 trails" in err
    code, out, _ = _verify(capsys, tmp_path, "--anchor", "0" * 64, str(w2))
    assert code == 0, out  # one trail: as before
