"""The process's log: JSON lines or human-readable lines on stderr, one line per request.

``configure_logging`` installs one formatter for every logger (the gateway's, uvicorn's, the
libraries'), so a JSON stream is all JSON: ``SPANGATE_LOG_FORMAT`` ``json``, ``text``, or
``auto`` (text when stderr is a terminal, else JSON). Every line carries the trace and span id of
the span current when it was logged (when traces are on, ``gateway.tracing``). The ``google``
libraries' loggers propagate to it (google-api-core would turn that off), at INFO at most;
``warnings.warn`` goes to it too (logger ``py.warnings``).

``log_request`` writes the line of one request (logger ``spangate.access``, instead of uvicorn's
access log): request id, trace and span id, transport (``http``/``mcp``), method, path, route,
query, MCP tool, status, stable code, latency, the principal's subject and issuer, client address,
user agent. Never the token, the query string or a parameter value: a path segment that a route
binds to a parameter the policy's ``audit.redact`` names is logged as ``{name}`` (the caller
passes the path so: ``gateway.policy.redaction.shown_path``). Severity as the audit event's: INFO
below 400, WARNING for 4xx, ERROR for 5xx, of how the call ended (an MCP ``tools/call`` that
failed is answered HTTP 200; its line says 200 and its severity the call's status).

Caller-supplied strings (path, user agent, subject, tool) are cut to ``MAX_STRING_BYTES`` and
escaped: JSON escapes every control and non-ASCII character; text lines show them as ``\\xNN``.

Writes never block the event loop: records go to a bounded buffer and a thread formats and writes
what gathered every 50 ms (one write; no thread wake-up per record, which costs the event loop
more than the write itself). When stderr cannot keep up and the buffer is full (by count or by
size), records are dropped and counted (``dropped_lines``: ``/metrics``); the next line that
gets through says how many were lost. A forked worker starts with an empty buffer. Workers of
``--workers N`` share stderr: after ``share_output``, each batch is written whole under a lock
all of them take (``gateway.output``; the audit stdout sink's too when stderr is stdout), so
no worker's line splits another's.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from opentelemetry import trace

from gateway.audit.bounds import MAX_STRING_BYTES, cut
from gateway.output import output_lock_path
from gateway.timestamps import rfc3339_utc

if TYPE_CHECKING:
    from gateway.audit.event import CallRecord

__all__ = [
    "ACCESS_LOGGER",
    "REQUEST_FIELDS",
    "REQUEST_EXTRA",
    "LogFormat",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "configured",
    "dropped_lines",
    "log_request",
    "request_fields",
    "share_output",
]

LogFormat = Literal["auto", "json", "text"]
ACCESS_LOGGER = "spangate.access"
QUEUE_RECORDS = 10_000  # records waiting for stderr at most; beyond, dropped and counted
QUEUE_BYTES = 8 * 1024 * 1024  # and about this many characters of them (a few huge tracebacks)
_RECORD_OVERHEAD = 256  # characters a line adds to its message (time, level, logger, ids)
_REQUEST_OVERHEAD = 2048  # and a request line's fields (each caller string at most 512 bytes)
WRITE_SECONDS = 0.05  # the writer thread writes what gathered this often
FLUSH_SECONDS = 1.0  # at exit, how long to wait for a write that is stuck

access_log = logging.getLogger(ACCESS_LOGGER)

# The extra attribute of a record that carries a request line's fields. Not "request": Google's
# gRPC logging interceptors pass ``extra={"request": <the RPC's payload>}``, which a formatter
# reading "request" would write out (parameter values and all).
REQUEST_EXTRA = "spangate_request"
_INDENT = "\n    "  # a text line's continuation lines (a traceback, a multi-line message)

# The request line's fields, in the order a JSON line and a text line show them.
REQUEST_FIELDS = (
    "request_id",
    "transport",
    "method",
    "path",
    "route",
    "query",
    "tool",
    "status",
    "code",
    "latency_ms",
    "subject",
    "issuer",
    "client",
    "user_agent",
)


def _bounded(value: str | None) -> str | None:
    """A caller's string, cut to MAX_STRING_BYTES bytes of UTF-8 (whole characters)."""
    if value is None or len(value) * 4 <= MAX_STRING_BYTES:
        return value
    return cut(value, MAX_STRING_BYTES) + "..."


