"""``spangate policy replay``, and the ``--audit`` of ``policy diff``: a policy against recorded
traffic.

``replay --policy CANDIDATE AUDIT_FILE...`` recomputes every decision the audit files record
under the candidate (``gateway.audit.replay``) and reports the calls that would flip, and those
whose query, parameters or refusal would change, per route and role (``--json`` for machines).
Exit 0 when every decision was replayed and nothing flips, 1 when something flips, 3 when nothing
flips but some calls could not be replayed (``notReplayed``), 2 on unusable input: a file that is
missing, holds something other than audit events, or holds none; a trail that records no
decision at all; a candidate with problems; an audit key that does not verify the trail;
settings in the environment that are not valid. One unusable
file stops the whole run with no report: a report without it would understate what flips.

The audit key (``--key-file``, else ``SPANGATE_AUDIT_KEY``, as ``audit verify`` reads it;
``--no-key`` for a trail written without one) lets replay judge a role's equality test against a
claim the trail holds as a keyed hash (a claim bound to a redacted parameter): the policy's values
are hashed with the same key. With it, every trail is verified first, as ``audit verify`` does
(every event's hash and chain link): a break is unusable input (exit 2). Without it, the report
notes that the trail's integrity was not verified.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.cli.files import reason

__all__ = ["add_replay", "audit_traffic", "exit_code", "recorded_calls"]


def add_replay(psub: Any) -> None:
    replay = psub.add_parser(
        "replay",
        help="recompute recorded decisions under a candidate policy; report what would flip",
        description="Pass every file of the trail (audit.jsonl*, audit.wN.jsonl*: rotated and "
        "workers' files are read in order).",
    )
    replay.add_argument("--policy", type=Path, required=True, help="the candidate policy")
    replay.add_argument("files", nargs="+", type=Path, metavar="AUDIT_FILE")
    keys = replay.add_mutually_exclusive_group()
    keys.add_argument("--key-file", type=Path, help="read the audit key from this file")
    keys.add_argument(
        "--no-key", action="store_true", help="the trail was written without SPANGATE_AUDIT_KEY"
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(handler=_replay)


class _Unusable(Exception):
    pass


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.no_key:
        return None
    if args.key_file is not None:
        from gateway.cli.files import read_bytes

        return read_bytes(args.key_file, "--key-file").rstrip(b"\r\n")
    from pydantic import ValidationError

    from gateway.settings import Settings

    try:
        key = Settings().audit_key
    except ValidationError as exc:  # names the settings, never their values (a key's, say)
        wrong = ", ".join(
            "SPANGATE_" + "_".join(map(str, e["loc"])).upper() + f" ({e['msg']})"
            for e in exc.errors()
        )
        raise _Unusable(f"invalid settings in the environment: {wrong}") from None
    return key.get_secret_value().encode() if key else None


def recorded_calls(files: Sequence[Path], secret: bytes | None, notes: list[str]) -> Iterator[Any]:
    """Each event of ``files`` as the decision it records (``Recorded``) or why it records
    none (``Skipped``), streamed: nothing is kept; ``_Unusable`` with why (no events at all,
    once they are read).
    With an audit key, every trail is verified first (``audit.verify``: each event's hash and
    its link to the one before): a break is unusable input; without one, a note says the
    trail's integrity was not verified."""
    from gateway.audit.recorded import TrailUnreadable, read_trail, recorded
    from gateway.cli.files import file_problems

    problems = file_problems(files)
    if problems:
        raise _Unusable(f"cannot read the audit files: {'; '.join(problems)}")
    _verify(files, secret, notes)
    events = 0
    try:
        for where, event in read_trail(files, notes):
            events += 1
            yield recorded(event, where)
    except TrailUnreadable as exc:
        raise _Unusable(str(exc)) from None
    if not events:
        raise _Unusable(f"no audit events in {', '.join(map(str, files))}")


def _verify(files: Sequence[Path], secret: bytes | None, notes: list[str]) -> None:
    """Every trail of ``files`` verified with the audit key, as ``spangate audit verify`` does;
    ``_Unusable`` at the first break."""
    from gateway.audit.chain import AuditKeys
    from gateway.audit.verify import trail_groups, verify_trail

    chain_key = AuditKeys.from_secret(secret).chain
    if chain_key is None:
        notes.append(
            "integrity not verified (no audit key): run `spangate audit verify` on these files"
        )
        return
    for group in trail_groups(files):
        broken = verify_trail(group, chain_key).broken
        if broken is not None and broken.kind == "edited" and broken.detail.startswith(
            "the line is not an audit event"
        ):
            raise _Unusable(f"{broken.file}:{broken.line}: not a JSON audit event")
        if broken is not None:
            raise _Unusable(
                f"{broken}: the trail does not verify with this audit key (tampered, or not "
                "the key the gateway wrote it with: `spangate audit verify` tells them apart)"
            )


def _replay(args: argparse.Namespace) -> int:
    from gateway.audit.chain import AuditKeys
    from gateway.audit.recorded import Skipped
    from gateway.audit.replay import replay
    from gateway.audit.replay_report import ReplayReport
    from gateway.cli.policy import load_candidate

    policy = load_candidate(args.policy)
    notes: list[str] = []
    report = ReplayReport(policy.sha256, notes=notes)
    try:
        secret = _secret(args)
        key = AuditKeys.from_secret(secret).redact
        for found in recorded_calls(args.files, secret, notes):  # one at a time: counts kept
            report.events += 1
            if isinstance(found, Skipped):
                report.skip(found)
            else:
                report.add(found, replay(policy, found, key), key)
    except _Unusable as exc:
        print(f"spangate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that went away or became unreadable after the check
        where = exc.filename or "the audit files"
        print(f"spangate: cannot read {where}: {reason(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(report.render())
    return exit_code(report)


def exit_code(report: Any) -> int:
    """1 when something flips; else 3 when calls could not be replayed (what they would do is
    not known: a lock-out may hide there); 2 when the trail records no decision at all."""
    if not report.decisions:
        print(
            "spangate: the trail records no decision of the policy (every event was skipped): "
            "nothing was replayed",
            file=sys.stderr,
        )
        return 2
    if report.flips:
        return 1
    return 3 if report.decisions != report.replayed else 0


def audit_traffic(
    files: Sequence[Path],
    access: Sequence[Any],
    *,
    live_roles: Collection[str] | None = None,
    redefined: Sequence[tuple[str, str]] = (),
) -> dict[Any, Any] | str:
    """``policy diff --audit``: the recorded traffic each access change (and each redefined
    role's route) touches, or why the files cannot be used."""
    from gateway.audit.recorded import Recorded
    from gateway.audit.replay_report import traffic

    notes: list[str] = []
    try:
        found = recorded_calls(files, None, notes)
        counted = traffic(
            (c for c in found if isinstance(c, Recorded)),
            access,
            live_roles=live_roles,
            redefined=redefined,
        )
    except _Unusable as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read {exc.filename or 'the audit files'}: {reason(exc)}"
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return counted
