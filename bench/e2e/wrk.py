"""Load an HTTP target with ``wrk`` (Debian package ``wrk``) and read its summary.

``wrk`` keeps ``conc`` connections, each sending its next request when the previous answer has
arrived (a closed loop, as the Python drivers' callers are), from one thread: at the rates of
this benchmark one wrk thread is far from saturated, and its CPU is measured (the driver's
column). ``tokens.lua`` puts the cached tokens on the requests in turn. Any error (a refused
connection, a timeout, an answer that is not 2xx or 3xx) fails the phase: a fast error must never
be measured as a fast answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCRIPT", "WrkError", "WrkMissing", "WrkResult", "find_wrk", "parse_result", "run_wrk"]

SCRIPT = Path(__file__).with_name("tokens.lua")
MARK = "WRK-RESULT "


class WrkError(RuntimeError):
    """wrk failed, or reported errors."""


class WrkMissing(WrkError):
    """No ``wrk`` on PATH."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    cpu_s: float  # wrk's own user + system time (wait4)

    @property
    def per_second(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(
            "wrk is not installed: the end-to-end benchmark loads the HTTP targets with it. "
            "Install it with `apt-get install wrk` (Debian/Ubuntu), then run again."
        )
    return path


def version() -> str:
    """wrk's version line (``wrk debian/4.1.0-3 [epoll] ...``), without the copyright."""
    shown = subprocess.run(
        [find_wrk(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (shown.stdout or shown.stderr).splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


def parse_result(stdout: str) -> dict[str, Any]:
    """The JSON summary ``tokens.lua`` prints after the ``WRK-RESULT`` mark."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            data: dict[str, Any] = json.loads(line.removeprefix(MARK))
            return data
    raise WrkError(f"wrk printed no summary:\n{stdout}")


def run_wrk(url: str, *, conc: int, seconds: int, tokens_file: Path) -> WrkResult:
    """Run wrk against ``url`` for ``seconds`` with ``conc`` connections; raise WrkError when it
    fails or reports any error."""
    argv = [
        find_wrk(), "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "10s", "--latency",
        "-s", str(SCRIPT), url, "--", str(tokens_file),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        # wrk's own CPU comes from wait4 (it starts and ends inside the measurement); a timer
        # kills it if it hangs, since wait4 itself has no timeout.
        watchdog = threading.Timer(seconds + 60, process.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if process.returncode != 0:
        raise WrkError(f"wrk exited with {process.returncode}:\n{stdout}{stderr}")
    data = parse_result(stdout)
    errors = {k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    if errors:
        raise WrkError(f"wrk against {url} saw errors {errors} (status: answers not 2xx/3xx)")
    if not data["requests"]:
        raise WrkError(f"wrk against {url} completed no request:\n{stdout}")
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