def _printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character (controls, ESC, DEL, C1, separators) shown as
    ``\\xNN`` / ``\\uNNNN``: a caller cannot forge a line or drive the terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or (keep_newlines and ch in "\n\t"):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def _time(record: logging.LogRecord) -> str:
    return rfc3339_utc(record.created)


def _trace_of(record: logging.LogRecord) -> tuple[str | None, str | None]:
    return getattr(record, "trace_id", None), getattr(record, "span_id", None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC), ``severity``, ``logger``,
    ``message``, ``trace_id`` and ``span_id`` when known, a request line's fields, and
    ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id, span_id = _trace_of(record)
        fields: Mapping[str, Any] | None = getattr(record, REQUEST_EXTRA, None)
        if trace_id is not None or fields is not None:
            entry["trace_id"] = trace_id
            entry["span_id"] = span_id
        if fields is not None:
            entry.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=True, default=str, separators=(",", ":"))


def _continued(text: str) -> str:
    """``text`` as the continuation of a text line: non-printable characters escaped (ANSI
    escapes and carriage returns included), each further line indented."""
    return _printable(text, keep_newlines=True).replace("\n", _INDENT)


class TextFormatter(logging.Formatter):
    """A line a person reads: local time, level, logger, message; a request line as
    ``GET /v1/orders/O-1 200 ok 3.1 ms`` and its other fields as ``name=value``. A message,
    traceback or stack of several lines continues on lines indented by four spaces; nothing in
    them can drive the terminal or start a line of its own (``_printable``)."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        head = f"{when}.{int(record.msecs):03d} {record.levelname:<7}"
        fields: Mapping[str, Any] | None = getattr(record, REQUEST_EXTRA, None)
        trace_id, _ = _trace_of(record)
        if fields is not None:
            shown = {"request_id": "rid", "subject": "sub", "issuer": "iss", "user_agent": "ua"}
            main = ("method", "path", "status", "code", "latency_ms")
            extra = " ".join(
                f"{shown.get(k, k)}={_printable(str(v))}"
                for k, v in fields.items()
                if v is not None and k not in main and k != "transport"
            )
            latency = fields["latency_ms"]
            line = (
                f"{head} {fields['method'] or '-'} {_printable(str(fields['path'] or '-'))} -> "
                f"{fields['status']} {fields['code'] or '-'} "
                f"{'-' if latency is None else f'{latency:.1f}'} ms"
                f"{' (mcp)' if fields.get('transport') == 'mcp' else ''}  {extra}"
            )
        else:
            line = f"{head} {record.name}: {_continued(record.getMessage())}"
        if trace_id is not None:
            line += f" trace={trace_id}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += _INDENT + _continued(record.exc_text)
        if record.stack_info:
            line += _INDENT + _continued(record.stack_info)
        return line


def _copied(record: logging.LogRecord) -> logging.LogRecord:
    """A shallow copy of ``record`` (what ``copy.copy`` makes, in a fifth of its time)."""
    copied = logging.LogRecord.__new__(type(record))
    copied.__dict__.update(record.__dict__)
    return copied


class _Buffered(logging.Handler):
    """Hands records to a writer thread without blocking: the message is rendered here (its
    arguments may change later) and the current span's ids stamped on it; the thread formats
    and writes what gathered every ``WRITE_SECONDS`` (one write, no wake-up per record). Beyond
    ``limit`` records or about ``limit_bytes`` characters waiting, a record is dropped and
    counted (``dropped_total``: ``/metrics``); the next one kept says how many were lost."""

    def __init__(
        self,
        stream: IO[str],
        formatter: logging.Formatter,
        limit: int,
        limit_bytes: int = QUEUE_BYTES,
        lock: Path | None = None,
    ) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._stream = stream
        # Workers sharing the stream: each write whole under this lock (gateway.output).
        self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600) if lock is not None else None
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._renderer = logging.Formatter()
        self._reset()
        self._start()

    def _reset(self) -> None:
        """Nothing waiting, nothing dropped (a new handler, or a forked child: its parent's
        records are its parent's to write, and its parent's drops its parent's to count)."""
        self.dropped = 0  # since the last line kept (that line says so)
        self.dropped_total = 0  # ever, in this process
        self._records: collections.deque[tuple[logging.LogRecord, int]] = collections.deque()
        # Characters waiting: added by emit() alone, taken by the writer alone (each counter
        # has one writer, so neither loses an update; their difference is what waits).
        self._added = 0
        self._taken = 0

    def _start(self) -> None:
        """The writer thread (again in a forked child, which has none: ``os.register_at_fork``
        below), with fresh locks."""
        self._writing = threading.Lock()  # never self.lock: emit() holds that one
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spangate-log", daemon=True)
        self._thread.start()

    def _prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = _copied(record)
        message = record.getMessage()
        record.msg, record.args, record.message = message, None, message
        if record.exc_info:
            record.exc_text = self._renderer.formatException(record.exc_info)
            record.exc_info = None
        if getattr(record, "trace_id", None) is None:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = f"{context.trace_id:032x}"
                record.span_id = f"{context.span_id:016x}"
        return record

    @staticmethod
    def _size(record: logging.LogRecord) -> int:
        """About how many characters the record's line takes."""
        overhead = _REQUEST_OVERHEAD if hasattr(record, REQUEST_EXTRA) else _RECORD_OVERHEAD
        return (
            overhead
            + len(record.message)
            + len(record.exc_text or "")
            + len(record.stack_info or "")
        )

    def _drop(self) -> None:
        self.dropped += 1
        self.dropped_total += 1

    def emit(self, record: logging.LogRecord) -> None:  # under self.lock (Handler.handle)
        if len(self._records) >= self._limit or self._added - self._taken >= self._limit_bytes:
            self._drop()
            return
        try:
            prepared = self._prepare(record)
        except Exception:  # noqa: BLE001 - as logging.Handler.emit: a broken record never raises
            self.handleError(record)
            return
        size = self._size(prepared)
        if self._added - self._taken + size > self._limit_bytes and self._records:
            self._drop()  # (one record alone is always let through: it is bounded by itself)
            return
        if self.dropped:
            note = f" [{self.dropped} earlier log line(s) dropped: stderr fell behind]"
            prepared.msg = prepared.message = prepared.message + note
            self.dropped = 0
        self._added += size
        self._records.append((prepared, size))

    def _run(self) -> None:
        while not self._stopping.wait(WRITE_SECONDS):
            self._write(block=True)

    def _write(self, *, block: bool) -> None:
        """Format and write what waits (one at a time: a blocked write holds the others)."""
        if not self._writing.acquire(timeout=-1 if block else FLUSH_SECONDS):
            return  # stderr is stuck: at exit, do not hang on it
        try:
            lines = []
            while self._records:
                record, size = self._records.popleft()
                self._taken += size
                try:
                    lines.append(self.format(record))
                except Exception:  # noqa: BLE001 - one bad record does not stop the rest
                    self.handleError(record)
            if lines:
                text = "\n".join(lines) + "\n"
                if self._lock_fd is None:
                    self._stream.write(text)
                    self._stream.flush()
                else:
                    self._write_locked(text, self._lock_fd)
        except (OSError, ValueError):
            pass  # stderr is closed or broken: nothing else to tell it to
        finally:
            self._writing.release()

    def _write_locked(self, text: str, lock: int) -> None:
        """``text`` whole on the stream, under the lock its workers share (blocking: this is
        the writer thread); after a batch another writer cut short, on a new line."""
        self._stream.flush()
        encoding = getattr(self._stream, "encoding", None) or "utf-8"
        data = text.encode(encoding, "backslashreplace")
        fd = self._stream.fileno()
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.pread(lock, 1, 0) == b"1":
                data = b"\n" + data
                os.pwrite(lock, b"0", 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def flush(self) -> None:
        """Write what waits now (bounded by ``FLUSH_SECONDS`` when the writer is stuck)."""
        self._write(block=False)

    def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(FLUSH_SECONDS)
        self.flush()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)
        super().close()


class _Installed:
    handler: _Buffered | None = None
    shared: Path | None = None  # the workers' private directory (share_output)


def share_output(run_dir: Path | None) -> None:
    """This process shares stderr with other workers: from the next ``configure_logging`` on,
    each batch of lines is written whole under the stream's lock in ``run_dir``
    (``gateway.output``)."""
    _Installed.shared = run_dir


def _stop() -> None:
    """Write what waits and stop the writer thread (at exit, or before re-configuring)."""
    handler, _Installed.handler = _Installed.handler, None
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)
        handler.close()


