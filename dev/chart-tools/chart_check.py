"""Check the Helm chart with the field's own tools; run by the chart tools' venv (.venv-chart).

    .venv-chart/bin/python dev/chart-tools/chart_check.py charts/spangate [--report FILE]

For the chart's default values and for each ``ci/*-values.yaml`` of the chart (a "values set"):

- ``helm lint --strict`` (Helm v4's own library, helm-python-sdk) for every Kubernetes version
  checked (1.29 to 1.33), values.schema.json included;
- ``helm template`` once for each Kubernetes version (``.Capabilities.KubeVersion`` set to it:
  the chart chooses some fields by version), and every manifest of that rendering validated by
  kubernetes-validate, strictly (unknown fields are errors), against that version; a kind it has
  no schema for (a CRD's, like ServiceMonitor) is reported as such, not as valid. The rendering
  for the newest version is the set's ``manifests``, written to ``OUT/<set>/``;

then ``checkov`` once over all the rendered manifests (its kubernetes framework, offline). Both
validators are also shown a canary that they must refuse (a manifest with a misspelt field; a
privileged root pod in ``OUT/canary/``), so a check that silently stopped checking is seen. With
``--schema-cases FILE`` (a JSON object: case name -> values), each case's values are validated
against values.schema.json by Helm, rendered, and the outcome reported (the tests' refusals and
renderings); a case is ``{"values": {...}, "kube_version": "1.29.0" or null}``.

Prints a summary and exits 1 when anything failed (a lint error or warning, a render error, an
invalid manifest, a failed checkov check); ``--report`` writes everything as JSON for the tests.
This file runs in the tools' venv, not the project's: it imports nothing from ``gateway``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kv
import yaml
from helm_python import _native

KUBE_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
RELEASE, NAMESPACE = "spangate", "spangate"
SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


def values_sets(chart: Path) -> dict[str, Path | None]:
    sets: dict[str, Path | None] = {"default": None}
    for file in sorted((chart / "ci").glob("*-values.yaml")):
        sets[file.name.removesuffix("-values.yaml")] = file
    return sets


def render(
    loaded: helm.Chart, values: dict[str, Any] | None, kube_version: str | None
) -> dict[str, str]:
    """``helm template`` of ``loaded`` as an install; with ``kube_version``, as on that version.

    helm-python-sdk's ``Chart.render`` takes no Kubernetes version (its default is its own, newer
    than any checked here), while its library's render options do (``kube_version``, as ``helm
    lint`` takes it): that option is passed through the package's native call."""
    if kube_version is None:
        return loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    options = {
        "name": RELEASE,
        "namespace": NAMESPACE,
        "is_install": True,
        "kube_version": f"v{kube_version}",
    }
    text = _native.call_string(
        "helm_render",
        loaded._raw(),
        None if values is None else json.dumps(values),
        json.dumps(options),
    )
    manifests: dict[str, str] = json.loads(text)
    return manifests


def check_set(chart: Path, values_file: Path | None, out: Path) -> dict[str, Any]:
    values = helm.values_from_yaml(values_file.read_text()) if values_file else None
    result: dict[str, Any] = {
        "values_file": str(values_file) if values_file else None,
        "lint": {},
        "render_error": None,
        "manifests": {},
        "manifests_by_kube": {},
        "notes": "",
        "validation": [],
    }
    for kube in KUBE_VERSIONS:
        report = helm.lint(chart, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube}")
        result["lint"][kube] = [
            {"severity": SEVERITY.get(m["severity"], "?"), "path": m["path"], "error": m["error"]}
            for m in report["messages"]
        ] + [{"severity": "error", "path": "", "error": e} for e in report.get("errors") or []]
    try:
        with helm.Chart.load(chart) as loaded:
            renderings = {kube: render(loaded, values, kube) for kube in KUBE_VERSIONS}
    except helm.HelmError as exc:
        result["render_error"] = str(exc)
        return result
    out.mkdir(parents=True, exist_ok=True)
    for kube, rendered in renderings.items():
        manifests: dict[str, str] = {}
        for template, text in sorted(rendered.items()):
            name = template.split("/templates/", 1)[-1]
            if name == "NOTES.txt":
                result["notes"] = text
                continue
            if not text.strip():
                continue
            manifests[name] = text
            for doc in yaml.safe_load_all(text):
                if doc:
                    result["validation"].extend(validate(doc, name, (kube,)))
        result["manifests_by_kube"][kube] = manifests
    result["manifests"] = result["manifests_by_kube"][KUBE_VERSIONS[-1]]
    for name, text in result["manifests"].items():
        (out / name.replace("/", "_")).write_text(text)
    return result


