"""The log's formatters and the request line: pure (records in, lines out), and the writer thread.

The lines a real ``spangate serve`` writes are tested in test_logs_live.py.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from shared_pipe import at_once, one_pipe

from gateway.audit.event import CallRecord
from gateway.errors import Forbidden
from gateway.logs import (
    REQUEST_EXTRA,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    configured,
    log_request,
    request_fields,
)
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.decide import decide_route, match_route
from gateway.policy.load import load_policy
from gateway.policy.redaction import shown_path
from gateway.policy.simulate import principal_for

HOSTILE = 'evil\n{"severity":"CRITICAL"}\x1b[31m\u2028\x00\x7f\x85' + "\u00e9" * 3


@pytest.fixture(scope="module")
def policy(repo: Path) -> CompiledPolicy:
    return compile_policy(
        load_policy(repo / "policy.example.yaml", env={"OKTA_ISSUER": "https://idp.example/o"})
    )


def call_to(policy: CompiledPolicy, path: str, claims: dict[str, Any]) -> CallRecord:
    principal = principal_for(policy.model, {"iss": "okta", **claims})
    found = match_route(policy, "GET", path)
    assert not isinstance(found, Exception)
    route, params = found
    call = CallRecord("rid-1", "GET", path, time.perf_counter(), "203.0.113.7", HOSTILE)
    call.principal = principal
    call.decision = decide_route(policy, route, params, principal)
    call.status = 200 if call.decision.allow else 403
    call.error = None if call.decision.allow else call.decision.problem
    return call


def record_of(fields: dict[str, Any], trace: str | None = None) -> logging.LogRecord:
    record = logging.LogRecord("spangate.access", logging.INFO, __file__, 1, "%s", ("m",), None)
    setattr(record, REQUEST_EXTRA, fields)
    record.trace_id = trace  # type: ignore[attr-defined]
    record.span_id = "00f067aa0ba902b7" if trace else None  # type: ignore[attr-defined]
    return record


def test_a_request_line_has_every_field_and_never_a_token(policy: CompiledPolicy) -> None:
    call = call_to(policy, "/v1/orders/O-1", {"sub": "alice", "groups": ["support"], "tenant": "t1"})
    fields = request_fields(
        request_id="rid-1",
        method="GET",
        path="/v1/orders/O-1",
        status=200,
        seconds=0.0031234,
        transport="http",
        call=call,
        user_agent="curl/8",
        client=None,
    )
    line = json.loads(JsonFormatter().format(record_of(fields, "4bf92f3577b34da6a3ce929d0e0e4736")))
    assert line["severity"] == "INFO" and line["logger"] == "spangate.access"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert line["span_id"] == "00f067aa0ba902b7"
    assert {k: line[k] for k in ("route", "query", "status", "code", "subject", "issuer")} == {
        "route": "GET /v1/orders/{order_id}",
        "query": "get_order",
        "status": 200,
        "code": "ok",
        "subject": "alice",
        "issuer": "okta",
    }
    assert line["latency_ms"] == 3.123
    assert line["client"] == "203.0.113.7" and line["transport"] == "http"
    assert line["tool"] is None and line["request_id"] == "rid-1"


def test_a_redacted_path_parameter_is_shown_as_its_name(
    policy: CompiledPolicy, repo: Path, tmp_path: Path
) -> None:
    """The path the log line and the span show (``shown_path``): with the call's route, or
    without one (the token refused before routing, a 405, a path the router refuses), each
    segment a route binds to a redacted parameter is ``{name}``."""
    text = (repo / "policy.example.yaml").read_text()
    redacting = tmp_path / "policy.yaml"
    assert "redact: [total_cents]" in text
    redacting.write_text(text.replace("redact: [total_cents]", "redact: [total_cents, order_id]"))
    strict = compile_policy(load_policy(redacting, env={"OKTA_ISSUER": "https://idp.example/o"}))
    call = call_to(strict, "/v1/orders/O-123", {"groups": ["support"], "tenant": "t1"})
    assert call.decision is not None
    route = call.decision.route
    assert shown_path(strict, "/v1/orders/O-123", route) == "/v1/orders/{order_id}"
    assert shown_path(strict, "/v1/orders/O-123") == "/v1/orders/{order_id}"  # no decision
    assert shown_path(strict, "/v1/orders/O-123/items") == "/v1/orders/{order_id}/items"
    assert shown_path(strict, "/v1/orders/O-1%2F23%00") == "/v1/orders/{order_id}"  # invalid
    assert shown_path(strict, "/v1/%6Frders/O-123") == "/v1/%6Frders/{order_id}"
    assert shown_path(strict, "/v1/customers/C-1") == "/v1/customers/C-1"  # not redacted
    assert shown_path(strict, "/v1/orders/O-123/x/y") == "/v1/orders/O-123/x/y"  # fits none
    assert shown_path(policy, "/v1/orders/O-123", route) == "/v1/orders/O-123"
    fields = request_fields(
        request_id="r", method="GET", path=shown_path(strict, "/v1/orders/O-123", route),
        status=200, seconds=0.0, transport="http", call=call, user_agent=None, client=None,
    )  # fmt: skip
    assert fields["path"] == "/v1/orders/{order_id}"


def test_hostile_strings_are_bounded_and_escaped(policy: CompiledPolicy) -> None:
    call = call_to(policy, "/v1/orders/O-1", {"sub": HOSTILE * 200, "groups": ["support"], "tenant": "t"})
    fields = request_fields(
        request_id="r",
        method="GET",
        path="/v1/orders/" + HOSTILE * 500,
        status=404,
        seconds=0.001,
        transport="http",
        call=None,
        user_agent=HOSTILE * 500,
        client="198.51.100.1",
    )
    fields["subject"] = request_fields(
        request_id="r", method="GET", path="/", status=200, seconds=0, transport="http",
        call=call, user_agent=None, client=None,
    )["subject"]  # fmt: skip
    for name in ("path", "user_agent", "subject"):
        assert len(fields[name].encode()) <= 512 + 3, name
    line = JsonFormatter().format(record_of(fields))
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    assert line.isascii()
    assert json.loads(line)["user_agent"].startswith("evil\n{")  # the value itself is intact
    text = TextFormatter().format(record_of(fields))
    assert "\n" not in text and "\x1b" not in text and "\x00" not in text and "\x85" not in text
    assert "\\x1b[31m" in text and "\\x0a" in text
    assert "é" in text  # printable characters stay as they are


def test_a_text_line_reads_as_a_sentence(policy: CompiledPolicy) -> None:
    call = call_to(policy, "/v1/orders/O-1", {"sub": "bob", "groups": ["marketing"]})
    fields = request_fields(
        request_id="rid-9", method="GET", path="/v1/orders/O-1", status=403, seconds=0.0042,
        transport="http", call=call, user_agent="curl/8", client=None,
    )  # fmt: skip
    text = TextFormatter().format(record_of(fields, "4bf92f3577b34da6a3ce929d0e0e4736"))
    assert isinstance(call.error, Forbidden)
    assert text.split(maxsplit=2)[2].startswith(
        f"GET /v1/orders/O-1 -> 403 {call.error.code} 4.2 ms  rid=rid-9 "
        "route=GET /v1/orders/{order_id} query=get_order sub=bob iss=okta"
    ), text
    assert text.endswith(" trace=4bf92f3577b34da6a3ce929d0e0e4736")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        configure_logging("json", "info", stream=io.StringIO())  # replace ours, then drop it
        from gateway.logs import _stop

        _stop()
        root.handlers[:] = handlers
        root.setLevel(level)


def _flush() -> None:
    from gateway.logs import _Installed

    assert _Installed.handler is not None
    _Installed.handler.flush()  # what the writer thread would write within 50 ms


def test_every_logger_writes_json_lines_through_the_writer_thread(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    assert isinstance(configure_logging("auto", "info", stream=out), JsonFormatter)  # no TTY
    assert configured()
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
    logging.getLogger("spangate.reload").warning("policy %s reloaded", "p.yaml")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("spangate").exception("request %s failed", "rid-2")
    logging.getLogger("httpx").info("HTTP Request: GET https://idp/keys")  # quiet below debug
    _flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["logger"], x["severity"]) for x in lines] == [
        ("uvicorn.error", "INFO"),
        ("spangate.reload", "WARNING"),
        ("spangate", "ERROR"),
    ]
    assert lines[1]["message"] == "policy p.yaml reloaded"
    assert "ValueError: boom" in lines[2]["exception"]


def test_a_line_logged_in_a_span_carries_its_ids(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logging.getLogger("spangate").warning("inside")
    logging.getLogger("spangate").warning("outside")
    _flush()
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert inside["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert "trace_id" not in outside


def test_the_request_line_severity_follows_the_status(
    restore_logging: None, policy: CompiledPolicy
) -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    for status in (200, 404, 503):
        fields = request_fields(
            request_id=str(status), method="GET", path="/x", status=status, seconds=0,
            transport="http", call=None, user_agent=None, client=None,
        )  # fmt: skip
        log_request(fields, None, None)
    _flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["status"], x["severity"]) for x in lines] == [(404, "WARNING"), (503, "ERROR")]


class _StuckStream(io.StringIO):
    """stderr whose reader stopped: a write blocks until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.go = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        assert self.go.wait(60)
        return super().write(text)