def _after_fork() -> None:
    handler = _Installed.handler
    if handler is not None:
        handler.createLock()
        handler._reset()  # the parent writes what it had waiting: written once, not twice
        handler._start()


atexit.register(_stop)
os.register_at_fork(after_in_child=_after_fork)  # worker processes forked from a server


def dropped_lines() -> tuple[object, int]:
    """(the installed log's writer, the lines it dropped so far because stderr fell behind):
    what ``/metrics`` counts as ``spangate_log_lines_dropped_total``."""
    handler = _Installed.handler
    return (handler, handler.dropped_total) if handler is not None else (None, 0)


def configured() -> bool:
    """Has ``configure_logging`` installed the process's log (``spangate serve``, ``dev``)?"""
    return _Installed.handler is not None


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(
    log_format: LogFormat, level: str, *, stream: IO[str] | None = None
) -> logging.Formatter:
    """Every logger through one formatter on ``stream`` (stderr), written by a thread; the root
    level ``level``. Replaces what an earlier call installed. Returns the formatter chosen."""
    _stop()
    out = stream if stream is not None else sys.stderr
    chosen = log_format
    if chosen == "auto":
        chosen = "text" if _is_terminal(out) else "json"
    formatter: logging.Formatter = TextFormatter() if chosen == "text" else JsonFormatter()
    lock = None
    if _Installed.shared is not None:
        try:
            lock = output_lock_path(_Installed.shared, out.fileno())
        except (AttributeError, OSError, ValueError):  # no file descriptor: nothing shared
            lock = None
    handler = _Buffered(out, formatter, QUEUE_RECORDS, QUEUE_BYTES, lock)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn without its own log configuration
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)  # the root's (a uvicorn Config made earlier set its own)
    # httpx logs every call at INFO (key fetches, each introspection: a second line for a
    # request); below debug, only its warnings.
    quiet = logging.NOTSET if level.lower() == "debug" else logging.WARNING
    logging.getLogger("httpx").setLevel(quiet)
    # google-api-core turns the "google" logger's propagation off when a client is created and
    # the logger is unconfigured (client_logging.initialize_logging): its lines would go to no
    # handler, or as plain text to stderr. A level makes it configured; propagation is set back
    # in case a client came first. Never DEBUG: there, Google's gRPC interceptors serialise every
    # request and response (values, rows) into each record.
    google = logging.getLogger("google")
    google.setLevel(max(root.level, logging.INFO))
    google.propagate = True
    logging.captureWarnings(True)  # warnings.warn(...) as lines of the same stream
    # What no line of ours shows (the logging HOWTO's "Optimization"): the caller's file and
    # line (a walk up the stack for every record), thread and process names. ~5 µs a request.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    _Installed.handler = handler
    return formatter


