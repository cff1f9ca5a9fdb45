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
    assert report.notes == [
        f"{trail}:16: the last line has no newline (a write in progress or torn by a crash, "
        "never acknowledged): not verified"
    ]
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
    files = [tmp_path / f"audit.jsonl.{n:06d}" for n in (8, 9, 10)]  # 1..7 shipped away
    chain = write_chain(files[0], 3)
    for path in files[1:]:
        chain = _continue(chain, path, 3)
    _continue(chain, active, 2)
    shuffled = [active, files[2], files[0], files[1]]
    assert trail_order(shuffled) == [*files, active]
    report = verify_trail(shuffled, KEY)
    assert report.ok and report.events == 11 and report.files == 4
    assert report.start is not None and (report.start.file, report.start.seq) == (str(files[0]), 1)


def test_a_gap_in_rotation_numbering_names_the_missing_file(tmp_path: Path) -> None:
    """The chain alone would call it a deletion inside .000003; the break names the file."""
    active = tmp_path / "audit.jsonl"
    files = [tmp_path / f"audit.jsonl.{n:06d}" for n in (1, 2, 3, 4, 5)]
    chain = write_chain(files[0], 3)
    for path in files[1:]:
        chain = _continue(chain, path, 3)
    _continue(chain, active, 2)
    broken = verify_trail([active, files[0], files[2], files[3], files[4]], KEY).broken
    assert broken is not None
    assert (broken.kind, broken.file, broken.line, broken.seq) == (
        "missing-file", str(files[1]), None, None,
    )  # fmt: skip
    assert "audit.jsonl.000003 follows audit.jsonl.000001" in broken.detail
    assert str(broken).startswith(f"{files[1]}: missing-file: rotated file(s) audit.jsonl.000002 ")
    several = verify_trail([files[0], files[4], active], KEY).broken
    assert several is not None and several.kind == "missing-file"
    assert "audit.jsonl.000002 to audit.jsonl.000004 are missing" in several.detail


def test_an_edit_before_a_rotation_gap_is_the_first_break(tmp_path: Path) -> None:
    files = [tmp_path / f"audit.jsonl.{n:06d}" for n in (1, 2, 3)]
    chain = write_chain(files[0], 3)
    for path in files[1:]:
        chain = _continue(chain, path, 3)
    content = lines(files[0])
    content[1] = content[1].replace(b'"n":1', b'"n":11')
    put(files[0], content)
    broken = verify_trail([files[0], files[2]], KEY).broken
    assert broken is not None and (broken.kind, broken.line) == ("edited", 2)


def _rotated_trail(tmp_path: Path) -> tuple[list[Path], Chain]:
    """Three processes over three rotated files and the active one (4 + 4 + 4 + 3 events)."""
    files = [tmp_path / f"audit.jsonl.{n:06d}" for n in (1, 2, 3)]
    first = write_chain(files[0], 4)
    second = write_chain(files[1], 4, predecessor=first.last_hash)
    third = write_chain(files[2], 4, predecessor=second.last_hash)
    _continue(third, tmp_path / "audit.jsonl", 3)
    return [*files, tmp_path / "audit.jsonl"], third


def test_the_start_of_a_whole_trail_is_genesis(tmp_path: Path) -> None:
    paths, _ = _rotated_trail(tmp_path)
    report = verify_trail(paths, KEY, anchor=GENESIS)
    assert report.ok, report.broken
    start = report.start
    assert start is not None and start.genesis
    assert (start.file, start.line, start.seq, start.prev) == (str(paths[0]), 1, 1, GENESIS)
    assert start.chain == event(lines(paths[0])[0])["chain"]  # the first chain of the first file


def test_deleting_the_oldest_rotated_file_shows_in_the_start(tmp_path: Path) -> None:
    paths, _ = _rotated_trail(tmp_path)
    paths[0].unlink()
    report = verify_trail(paths[1:], KEY)
    assert report.ok  # a sound trail that starts later: only the start shows it...
    assert report.start is not None and not report.start.genesis
    assert (report.start.file, report.start.seq) == (str(paths[1]), 1)
    assert report.start.prev == event(lines(paths[1])[0])["prev"] != GENESIS
    broken = verify_trail(paths[1:], KEY, anchor=GENESIS).broken  # ...and --from-genesis fails
    assert broken is not None
    assert (broken.kind, broken.file, broken.line, broken.seq) == ("unanchored", str(paths[1]), 1, 1)
    assert "does not start at genesis" in broken.detail


def test_deleting_the_first_events_of_the_oldest_file_shows_in_the_start(tmp_path: Path) -> None:
    paths, _ = _rotated_trail(tmp_path)
    content = lines(paths[0])
    put(paths[0], content[3:])  # the first 3 events are gone
    report = verify_trail(paths, KEY)
    assert report.ok and report.start is not None
    assert (report.start.line, report.start.seq, report.start.genesis) == (1, 4, False)
    assert report.start.prev == event(content[2])["hash"]
    broken = verify_trail(paths, KEY, anchor=GENESIS).broken
    assert broken is not None and (broken.kind, broken.seq) == ("unanchored", 4)


def test_an_anchor_proves_where_an_archive_starts(tmp_path: Path) -> None:
    """Yesterday's archive ends at the hash its verify printed; today's continues from it."""
    paths, _ = _rotated_trail(tmp_path)
    yesterday = verify_trail(paths[:2], KEY)
    assert yesterday.ok and yesterday.head is not None
    last_hash = yesterday.head[2]
    today = verify_trail(paths[2:], KEY, anchor=last_hash.upper())
    assert today.ok and today.anchored_at is None  # its first event names the anchor as prev
    overlapping = verify_trail(paths[1:], KEY, anchor=last_hash)
    assert overlapping.ok and overlapping.anchored_at == f"{paths[1]}:4"
    wrong = verify_trail(paths[2:], KEY, anchor="ab" * 32).broken
    assert wrong is not None
    assert (wrong.kind, wrong.file, wrong.line) == ("unanchored", str(paths[2]), 1)
    assert "does not start at the anchor " + "ab" * 32 in wrong.detail
    content = lines(paths[2])
    put(paths[2], content[1:])  # today's first event deleted: the anchor no longer holds
    cut = verify_trail(paths[2:], KEY, anchor=last_hash).broken
    assert cut is not None and (cut.kind, cut.seq) == ("unanchored", 2)


def _continue(chain: Chain, path: Path, count: int) -> Chain:
    """The same process goes on writing its chain into another file (a rotation)."""
    with path.open("ab") as f:
        for i in range(count):
            f.write(chain.seal({"n": i, "chain_start": GENESIS})[1])
    return chain
