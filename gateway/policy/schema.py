"""The published JSON Schema of the policy file, generated from ``Policy``.

``policies/policy.schema.json`` is this module's output (``python -m gateway.policy.schema >
policies/policy.schema.json``); a test keeps the two equal. Editors use it to complete and check
policies; the loader, not the schema, is the authority (it also checks references and SQL).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gateway.policy.model import Policy

__all__ = ["SCHEMA_ID", "policy_json_schema", "render"]

SCHEMA_ID = "https://spangate.dev/schemas/policy-v1.json"
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


def render() -> str:
    """The schema as committed: indented by 2, keys sorted, with a trailing newline."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
