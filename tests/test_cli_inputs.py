"""Files named on the command line that cannot be used: every `spangate` command answers exit 2
and one line naming the option, the path and why (docs/reference/cli.md), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import main
from gateway.settings import Settings, settings_problems

REPO = Path(__file__).resolve().parent.parent
POLICY = str(REPO / "policy.example.yaml")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A missing file, a folder, a dangling link, a file that is not UTF-8, a file holding no
    audit event; each by name."""
    folder = tmp_path / "folder"
    folder.mkdir()
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00not text")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    trail = tmp_path / "audit.jsonl"
    trail.write_text("{}\n")
    return {
        "MISSING": str(tmp_path / "missing"),
        "FOLDER": str(folder),
        "DANGLING": str(dangling),
        "BINARY": str(binary),
        "TRAIL": str(trail),
        "POLICY": POLICY,
    }


CASES = [
    ("audit verify --key-file MISSING TRAIL", "cannot read --key-file {MISSING}: no such file"),
    ("audit verify --key-file FOLDER TRAIL", "cannot read --key-file {FOLDER}: a folder, not a file"),
    ("audit verify --key-file DANGLING TRAIL", "cannot read --key-file {DANGLING}: no such file"),
    ("audit verify FOLDER", "cannot read the trail: {FOLDER}: a folder, not a file"),
    ("audit verify TRAIL MISSING", "cannot read the trail: {MISSING}: no such file"),
    ("policy replay --policy POLICY --key-file MISSING TRAIL",
     "cannot read --key-file {MISSING}: no such file"),
    ("policy replay --policy POLICY --key-file FOLDER TRAIL",
     "cannot read --key-file {FOLDER}: a folder, not a file"),
    ("policy replay --policy POLICY --no-key FOLDER",
     "cannot read the audit files: {FOLDER}: a folder, not a file"),
    ("policy replay --policy MISSING --no-key TRAIL", "{MISSING}: no such file or folder"),
    ("policy diff POLICY POLICY --audit MISSING",
     "cannot read the audit files: {MISSING}: no such file"),
    ("policy explain --policy POLICY --claims @MISSING GET /v1/orders",
     "cannot read --claims {MISSING}: no such file"),
    ("policy explain --policy POLICY --claims @BINARY GET /v1/orders",
     "cannot read --claims {BINARY}: not UTF-8 text"),
    ("policy explain --policy POLICY --claims {} --body @FOLDER POST /v1/orders",
     "cannot read --body {FOLDER}: a folder, not a file"),
    ("policy explain --policy POLICY --claims {} --arguments @MISSING MCP get_order",
     "cannot read --arguments {MISSING}: no such file"),
    ("policy check MISSING", "{MISSING}: no such file or folder"),
    ("policy check FOLDER", "{FOLDER}: no policy files"),
    ("policy check BINARY", "{BINARY}:1: the file is not valid UTF-8"),
    ("policy test MISSING", "{MISSING}: cannot read"),
    ("policy test FOLDER", "{FOLDER}: no case files"),
    ("grants --policy MISSING", "{MISSING}: no such file or folder"),
    ("grants --policy POLICY --schema MISSING", "cannot read --schema {MISSING}: no such file"),
    ("grants --policy POLICY --schema FOLDER", "cannot read --schema {FOLDER}: a folder, not a file"),
    ("grants --policy POLICY --schema BINARY", "cannot read --schema {BINARY}: not UTF-8 text"),
    ("init-db --policy MISSING --print", "{MISSING}: no such file or folder"),
    ("init-db --policy FOLDER --print", "{FOLDER}: no policy files"),
    ("dev --repo MISSING", "--repo {MISSING}: no dev/ folder there"),
    ("dev --repo FOLDER", "--repo {FOLDER}: no dev/ folder there"),
]  # fmt: skip


@pytest.mark.parametrize(("command", "expected"), CASES, ids=[c for c, _ in CASES])
def test_a_file_that_cannot_be_used_is_exit_2_and_one_clear_line(
    command: str,
    expected: str,
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SPANGATE_AUDIT_KEY", raising=False)
    argv = []
    for word in command.split():
        prefix = "@" if word.startswith("@") else ""
        argv.append(prefix + files.get(word.lstrip("@"), word.lstrip("@")))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected.format(**files) in err, err
    assert "Traceback" not in err and "Errno" not in err, err


def test_the_entry_point_prints_no_traceback(files: dict[str, str]) -> None:
    """The installed command as a user runs it: `spangate audit verify --key-file /nonexistent`."""
    env = {k: v for k, v in os.environ.items() if k != "SPANGATE_AUDIT_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", "--key-file", files["MISSING"],
         files["TRAIL"]],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"spangate: cannot read --key-file {files['MISSING']}: no such file\n"


def _spangate(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPANGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        capture_output=True, text=True, env={**clean, **env}, timeout=60, check=False,
    )  # fmt: skip


def test_a_wrong_setting_names_its_variable_and_what_it_must_be(tmp_path: Path) -> None:
    """`SPANGATE_PORT=abc spangate serve`: exit 2, one log line naming the variable, what it
    must be and the value given; never pydantic's own text, never a traceback."""
    done = _spangate("serve", "--policy", POLICY, SPANGATE_PORT="abc", SPANGATE_WORKERS="0")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()  # the log stream stays one JSON object a line
    message = json.loads(line)["message"]
    assert message == (
        "spangate: invalid settings:\n"
        "  SPANGATE_PORT: must be an integer (given: 'abc')\n"
        "  SPANGATE_WORKERS: must be at least 1 (given: '0')"
    )
    option = _spangate("serve", "--policy", POLICY, "--workers", "65")
    assert option.returncode == 2, option.stderr
    assert "--workers (SPANGATE_WORKERS): must be at most 64 (given: '65')" in option.stderr
    verify = _spangate("audit", "verify", POLICY, SPANGATE_WATCH_POLICY="maybe")
    assert verify.returncode == 2, verify.stderr
    assert verify.stderr == (
        "spangate: invalid settings:\n  SPANGATE_WATCH_POLICY: must be true or false "
        "(given: 'maybe')\n"
    )


def test_a_secret_settings_value_is_never_shown() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(audit_key=12345678, public_url="ftp://host")  # type: ignore[arg-type]
    problems = settings_problems(caught.value)
    assert "SPANGATE_AUDIT_KEY: must be a valid string\n" in problems + "\n"
    assert "12345678" not in problems
    assert "SPANGATE_PUBLIC_URL: must be an http(s) URL" in problems and "'ftp://host'" in problems
    assert "pydantic" not in problems and "type=" not in problems


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """`spangate ... | head`: the pipe closes before the output is written."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "gateway", "init-db", "--print", "--policy",
            str(repo / "policy.example.yaml")]  # fmt: skip
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run(
            argv, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
            env={**os.environ, "OKTA_ISSUER": "http://127.0.0.1:1/x"},
        )  # fmt: skip
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 1
