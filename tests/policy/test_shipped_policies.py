"""Every policy the repository ships loads and compiles: the examples at the top, the test
fixtures, and the policies inside the Helm chart's values. New rules for policy SQL (the
scanner) must not refuse a policy a user copied from here. The YAML blocks of the docs are
loaded by ``tests/test_docs.py``; the policy test cases under ``policies/`` by
``test_policy_tests.py``.

Policies are found, not listed: any ``*.yaml`` under the repository (outside build and virtual
environment folders) whose top level has ``version`` and ``queries`` is a policy, and a chart
values file holding ``policy.files`` holds some; a minimum of known files keeps the finding
honest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy.compiled import compile_policy
from gateway.policy.load import load_policy

REPO = Path(__file__).resolve().parents[2]
_SKIP = {".git", ".venv", "node_modules", "build", "site", ".mypy_cache", ".ruff_cache"}
# ${VAR}s the shipped policies use: URLs where an issuer is expected, anything elsewhere.
ENV = {
    "OKTA_CLIENT_ID": "client-id",
    "OKTA_CLIENT_SECRET": "client-secret",
    "OKTA_ISSUER": "https://okta.example/oauth2/default",
    "ISSUER": "https://idp.example",
    "ORG_ISSUER": "https://org.example",
    "ORG_ONLY_ISSUER": "https://org-only.example",
}


def _yaml_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _SKIP]
        found.extend(Path(folder) / f for f in files if f.endswith((".yaml", ".yml")))
    return sorted(found)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None  # a Helm template, not YAML yet


def _policy_files() -> list[Path]:
    return [
        path
        for path in _yaml_files()
        if isinstance(data := _load_yaml(path), dict) and {"version", "queries"} <= data.keys()
    ]


def _chart_policies() -> dict[str, dict[str, str]]:
    """values file (relative) -> its policy files (name -> text)."""
    found: dict[str, dict[str, str]] = {}
    for path in _yaml_files():
        data = _load_yaml(path)
        policy = data.get("policy") if isinstance(data, dict) else None
        files = policy.get("files") if isinstance(policy, dict) else None
        if isinstance(files, dict) and files:
            found[str(path.relative_to(REPO))] = files
    return found


POLICIES = _policy_files()
CHART = _chart_policies()


def test_the_known_policies_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in POLICIES}
    assert {
        "policy.example.yaml",
        "policy.example.postgresql.yaml",
        "tests/policy/data/policy.example.yaml",
        "tests/audit/data/policy.yaml",
        "tests/auth/data/tokens.policy.yaml",
    } <= names
    assert {"charts/spangate/values.yaml", "charts/spangate/ci/full-values.yaml"} <= CHART.keys()


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_shipped_policy_loads_and_compiles(path: Path) -> None:
    compiled = compile_policy(load_policy(path, env=ENV))
    assert compiled.model.queries and compiled.model.routes


@pytest.mark.parametrize("values", sorted(CHART))
def test_a_policy_in_the_charts_values_loads(values: str, tmp_path: Path) -> None:
    for name, text in CHART[values].items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    loaded = load_policy(tmp_path, env={}, placeholders=True)
    assert loaded.policy.queries and loaded.policy.routes
