"""Verify an audit trail: every event intact and in its place, across rotated files and processes.

``verify_trail(paths, key, anchor=...)`` reads the files in trail order (``audit.jsonl.000001``,
``audit.jsonl.000002``, …, then ``audit.jsonl``: see ``trail_order``) and stops at the first
break, which it names by file, line and sequence number, with why:

- ``edited``: the event's content does not match its hash (or, without a key, its hash was
  recomputed and the next event names another one); a line that is not an event at all;
- ``deleted``: events of a chain are missing (the sequence jumps, or a process's first event
  names a predecessor hash that no event in the trail has);
- ``reordered``: an event is out of its place (the missing sequence numbers come later, or the
  sequence goes backwards);
- ``inserted``: an event that belongs to no chain: a copy of another event, a forged line between
  two events that chain to each other, or events between a process's last event and the first
  event of the next process, which names that last event;
- ``missing-file``: a rotated file is not among the files (``NAME.000001`` and ``NAME.000003``
  given, ``NAME.000002`` not): rotation numbers files one after the other, so a gap is a file
  deleted or left out (named in the break, which has no line);
- ``unanchored``: the trail is sound but does not start where ``anchor`` says it must.

Rules of a sound trail: within a chain ``seq`` goes up by one and ``prev`` is the hash of the
event before; a new chain (a new process) starts at ``seq`` 1 and its ``prev`` names the event just
before it in the trail. The first event of the trail is taken as given (the files before it were
not passed): ``TrailReport.start`` says where that is (chain, seq, prev), and whether it is the
genesis of the trail (seq 1, ``prev`` all zeros). Deleting the oldest files or the first events
of the oldest file leaves a sound trail that starts later: only ``start`` shows it, and an
``anchor`` (``GENESIS``, or the last hash of the previous verified archive) makes it a break.
A chain start whose ``prev`` is ``GENESIS`` in the middle of a trail (its process
could not read its predecessor) and a last line with no newline (a write in progress, or cut
short by a crash: never acknowledged; not verified) are reported as notes, not breaks; a trail
with no complete event at all is sound but ``TrailReport.events`` is 0 (``spangate audit
verify`` refuses to call it ok). Deleting the newest events of the whole trail is
not detectable from the trail alone: compare ``head`` with a copy kept elsewhere (another sink).

Streaming: memory does not grow with the trail; classifying a break re-reads the trail once.

Several trails (``spangate serve --workers N`` writes one file per worker, ``audit.w1.jsonl``…):
``trail_groups`` splits the files by name (a file and its rotations are one trail), and each
trail is verified on its own (``spangate audit verify`` does both).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.chain import GENESIS, event_hash
from gateway.audit.rotation import RotationGap, rotation_gaps, trail_groups, trail_order

__all__ = [
    "HEX64",
    "ChainBreak",
    "TrailReport",
    "TrailStart",
    "trail_groups",
    "trail_order",
    "verify_trail",
]

HEX64 = re.compile(r"[0-9a-f]{64}")  # an event hash as the trail writes it; use with fullmatch


@dataclass(frozen=True)
class ChainBreak:
    """The first place where the trail is not sound."""

    kind: str  # edited | deleted | reordered | inserted | missing-file | unanchored
    file: str
    line: int | None  # None: the break is a whole file (missing-file)
    seq: int | None
    detail: str

    def __str__(self) -> str:
        seq = f" seq {self.seq}" if self.seq is not None else ""
        line = f":{self.line}" if self.line is not None else ""
        return f"{self.file}{line}:{seq} {self.kind}: {self.detail}"


@dataclass(frozen=True)
class TrailStart:
    """The first event of the verified trail: what the verification starts from."""

    file: str
    line: int
    chain: str
    seq: int
    prev: str

    @property
    def genesis(self) -> bool:
        """The trail's very first event: nothing was written before it."""
        return self.seq == 1 and self.prev == GENESIS


@dataclass
class TrailReport:
    events: int = 0
    files: int = 0
    chains: int = 0
    start: TrailStart | None = None  # the first event
    head: tuple[str, int, str] | None = None  # (chain, seq, hash) of the last event
    anchored_at: str | None = None  # "FILE:LINE" of the event whose hash is the anchor
    notes: list[str] = field(default_factory=list)
    broken: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


@dataclass(frozen=True)
class _Entry:
    file: str
    line: int
    event: dict[str, Any] | None  # None: not an event
    complete: bool  # ends with a newline
    hash_ok: bool

    @property
    def seq(self) -> int | None:
        return self.event["seq"] if self.event else None

    @property
    def chain(self) -> str | None:
        return self.event["chain"] if self.event else None

    @property
    def hash(self) -> str | None:
        return self.event["hash"] if self.event else None

    @property
    def prev(self) -> str | None:
        return self.event["prev"] if self.event else None

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    seq, chain = event.get("seq"), event.get("chain")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1):
        return None
    if not (isinstance(chain, str) and chain):
        return None
    for name in ("prev", "hash"):
        value = event.get(name)
        if not (isinstance(value, str) and HEX64.fullmatch(value)):
            return None
    return event