def _severity(status: int) -> int:
    return logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO


def request_fields(
    *,
    request_id: str,
    method: str,
    path: str,
    status: int,
    seconds: float,
    transport: str,
    call: CallRecord | None,
    user_agent: str | None,
    client: str | None,
) -> dict[str, Any]:
    """The fields of one request's line (``call``: its audit record, when it made one;
    ``path``: as shown, its redacted segments replaced: ``gateway.policy.redaction``)."""
    decision = call.decision if call is not None else None
    route = decision.route if decision is not None else None
    principal = call.principal if call is not None else None
    code: str | None = None
    if call is not None:
        code = call.error.code if call.error is not None else "ok"
    return {
        "request_id": request_id,
        "transport": transport,
        "method": _bounded(method),
        "path": _bounded(path),
        "route": f"{route.model.method} {route.template}" if route is not None else None,
        "query": route.query_name if route is not None else None,
        "tool": _bounded(call.tool) if call is not None else None,
        "status": status,
        "code": code,
        "latency_ms": round(seconds * 1000, 3),
        "subject": _bounded(principal.subject) if principal is not None else None,
        "issuer": principal.issuer if principal is not None else None,
        "client": call.client if call is not None else client,
        "user_agent": _bounded(user_agent),
    }


def log_request(
    fields: dict[str, Any],
    trace_id: str | None,
    span_id: str | None,
    *,
    outcome: int | None = None,
    note: str | None = None,
) -> None:
    """Log one request's line (see ``request_fields``; a refusal by the HTTP server has only
    some of them, the others None: ``gateway.refusals``), at the severity of ``outcome`` (how
    the call ended: an MCP tool call answered 200 may have failed), else of its status;
    ``note`` follows the message."""
    level = _severity(fields["status"] if outcome is None else outcome)
    if not access_log.isEnabledFor(level):
        return
    access_log.log(
        level,
        "%s %s %s %s%s",
        fields["method"] or "-",
        fields["path"] or "-",
        fields["status"],
        fields["code"] or "-",
        f": {note}" if note else "",
        extra={REQUEST_EXTRA: fields, "trace_id": trace_id, "span_id": span_id},
    )
