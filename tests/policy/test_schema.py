from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.policy.load import load_policy
from gateway.policy.schema import SCHEMA_ID, policy_json_schema, render

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "policies" / "policy.schema.json"
EXAMPLE = Path(__file__).parent / "data" / "policy.example.yaml"
REGENERATE = "regenerate it with: python -m gateway.policy.schema > policies/policy.schema.json"


def test_the_committed_schema_is_current() -> None:
    assert COMMITTED.exists(), f"policies/policy.schema.json is missing; {REGENERATE}"
    committed = json.loads(COMMITTED.read_text())
    assert committed == policy_json_schema(), f"policies/policy.schema.json is stale; {REGENERATE}"
    assert COMMITTED.read_text() == render(), f"policies/policy.schema.json is not formatted; {REGENERATE}"


def test_the_module_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.policy.schema"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout == render()
    assert out.stdout.endswith("}\n")


def test_the_schema_identifies_itself() -> None:
    schema = policy_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID == "https://spangate.dev/schemas/policy-v1.json"
    assert schema["title"]


def test_the_top_level_keys_of_the_format() -> None:
    schema = policy_json_schema()
    assert set(schema["properties"]) == {
        "version", "spanner", "issuers", "identities", "roles", "queries", "routes", "audit",
        "budgets",
    }
    assert set(schema["required"]) == {"version", "spanner", "issuers", "identities", "queries", "routes"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["version"]["const"] == 1


def test_every_object_rejects_unknown_keys() -> None:
    defs: dict[str, Any] = policy_json_schema()["$defs"]
    route = defs["Route"]
    assert route["additionalProperties"] is False
    assert set(route["required"]) == {"path", "method", "query", "allow"}
    assert route["properties"]["method"]["enum"] == ["GET", "POST", "PUT", "PATCH", "DELETE"]
    for name, definition in defs.items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name


def test_keys_are_spelt_as_in_yaml() -> None:
    param = policy_json_schema()["$defs"]["Param"]
    assert "from" in param["properties"]
    assert "from_" not in param["properties"]


def _check(schema: dict[str, Any], defs: dict[str, Any], value: Any, where: str) -> list[str]:
    """A small subset of JSON Schema, enough for the keywords pydantic emits here."""
    if "$ref" in schema:
        return _check(defs[schema["$ref"].rsplit("/", 1)[1]], defs, value, where)
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema["oneOf"]
        results = [_check(option, defs, value, where) for option in options]
        return [] if any(not r for r in results) else [f"{where}: no alternative fits"]
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = kind is None or isinstance(value, types[kind])
    if not ok:
        return [f"{where}: expected {kind}"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}: expected {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: expected one of {schema['enum']}"]
    problems: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in properties:
                problems += _check(properties[key], defs, item, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}: unknown {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += _check(schema["additionalProperties"], defs, item, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += _check(schema["items"], defs, item, f"{where}[{i}]")
    return problems


def test_the_example_fits_the_schema() -> None:
    # jsonschema is not a dependency; this checks the keywords pydantic emits for our models.
    loaded = load_policy(EXAMPLE, env={"OKTA_CLIENT_ID": "a", "OKTA_CLIENT_SECRET": "b"})
    document = loaded.policy.model_dump(by_alias=True, exclude_unset=True, mode="json")
    schema = policy_json_schema()
    assert _check(schema, schema["$defs"], document, "policy") == []
    broken = {**document, "routes": [{**document["routes"][0], "alow": ["x"]}]}
    assert _check(schema, schema["$defs"], broken, "policy") == ["policy.routes[0]: unknown alow"]


CASES = REPO / "policies" / "policy-test.schema.json"


def test_the_committed_case_file_schema_is_current() -> None:
    regenerate = (
        "regenerate it with: python -m gateway.policy.schema --cases > policies/policy-test.schema.json"
    )
    assert CASES.exists(), f"policies/policy-test.schema.json is missing; {regenerate}"
    assert CASES.read_text() == render(cases=True), f"policies/policy-test.schema.json is stale; {regenerate}"
    schema = json.loads(CASES.read_text())
    assert schema["$id"] == "https://spangate.dev/schemas/policy-test-v1.json"
    assert set(schema["required"]) == {"policy", "cases"}
    assert schema["$defs"]["Expect"]["required"] == ["allow"]
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name


def test_the_example_cases_fit_their_schema() -> None:
    from gateway.policy.testing import load_case_file

    cases, _ = load_case_file(REPO / "policies" / "policy.example.test.yaml", env={})
    document = cases.model_dump(by_alias=True, exclude_unset=True, mode="json")
    schema = json.loads(CASES.read_text())
    assert _check(schema, schema["$defs"], document, "cases") == []
    assert (REPO / "policies" / "policy.example.test.yaml").read_text().startswith(
        "# yaml-language-server: $schema=policy-test.schema.json\n"
    )


def test_a_claim_test_takes_exactly_one_key() -> None:
    claim_test = policy_json_schema()["$defs"]["ClaimTest"]
    assert (claim_test["minProperties"], claim_test["maxProperties"]) == (1, 1)