def _entries(paths: Sequence[Path], key: bytes | None) -> Iterator[_Entry]:
    for path in paths:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                complete = raw.endswith(b"\n")
                event = _parse(raw)
                ok = event is not None and event_hash(event, key) == event["hash"]
                yield _Entry(str(path), number, event, complete, ok)


def _links(before: _Entry, after: _Entry) -> bool:
    """Does ``after`` chain directly onto ``before``?"""
    if after.event is None or before.event is None or after.prev != before.hash:
        return False
    if after.seq == 1:
        return True  # a new process naming its predecessor
    return after.chain == before.chain and after.seq == (before.seq or 0) + 1


class _Verifier:
    def __init__(self, paths: Sequence[Path], key: bytes | None, anchor: str | None) -> None:
        self.paths = paths
        self.key = key
        self.anchor = anchor

    def _scan(self) -> Iterator[_Entry]:
        return _entries(self.paths, self.key)

    def _later(self, entry: _Entry, chain: str, seqs: range) -> _Entry | None:
        """The first event after ``entry`` of ``chain`` whose seq is in ``seqs``."""
        after = False
        for e in self._scan():
            if after and e.event is not None and e.chain == chain and e.seq in seqs:
                return e
            after = after or (e.file == entry.file and e.line == entry.line)
        return None

    def _earlier(self, entry: _Entry, digest: str | None) -> _Entry | None:
        """The first event before ``entry`` whose hash is ``digest``."""
        for e in self._scan():
            if e.file == entry.file and e.line == entry.line:
                return None
            if e.event is not None and e.hash == digest:
                return e
        return None

    def run(self) -> TrailReport:
        report = TrailReport(files=len(self.paths))
        history: list[_Entry] = []  # the last events that chained (at most 3)
        chains: set[str] = set()
        gaps = {str(gap.after): gap for gap in rotation_gaps(self.paths)}
        file = None
        stream = self._scan()
        entry = next(stream, None)
        while entry is not None:
            if entry.file != file:
                file = entry.file
                if (gap := self._gap_before(file, gaps)) is not None:
                    report.broken = gap
                    return report
            following = next(stream, None)
            if not entry.complete and following is None and entry.file == str(self.paths[-1]):
                report.notes.append(
                    f"{entry.where()}: the last line has no newline (a write in progress or torn "
                    "by a crash, never acknowledged): not verified"
                )
                break
            problem = self._check(entry, following, history)
            if problem is not None:
                report.broken = problem
                return report
            assert entry.event is not None
            if entry.seq == 1 and entry.prev == GENESIS and history:
                report.notes.append(
                    f"{entry.where()}: chain {entry.chain} starts without naming its "
                    "predecessor (its process could not read the trail)"
                )
            if report.start is None:
                report.start = TrailStart(
                    entry.file, entry.line, entry.chain or "", entry.seq or 0, entry.prev or ""
                )
            if self.anchor is not None and entry.hash == self.anchor and not report.anchored_at:
                report.anchored_at = entry.where()
            chains.add(entry.chain or "")
            history = [*history[-2:], entry]
            report.events += 1
            report.head = (entry.chain or "", entry.seq or 0, entry.hash or "")
            entry = following
        if (gap := self._gap_before(None, gaps)) is not None:  # before files with no events
            report.broken = gap
            return report
        report.chains = len(chains)
        report.broken = self._unanchored(report)
        return report

    def _gap_before(self, file: str | None, gaps: dict[str, RotationGap]) -> ChainBreak | None:
        """The break of a rotation gap before ``file`` (None: before any file left)."""
        names = [str(p) for p in self.paths]
        upto = names.index(file) + 1 if file is not None else len(names)
        for name in names[:upto]:
            if (gap := gaps.pop(name, None)) is not None:
                first, final = gap.first.name, gap.last.name
                files = first if first == final else f"{first} to {final}"
                return ChainBreak(
                    "missing-file",
                    str(gap.first),
                    None,
                    None,
                    f"rotated file(s) {files} are missing: rotation numbers files without gaps, "
                    f"and {gap.after.name} follows {gap.before.name}",
                )
        return None

    def _unanchored(self, report: TrailReport) -> ChainBreak | None:
        """A break when the sound trail does not start at ``anchor``."""
        start = report.start
        if self.anchor is None or report.anchored_at is not None:
            return None
        if start is None:
            return ChainBreak(
                "unanchored", str(self.paths[0]), None, None, "the trail has no events"
            )
        if self.anchor == GENESIS:
            if start.genesis:
                return None
            return ChainBreak(
                "unanchored",
                start.file,
                start.line,
                start.seq,
                f"the trail does not start at genesis: its first event (chain {start.chain} "
                f"seq {start.seq}) names {start.prev} as its predecessor, and earlier events "
                "are not in these files",
            )
        if start.prev == self.anchor:
            return None
        return ChainBreak(
            "unanchored",
            start.file,
            start.line,
            start.seq,
            f"the trail does not start at the anchor {self.anchor}: its first event (chain "
            f"{start.chain} seq {start.seq}) names {start.prev} as its predecessor, and no "
            "event has the anchor's hash",
        )

    def _check(
        self, e: _Entry, following: _Entry | None, history: list[_Entry]
    ) -> ChainBreak | None:
        def brk(kind: str, at: _Entry, detail: str) -> ChainBreak:
            return ChainBreak(kind, at.file, at.line, at.seq, detail)

        p = history[-1] if history else None
        if e.event is None:
            return brk("edited", e, "the line is not an audit event (not JSON, or no chain fields)")
        if not e.complete:
            return brk("edited", e, "the line has no newline and is not the last of the trail")
        if not e.hash_ok:
            if p is not None and following is not None and _links(p, following):
                return brk(
                    "inserted",
                    e,
                    f"a forged line: the events around it chain to each "
                    f"other ({p.where()} -> {following.where()})",
                )
            return brk("edited", e, "the event's content does not match its hash")
        if p is None or _links(p, e):
            return None
        if copy := self._earlier(e, e.hash):
            return brk("inserted", e, f"a copy of the event at {copy.where()}")
        same = e.chain == p.chain
        if same and e.seq is not None and p.seq is not None and e.seq > p.seq + 1:
            missing = range(p.seq + 1, e.seq)
            if moved := self._later(e, p.chain or "", missing):
                return brk(
                    "reordered",
                    e,
                    f"event {moved.seq} of this chain should come before "
                    f"this one; it is at {moved.where()}",
                )
        if following is not None and _links(p, following):
            return brk(
                "inserted",
                e,
                f"an event that belongs here to no chain: the events "
                f"around it chain to each other ({p.where()} -> {following.where()})",
            )
        for k in range(len(history) - 2, -1, -1):
            if _links(history[k], e):
                first = history[k + 1]
                return brk(
                    "inserted",
                    first,
                    f"the event(s) from here to {p.where()} belong to "
                    f"no chain: {e.where()} names {history[k].where()} as its predecessor",
                )
        if same and e.seq is not None and p.seq is not None:
            if e.seq > p.seq + 1:
                gap = f"{p.seq + 1}" if e.seq == p.seq + 2 else f"{p.seq + 1}..{e.seq - 1}"
                return brk(
                    "deleted", e, f"event(s) {gap} of chain {e.chain} are missing before this one"
                )
            if e.seq <= p.seq:
                return brk("reordered", e, f"the sequence goes back from {p.seq} to {e.seq}")
            return brk(
                "edited",
                p,
                f"its hash is not the one the next event ({e.where()}) names "
                "as its predecessor: one of the two was rewritten",
            )
        if e.seq == 1:
            if e.prev == GENESIS:
                return None  # an unlinked start: noted by the caller
            return brk(
                "deleted",
                e,
                "this process's first event names a predecessor that is "
                f"not the event before it ({p.where()}): the events in between are missing",
            )
        if moved := self._later(e, e.chain or "", range(1, e.seq or 1)):
            return brk(
                "reordered",
                e,
                f"event {moved.seq} of this chain should come before this "
                f"one; it is at {moved.where()}",
            )
        return brk("deleted", e, f"events 1..{(e.seq or 1) - 1} of chain {e.chain} are missing")


def verify_trail(
    paths: Sequence[Path], key: bytes | None, *, anchor: str | None = None
) -> TrailReport:
    """Check ``paths`` as one trail (put in ``trail_order``); ``key`` is the derived chain key.

    ``anchor``: where the trail must start, else the report is broken (``unanchored``).
    ``GENESIS``: its first event is the first ever written (seq 1, ``prev`` all zeros). A hash
    (the last hash of the previous archive, as verified then): the first event's ``prev`` is it,
    so nothing between that archive and this one is missing, or an event of the trail has it
    (the archives overlap; the trail is verified from before it)."""
    ordered = trail_order(paths)
    if not ordered:
        return TrailReport()
    return _Verifier(ordered, key, anchor.lower() if anchor else None).run()
