"""What the chart's tests share: where things are, and picking objects from rendered manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CHART", "REPO", "RENDER_CASES", "SCHEMA_CASES", "named", "only", "pod_spec"]

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
        {"shutdown": {"terminationGracePeriodSeconds": 34}},
        "terminationGracePeriodSeconds (34) must be at least preStopSleepSeconds + drainSeconds"
        " + requestTimeoutSeconds + 7 for the answer window + config.settleSeconds + 5 for the audit"
        " flush (42)",
    ),
    "a grace period that forgets a preStop wait": (
        {"shutdown": {"preStopSleepSeconds": 19}},
        "terminationGracePeriodSeconds (60) must be at least",
    ),
    "a number in config.extra (it would render as 1e+06)": (
        {"config": {"extra": {"SPANGATE_MAX_CONNECTIONS": 1000000}}},
        "SPANGATE_MAX_CONNECTIONS",
    ),
    "a setting the chart sets itself in config.extra": (
        {"config": {"extra": {"SPANGATE_SETTLE_SECONDS": "999"}}},
        "SPANGATE_SETTLE_SECONDS",
    ),
    "Workload Identity on a ServiceAccount the chart does not create": (
        {
            "serviceAccount": {
                "create": False,
                "name": "mine",
                "gcpServiceAccount": "gateway@acme-prod.iam.gserviceaccount.com",
            }
        },
        "serviceAccount.gcpServiceAccount needs serviceAccount.create: true",
    ),
    "a PodDisruptionBudget keeping every pod": (
        {"podDisruptionBudget": {"maxUnavailable": "", "minAvailable": 2}},
        "podDisruptionBudget.minAvailable (2) keeps every pod of replicaCount (2)",
    ),
    "a PodDisruptionBudget keeping 100%": (
        {"podDisruptionBudget": {"maxUnavailable": "", "minAvailable": "100%"}},
        "podDisruptionBudget.minAvailable (100%) keeps every pod",
    ),
    "a PodDisruptionBudget keeping the HPA's only pod": (
        {
            "autoscaling": {"enabled": True, "minReplicas": 1},
            "podDisruptionBudget": {"maxUnavailable": "", "minAvailable": 1},
        },
        "keeps every pod of autoscaling.minReplicas (1)",
    ),
    "a PodDisruptionBudget with both bounds": (
        {"podDisruptionBudget": {"maxUnavailable": 1, "minAvailable": 1}},
        "set exactly one of maxUnavailable",
    ),
    "a PodDisruptionBudget with neither bound": (
        {"podDisruptionBudget": {"maxUnavailable": ""}},
        "set exactly one of maxUnavailable",
    ),
    "the admin port on the API's port": ({"admin": {"port": 8080}}, "admin.port must not be 8080"),
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
POLICY = "version: 1\nroutes: []\n"
RENDER_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "a preStop wait on Kubernetes 1.29": ({"shutdown": {"preStopSleepSeconds": 5}}, "1.29.0"),
    "a preStop wait on Kubernetes 1.30": ({"shutdown": {"preStopSleepSeconds": 5}}, "1.30.0"),
    "policy A": ({"policy": {"files": {"policy.yaml": POLICY}}}, None),
    "policy B": ({"policy": {"files": {"policy.yaml": POLICY + "# changed\n"}}}, None),
    "a large number in config.extra, quoted": (
        {"config": {"extra": {"SPANGATE_MAX_BODY_BYTES": "1000000"}}},
        None,
    ),
    "no admin port": ({"admin": {"port": 0}, "serviceMonitor": {"enabled": True}}, None),
    "an HPA from one pod": ({"autoscaling": {"enabled": True, "minReplicas": 1}}, None),
    "one replica": ({"replicaCount": 1}, None),
    "a minAvailable below the replicas": (
        {"replicaCount": 3, "podDisruptionBudget": {"maxUnavailable": "", "minAvailable": 2}},
        None,
    ),
    "a file audit sink": (
        {"policy": {"files": {"policy.yaml": "audit:\n  sinks:\n    - {type: file}\n"}}},
        None,
    ),
}


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` called ``name``."""
    matching = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matching) == 1, f"{len(matching)} {kind}s named {name}"
    return matching[0]


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
