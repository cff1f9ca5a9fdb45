"""A trail written before sealing was rewritten still verifies, and the gateway continues it.

``data/trail-v1.jsonl`` was written by the sealing code of commit a7fb35c (two encodes per
event; the ``writable`` check, then the sealed form) through the real writer and file sink: two
chains (the second sealed as worker 2), keyed with the chain key derived from ``SECRET``, with
the odd values sealing has to handle (U+2028/U+2029/U+0085, non-ASCII, a lone surrogate, NaN,
a key sorting before ``hash``, an event carrying its own ``hash`` and ``chain``). Sealing must
keep producing exactly these bytes: the hash is over the canonical JSON, whatever encodes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.audit.chain import AuditKeys, Chain, canonical, line_text
from gateway.audit.sinks import FileSink, Sealed
from gateway.audit.verify import verify_trail
from gateway.cli import main

SECRET = b"trail-v1 fixture secret"
TRAIL = Path(__file__).parent / "data" / "trail-v1.jsonl"
KEY = AuditKeys.from_secret(SECRET).chain


def test_the_old_trail_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = verify_trail([TRAIL], KEY)
    assert report.ok and report.events == 16 and report.chains == 2, report.broken
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET + b"\n")
    code = main(["audit", "verify", "--key-file", str(key_file), "--from-genesis", str(TRAIL)])
    assert code == 0 and capsys.readouterr().out.startswith("ok: 16 events in 1 file(s), 2 chain")


def test_sealing_the_old_events_again_gives_the_same_bytes() -> None:
    """Each old line, unsealed and sealed again by today's Chain with its chain id, seq, prev and
    worker, comes out byte for byte as it was written."""
    for raw in TRAIL.read_bytes().splitlines(keepends=True):
        old = json.loads(raw)
        chain = Chain(KEY, chain_id=old["chain"], worker=old.get("worker"))
        chain.seq, chain.last_hash = old["seq"] - 1, old["prev"]
        body = {k: v for k, v in old.items() if k not in ("chain", "seq", "prev", "hash", "worker")}
        sealed, line = chain.seal(body)
        assert line == raw and sealed == old
        assert line == line_text(canonical(sealed).decode()).encode() + b"\n"


def test_the_gateway_continues_an_old_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    shutil.copy(TRAIL, path)
    sink = FileSink(path)
    chain = Chain(KEY)
    chain.start(sink.open())  # the old trail's last hash
    sink.write([Sealed(*chain.seal({"n": i, "text": "after \u2028"})) for i in range(3)])
    sink.close()
    report = verify_trail([path], KEY)
    assert report.ok and report.events == 19 and report.chains == 3, report.broken
