"""The published JSON Schemas of the policy file and of policy test (case) files, generated from
``Policy`` and ``CaseFile``.

``policies/policy.schema.json`` is this module's output (``python -m gateway.policy.schema >
policies/policy.schema.json``) and ``policies/policy-test.schema.json`` its output with
``--cases``; a test keeps them equal. Editors use them to complete and check policies and their
cases; the loader, not the schema, is the authority (it also checks references and SQL).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gateway.policy.model import Policy

__all__ = ["CASES_SCHEMA_ID", "SCHEMA_ID", "case_file_json_schema", "policy_json_schema", "render"]

SCHEMA_ID = "https://spangate.dev/schemas/policy-v1.json"
CASES_SCHEMA_ID = "https://spangate.dev/schemas/policy-test-v1.json"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy document, keys as written in YAML."""
    schema = Policy.model_json_schema(by_alias=True)
    return {
        "$schema": _DIALECT,
        "$id": SCHEMA_ID,
        **schema,
        "title": "spangate policy, format version 1",
    }


def case_file_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy test file (``spangate policy test``)."""
    from gateway.policy.testing import CaseFile

    schema = CaseFile.model_json_schema(by_alias=True)
    return {
        "$schema": _DIALECT,
        "$id": CASES_SCHEMA_ID,
        **schema,
        "title": "spangate policy test cases",
    }


def render(*, cases: bool = False) -> str:
    """A schema as committed: indented by 2, keys sorted, with a trailing newline."""
    schema = case_file_json_schema() if cases else policy_json_schema()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(cases="--cases" in sys.argv[1:]))