def validate(
    doc: dict[str, Any], template: str, versions: tuple[str, ...] = KUBE_VERSIONS
) -> list[dict[str, Any]]:
    found = []
    for kube in versions:
        entry = {
            "template": template,
            "kind": doc.get("kind"),
            "name": (doc.get("metadata") or {}).get("name"),
            "version": kube,
            "valid": False,
            "schema_missing": False,
            "error": None,
        }
        try:
            kv.validate(doc, kube, strict=True)
            entry["valid"] = True
        except kv.SchemaNotFoundError as exc:
            entry["schema_missing"] = True
            entry["error"] = exc.message
        except kv.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)  # a jsonschema ValidationError
            entry["error"] = f"{where}: {exc.message}"
        found.append(entry)
    return found


CANARY_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: canary
  namespace: canary
spec:
  hostNetwork: true
  containers:
    - name: canary
      image: busybox
      securityContext:
        privileged: true
        runAsUser: 0
"""


def canaries(out: Path) -> dict[str, Any]:
    """What the validators must refuse: kubernetes-validate a misspelt field (strict), checkov
    a privileged root pod (written beside the sets, scanned in the same run)."""
    misspelt = yaml.safe_load(CANARY_POD)
    misspelt["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    (out / "canary").mkdir(parents=True, exist_ok=True)
    (out / "canary" / "pod.yaml").write_text(CANARY_POD)
    return {"kubernetes_validate": validate(misspelt, "canary")}


def run_checkov(folder: Path) -> dict[str, Any]:
    """checkov's kubernetes framework over every rendered manifest, offline (no platform key,
    no downloads); its configuration is dev/chart-tools/checkov.yaml."""
    checkov = Path(sys.executable).with_name("checkov")
    config = Path(__file__).with_name("checkov.yaml")
    env = {
        **os.environ,
        "BC_SKIP_MAPPING": "TRUE",
        "CHECKOV_EXPERIMENTAL_IMAGE_REFERENCING": "False",
    }
    proc = subprocess.run(
        [
            str(checkov),
            "--config-file",
            str(config),
            "--directory",
            str(folder),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": f"checkov exited {proc.returncode}: {proc.stderr[-2000:]}"}
    reports = data if isinstance(data, list) else [data]
    result: dict[str, Any] = {"passed": 0, "failed": [], "skipped": [], "parsing_errors": []}
    for report in reports:
        if "results" not in report:  # nothing scanned: {"passed": 0, "failed": 0, ...}
            continue
        results = report["results"]
        result["passed"] += len(results.get("passed_checks", []))
        for check in results.get("failed_checks", []):
            result["failed"].append(_check(check))
        for check in results.get("skipped_checks", []):
            result["skipped"].append(
                {
                    **_check(check),
                    "reason": (check.get("check_result") or {}).get("suppress_comment"),
                }
            )
        result["parsing_errors"].extend(results.get("parsing_errors", []))
    return result


def _check(check: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": check.get("check_id"),
        "name": check.get("check_name"),
        "resource": check.get("resource"),
        "file": check.get("file_path"),
    }


def schema_cases(chart: Path, cases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each case's values through Helm: the error (None when taken), the install notes and the
    rendered manifests (template -> text), on the case's Kubernetes version if it names one."""
    outcome: dict[str, dict[str, Any]] = {}
    with helm.Chart.load(chart) as loaded:
        for name, case in cases.items():
            values = case["values"]
            try:
                loaded.validate_schema(values)
                rendered = render(loaded, values, case.get("kube_version"))
            except helm.HelmError as exc:
                outcome[name] = {"error": str(exc), "notes": None, "manifests": {}}
            else:
                notes = [text for path, text in rendered.items() if path.endswith("/NOTES.txt")]
                manifests = {
                    path.split("/templates/", 1)[-1]: text
                    for path, text in rendered.items()
                    if not path.endswith("/NOTES.txt") and text.strip()
                }
                outcome[name] = {
                    "error": None,
                    "notes": notes[0] if notes else "",
                    "manifests": manifests,
                }
    return outcome