def test_a_stuck_stderr_drops_lines_says_so_and_never_blocks(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _StuckStream()
    monkeypatch.setattr("gateway.logs.QUEUE_RECORDS", 3)
    configure_logging("json", "info", stream=out)
    log = logging.getLogger("spangate")
    log.warning("first")
    assert out.writing.wait(60)  # the writer thread is stuck in its write of "first"
    for i in range(10):
        log.warning("line %d", i)  # returns at once: 3 wait, 7 are dropped
    out.go.set()
    _flush()  # stderr drains
    log.warning("after")
    _flush()
    lines = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert lines == [
        "first",
        "line 0",
        "line 1",
        "line 2",
        "after [7 earlier log line(s) dropped: stderr fell behind]",
    ]


def test_auto_is_text_on_a_terminal(restore_logging: None) -> None:
    main, other = pty.openpty()
    with os.fdopen(other, "w") as terminal:
        assert isinstance(configure_logging("auto", "info", stream=terminal), TextFormatter)
        logging.getLogger("spangate").warning("to a person")
        _flush()
        assert b"WARNING spangate: to a person" in os.read(main, 4096)
    os.close(main)


def test_a_forked_worker_writes_its_lines_too(restore_logging: None, tmp_path: Path) -> None:
    path = tmp_path / "log"
    out = path.open("w")
    configure_logging("json", "info", stream=out)
    pid = os.fork()
    if pid == 0:  # the child inherits no writer thread: one is started for it
        logging.getLogger("spangate").warning("from the child")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "from the child" not in path.read_text():
            time.sleep(0.01)
        os._exit(0 if "from the child" in path.read_text() else 1)  # no flush at exit
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's line was never written"
    out.close()
    lines = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    assert lines == ["from the child"]


def test_stderr_falling_behind_drops_by_size_too_and_counts_in_metrics(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, gateway: Any
) -> None:
    """A few huge records (tracebacks, long messages) fill the buffer long before its count
    does: beyond about QUEUE_BYTES characters they are dropped, counted in /metrics."""
    from gateway.logs import dropped_lines

    out = _StuckStream()
    monkeypatch.setattr("gateway.logs.QUEUE_BYTES", 20_000)
    configure_logging("json", "info", stream=out)
    log = logging.getLogger("spangate")
    log.warning("first")
    assert out.writing.wait(60)  # the writer thread is stuck in its write of "first"
    for i in range(10):
        log.warning("big %d %s", i, "x" * 5_000)  # about 5 KB each: 3 fit in 20 KB
    out.go.set()
    _flush()
    log.warning("after")
    _flush()
    lines = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert [m.split(" x")[0] for m in lines] == [
        "first",
        "big 0",
        "big 1",
        "big 2",
        "after [7 earlier log line(s) dropped: stderr fell behind]",
    ]
    assert dropped_lines()[1] == 7
    exposition = gateway.metrics.render(gateway).decode()
    assert "spangate_log_lines_dropped_total 7.0" in exposition


def test_a_forked_worker_never_writes_its_parents_waiting_lines(
    restore_logging: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.logs.WRITE_SECONDS", 3600.0)  # nothing leaves but by flush
    path = tmp_path / "log"
    out = path.open("w")
    configure_logging("json", "info", stream=out)
    logging.getLogger("spangate").warning("from the parent")  # waiting when the child forks
    pid = os.fork()
    if pid == 0:
        logging.getLogger("spangate").warning("from the child")
        _flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _flush()
    out.close()
    lines = sorted(json.loads(line)["message"] for line in path.read_text().splitlines())
    assert lines == ["from the child", "from the parent"]


def test_text_lines_escape_and_indent_tracebacks_and_multi_line_messages() -> None:
    try:
        raise ValueError("bad\x1b[2J\rvalue\nsecond")
    except ValueError as exc:
        info = (type(exc), exc, exc.__traceback__)
    record = logging.LogRecord(
        "spangate", logging.ERROR, __file__, 1, "one\ntwo\x1b[31m", None, info
    )
    record.stack_info = "Stack (most recent call last):\n  frame\x07"
    text = TextFormatter().format(record)
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "\\x1b[2J\\x0dvalue" in text and "two\\x1b[31m" in text
    first, *rest = text.split("\n")
    assert first.endswith("spangate: one")
    assert rest and all(line.startswith("    ") for line in rest), text
    assert any("ValueError: bad" in line for line in rest)
    assert rest[-1] == "      frame\\x07"


GOOGLE_LOGGING = """
import logging, sys, warnings
from google.auth.credentials import AnonymousCredentials
from google.cloud.spanner_v1.services.spanner import SpannerClient
from gateway.logs import configure_logging, _stop
order = sys.argv[1]
if order == "client-first":
    SpannerClient(credentials=AnonymousCredentials())
configure_logging("json", "info")
if order == "logging-first":
    SpannerClient(credentials=AnonymousCredentials())
logging.getLogger("google.cloud.spanner_v1._helpers").warning(
    "from the library", extra={"request": {"payload": "wile@acme.example"}}  # as gRPC's logging
)
logging.getLogger("google.cloud.spanner_v1").debug("never at debug")
warnings.warn("a library's warning", DeprecationWarning, stacklevel=1)
_stop()
"""


@pytest.mark.parametrize("order", ["client-first", "logging-first"])
def test_google_library_lines_and_warnings_are_json_lines_too(order: str) -> None:
    """google-api-core turns the "google" logger's propagation off when a Spanner client is
    created unless the logger is configured: its lines would miss the formatter."""
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", GOOGLE_LOGGING, order],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "GOOGLE_SDK_PYTHON_LOGGING_SCOPE"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert [(x["logger"], x["severity"]) for x in lines] == [
        ("google.cloud.spanner_v1._helpers", "WARNING"),
        ("py.warnings", "WARNING"),
    ], done.stderr
    assert lines[0]["message"] == "from the library"
    assert "wile@acme.example" not in done.stderr  # another library's extra is not a request line
    assert "a library's warning" in lines[1]["message"]


def _shared_stream_lines(lock: Path | None) -> list[str]:
    """Two workers' log writers and one's stdout audit sink on one pipe (``2>&1``), each with
    its own lock descriptor as a worker has; every line longer than PIPE_BUF."""
    from gateway.audit.sinks import Sealed
    from gateway.audit.stdout_sink import StdoutSink
    from gateway.logs import _Buffered

    with one_pipe() as pipe:
        streams = [os.fdopen(os.dup(pipe.write), "w") for _ in range(2)]
        handlers = [_Buffered(s, JsonFormatter(), 10_000, lock=lock) for s in streams]
        sink = StdoutSink(fd=pipe.write, lock=lock)
        sink.open()
        pad = "x" * 6000

        def log_lines(number: int) -> None:
            for n in range(40):
                for k in range(3):
                    message = f"{number} {n} {k} {pad}"
                    record = logging.LogRecord("w", logging.INFO, __file__, 1, message, None, None)
                    handlers[number].emit(record)
                handlers[number].flush()

        def audit_lines() -> None:
            for n in range(40):
                line = json.dumps({"audit": n, "pad": pad}) + "\n"
                sink.write([Sealed({}, line.encode())] * 3)

        at_once(functools.partial(log_lines, 0), functools.partial(log_lines, 1), audit_lines)
        for handler in handlers:
            handler.close()
        for stream in streams:
            stream.close()
        sink.close()
    return pipe.lines()


def test_workers_log_lines_and_audit_lines_on_one_stream_stay_whole(tmp_path: Path) -> None:
    lines = _shared_stream_lines(tmp_path / "output.lock")
    parsed = [json.loads(line) for line in lines]  # every line whole
    assert len(parsed) == 2 * 40 * 3 + 40 * 3
    assert sum("audit" in p for p in parsed) == 40 * 3
    # each worker's lines in the order it logged them
    for worker in ("0", "1"):
        mine = [
            p["message"].split()[1:3]
            for p in parsed
            if p.get("message", "").startswith(worker + " ")
        ]
        assert mine == [[str(n), str(k)] for n in range(40) for k in range(3)]
