"""The container image, built by ``dev/image/build.sh`` (what ``make image`` runs) and run with
``buildah run`` on the host network against the session's emulator and OpenID provider.

Needs root, buildah, debootstrap and Debian's archive keyring (``.ci/run`` installs them and runs
as root): it is never skipped; run as another user it fails at once and says what to run.
The image is built under a tag of this run's own (``localhost/spangate-test-PID``), which the
teardown removes, so test runs of other checkouts sharing buildah's store never see it; the
build itself is skipped when an image built from the same sources exists (build.sh).

``buildah run`` (1.28) has no ``--read-only``, so
the root filesystem is made read-only as a container runtime does for Kubernetes'
``readOnlyRootFilesystem``: a read-only bind mount of the container's root (made in a mount
namespace of the run, before ``buildah run`` starts), the volumes mounted over it. Only ``/run``
stays writable there (buildah puts its ``.containerenv`` in it and removes it afterwards): the
test checks that the gateway left nothing in it. Nor has it a ``no-new-privileges`` option: the
runs are started under ``setpriv --no-new-privs`` (which their processes inherit, as Kubernetes'
``allowPrivilegeEscalation: false`` gives) with ``--cap-drop=all``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import CURSOR_KEYS

from gateway.dev.idp import IdpProcess
from gateway.dev.ports import free_port

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
ISOLATION = ["--isolation", os.environ.get("BUILDAH_ISOLATION", "chroot")]
UID = 10001
STARTUP_SECONDS = 90

# Mount the container's root read-only (and its /run on itself, writable: buildah's own files)
# in this new mount namespace, then run buildah there: what it starts sees a read-only root.
READ_ONLY = (
    'root=$1; shift; mount --bind "$root" "$root"; mount --bind "$root/run" "$root/run"; '
    'mount -o remount,bind,ro "$root"; exec "$@"'
)


def buildah(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
    return out


@dataclass
class Container:
    name: str
    root: Path  # its root filesystem on the host (buildah mount)
    config: dict[str, Any]  # the image's OCI config

    def command(self, *args: str) -> list[str]:
        """The image's ENTRYPOINT followed by ``args`` (its CMD when none are given)."""
        return [*self.config["Entrypoint"], *(args or self.config["Cmd"])]

    def run_argv(self, *options: str, command: list[str], hardened: bool = True) -> list[str]:
        """``buildah run`` of ``command`` on the host network, the root read-only; ``hardened``:
        no capabilities and no new privileges (a pod's ``capabilities: {drop: [ALL]}`` and
        ``allowPrivilegeEscalation: false``)."""
        caps = ["--cap-drop=all"] if hardened else []
        run = [*BUILDAH, "run", *ISOLATION, "--network=host", *caps, *options, self.name, "--",
               *command]  # fmt: skip
        wrapper = ["setpriv", "--no-new-privs"] if hardened else []
        return [*wrapper, "unshare", "--mount", "--propagation", "private", "--", "sh", "-euc",
                READ_ONLY, "sh", str(self.root), *run]  # fmt: skip


NOT_ROOT = (
    "tests/image builds the container image with buildah, which needs root here (chroot isolation, "
    "vfs storage), and CI always runs it (.ci/run runs as root). As another user, run it as root "
    "on its own: `sudo .venv/bin/python -m pytest -p no:cacheprovider tests/image` (with "
    "`sudo apt-get install buildah debootstrap debian-archive-keyring` once), and the other tests "
    "with `.venv/bin/python -m pytest -m 'not image'`."
)


def build(image: str) -> subprocess.CompletedProcess[str]:
    """``dev/image/build.sh`` tagging ``image`` (its repository): the name is printed last."""
    return subprocess.run(
        [str(REPO / "dev" / "image" / "build.sh")],
        env={**os.environ, "PYTHON": sys.executable, "IMAGE": image},
        capture_output=True,
        text=True,
        timeout=840,
    )


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """``make image``'s script, under a tag of this run's own (a failure says what is missing);
    the tag is removed at the end (the image stays as the checkout's cache, build.sh)."""
    if os.geteuid() != 0:
        pytest.fail(NOT_ROOT, pytrace=False)
    out = build(f"localhost/spangate-test-{os.getpid()}")
    if out.returncode != 0:
        pytest.fail(f"dev/image/build.sh (make image) failed:\n{out.stderr[-4000:]}", pytrace=False)
    name = out.stdout.split()[-1]
    try:
        yield name
    finally:
        buildah("rmi", name, check=False)


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    name = f"spangate-test-{os.getpid()}-{secrets.token_hex(3)}"
    buildah("from", "--name", name, image)
    try:
        inspected = json.loads(buildah("inspect", "--type", "image", image).stdout)
        config = inspected["OCIv1"]["config"]
        # buildah 1.28 orders mounts with an unstable sort: an image VOLUME can shadow a -v at
        # the same path. This container drops them; each run mounts its own there (as a pod's
        # emptyDir volumes do). The image's own config is checked as built.
        buildah("config", *[f"--volume={path}-" for path in config["Volumes"]], name)
        root = Path(buildah("mount", name).stdout.strip())
        yield Container(name, root, config)
    finally:
        buildah("rm", name, check=False)


