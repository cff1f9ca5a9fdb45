"""The Helm chart's checks: one run of dev/chart-tools/chart_check.py per test session.

The tools (helm-python-sdk, kubernetes-validate, checkov) live in their own venv, ``.venv-chart``
(``make chart-tools``, which ``make test`` runs first), so they are run as a subprocess: the chart
is linted, rendered once per values set (the defaults and each ``ci/*-values.yaml``), validated
and scanned once, and the tests read its JSON report. A missing venv fails the tests (never a
skip), saying what to run.

Under pytest-xdist (``make test`` runs two workers) the chart's modules may land on different
workers, each with its own session: the first to need the report runs the check under a lock in
the run's shared temporary folder, and the others wait for it and read the same report.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartlib import CHART, RENDER_CASES, REPO, SCHEMA_CASES

TOOLS_PYTHON = REPO / ".venv-chart" / "bin" / "python"
CHART_CHECK = REPO / "dev" / "chart-tools" / "chart_check.py"


@pytest.fixture(scope="session")
def chart_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not TOOLS_PYTHON.exists():
        pytest.fail(
            f"{TOOLS_PYTHON} is missing: `make chart-tools` installs the chart's tools "
            "(`make test` does it first)"
        )
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _check(tmp_path_factory.mktemp("chart"))
    # Every worker's basetemp is a folder of the run's own (pytest-N/popen-gwK): its parent is
    # shared by the workers of this run and by no other run.
    shared = tmp_path_factory.getbasetemp().parent
    with (shared / "chart.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        done = shared / "chart-report.json"
        if done.exists():
            data: dict[str, Any] = json.loads(done.read_text())
            return data
        data = _check(tmp_path_factory.mktemp("chart"))
        partial = done.with_suffix(".part")
        partial.write_text(json.dumps(data))
        partial.rename(done)  # whole or not at all: a worker never reads half a report
        return data


def _check(folder: Path) -> dict[str, Any]:
    """chart_check.py on the chart, its files in ``folder``: the report, with its summary."""
    cases = folder / "schema-cases.json"
    cases.write_text(
        json.dumps(
            {
                **{name: {"values": values} for name, (values, _) in SCHEMA_CASES.items()},
                **{
                    name: {"values": values, "kube_version": kube}
                    for name, (values, kube) in RENDER_CASES.items()
                },
            }
        )
    )
    report = folder / "report.json"
    done = subprocess.run(
        [
            str(TOOLS_PYTHON),
            str(CHART_CHECK),
            str(CHART),
            "--report",
            str(report),
            "--out",
            str(folder / "rendered"),
            "--schema-cases",
            str(cases),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # 0: all good, 1: problems found (the tests say which); anything else: the tool broke.
    if done.returncode not in (0, 1) or not report.exists():
        pytest.fail(f"chart_check.py exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    data: dict[str, Any] = json.loads(report.read_text())
    data["summary"] = done.stdout
    return data


@pytest.fixture(scope="session")
def cases(chart_report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each of chartlib.RENDER_CASES -> its rendered objects."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name in RENDER_CASES:
        outcome = chart_report["schema_cases"][name]
        assert outcome["error"] is None, f"{name}: {outcome['error']}"
        found[name] = [
            doc
            for text in outcome["manifests"].values()
            for doc in yaml.safe_load_all(text)
            if doc
        ]
    return found


@pytest.fixture(scope="session")
def rendered(chart_report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Values set -> its rendered objects (every document of every template)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name, one in chart_report["sets"].items():
        assert one["render_error"] is None, f"{name}: {one['render_error']}"
        found[name] = [
            doc for text in one["manifests"].values() for doc in yaml.safe_load_all(text) if doc
        ]
    return found
