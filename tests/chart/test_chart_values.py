"""values.yaml, values.schema.json and the chart's README say the same keys."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from chartlib import CHART, REPO


def _strict(schema: dict[str, Any]) -> bool:
    """An object whose keys the schema fixes (as opposed to a free map such as annotations)."""
    return schema.get("type") == "object" and schema.get("additionalProperties") is False


def value_keys(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key of ``values``, dotted, walking into the objects whose keys the schema fixes;
    fails on a key the schema does not describe."""
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        assert key in schema["properties"], f"values.schema.json does not describe {path}"
        node = schema["properties"][key]
        assert node.get("description"), f"values.schema.json: {path} has no description"
        if _strict(node) and isinstance(value, dict):
            keys += value_keys(value, node, f"{path}.")
        else:
            keys.append(path)
    return keys


def schema_keys(schema: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, node in schema["properties"].items():
        if _strict(node):
            keys += schema_keys(node, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def test_the_schema_is_strict_and_describes_every_value() -> None:
    schema = _schema()
    assert _strict(schema)
    keys = value_keys(_values(), schema)
    assert len(keys) > 60
    # ... and holds nothing values.yaml lacks (but `global`, which Helm passes to every chart).
    assert set(schema_keys(schema)) - set(keys) == {"global"}


def test_the_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    keys = set(value_keys(_values(), _schema()))
    assert keys - listed == set(), "not in charts/spangate/README.md"
    assert listed - keys == set(), "in the README but not in values.yaml"


def test_the_readme_shows_each_default_as_values_yaml_has_it() -> None:
    readme = (CHART / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", readme, flags=re.MULTILINE))
    values = _values()
    for key, shown in rows.items():
        value: Any = values
        for part in key.split("."):
            value = value[part]
        if isinstance(value, dict) and key == "policy.files":
            continue  # an example policy, shown in full in values.yaml
        assert json.loads(shown) == value, f"{key}: README says {shown}, values.yaml {value!r}"


def test_the_chart_version_and_the_gateway_version_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, flags=re.MULTILINE)
    assert version is not None
    assert chart["appVersion"] == version.group(1)  # the default image tag is the gateway's version


def test_the_chart_readme_links_resolve() -> None:
    readme = CHART / "README.md"
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.read_text())
    relative = [link for link in links if "://" not in link]
    assert relative, "no relative links found: the pattern is wrong"
    for link in relative:
        assert (readme.parent / link).exists(), link
    assert (REPO / "docs" / "deploying.md").exists()