def test_the_image_runs_as_10001_and_serves_on_8080_with_its_labels(container: Container) -> None:
    config = container.config
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["spangate"] and config["Cmd"] == ["serve"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["SPANGATE_HOST"] == "0.0.0.0" and env["SPANGATE_PORT"] == "8080"  # noqa: S104
    assert env["SPANGATE_POLICY"] == "/etc/spangate/policy.yaml"
    assert env["SPANGATE_AUDIT_PATH"] == "/var/lib/spangate/audit.jsonl"
    assert set(config["Volumes"]) == {"/tmp", "/var/lib/spangate"}  # noqa: S108
    assert set(config["ExposedPorts"]) == {"8080/tcp"}
    labels = dict(config["Labels"])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels.pop("org.opencontainers.image.title") == "spangate"
    assert labels.pop("org.opencontainers.image.version") == project["version"]
    assert labels.pop("org.opencontainers.image.licenses") == "Apache-2.0" == project["license"]
    assert labels.pop("org.opencontainers.image.description") == project["description"]
    source = labels.pop("org.opencontainers.image.source")
    assert re.fullmatch(r"https://[^\s@/]+/\S+", source) and source == project["urls"]["Source"]
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels.pop("org.opencontainers.image.revision"))
    assert re.fullmatch(r"[0-9a-f]{64}", labels.pop("spangate.build.hash"))  # build.sh's cache
    # buildah's own, and nothing inherited from the base (no spangate.base.* recipe).
    assert set(labels) == {"io.buildah.version"}, labels


def test_a_second_build_of_the_same_sources_is_the_same_image_without_building(
    image: str,
) -> None:
    """build.sh's cache: the same sources, locks, build arguments and base give a new tag on
    the existing image (repeated `make test` runs do not rebuild)."""
    again = f"localhost/spangate-test-{os.getpid()}-again"
    out = build(again)
    try:
        assert out.returncode == 0, out.stderr
        assert "is up to date" in out.stderr and "building" not in out.stderr, out.stderr
        ids = [
            buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", name).stdout
            for name in (image, out.stdout.split()[-1])
        ]
        assert ids[0] == ids[1]
    finally:
        buildah("rmi", f"{again}:{image.rsplit(':', 1)[1]}", check=False)


def test_the_entrypoint_answers_help_and_version(container: Container) -> None:
    help_ = subprocess.run(
        container.run_argv(command=container.command("--help")), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert help_.returncode == 0, help_.stderr
    assert "serve" in help_.stdout and "audit" in help_.stdout
    version = subprocess.run(
        container.run_argv(command=container.command("--version")), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert (
        version.stdout.strip()
        == f"spangate {container.config['Labels']['org.opencontainers.image.version']}"
    )


def test_the_root_filesystem_is_read_only_in_the_run(container: Container) -> None:
    """Even root cannot write it (so no permission hides a writable root); volumes can."""
    probe = subprocess.run(
        container.run_argv("--user", "0:0", command=["sh", "-c", "touch /probe /opt/spangate/probe"]),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode != 0
    said = probe.stdout + probe.stderr  # buildah's chroot run may pass either stream on
    assert said.count("Read-only file system") == 2, said
    assert not (container.root / "probe").exists()


def _installed(site: Path) -> dict[str, str]:
    found = {}
    for info in site.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(errors="replace")
        name = re.search(r"^Name: (.+)$", meta, re.M)
        version = re.search(r"^Version: (.+)$", meta, re.M)
        assert name and version, info
        found[re.sub(r"[-_.]+", "-", name.group(1).strip()).lower()] = version.group(1).strip()
    return found


def _pins(lock: Path) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\\n]+)", lock.read_text(), re.M)
    }


