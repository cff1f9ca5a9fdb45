"""Small policies built in code for the unit and property tests of the policy package."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from gateway.auth.principal import Principal
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy_data
from gateway.policy.simulate import principal_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "policy.example.yaml"

BASE: dict[str, Any] = {
    "version": 1,
    "spanner": {"project": "p", "instance": "i", "database": "d"},
    "issuers": {
        "okta": {
            "issuer": "https://idp.example/oauth2/default",
            "audience": "api",
            "preset": "okta",
        },
        "corp": {"issuer": "https://login.corp.example", "audience": "gw"},
    },
    "identities": {"reader": {"database_role": "reader"}, "writer": {"database_role": "writer"}},
    "roles": {
        "staff": [{"groups": ["staff"]}],
        "blocked": [{"claims": {"sub": ["user-666"]}}],
    },
    "queries": {
        "get_thing": {
            "identity": "reader",
            "sql": "SELECT * FROM Things WHERE Tenant = @tenant AND Id = @id",
            "params": {
                "id": {"type": "STRING"},
                "tenant": {"type": "STRING", "from": "claim.tenant"},
            },
        },
        "add_thing": {
            "identity": "writer",
            "sql": "INSERT INTO Things (Tenant, Id, Size) VALUES (@tenant, @id, @size)",
            "params": {
                "id": {"type": "STRING"},
                "tenant": {"type": "STRING", "from": "claim.tenant"},
                "size": {"type": "INT64", "min": 0, "default": 1},
            },
        },
    },
    "routes": [
        {
            "path": "/things/{id}",
            "method": "GET",
            "query": "get_thing",
            "allow": ["staff"],
            "deny": ["blocked"],
        },
        {"path": "/things", "method": "POST", "query": "add_thing", "allow": ["staff"]},
    ],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def compiled(data: dict[str, Any]) -> CompiledPolicy:
    return compile_policy(load_policy_data(data, base_dir=REPO))


def caller(policy: CompiledPolicy, **claims: Any) -> Principal:
    return principal_for(policy.model, {"iss": "okta", "sub": "user-1", **claims})


def where_in(path: Path, needle: str) -> str:
    """``path:line:column`` of the first occurrence of ``needle`` in the file."""
    text = path.read_text()
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    return f"{path}:{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"
