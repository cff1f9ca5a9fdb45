"""`spangate audit verify` on a trail the gateway wrote: it passes, and each tampering is named
by file, line, sequence number and kind. `spangate init-db` creates the Spanner sink's table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import INSTANCE, POLICY, PROJECT, audit_schema, update_ddl

from gateway.cli import main
from gateway.dev.database import create_database
from gateway.settings import Settings

SECRET = "cli-test-secret"  # noqa: S105 - a test key


@pytest.fixture
async def trail(
    make_settings: Callable[..., Settings],
    serve: Any,
    token_for: Callable[..., str],
    audit_file: Path,
    tmp_path: Path,
) -> tuple[Path, Path]:
    """A trail of 8 real events written by the gateway with a key, and the key's file."""
    headers = {"Authorization": f"Bearer {token_for('support-console')}"}
    async with serve(make_settings(audit_key=SECRET)) as (_, http):
        for i in range(8):
            await http.get(f"/v1/orders/O-100{i % 3 + 1}", headers=headers)
    key_file = tmp_path / "audit.key"
    key_file.write_text(SECRET + "\n")
    return audit_file, key_file


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_sound_trail_passes(trail: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, key = trail
    code, out, _ = verify(capsys, str(path), "--key-file", str(key))
    assert code == 0 and out.startswith("ok: 8 events in 1 file(s), 1 chain(s), HMAC-SHA256\n")
    first, last = json.loads(_lines(path)[0]), json.loads(_lines(path)[-1])
    assert (
        f"\nstarts: {path}:1 chain {first['chain']} seq 1 prev {'0' * 64} (genesis: the first "
        "event ever written)\n"
    ) in out
    assert f"\nlast event: chain {last['chain']} seq 8 hash {last['hash']} " in out
    code, out, _ = verify(capsys, str(path), "--key-file", str(key), "--from-genesis")
    assert code == 0 and "(genesis" in out


def _rotate(path: Path, sizes: list[int]) -> list[Path]:
    """Split the trail as rotation does: the first ``sizes`` lines to NAME.000001…, the rest
    stays in NAME. Returns every file, oldest first."""
    content = _lines(path)
    files = []
    for n, size in enumerate(sizes, start=1):
        rotated = path.with_name(f"{path.name}.{n:06d}")
        rotated.write_bytes(b"".join(content[:size]))
        content = content[size:]
        files.append(rotated)
    path.write_bytes(b"".join(content))
    return [*files, path]


def test_deleting_the_oldest_rotated_file_is_shown_and_refused_from_genesis(
    trail: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, key = trail
    files = _rotate(path, [3, 3])
    code, out, _ = verify(capsys, *map(str, files), "--key-file", str(key), "--from-genesis")
    assert code == 0 and out.startswith("ok: 8 events in 3 file(s)")
    files[0].unlink()
    code, out, _ = verify(capsys, *map(str, files[1:]), "--key-file", str(key))
    fourth = json.loads(_lines(files[1])[0])
    assert code == 0
    assert (
        f"\nstarts: {files[1]}:1 chain {fourth['chain']} seq 4 prev {fourth['prev']} (not "
        "genesis: earlier events are not in these files"
    ) in out
    code, out, _ = verify(capsys, *map(str, files[1:]), "--key-file", str(key), "--from-genesis")
    assert code == 1
    assert out.startswith(f"{files[1]}:1: seq 4 unanchored: the trail does not start at genesis")


def test_deleting_the_first_events_shows_where_the_trail_starts(
    trail: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, key = trail
    path.write_bytes(b"".join(_lines(path)[2:]))
    code, out, _ = verify(capsys, str(path), "--key-file", str(key))
    assert code == 0 and f"\nstarts: {path}:1 chain " in out and " seq 3 prev " in out
    assert "(not genesis" in out
    code, out, err = verify(capsys, str(path), "--key-file", str(key), "--from-genesis")
    assert code == 1 and out.startswith(f"{path}:1: seq 3 unanchored: ")
    assert "SPANGATE_AUDIT_KEY" not in err  # not a key problem


def test_a_gap_in_rotation_numbering_is_a_break(
    trail: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, key = trail
    files = _rotate(path, [2, 2, 2])
    files[1].unlink()
    code, out, _ = verify(capsys, *map(str, [files[0], *files[2:]]), "--key-file", str(key))
    assert code == 1
    assert out.startswith(f"{files[1]}: missing-file: rotated file(s) audit.jsonl.000002 are missing")


def test_an_anchor_chains_an_archive_to_the_one_before(
    trail: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, key = trail
    files = _rotate(path, [5])
    code, out, _ = verify(capsys, str(files[0]), "--key-file", str(key))
    assert code == 0
    last_hash = out.split("\nlast event: ")[1].split(" hash ")[1].split()[0]
    code, out, _ = verify(capsys, str(files[1]), "--key-file", str(key), "--anchor", last_hash)
    assert code == 0 and "(anchored: prev is the anchor)" in out
    code, out, _ = verify(capsys, *map(str, files), "--key-file", str(key), "--anchor", last_hash)
    assert code == 0 and f"(genesis; anchored: the anchor is the event at {files[0]}:5)" in out
    code, out, _ = verify(capsys, str(files[1]), "--key-file", str(key), "--anchor", "0f" * 32)
    assert code == 1
    assert out.startswith(f"{files[1]}:1: seq 6 unanchored: the trail does not start at the anchor")
    with pytest.raises(SystemExit) as usage:
        verify(capsys, str(files[1]), "--key-file", str(key), "--anchor", "not-a-hash")
    assert usage.value.code == 2 and "64 hexadecimal digits" in capsys.readouterr().err
    code, out, _ = verify(capsys, str(files[1]), "--key-file", str(key), "--anchor", last_hash.upper())
    assert code == 0 and "(anchored: prev is the anchor)" in out  # either case
    with pytest.raises(SystemExit) as usage:  # `$` would have let a final newline through
        verify(capsys, str(files[1]), "--key-file", str(key), "--anchor", last_hash + "\n")
    assert usage.value.code == 2 and "64 hexadecimal digits" in capsys.readouterr().err


def test_the_wrong_key_fails_with_a_hint(
    trail: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = trail
    code, out, err = verify(capsys, str(path), "--no-key")
    assert code == 1 and out.startswith(f"{path}:1: seq 1 edited:")
    assert "the trail is keyed; give --key-file or set SPANGATE_AUDIT_KEY" in err
    other = path.parent / "other.key"
    other.write_text("another key of 32 characters, or so")
    code, out, err = verify(capsys, str(path), "--key-file", str(other))
    assert code == 1 and "chain to each other under another key: is it the gateway's key?" in err


def test_a_trail_written_without_a_key_says_so_to_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.audit.chain import Chain

    chain, path = Chain(None), tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(chain.seal({"n": i})[1] for i in range(3)))
    key = tmp_path / "key"
    key.write_text("a key the trail was never written with")
    code, _, err = verify(capsys, str(path), "--key-file", str(key))
    assert code == 1 and "the trail was written without a key: verify it with --no-key" in err
    assert verify(capsys, str(path), "--no-key")[0] == 0


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _edit(lines: list[bytes]) -> None:
    event = json.loads(lines[3])
    event["httpRequest"]["status"] = 403  # someone makes a 200 look like a refusal
    lines[3] = json.dumps(event).encode() + b"\n"


def _delete(lines: list[bytes]) -> None:
    del lines[3]


def _reorder(lines: list[bytes]) -> None:
    lines[3], lines[4] = lines[4], lines[3]


def _insert(lines: list[bytes]) -> None:
    lines.insert(5, lines[1])  # a replayed event


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_edit, ":4: seq 4 edited: "),
        (_delete, ":4: seq 5 deleted: event(s) 4 "),
        (_reorder, ":4: seq 5 reordered: event 4 "),
        (_insert, ":6: seq 2 inserted: a copy of the event at "),
    ],
)
def test_each_tampering_is_named(
    trail: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[list[bytes]], None],
    expected: str,
) -> None:
    path, key = trail
    lines = _lines(path)
    tamper(lines)
    path.write_bytes(b"".join(lines))
    code, out, _ = verify(capsys, str(path), "--key-file", str(key))
    assert code == 1
    assert out.startswith(f"{path}{expected}"), out


def test_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = verify(capsys, str(tmp_path / "nope.jsonl"))
    assert code == 2 and "no such file" in err


def test_init_db_creates_the_spanner_sinks_table(
    audit_database: str, idp: Any, tmp_path: Path
) -> None:
    ddl, dml = audit_schema()
    create_database(
        audit_database, project=PROJECT, instance=INSTANCE, database="initdb", ddl=ddl[:-2], dml=dml
    )  # fmt: skip  (without the audit table and Scratch)
    doc = yaml.safe_load(POLICY.read_text())
    doc["identities"]["audit_writer"] = {"database_role": "audit_writer"}
    doc["audit"]["sinks"].append({"type": "spanner", "identity": "audit_writer"})
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "SPANNER_EMULATOR_HOST": audit_database,
        "SPANGATE_SPANNER_DATABASE": "initdb",
        "OKTA_ISSUER": idp.issuer,
    }
    run = [sys.executable, "-m", "gateway", "init-db", "--policy", str(policy)]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "SpangateAudit: created" in first.stdout, first.stderr
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "SpangateAudit: exists" in again.stdout, again.stderr
    update_ddl(audit_database, ["DROP TABLE SpangateAudit"], database="initdb")  # it was there
