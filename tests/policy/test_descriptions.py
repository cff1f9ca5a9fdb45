"""Descriptions of roles, queries and routes reach the OpenAPI document and ``explain``."""

from __future__ import annotations

from builders import base, caller, compiled

from gateway.openapi import openapi_document
from gateway.policy.explain import explain, render_explanation
from gateway.policy.simulate import request_facts


def test_descriptions_are_shown_in_openapi_and_explain() -> None:
    data = base()
    data["roles"]["staff"] = {"description": "people at work", "any_of": [{"groups": ["staff"]}]}
    data["routes"][0]["description"] = "one thing"
    data["queries"]["add_thing"]["description"] = "adds a thing"
    policy = compiled(data)
    paths = openapi_document(policy, version="test")["paths"]
    get, post = paths["/things/{id}"]["get"], paths["/things"]["post"]
    assert get["summary"] == "one thing"
    assert post["summary"] == "adds a thing"
    assert get["description"] == "Allowed for the roles: staff (people at work)."
    ex = explain(
        policy, request_facts("GET /things/1"), caller(policy, groups=["staff"], tenant="t")
    )
    lines = render_explanation(policy, ex).splitlines()
    assert "          one thing" in lines
    assert "  + staff: holds - people at work" in lines