def test_the_image_holds_the_runtime_lock_and_no_compiler_pip_or_cache(
    container: Container,
) -> None:
    root = container.root
    (site,) = root.glob("opt/spangate/lib/python3*/site-packages")
    installed = _installed(site)
    assert (
        installed.pop("spangate") == container.config["Labels"]["org.opencontainers.image.version"]
    )
    assert installed == _pins(REPO / "requirements.lock")  # exactly the lock: no pip, no dev tools
    compilers = [
        str(path.relative_to(root))
        for folder in ("usr/bin", "usr/local/bin", "bin")
        for pattern in ("cc", "c++", "gcc*", "g++*", "clang*", "*-linux-gnu-gcc*", "ld")
        for path in (root / folder).glob(pattern)
    ]
    assert compilers == []
    caches = [
        str(path.relative_to(root))
        for path in root.glob("**/.cache")
        if not str(path).startswith((str(root / "proc"), str(root / "sys")))
    ]
    assert caches == []
    assert not (root / "opt" / "spangate" / "bin" / "pip").exists()
    leftovers = ["wheelhouse", "src", "dist", "opt/build", "root/.cache"]  # the builder's
    assert [path for path in leftovers if (root / path).exists()] == []


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every file and folder of the image's root (not the runtime's /proc, /sys, /dev)."""
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        for name in dirs + files:
            path = Path(folder) / name
            yield path, path.lstat()


def test_no_installer_is_left_in_the_image(container: Container) -> None:
    """No pip in the gateway's environment nor in the base interpreter, and no wheel anywhere
    (ensurepip's bundled ones, Debian's /usr/share/python-wheels) to install one from."""
    for python in ("python3", "/opt/spangate/bin/python"):
        pip = subprocess.run(
            container.run_argv(command=[python, "-m", "pip", "--version"]),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pip.returncode != 0 and "No module named pip" in pip.stdout + pip.stderr, pip
    wheels = [str(path.relative_to(container.root)) for path, _ in _walk(container.root)
              if path.name.endswith(".whl")]  # fmt: skip
    assert wheels == []


def test_no_setuid_or_setgid_file_is_in_the_image(container: Container) -> None:
    privileged = [
        str(path.relative_to(container.root))
        for path, info in _walk(container.root)
        if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID)
    ]
    assert privileged == []


def test_the_audit_folder_is_10001s_and_group_0s_for_arbitrary_uids(container: Container) -> None:
    """Owned by 10001, writable by group 0 (OpenShift runs an arbitrary uid in group 0)."""
    info = (container.root / "var" / "lib" / "spangate").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (UID, 0, 0o770)


def test_nothing_of_the_build_host_is_in_the_image(container: Container) -> None:
    """No host name, no name server (the runtime provides both); Debian's canonical sources."""
    etc = container.root / "etc"
    assert (etc / "hostname").read_text() == ""
    assert (etc / "resolv.conf").read_text() == ""
    assert (etc / "apt" / "sources.list").read_text().splitlines() == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]


def test_the_debian_packages_carry_every_published_security_update(
    container: Container, tmp_path: Path
) -> None:
    """apt inside the image (its own sources.list, lists in throw-away volumes, the root
    read-only) finds nothing to upgrade, and libssl3 is bookworm-security's version."""
    lists, cache, tmp = tmp_path / "lists", tmp_path / "cache", tmp_path / "tmp"
    for folder in (lists, cache, tmp):
        folder.mkdir()
    tmp.chmod(0o1777)  # as an emptyDir
    script = r"""
        apt-get update -qq --error-on=any >&2
        apt list --upgradable 2>/dev/null | grep -v '^Listing' || true
        echo '---'
        apt-cache policy libssl3 | grep -E 'Installed|Candidate'
        installed=$(dpkg-query -W -f '${Version}' libssl3)
        apt-cache madison libssl3 | awk -F'|' '/bookworm-security/ {gsub(/ /, "", $2); print $2}' |
        while read -r version; do
            if dpkg --compare-versions "$installed" ge "$version"; then echo "security $version: ok"
            else echo "security $version: newer"; fi
        done
    """
    out = subprocess.run(
        container.run_argv(
            "--user", "0:0", "-v", f"{lists}:/var/lib/apt/lists", "-v", f"{cache}:/var/cache/apt",
            "-v", f"{tmp}:/tmp", command=["sh", "-euc", script], hardened=False,  # apt drops to its _apt user
        ),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    upgradable, _, libssl3 = out.stdout.partition("---\n")
    assert upgradable.strip() == "", upgradable
    installed = re.search(r"Installed: (\S+)", libssl3)
    candidate = re.search(r"Candidate: (\S+)", libssl3)
    assert installed and candidate and installed.group(1) == candidate.group(1), libssl3
    security = re.findall(r"^security (\S+): (\w+)$", libssl3, re.M)
    assert security and all(verdict == "ok" for _, verdict in security), libssl3


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _gateway_pid(wrapper: int) -> int | None:
    """The ``spangate serve`` process among the run's processes: Python running the script
    (buildah-chroot-exec, its parent, names the script too)."""
    for pid in _descendants(wrapper):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]).startswith(b"python") and argv[1:3] == [
            b"/opt/spangate/bin/spangate",
            b"serve",
        ]:
            return pid
    return None