def problems(report: dict[str, Any]) -> list[str]:
    found = []
    for name, one in report["sets"].items():
        for kube, messages in one["lint"].items():
            found += [
                f"{name}: lint {kube}: {m['path']}: {m['error']}"
                for m in messages
                if m["severity"] in ("warning", "error")
            ]
        if one["render_error"]:
            found.append(f"{name}: render: {one['render_error']}")
        found += [
            f"{name}: {v['template']} {v['kind']}/{v['name']} on {v['version']}: {v['error']}"
            for v in one["validation"]
            if not v["valid"] and not v["schema_missing"]
        ]
    if any(v["valid"] or v["schema_missing"] for v in report["canary"]["kubernetes_validate"]):
        found.append("kubernetes-validate accepted the canary's misspelt field")
    checkov = report["checkov"]
    if "error" in checkov:
        found.append(f"checkov: {checkov['error']}")
        return found
    found += [
        f"checkov: {c['id']} {c['name']}: {c['resource']} ({c['file']})"
        for c in checkov["failed"]
        if not c["file"].startswith("/canary/")
    ]
    if not any(c["file"].startswith("/canary/") for c in checkov["failed"]):
        found.append("checkov: the canary's privileged root pod passed every check")
    found += [f"checkov: cannot parse {p}" for p in checkov["parsing_errors"]]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument("--report", type=Path, help="write the whole report here as JSON")
    parser.add_argument(
        "--out", type=Path, help="keep the manifests in this (new) folder (default: not kept)"
    )
    parser.add_argument("--schema-cases", type=Path, help="JSON: case name -> values")
    args = parser.parse_args()
    if args.out is not None:
        args.out.mkdir(parents=True)  # a new folder: never mixes with an older run's manifests
        return check(args, args.out)
    with tempfile.TemporaryDirectory(prefix="spangate-chart-") as folder:
        return check(args, Path(folder))


def check(args: argparse.Namespace, out: Path) -> int:
    chart, out = args.chart.resolve(), out.resolve()
    started = time.monotonic()
    report: dict[str, Any] = {
        "tools": {
            name: version(name) for name in ("helm-python-sdk", "kubernetes-validate", "checkov")
        },
        "helm": helm.helm_sdk_version(),
        "kube_versions": list(KUBE_VERSIONS),
        "out": str(out),
        "sets": {},
        "timings": {},
    }
    for name, values_file in values_sets(chart).items():
        report["sets"][name] = check_set(chart, values_file, out / name)
    report["canary"] = canaries(out)
    report["timings"]["helm_and_validate"] = round(time.monotonic() - started, 2)
    if args.schema_cases:
        report["schema_cases"] = schema_cases(chart, json.loads(args.schema_cases.read_text()))
    started = time.monotonic()
    report["checkov"] = run_checkov(out)
    report["timings"]["checkov"] = round(time.monotonic() - started, 2)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    found = problems(report)
    print(
        f"chart {chart.name}: {len(report['sets'])} values sets ({', '.join(report['sets'])}), "
        f"Helm {report['helm']}, Kubernetes {KUBE_VERSIONS[0]} to {KUBE_VERSIONS[-1]}; "
        f"checkov {report['checkov'].get('passed', 0)} passed, "
        f"{len(report['checkov'].get('skipped', []))} skipped"
    )
    for problem in found:
        print(f"  FAIL {problem}")
    print("chart: ok" if not found else f"chart: {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
