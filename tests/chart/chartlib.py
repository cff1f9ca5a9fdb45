"""What the chart's tests share: where things are, and picking objects from rendered manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CHART", "REPO", "RENDER_CASES", "SCHEMA_CASES", "only", "pod_spec"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spangate"

# Values that Helm must refuse (values.schema.json, or the chart's own `fail`), with a piece of
# the message, and values it must take (None). Checked by Helm in the same run.
SCHEMA_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "a misspelt top-level key": ({"replicas": 3}, "additional properties 'replicas'"),
    "a misspelt nested key": ({"image": {"tagg": "1"}}, "additional properties 'tagg'"),
    "running as root": ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    "privilege escalation": (
        {"securityContext": {"allowPrivilegeEscalation": True}},
        "allowPrivilegeEscalation",
    ),
    "capabilities not dropped": (
        {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
        "capabilities/drop",
    ),
    "an unconfined seccomp profile": (
        {"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}},
        "seccompProfile/type",
    ),
    "no CPU limit": ({"resources": {"limits": {"cpu": None}}}, "missing property 'cpu'"),
    "a bad log level": ({"config": {"logLevel": "verbose"}}, "logLevel"),
    "an unknown setting": ({"config": {"extra": {"MAX_CONNECTIONS": "5"}}}, "MAX_CONNECTIONS"),
    "a policy file that is not YAML": ({"policy": {"files": {"policy.json": "{}"}}}, "policy.json"),
    "a grace period too short to drain": (
        {"shutdown": {"terminationGracePeriodSeconds": 20}},
        "terminationGracePeriodSeconds (20) must be at least",
    ),
    "no policy at all": ({"policy": {"files": None}}, "set policy.files"),
    "a digest that is not one": ({"image": {"digest": "latest"}}, "digest"),
    "an existing ConfigMap instead of files": ({"policy": {"existingConfigMap": "mine"}}, None),
    "budgets without Redis": ({"policy": {"files": {"p.yaml": "budgets:\n  a: {}\n"}}}, None),
    "budgets without Redis, one pod": (
        {"replicaCount": 1, "policy": {"files": {"p.yaml": "budgets:\n  a: {}\n"}}},
        None,
    ),
    "Workload Identity": (
        {"serviceAccount": {"gcpServiceAccount": "gateway@acme-prod.iam.gserviceaccount.com"}},
        None,
    ),
    "a Google service account id too short (6 to 30)": (
        {"serviceAccount": {"gcpServiceAccount": "gw@acme-prod.iam.gserviceaccount.com"}},
        "gcpServiceAccount",
    ),
}


# Values that Helm must take, rendered (on a Kubernetes version when one is named): the tests
# read their manifests. Run in the same Helm session as SCHEMA_CASES.
RENDER_CASES: dict[str, tuple[dict[str, Any], str | None]] = {}


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of ``kind`` (fails when there are none or several)."""
    matching = [o for o in objects if o["kind"] == kind]
    assert len(matching) == 1, (
        f"{len(matching)} {kind}s: {[o['metadata']['name'] for o in matching]}"
    )
    return matching[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment's pod spec."""
    spec: dict[str, Any] = only(objects, "Deployment")["spec"]["template"]["spec"]
    return spec