def test_the_demo_personas_get_their_answers_through_the_image(
    container: Container,
    idp: IdpProcess,
    demo_database: str,
    token_for: Callable[..., str],
    audit_key: str,
    tmp_path: Path,
) -> None:
    """``spangate serve`` as the image runs it (ENTRYPOINT + CMD, the policy at its default
    path), as uid 10001 on a read-only root, with no capabilities and no new privileges:
    200/200/200/403 for the four demo personas."""
    policy, audit, tmp = tmp_path / "policy", tmp_path / "audit", tmp_path / "tmp"
    for folder in (policy, audit, tmp):
        folder.mkdir()
    shutil.copy(REPO / "policy.example.yaml", policy / "policy.yaml")
    os.chown(audit, UID, UID)  # as Kubernetes' fsGroup or an init step gives the volume
    tmp.chmod(0o1777)  # as an emptyDir
    run_before = _tree(container.root / "run")
    port = free_port()
    log = tmp_path / "serve.log"
    options = [
        "-v", f"{policy}:/etc/spangate:ro", "-v", f"{audit}:/var/lib/spangate",
        "-v", f"{tmp}:/tmp",
        "-e", f"SPANNER_EMULATOR_HOST={demo_database}", "-e", f"OKTA_ISSUER={idp.issuer}",
        "-e", f"SPANGATE_AUDIT_KEY={audit_key}", "-e", "SPANGATE_LOG_LEVEL=warning",
        "-e", f"SPANGATE_CURSOR_KEYS={CURSOR_KEYS}",  # the example policy paginates
        "-e", "SPANGATE_DRAIN_SECONDS=1",
        # The host's network: our port on loopback only (the image's 0.0.0.0 is for a pod).
        "-e", "SPANGATE_HOST=127.0.0.1", "-e", f"SPANGATE_PORT={port}",
    ]  # fmt: skip
    with log.open("wb") as out:
        wrapper = subprocess.Popen(
            container.run_argv(*options, command=container.command()),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, wrapper, log)
        gateway = _gateway_pid(wrapper.pid)
        assert gateway is not None, "no spangate serve process among the run's processes"
        status = Path(f"/proc/{gateway}/status").read_text()
        assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.M), status
        assert re.search(rf"^Gid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.M), status
        # As a pod with capabilities: {drop: [ALL]} and allowPrivilegeEscalation: false runs it.
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^CapPrm:\s+0+$", status, re.M), status
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        (root_mount,) = [
            line.split() for line in Path(f"/proc/{gateway}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        ]  # fmt: skip
        assert "ro" in root_mount[5].split(","), root_mount

        order_id = f"O-{secrets.randbelow(10**12)}"
        answers = {
            who: httpx.request(
                method, base + path, headers={"Authorization": f"Bearer {token_for(who)}"},
                json=body, timeout=30,
            ).status_code
            for who, method, path, body in [
                ("support-console", "GET", "/v1/orders/O-1001", None),
                ("order-agent", "GET", "/v1/orders?status=PAID&limit=5", None),
                ("order-writer", "POST", "/v1/orders",
                 {"order_id": order_id, "customer_id": "C-1", "total_cents": 1999}),
                ("outsider", "GET", "/v1/orders/O-1001", None),
            ]
        }  # fmt: skip
        assert answers == {
            "support-console": 200, "order-agent": 200, "order-writer": 200, "outsider": 403,
        }, log.read_text()  # fmt: skip

        os.kill(gateway, signal.SIGTERM)  # as Kubernetes stops a pod: drained, a clean stop, 0
        assert wrapper.wait(timeout=60) == 0, log.read_text()
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()

    trail = audit / "audit.jsonl"
    assert trail.stat().st_uid == UID
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    statuses = sorted(
        e["httpRequest"]["status"]
        for e in events
        if e["httpRequest"]["requestUrl"].startswith("/v1/")
    )
    assert statuses == [200, 200, 200, 403]
    # The one writable place on the root besides the volumes is buildah's /run: left as it was.
    assert _tree(container.root / "run") == run_before


def _tree(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the container exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the container never became ready:\n{log.read_text()}")
        time.sleep(0.2)
