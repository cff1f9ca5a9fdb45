"""The rendered pod: the "restricted" Pod Security Standard, field by field, and the way it runs
the gateway (settings, policy mount, probes, draining), for every values set."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartlib import named, only, pod_spec

from gateway.policy.load import load_policy
from gateway.server import ANSWER_SECONDS
from gateway.settings import Settings

SETS = ["default", "full"]

# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.29 and later)
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {
    None,
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the "restricted" Pod Security Standard (baseline included)."""
    found: list[str] = []
    pod = spec.get("securityContext") or {}
    containers = [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]
    # Baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"{field} is set")
    for sysctl in pod.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']} is not a safe one")
    contexts = [("pod", pod)] + [(c["name"], c.get("securityContext") or {}) for c in containers]
    for who, ctx in contexts:
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{who}: windowsOptions.hostProcess")
        selinux = ctx.get("seLinuxOptions") or {}
        if selinux.get("type") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{who}: seLinuxOptions {selinux}")
        if (ctx.get("appArmorProfile") or {}).get("type") not in (
            None,
            "RuntimeDefault",
            "Localhost",
        ):
            found.append(f"{who}: appArmorProfile {ctx['appArmorProfile']}")
        if ctx.get("runAsNonRoot") is False:
            found.append(f"{who}: runAsNonRoot is false")
        if ctx.get("runAsUser") == 0:
            found.append(f"{who}: runAsUser is 0")
        if (ctx.get("seccompProfile") or {}).get("type") not in (
            None,
            "RuntimeDefault",
            "Localhost",
        ):
            found.append(f"{who}: seccompProfile {ctx['seccompProfile']}")
    for container in containers:
        name, ctx = container["name"], container.get("securityContext") or {}
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if ctx.get("procMount") not in (None, "Default"):
            found.append(f"{name}: procMount {ctx['procMount']}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
        # Restricted
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if ctx.get("runAsNonRoot") is not True and pod.get("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot is not true (nor on the pod)")
        seccomp = (ctx.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no RuntimeDefault or Localhost seccomp profile")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    return found


@pytest.mark.parametrize("name", SETS)
def test_the_pod_meets_the_restricted_pod_security_standard(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    spec = pod_spec(rendered[name])
    assert restricted_violations(spec) == []
    # And what the chart promises beyond the standard, field by field.
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (10001, 10001, 10001)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["runAsNonRoot"]) == (10001, 10001, True)
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) >= {"cpu", "memory"}
    account = only(rendered[name], "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def test_the_restricted_check_can_fail(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Each rule above catches what it is about (a check that cannot fail is no check)."""
    spec = pod_spec(rendered["default"])
    breaks = {
        "hostNetwork is set": lambda s: s.update(hostNetwork=True),
        "privileged": lambda s: s["containers"][0]["securityContext"].update(privileged=True),
        "runAsUser is 0": lambda s: s["securityContext"].update(runAsUser=0),
        "allowPrivilegeEscalation is not false": lambda s: s["containers"][0][
            "securityContext"
        ].pop("allowPrivilegeEscalation"),
        "do not drop ALL": lambda s: s["containers"][0]["securityContext"].update(
            capabilities={"drop": ["NET_RAW"]}
        ),
        "adds capabilities": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(
            add=["SYS_ADMIN"]
        ),
        "seccomp": lambda s: (
            s["securityContext"].pop("seccompProfile"),
            s["containers"][0]["securityContext"].pop("seccompProfile"),
        ),
        "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPort": lambda s: s["containers"][0]["ports"][0].update(hostPort=8080),
        "sysctl kernel.msgmax": lambda s: s["securityContext"].update(
            sysctls=[{"name": "kernel.msgmax", "value": "1"}]
        ),
        "runAsNonRoot is false": lambda s: s["containers"][0]["securityContext"].update(
            runAsNonRoot=False
        ),
    }
    for expected, damage in breaks.items():
        broken = copy.deepcopy(spec)
        damage(broken)
        found = restricted_violations(broken)
        assert any(expected in f for f in found), (expected, found)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("name", SETS)
def test_every_spangate_variable_is_a_setting_of_the_gateway(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    (container,) = pod_spec(rendered[name])["containers"]
    settings = {f"SPANGATE_{field.upper()}" for field in Settings.model_fields}
    named = {n for n in _env(container) if n.startswith("SPANGATE_")}
    assert named and named <= settings, named - settings


@pytest.mark.parametrize("name", SETS)
def test_the_policy_is_the_mounted_configmap_and_loads(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    spec = pod_spec(rendered[name])
    (container,) = spec["containers"]
    env = _env(container)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "policy")
    assert env["SPANGATE_POLICY"] == mount["mountPath"] == "/etc/spangate/policy"
    assert mount["readOnly"] is True and "subPath" not in mount  # a subPath is never updated
    volume = next(v for v in spec["volumes"] if v["name"] == "policy")
    configmap = only(rendered[name], "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert env["SPANGATE_WATCH_POLICY"] == "true"
    # The chart's policy loads with the gateway's own loader (${VAR}s left as placeholders).
    for file, content in configmap["data"].items():
        (tmp_path / file).write_text(content)
    loaded = load_policy(tmp_path, env={}, placeholders=True)
    assert loaded.policy.routes


def _checksum(objects: list[dict[str, Any]]) -> str | None:
    template = only(objects, "Deployment")["spec"]["template"]["metadata"]
    found: str | None = template.get("annotations", {}).get("checksum/policy")
    return found


def test_a_policy_change_rolls_the_pods_by_default(
    rendered: dict[str, list[dict[str, Any]]], cases: dict[str, list[dict[str, Any]]]
) -> None:
    """checksumAnnotation is on by default: a changed policy changes the pod template, so new
    pods that refuse it stay unready and the rollout (and `helm upgrade --wait`) stalls on the
    old ones. Two policies differing by one comment: two checksums."""
    first, second = _checksum(cases["policy A"]), _checksum(cases["policy B"])
    assert first is not None and second is not None and len(first) == 64
    assert first != second
    assert _checksum(rendered["default"]) not in (None, first, second)
    configmap = only(cases["policy A"], "ConfigMap")
    assert configmap["data"] == {"policy.yaml": "version: 1\nroutes: []\n"}


@pytest.mark.parametrize("name", SETS)
def test_the_gateway_listens_where_the_service_and_probes_look(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objects = rendered[name]
    spec = pod_spec(objects)
    (container,) = spec["containers"]
    env = _env(container)
    assert (env["SPANGATE_HOST"], env["SPANGATE_PORT"]) == ("0.0.0.0", "8080")  # noqa: S104
    assert env["SPANGATE_ADMIN_PORT"] == "8081"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "admin", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert container["args"] == ["serve"] and "command" not in container  # the image's entrypoint
    # The probes on the admin port: not subject to the API's connection cap (gateway.admin).
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # The API's Service carries the API only: /metrics and /readyz are not published with it.
    service = named(objects, "Service", only(objects, "Deployment")["metadata"]["name"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind, selector in (
        ("Service", service["spec"]["selector"]),
        ("Deployment", only(objects, "Deployment")["spec"]["selector"]["matchLabels"]),
        (
            "PodDisruptionBudget",
            only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ),
        ("NetworkPolicy", only(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]),
    ):
        assert selector.items() <= labels.items(), kind
    ingress = only(objects, "NetworkPolicy")["spec"]["ingress"]
    assert [rule["ports"] for rule in ingress] == [
        [{"port": "http", "protocol": "TCP"}],
        [{"port": "admin", "protocol": "TCP"}],
    ]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/spangate/policy", "/tmp", "/var/lib/spangate"}  # noqa: S108
    writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert writable == {"tmp", "data"}
    assert env["SPANGATE_AUDIT_PATH"].startswith("/var/lib/spangate/")


def test_without_an_admin_port_everything_is_on_the_api_port(
    cases: dict[str, list[dict[str, Any]]],
) -> None:
    objects = cases["no admin port"]
    (container,) = pod_spec(objects)["containers"]
    assert _env(container)["SPANGATE_ADMIN_PORT"] == "0"
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert [o["kind"] for o in objects].count("Service") == 1
    monitor = only(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    service = only(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert len(only(objects, "NetworkPolicy")["spec"]["ingress"]) == 1


def _pre_stop_wait(container: dict[str, Any]) -> float:
    """Seconds of the container's preStop hook (0 without one)."""
    pre_stop = (container.get("lifecycle") or {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:  # the Kubernetes sleep action: nothing needed in the image
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[:2] == ["python3", "-c"]  # the image's Python (on PATH: /opt/spangate/bin)
    return float(command[2].removeprefix("import time; time.sleep(").removesuffix(")"))


@pytest.mark.parametrize("name", SETS)
def test_shutdown_drains_before_the_pod_is_killed(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    """The grace period covers what the gateway's shutdown can take, as configured in the pod:
    a preStop wait, the drain, requests in flight, the answer window of those still running then
    (7 s, gateway.server.ANSWER_SECONDS), settling writes and the audit flush (5 s)."""
    spec = pod_spec(rendered[name])
    (container,) = spec["containers"]
    env = _env(container)
    steps = [
        _pre_stop_wait(container),
        float(env["SPANGATE_DRAIN_SECONDS"]),
        float(env["SPANGATE_SHUTDOWN_TIMEOUT_SECONDS"]),
        ANSWER_SECONDS,
        float(env["SPANGATE_SETTLE_SECONDS"]),
        5.0,
    ]
    assert steps[1] >= 5  # the drain is what endpoint removal needs
    assert spec["terminationGracePeriodSeconds"] >= sum(steps)


def test_the_drain_replaces_a_pre_stop_sleep_by_default(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (container,) = pod_spec(rendered["default"])["containers"]
    assert "lifecycle" not in container
    assert _env(container)["SPANGATE_DRAIN_SECONDS"] == "10"


def test_a_pre_stop_wait_uses_exec_before_kubernetes_1_30_and_sleep_from_it(
    chart_report: dict[str, Any], cases: dict[str, list[dict[str, Any]]]
) -> None:
    """Kubernetes 1.29 refuses the sleep action without the PodLifecycleSleepAction feature gate
    (on by default from 1.30): preStopAction auto picks by .Capabilities.KubeVersion."""
    old = pod_spec(cases["a preStop wait on Kubernetes 1.29"])["containers"][0]["lifecycle"]
    new = pod_spec(cases["a preStop wait on Kubernetes 1.30"])["containers"][0]["lifecycle"]
    assert old == {"preStop": {"exec": {"command": ["python3", "-c", "import time; time.sleep(5)"]}}}
    assert new == {"preStop": {"sleep": {"seconds": 5}}}
    # The full set, rendered (and validated) once per version, does the same.
    by_kube = chart_report["sets"]["full"]["manifests_by_kube"]
    for kube, action in (("1.29.0", "exec"), ("1.30.0", "sleep"), ("1.33.0", "sleep")):
        deployment = yaml.safe_load(by_kube[kube]["deployment.yaml"])
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert set(container["lifecycle"]["preStop"]) == {action}, kube


def test_config_extra_values_are_written_as_given(
    cases: dict[str, list[dict[str, Any]]],
) -> None:
    """A bare number there is refused (SCHEMA_CASES): Helm would write 1000000 as "1e+06", which
    no setting parses, and every pod would crash."""
    (container,) = pod_spec(cases["a large number in config.extra, quoted"])["containers"]
    assert _env(container)["SPANGATE_MAX_BODY_BYTES"] == "1000000"
    settings = Settings(max_body_bytes=_env(container)["SPANGATE_MAX_BODY_BYTES"])
    assert settings.max_body_bytes == 1_000_000


def test_the_full_set_wires_secrets_workload_identity_and_autoscaling(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["full"]
    (container,) = pod_spec(objects)["containers"]
    env = _env(container)
    assert env["SPANGATE_AUDIT_KEY"] == {
        "secretKeyRef": {"name": "spangate-audit", "key": "audit-key"}
    }
    assert env["SPANGATE_REDIS_URL"] == {"secretKeyRef": {"name": "spangate-redis", "key": "url"}}
    assert env["OKTA_CLIENT_SECRET"] == {
        "secretKeyRef": {"name": "okta-introspection", "key": "client-secret"}
    }
    assert env["SPANGATE_MAX_CONNECTIONS"] == "2000"
    assert _env(container)["SPANGATE_DRAIN_SECONDS"] == "15"
    account = only(objects, "ServiceAccount")
    assert (
        account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        == "spangate@acme-prod.iam.gserviceaccount.com"
    )
    assert pod_spec(objects)["serviceAccountName"] == account["metadata"]["name"]
    deployment = only(objects, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    # Prometheus scrapes the admin port through a ClusterIP Service of its own, and the
    # NetworkPolicy lets it in from its namespace; callers come from the ingress controller's.
    monitor = only(objects, "ServiceMonitor")
    name = deployment["metadata"]["name"]
    admin = named(objects, "Service", f"{name}-admin")
    api = named(objects, "Service", name)
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 8081, "targetPort": "admin", "protocol": "TCP"}
    ]
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    assert selector <= admin["metadata"]["labels"].items()
    assert not selector <= api["metadata"]["labels"].items()  # never the API's Service
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["spangate"]}
    ingress = only(objects, "NetworkPolicy")["spec"]["ingress"]
    peers = {
        rule["ports"][0]["port"]: rule["from"][0]["namespaceSelector"]["matchLabels"]
        for rule in ingress
    }
    assert peers == {
        "http": {"kubernetes.io/metadata.name": "ingress"},
        "admin": {"kubernetes.io/metadata.name": "monitoring"},
    }
    assert api["spec"]["type"] == "ClusterIP"  # the ingress controller in front
    egress = only(objects, "NetworkPolicy")["spec"]
    assert "Egress" in egress["policyTypes"]
    assert {"port": 6379, "protocol": "TCP"} in egress["egress"][-1]["ports"]


def test_the_default_deployment_runs_two_spread_replicas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = only(rendered["default"], "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


def _budget(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    found = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    return found[0]["spec"] if found else None


def test_the_disruption_budget_takes_one_pod_at_a_time_and_never_blocks_a_drain(
    rendered: dict[str, list[dict[str, Any]]], cases: dict[str, list[dict[str, Any]]]
) -> None:
    """maxUnavailable: 1 by default, for any number of pods (an HPA from one pod too: a budget
    of one pod may take that pod); minAvailable only below the pods that run (a minAvailable
    that keeps every pod is refused: SCHEMA_CASES); unhealthy pods may always be evicted."""
    selector = {"app.kubernetes.io/name": "spangate", "app.kubernetes.io/instance": "spangate"}
    expected = {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": selector},
    }
    assert _budget(rendered["default"]) == expected
    assert _budget(cases["an HPA from one pod"]) == expected
    assert _budget(cases["one replica"]) == expected
    below = _budget(cases["a minAvailable below the replicas"])
    assert below is not None and below["minAvailable"] == 2 and "maxUnavailable" not in below
    full = _budget(rendered["full"])
    assert full is not None and full["minAvailable"] == 2  # of the HPA's 3 at least
