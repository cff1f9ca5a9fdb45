"""`verify_trail`: a sound trail passes; each kind of tampering is named at the exact event."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_helpers import KEY, event, lines, put, reseal, write_chain

from gateway.audit.chain import GENESIS, Chain
from gateway.audit.verify import trail_order, verify_trail


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """Two processes: 10 events, then 5 that name the first process's last hash."""
    path = tmp_path / "audit.jsonl"
    first = write_chain(path, 10)
    write_chain(path, 5, predecessor=first.last_hash)
    return path


def test_a_sound_trail_passes(trail: Path) -> None:
    report = verify_trail([trail], KEY)
    assert report.ok, report.broken
    assert (report.events, report.chains, report.files) == (15, 2, 1)
    assert report.head is not None and report.head[1] == 5
    assert report.notes == []


def test_the_wrong_key_fails_at_the_first_event(trail: Path) -> None:
    report = verify_trail([trail], b"another key")
    assert report.broken is not None
    assert (report.broken.kind, report.broken.line, report.broken.seq) == ("edited", 1, 1)
    assert not verify_trail([trail], None).ok  # an HMAC trail is not a plain SHA-256 one


@pytest.mark.parametrize("key", [KEY, None])
def test_an_edited_event_is_named(trail: Path, key: bytes | None) -> None:
    path = trail
    put(path, [])
    first = write_chain(path, 10, key=key)
    write_chain(path, 5, key=key, predecessor=first.last_hash)
    content = lines(path)
    content[6] = content[6].replace(b'"n":6', b'"n":66')
    put(path, content)
    broken = verify_trail([path], key).broken
    assert broken is not None
    assert (broken.kind, broken.file, broken.line, broken.seq) == ("edited", str(path), 7, 7)


def test_an_edit_rehashed_without_the_key_is_named(trail: Path) -> None:
    """Without a key anyone can re-hash an edited event; the next event still names the old hash."""
    put(trail, [])
    write_chain(trail, 10, key=None)
    content = lines(trail)
    edited = event(content[3])
    edited["n"] = 333
    content[3] = reseal(edited, None)
    put(trail, content)
    broken = verify_trail([trail], None).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("edited", 4, 4)


def test_a_deleted_event_is_named(trail: Path) -> None:
    content = lines(trail)
    del content[4]  # seq 5
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("deleted", 5, 6)
    assert "event(s) 5 " in broken.detail


def test_deleting_the_end_of_a_process_is_seen_by_its_successor(trail: Path) -> None:
    content = lines(trail)
    del content[8:10]  # seq 9 and 10, the first process's last events
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("deleted", 9, 1)


def test_deleting_the_start_of_a_process_is_named(trail: Path) -> None:
    content = lines(trail)
    del content[10]  # the second process's seq 1
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("deleted", 11, 2)


def test_swapped_events_are_named(trail: Path) -> None:
    content = lines(trail)
    content[4], content[5] = content[5], content[4]  # seq 5 and 6
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("reordered", 5, 6)
    assert f"{trail}:6" in broken.detail  # where event 5 went


def test_an_event_moved_back_is_named(trail: Path) -> None:
    content = lines(trail)
    moved = content.pop(2)  # seq 3, put after seq 8
    content.insert(7, moved)
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("reordered", 3, 4)
    assert f"{trail}:8" in broken.detail


def test_a_copied_event_is_named_as_inserted(trail: Path) -> None:
    content = lines(trail)
    content.insert(7, content[2])  # a replay of seq 3 after seq 7
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("inserted", 8, 3)
    assert f"copy of the event at {trail}:3" in broken.detail


def test_a_forged_event_is_named_as_inserted(trail: Path) -> None:
    content = lines(trail)
    forged = event(content[3])  # looks like seq 4's successor, but its hash cannot be right
    forged.update(seq=5, prev=forged["hash"], n=999)
    content.insert(4, reseal(forged, b"a guessed key"))
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.line, broken.seq) == ("inserted", 5, 5)


def test_an_insertion_rehashed_without_the_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_chain(path, 8, key=None)
    content = lines(path)
    forged = event(content[3])
    forged.update(seq=5, prev=forged["hash"], n=999)
    content.insert(4, reseal(forged, None))  # chains perfectly onto seq 4...
    put(path, content)
    broken = verify_trail([path], None).broken
    assert broken is not None  # ...but the real seq 5 still names seq 4
    assert (broken.kind, broken.line, broken.seq) == ("inserted", 5, 5)


def test_a_line_that_is_no_event_is_named(trail: Path) -> None:
    content = lines(trail)
    content.insert(3, b"hello\n")
    put(trail, content)
    broken = verify_trail([trail], KEY).broken
    assert broken is not None and (broken.kind, broken.line, broken.seq) == ("edited", 4, None)


def test_a_partial_last_line_is_a_note_but_not_in_the_middle(trail: Path) -> None:
    content = lines(trail)
    put(trail, [*content, content[-1][:40]])  # a write cut short by a crash
    report = verify_trail([trail], KEY)
    assert report.ok and report.events == 15
    assert "incomplete" in report.notes[0]
    put(trail, [*content[:5], content[5][:40], *content[5:]])
    broken = verify_trail([trail], KEY).broken
    assert broken is not None and (broken.kind, broken.line) == ("edited", 6)


def test_an_unlinked_restart_is_a_note(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_chain(path, 3)
    write_chain(path, 3, predecessor=None)  # a process that could not read the trail
    report = verify_trail([path], KEY)
    assert report.ok and report.events == 6
    assert "starts without naming its predecessor" in report.notes[0]


def test_rotated_files_are_one_trail_in_order(tmp_path: Path) -> None:
    active = tmp_path / "audit.jsonl"
    files = [tmp_path / f"audit.jsonl.{n:06d}" for n in (1, 2, 10)]
    chain = write_chain(files[0], 3)
    for path in files[1:]:
        chain = _continue(chain, path, 3)
    _continue(chain, active, 2)
    shuffled = [active, files[2], files[0], files[1]]
    assert trail_order(shuffled) == [*files, active]
    report = verify_trail(shuffled, KEY)
    assert report.ok and report.events == 11 and report.files == 4
    missing_middle = verify_trail([active, files[0], files[2]], KEY).broken
    assert missing_middle is not None
    assert (missing_middle.kind, missing_middle.file, missing_middle.line, missing_middle.seq) == (
        "deleted", str(files[2]), 1, 7,
    )  # fmt: skip


def _continue(chain: Chain, path: Path, count: int) -> Chain:
    """The same process goes on writing its chain into another file (a rotation)."""
    with path.open("ab") as f:
        for i in range(count):
            f.write(chain.seal({"n": i, "chain_start": GENESIS})[1])
    return chain
