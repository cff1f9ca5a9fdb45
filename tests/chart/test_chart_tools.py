"""The chart as the field's own tools see it: Helm's lint and render (Helm v4's library),
kubernetes-validate against Kubernetes 1.29 to 1.33 (strict), checkov, and values.schema.json."""

from __future__ import annotations

from typing import Any

import pytest
from chartlib import CHART, SCHEMA_CASES

KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
# Every checkov check the chart does not pass on purpose; each is skipped by an annotation on the
# Deployment that gives its reason (templates/deployment.yaml), and only when it applies.
SKIPPED_ON_PURPOSE = {
    "CKV_K8S_43",  # image by digest: only without image.digest (the release tag is immutable)
    "CKV_K8S_15",  # pull policy Always: IfNotPresent pulls the same immutable tag or digest
    "CKV_K8S_35",  # secrets as files: the gateway reads settings from its environment only
}


def test_the_values_sets_are_the_defaults_and_every_ci_values_file(
    chart_report: dict[str, Any],
) -> None:
    ci = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
    assert list(chart_report["sets"]) == ["default", *ci]
    assert "full" in ci
    assert chart_report["kube_versions"] == KUBE_VERSIONS
    assert chart_report["helm"].startswith("v4.")


def test_helm_lint_strict_finds_nothing(chart_report: dict[str, Any]) -> None:
    for name, one in chart_report["sets"].items():
        assert list(one["lint"]) == KUBE_VERSIONS
        for kube, messages in one["lint"].items():
            serious = [m for m in messages if m["severity"] != "info"]
            assert serious == [], f"{name} on {kube}: {serious}"


def test_helm_renders_every_part_that_the_values_turn_on(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    kinds = {name: sorted(o["kind"] for o in objects) for name, objects in rendered.items()}
    assert kinds["default"] == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    # The full set adds the HPA, the ServiceMonitor and the admin port's Service it scrapes.
    assert kinds["full"] == sorted(
        [*kinds["default"], "HorizontalPodAutoscaler", "ServiceMonitor", "Service"]
    )


def test_every_manifest_is_valid_on_kubernetes_1_29_to_1_33(chart_report: dict[str, Any]) -> None:
    for name, one in chart_report["sets"].items():
        checked = {(v["kind"], v["version"]) for v in one["validation"]}
        kinds = {v["kind"] for v in one["validation"]}
        assert checked == {(k, v) for k in kinds for v in KUBE_VERSIONS}
        bad = [v for v in one["validation"] if not v["valid"] and not v["schema_missing"]]
        assert bad == [], f"{name}: {bad}"
        # The only kind without a schema there is the Prometheus Operator's CRD.
        missing = {v["kind"] for v in one["validation"] if v["schema_missing"]}
        assert missing <= {"ServiceMonitor"}, missing


def test_kubernetes_validate_refuses_the_canary(chart_report: dict[str, Any]) -> None:
    """The validation above can fail: a misspelt field is an error on every version."""
    canary = chart_report["canary"]["kubernetes_validate"]
    assert [v["version"] for v in canary] == KUBE_VERSIONS
    for v in canary:
        assert not v["valid"] and not v["schema_missing"]
        assert "imagePullPolicyy" in v["error"]


def test_checkov_fails_no_check(chart_report: dict[str, Any]) -> None:
    checkov = chart_report["checkov"]
    assert "error" not in checkov, checkov.get("error")
    assert checkov["parsing_errors"] == []
    ours = [c for c in checkov["failed"] if not c["file"].startswith("/canary/")]
    assert ours == [], ours
    scanned = {c["file"].split("/")[1] for c in checkov["failed"] + checkov["skipped"]}
    assert scanned >= {"default", "full"}
    assert checkov["passed"] >= 150  # both sets were scanned, check by check


def test_checkov_fails_the_canary(chart_report: dict[str, Any]) -> None:
    """checkov really checks: the privileged root pod beside the manifests fails its checks."""
    canary = {
        c["id"] for c in chart_report["checkov"]["failed"] if c["file"].startswith("/canary/")
    }
    assert {"CKV_K8S_16", "CKV_K8S_23", "CKV_K8S_40"} <= canary, canary  # privileged, root, UID


def test_checkov_skips_only_on_purpose_and_says_why(chart_report: dict[str, Any]) -> None:
    skipped = chart_report["checkov"]["skipped"]
    assert {c["id"] for c in skipped} <= SKIPPED_ON_PURPOSE
    assert all(c["reason"] and len(c["reason"]) > 30 for c in skipped), skipped
    by_set = {(c["file"].split("/")[1], c["id"]) for c in skipped}
    # The full set pins a digest: the digest check then passes instead of being skipped.
    assert ("default", "CKV_K8S_43") in by_set and ("full", "CKV_K8S_43") not in by_set
    # Secrets in the environment only where the values reference Secrets.
    assert ("full", "CKV_K8S_35") in by_set and ("default", "CKV_K8S_35") not in by_set


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_helm_refuses_values_that_cannot_work(chart_report: dict[str, Any], case: str) -> None:
    _values, expected = SCHEMA_CASES[case]
    error = chart_report["schema_cases"][case]["error"]
    if expected is None:
        assert error is None, error
    else:
        assert error is not None, f"{case}: Helm took it"
        assert expected in error, error


def test_the_install_notes_say_what_is_missing(chart_report: dict[str, Any]) -> None:
    default, full = (chart_report["sets"][name]["notes"] for name in ("default", "full"))
    assert "kubectl -n spangate rollout status deployment/spangate" in default
    assert "No secrets.auditKey" in default and "No secrets.auditKey" not in full
    assert "No serviceAccount.gcpServiceAccount" in default
    assert "No serviceAccount.gcpServiceAccount" not in full
    assert "budgets but no secrets.redisUrl" not in full  # it has budgets, and Redis


def test_the_install_notes_warn_of_a_file_audit_sink_on_the_emptydir(
    chart_report: dict[str, Any],
) -> None:
    warning = "The policy has a file audit sink"
    assert warning in chart_report["schema_cases"]["a file audit sink"]["notes"]
    assert warning in chart_report["sets"]["full"]["notes"]  # {type: file, ...}
    assert warning not in chart_report["sets"]["default"]["notes"]  # stdout only


def test_the_install_notes_warn_of_budgets_counted_per_pod(chart_report: dict[str, Any]) -> None:
    notes = chart_report["schema_cases"]["budgets without Redis"]["notes"]
    assert "budgets but no secrets.redisUrl: each of the pods counts alone" in notes
    notes = chart_report["schema_cases"]["budgets without Redis, one pod"]["notes"]
    assert "budgets but no secrets.redisUrl" not in notes
