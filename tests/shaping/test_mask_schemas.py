"""What the documents say of masked columns: OpenAPI (one document for every caller: masked, or
clear for the ``unless`` roles) and MCP's ``outputSchema`` (exact for one token), checked by a
JSON Schema validator against what the masking core really answers; and the mask key's rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from gateway.errors import ConfigError
from gateway.mcp.tools import tools_for
from gateway.openapi import response_schema
from gateway.policy.compiled import CompiledPolicy, compile_policy
from gateway.policy.load import load_policy_data
from gateway.policy.simulate import principal_for
from gateway.runtime import mask_key
from gateway.settings import Settings
from gateway.shaping.masks import MaskKey, mask_value
from gateway.spanner.analyze import Analysis, Column, Shape

COLUMNS = (
    Column("Id", "STRING"),
    Column("Email", "STRING"),
    Column("Phone", "STRING"),
    Column("Total", "INT64"),
    Column("Tags", "ARRAY<STRING>"),
    Column("Note", "STRING"),
)
CLEAR: dict[str, Any] = {
    "Id": "T-1", "Email": "wile@acme.example", "Phone": "+1 555 0100 4242", "Total": 7499,
    "Tags": ["vip", None], "Note": "fragile",
}  # fmt: skip
MASKS = {
    "Email": {"with": "redact", "unless": ["leads"]},
    "Phone": {"with": "last4", "unless": ["leads"]},
    "Total": {"with": "hash", "unless": ["leads", "staff"]},
    "Tags": {"with": "hash", "domain": "tags"},
    "Note": {"with": "null"},
}
KEY = MaskKey.from_secret(b"k" * 32)
BASE: dict[str, Any] = {
    "version": 1,
    "spanner": {"project": "p", "instance": "i", "database": "d"},
    "issuers": {"okta": {"issuer": "https://idp.example/oauth2/default", "audience": "api"}},
    "identities": {"reader": {"database_role": "reader"}},
    "roles": {"staff": [{"groups": ["staff"]}]},
    "queries": {
        "get_thing": {
            "identity": "reader",
            "sql": "SELECT Id FROM Things WHERE Tenant = @tenant AND Id = @id",
            "params": {
                "id": {"type": "STRING"},
                "tenant": {"type": "STRING", "from": "claim.tenant"},
            },
        },
    },
    "routes": [{"path": "/things/{id}", "method": "GET", "query": "get_thing", "allow": ["staff"]}],
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def compiled(data: dict[str, Any]) -> CompiledPolicy:
    return compile_policy(load_policy_data(data, base_dir=Path(".")))


def caller(policy: CompiledPolicy, **claims: Any) -> Any:
    return principal_for(policy.model, {"iss": "okta", "sub": "user-1", **claims})


def policy() -> Any:
    data = base()
    data["roles"]["leads"] = [{"groups": ["leads"]}]
    data["queries"]["get_thing"]["sql"] = (
        "SELECT Id, Email, Phone, Total, Tags, Note FROM Things WHERE Tenant = @tenant AND Id = @id"
    )
    data["queries"]["get_thing"]["mask"] = MASKS
    return compiled(data)


POLICY = policy()
ANALYSIS = Analysis(shapes={"get_thing": Shape(COLUMNS)})
ROUTE = POLICY.routes[0]


def body(row: dict[str, Any]) -> dict[str, Any]:
    return {"rows": [row], "row_count": 1, "truncated": False}


def masked_row(masked: tuple[str, ...]) -> dict[str, Any]:
    types = {c.name: c.type for c in COLUMNS}
    return {
        k: mask_value(MASKS[k]["with"], types[k], v, KEY) if k in masked else v  # type: ignore[index]
        for k, v in CLEAR.items()
    }


def test_openapi_describes_each_masked_column_for_every_caller() -> None:
    schema = response_schema(ROUTE, ANALYSIS)
    props = schema["properties"]["rows"]["items"]["properties"]
    assert props["Id"] == {"type": ["string", "null"]}
    email = props["Email"]
    assert email["description"] == (
        "masked (redact) unless the caller holds a role of: leads; then clear"
    )
    assert email["anyOf"] == [{"type": ["string", "null"]}, {"enum": ["***", None]}]
    assert email["x-spangate-mask"] == {"with": "redact", "unless": ["leads"]}
    assert props["Note"] == {
        "type": "null",
        "x-spangate-mask": {"with": "null", "unless": []},
        "description": "masked (null) for every caller",
    }
    assert props["Tags"]["items"]["pattern"] == "^[A-Za-z0-9_-]{43}$"
    assert props["Tags"]["x-spangate-mask"] == {"with": "hash", "unless": [], "domain": "tags"}
    validator = Draft202012Validator(schema)
    for masked in [("Email", "Phone", "Total", "Tags", "Note"), ("Tags", "Note")]:
        validator.validate(body(masked_row(masked)))
    # "every caller sees it clear" is not what the document says of a column without unless
    with pytest.raises(Exception, match="is not of type 'null'"):
        validator.validate(body(masked_row(("Tags",))))


@pytest.mark.parametrize(
    ("groups", "masked"),
    [
        (["staff"], ("Email", "Phone", "Tags", "Note")),
        (["staff", "leads"], ("Tags", "Note")),
    ],
)
def test_an_mcp_output_schema_is_exact_for_the_token(
    groups: list[str], masked: tuple[str, ...]
) -> None:
    (tool,) = [
        t for t in tools_for(POLICY, caller(POLICY, groups=groups, tenant="t1"), ANALYSIS)
        if t["name"] == "get_thing"
    ]
    schema = tool["outputSchema"]
    props = schema["properties"]["rows"]["items"]["properties"]
    for name in CLEAR:
        if name in masked:
            assert props[name]["description"].startswith("masked ("), name
            assert "anyOf" not in props[name]
        else:
            assert "x-spangate-mask" not in props[name], name
    validator = Draft202012Validator(schema)
    validator.validate(body(masked_row(masked)))
    if "Email" in masked:  # the clear value is not what this token can get
        with pytest.raises(Exception, match="is not one of"):
            validator.validate(body({**masked_row(masked), "Email": CLEAR["Email"]}))


def test_a_hash_mask_needs_a_key_of_16_characters_at_least() -> None:
    with pytest.raises(ConfigError, match=r"masks get_thing\.Total, get_thing\.Tags with hash"):
        mask_key(Settings(), POLICY)
    short = "short-key-123"
    with pytest.raises(ConfigError, match="shorter than 16") as caught:
        mask_key(Settings(mask_key=SecretStr(short)), POLICY)
    assert short not in str(caught.value)
    key = mask_key(Settings(mask_key=SecretStr("k" * 32)), POLICY)
    assert key == KEY
    assert mask_key(Settings(mask_key=SecretStr("")), compiled(base())) is None  # empty: unset
