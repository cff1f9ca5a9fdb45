"""Hot reload: a valid new policy is swapped in, a bad one is refused and the old one keeps serving."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from reloading import gateway_on, with_new_route
from served import served as serving

from gateway.app import Gateway
from gateway.dev.idp import OPAQUE_RESOURCE, fetch_token, revoke_token
from gateway.runtime import build_gateway
from gateway.settings import Settings


@pytest.fixture
def policy_copy(tmp_path: Path, repo: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text((repo / "policy.example.yaml").read_text())
    return path


@pytest.fixture
async def own_gateway(
    policy_copy: Path, demo_database: str, idp: Any, tmp_path: Path, audit_key: str
) -> AsyncIterator[Gateway]:
    async with gateway_on(
        policy_copy, database=demo_database, idp=idp, tmp_path=tmp_path, audit_key=audit_key
    ) as app:
        yield app


async def _get(app: Gateway, path: str, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        return await http.get(path, headers={"Authorization": f"Bearer {token}"})


async def test_reload_swaps_in_a_valid_policy(
    own_gateway: Gateway, policy_copy: Path, token_for: Callable[..., str]
) -> None:
    token = token_for("support-console")
    before = own_gateway.policy.sha256
    assert (await _get(own_gateway, "/v1/tenant", token)).status_code == 404
    policy_copy.write_text(with_new_route(policy_copy.read_text()))
    assert await own_gateway.reloader.reload() is True
    assert own_gateway.policy.sha256 != before
    response = await _get(own_gateway, "/v1/tenant", token)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"Name": "Acme"}]
    ready = await _get(own_gateway, "/readyz", token)
    assert ready.json()["policy_sha256"] == own_gateway.policy.sha256
    assert own_gateway.reloader.reloads == 1


async def test_mcp_tools_and_metadata_follow_a_reload(
    own_gateway: Gateway, policy_copy: Path, token_for: Callable[..., str]
) -> None:
    token = token_for("support-console")
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    transport = httpx.ASGITransport(app=own_gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:

        async def tools() -> set[str]:
            answer = await http.post("/mcp", json=listing, headers=headers)
            assert answer.status_code == 200, answer.text
            return {t["name"] for t in answer.json()["result"]["tools"]}

        async def scopes() -> list[str]:
            answer = await http.get("/.well-known/oauth-protected-resource/mcp")
            assert answer.json()["resource"] == "http://127.0.0.1/mcp"
            return list(answer.json()["scopes_supported"])

        assert "tenant_name" not in await tools()
        assert await scopes() == ["orders.read", "orders.write"]
        text = with_new_route(policy_copy.read_text())
        text = text.replace("scopes: [orders.write]", "scopes: [orders.write, orders.admin]", 1)
        policy_copy.write_text(text)
        assert await own_gateway.reloader.reload() is True
        assert "tenant_name" in await tools()
        assert await scopes() == ["orders.admin", "orders.read", "orders.write"]


async def test_a_bad_policy_is_refused_and_the_old_one_keeps_serving(
    own_gateway: Gateway, policy_copy: Path, token_for: Callable[..., str]
) -> None:
    token = token_for("support-console")
    before = own_gateway.policy.sha256
    policy_copy.write_text(
        policy_copy.read_text().replace(
            "allow: [support, order-agent, agent-for-support]", "allow: [suport]", 1
        )
    )
    assert await own_gateway.reloader.reload() is False
    assert own_gateway.reloader.failures == 1
    assert "unknown role 'suport'" in (own_gateway.reloader.last_error or "")
    assert own_gateway.policy.sha256 == before
    assert (await _get(own_gateway, "/v1/orders/O-1001", token)).status_code == 200


async def test_a_misspelt_column_refuses_the_reload(
    own_gateway: Gateway, policy_copy: Path
) -> None:
    before = own_gateway.policy.sha256
    policy_copy.write_text(
        with_new_route(policy_copy.read_text()).replace("SELECT Name FROM", "SELECT Nmae FROM")
    )
    assert await own_gateway.reloader.reload() is False
    assert "Nmae" in (own_gateway.reloader.last_error or "")
    assert own_gateway.policy.sha256 == before


async def test_a_new_identity_is_added_on_reload(
    own_gateway: Gateway, policy_copy: Path, token_for: Callable[..., str]
) -> None:
    text = with_new_route(policy_copy.read_text())
    text = text.replace(
        "\n  shop_writer:\n",
        "\n  tenant_reader:\n    database_role: tenant_reader\n  shop_writer:\n",
        1,
    ).replace(
        "  tenant_name:\n    identity: shop_reader",
        "  tenant_name:\n    identity: tenant_reader",
        1,
    )
    policy_copy.write_text(text)
    assert await own_gateway.reloader.reload() is True, own_gateway.reloader.last_error
    response = await _get(own_gateway, "/v1/tenant", token_for("support-console"))
    assert response.status_code == 200, response.text
    assert own_gateway.executor.databases.roles["tenant_reader"] == "tenant_reader"


def _without_writer(text: str) -> str:
    text = text.replace(
        "  shop_writer:\n    database_role: shop_writer\n    description: inserts orders\n", "", 1
    )
    assert "shop_writer:" not in text.split("roles:")[0]
    return text.replace("    identity: shop_writer\n", "    identity: shop_reader\n")


async def test_a_dropped_identity_cannot_come_back_with_another_role(
    own_gateway: Gateway, policy_copy: Path
) -> None:
    base = policy_copy.read_text()
    policy_copy.write_text(_without_writer(base))
    assert await own_gateway.reloader.reload() is True, own_gateway.reloader.last_error
    policy_copy.write_text(
        base.replace("database_role: shop_writer", "database_role: orders_inserter")
    )
    assert await own_gateway.reloader.reload() is False
    assert "restart" in (own_gateway.reloader.last_error or "")
    # What runs is what the served policy says.
    served = own_gateway.policy.model.identities.get("shop_writer")
    assert served is None
    assert own_gateway.executor.databases.roles["shop_writer"] == "shop_writer"


async def test_a_refused_reload_leaves_no_identity_behind(
    own_gateway: Gateway, policy_copy: Path, token_for: Callable[..., str]
) -> None:
    base = policy_copy.read_text()

    def with_reader(role: str, column: str) -> str:
        text = with_new_route(base).replace(
            "\n  shop_writer:\n",
            f"\n  tenant_reader:\n    database_role: {role}\n  shop_writer:\n",
            1,
        )
        return text.replace(
            "  tenant_name:\n    identity: shop_reader",
            "  tenant_name:\n    identity: tenant_reader",
            1,
        ).replace("SELECT Name FROM", f"SELECT {column} FROM", 1)

    policy_copy.write_text(with_reader("shop_writer", "Nmae"))  # refused: a misspelt column
    assert await own_gateway.reloader.reload() is False
    assert "tenant_reader" not in own_gateway.executor.databases.identities
    policy_copy.write_text(with_reader("tenant_reader", "Name"))
    assert await own_gateway.reloader.reload() is True, own_gateway.reloader.last_error
    assert own_gateway.executor.databases.aio("tenant_reader").database_role == "tenant_reader"
    response = await _get(own_gateway, "/v1/tenant", token_for("support-console"))
    assert response.status_code == 200, response.text


async def test_identity_changes_need_a_restart(own_gateway: Gateway, policy_copy: Path) -> None:
    before = own_gateway.policy.sha256
    policy_copy.write_text(
        policy_copy.read_text().replace("database_role: shop_writer", "database_role: shop_admin")
    )
    assert await own_gateway.reloader.reload() is False
    assert "restart" in (own_gateway.reloader.last_error or "")
    assert own_gateway.policy.sha256 == before


async def test_requests_in_flight_keep_their_policy(
    own_gateway: Gateway, policy_copy: Path
) -> None:
    started_on = own_gateway.active
    policy_copy.write_text(with_new_route(policy_copy.read_text()))
    assert await own_gateway.reloader.reload() is True
    assert own_gateway.active is not started_on
    # What a request captured at its start is untouched by the swap.
    assert "/v1/tenant" not in {r.template for r in started_on.policy.routes}
    assert "/v1/tenant" in {r.template for r in own_gateway.policy.routes}


def _poll(
    url: str, predicate: Callable[[httpx.Response], bool], timeout: float = 20.0
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=1.0)
            if predicate(last):
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url}: condition never held (last: {last and last.text})")


@pytest.mark.parametrize("trigger", ["sighup", "watch"])
def test_a_running_server_reloads(
    trigger: str, policy_copy: Path, demo_database: str, idp: Any, tmp_path: Path, audit_key: str
) -> None:
    watch = {"SPANGATE_WATCH_POLICY": "true" if trigger == "watch" else "false"}
    with serving(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=policy_copy,
        env=watch,
    ) as server:
        readyz = f"{server.base}/readyz"
        first = _poll(readyz, lambda r: r.status_code == 200).json()["policy_sha256"]
        policy_copy.write_text(with_new_route(policy_copy.read_text()))
        if trigger == "sighup":
            server.process.send_signal(signal.SIGHUP)
        second = _poll(readyz, lambda r: r.json()["policy_sha256"] != first).json()["policy_sha256"]
        assert second != first and server.process.poll() is None


INTROSPECTING = """    audience: [api://shop, api://shop-opaque]
    preset: okta
    introspection:
      client_id: spangate-gateway
      client_secret: spangate-gateway-secret
      auth_method: client_secret_post
      token_min_length: 43
      token_max_length: 43
      token_charset: base64url
"""


async def test_introspection_caches_survive_a_reload_that_does_not_touch_the_issuer(
    policy_copy: Path,
    demo_database: str,
    idp: Any,
    tmp_path: Path,
    audit_key: str,
    personas: dict[str, dict[str, object]],
) -> None:
    """Regression: every reload built new Introspectors, so their cached answers, call budget
    and counters were lost even when no issuer changed. A revoked token still served from the
    cache proves the cached answer survived; changing the introspection config drops it."""
    text, found = re.subn(
        r"    audience: api://shop\n    preset: okta[^\n]*\n",
        INTROSPECTING,
        policy_copy.read_text(),
    )
    assert found == 1
    policy_copy.write_text(text)
    settings = Settings(
        policy=policy_copy,
        spanner_emulator_host=demo_database,
        audit_path=tmp_path / "audit.jsonl",
        audit_key=audit_key,
        introspection_cache_seconds=600,
    )
    app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    try:
        secret = str(personas["support-console"]["client_secret"])
        opaque = fetch_token(idp.issuer, "support-console", secret, resource=OPAQUE_RESOURCE)
        assert opaque.count(".") == 0
        first = await _get(app, "/v1/orders/O-1001", opaque)
        assert first.status_code == 200, first.text
        before = app.verifier.introspectors["okta"]
        assert before.calls == 1
        revoke_token(idp.issuer, "support-console", secret, opaque)

        policy_copy.write_text(with_new_route(policy_copy.read_text()))  # the issuer untouched
        assert await app.reloader.reload() is True
        assert app.verifier.introspectors["okta"] is before
        cached = await _get(app, "/v1/orders/O-1001", opaque)
        assert cached.status_code == 200, cached.text  # the cached active answer
        assert before.calls == 1 and before.cache_hits == 1
        metrics = (await _get(app, "/metrics", opaque)).text.splitlines()
        assert 'spangate_introspection_cache_hits_total{issuer="okta"} 1.0' in metrics

        policy_copy.write_text(
            policy_copy.read_text().replace("token_max_length: 43", "token_max_length: 44")
        )
        assert await app.reloader.reload() is True
        after = app.verifier.introspectors["okta"]
        assert after is not before
        assert before.state().cached == 0  # the dropped one was closed: its answers are gone
        refused = await _get(app, "/v1/orders/O-1001", opaque)
        assert refused.status_code == 401, refused.text  # asked afresh: revoked
        assert refused.json()["code"] == "token-inactive"
        assert after.calls == 1
    finally:
        await app.shutdown()


def with_unreachable_issuer(text: str, port: int) -> str:
    """The policy with one more issuer, whose identity provider nobody serves (``port``)."""
    issuer = (
        "  partner:\n"
        f"    issuer: http://127.0.0.1:{port}/oauth2/partner\n"
        "    audience: api://shop\n"
        "    algorithms: [RS256]\n"
    )
    changed = text.replace("\nidentities:", "\n" + issuer + "\nidentities:", 1)
    assert "partner:" in changed
    return changed


async def test_a_reload_adding_an_issuer_whose_keys_cannot_be_fetched_is_refused(
    own_gateway: Gateway, policy_copy: Path, token_for: Callable[..., str]
) -> None:
    """Regression: the reload swapped in a verifier with a cold key cache, so /readyz said 503
    (issuer-keys) on every replica at once: one bad `helm upgrade`, a whole outage."""
    from gateway.dev.ports import free_port

    token = token_for("support-console")
    before, caches = own_gateway.policy.sha256, dict(own_gateway.verifier.caches)
    base = policy_copy.read_text()
    policy_copy.write_text(with_new_route(with_unreachable_issuer(base, free_port())))
    reloader = own_gateway.reloader
    assert await reloader.reload() is False
    assert reloader.failures == 1 and reloader.retry is True  # the poll tries it again
    assert "issuer 'partner'" in reloader.last_error and "cannot be fetched" in reloader.last_error
    assert own_gateway.policy.sha256 == before and own_gateway.verifier.caches == caches
    ready = await _get(own_gateway, "/readyz", token)
    assert ready.status_code == 200, ready.text
    assert ready.json()["policy_reload_error"] == reloader.last_error
    assert "refused" in (await _get(own_gateway, "/metrics", token)).text
    assert (await _get(own_gateway, "/v1/orders/O-1001", token)).status_code == 200
    assert (await _get(own_gateway, "/v1/tenant", token)).status_code == 404  # not swapped in

    policy_copy.write_text(with_new_route(base))  # the issuer withdrawn: the rest goes in
    assert await reloader.reload() is True, reloader.last_error
    assert reloader.retry is False and reloader.last_error is None
    assert (await _get(own_gateway, "/v1/tenant", token)).status_code == 200
    assert (await _get(own_gateway, "/readyz", token)).json()["policy_reload_error"] is None


async def test_an_error_while_swapping_is_a_refusal_not_a_crash(
    own_gateway: Gateway, policy_copy: Path
) -> None:
    """Whatever fails in a reload is caught, logged and counted: reload() never raises (an
    exception escaping it ended the watcher's loop, and reloads with it, for good)."""
    reloader = own_gateway.reloader
    build = reloader.make_verifier

    def broken(*args: Any) -> Any:
        raise RuntimeError("the verifier could not be built")

    reloader.make_verifier = broken
    text = with_new_route(policy_copy.read_text()).replace(
        "\n  shop_writer:\n",
        "\n  tenant_reader:\n    database_role: tenant_reader\n  shop_writer:\n",
        1,
    )
    policy_copy.write_text(text)
    before = own_gateway.policy.sha256
    assert await reloader.reload() is False
    assert reloader.last_error == "RuntimeError: the verifier could not be built"
    assert reloader.retry is True and own_gateway.policy.sha256 == before
    assert "tenant_reader" not in own_gateway.executor.databases.identities  # nothing left behind
    reloader.make_verifier = build
    assert await reloader.reload() is True, reloader.last_error


def test_a_running_server_refuses_an_issuer_it_cannot_reach_and_stays_ready(
    policy_copy: Path, demo_database: str, idp: Any, tmp_path: Path, audit_key: str
) -> None:
    from gateway.dev.ports import free_port

    with serving(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=policy_copy,
    ) as server:
        readyz = f"{server.base}/readyz"
        first = _poll(readyz, lambda r: r.status_code == 200).json()["policy_sha256"]
        policy_copy.write_text(with_unreachable_issuer(policy_copy.read_text(), free_port()))
        server.process.send_signal(signal.SIGHUP)
        refused = _poll(readyz, lambda r: r.json()["policy_reload_error"] is not None)
        assert refused.status_code == 200 and refused.json()["status"] == "ready"
        assert refused.json()["policy_sha256"] == first
        assert "issuer 'partner'" in refused.json()["policy_reload_error"]
        metrics = httpx.get(f"{server.base}/metrics").text.splitlines()
        assert 'spangate_policy_reloads_total{result="refused"} 1.0' in metrics
        assert httpx.get(readyz).status_code == 200


# -- a shadow policy, reloaded with the live one ---------------------------------------------------


def _shadow_of(text: str) -> str:
    """A candidate: the example policy whose order routes no longer allow order-agent."""
    changed = text.replace(
        "allow: [support, order-agent, agent-for-support]", "allow: [support, agent-for-support]"
    )
    assert changed != text
    return changed


@pytest.fixture
def shadow_copy(tmp_path: Path, repo: Path) -> Path:
    folder = tmp_path / "candidate"  # another folder than the live policy's
    folder.mkdir()
    path = folder / "candidate.yaml"
    path.write_text(_shadow_of((repo / "policy.example.yaml").read_text()))
    return path


@pytest.fixture
async def shadow_gateway(
    policy_copy: Path,
    shadow_copy: Path,
    demo_database: str,
    idp: Any,
    tmp_path: Path,
    audit_key: str,
) -> AsyncIterator[Gateway]:
    async with gateway_on(
        policy_copy,
        database=demo_database,
        idp=idp,
        tmp_path=tmp_path,
        audit_key=audit_key,
        shadow_policy=shadow_copy,
    ) as app:
        yield app


def _events(path: Path) -> dict[str, dict[str, Any]]:
    import json

    return {
        e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]: e
        for e in map(json.loads, path.read_text().splitlines())
    }


async def test_a_shadow_reloads_with_the_live_policy_and_a_bad_one_is_refused_alone(
    shadow_gateway: Gateway,
    policy_copy: Path,
    shadow_copy: Path,
    tmp_path: Path,
    token_for: Callable[..., str],
) -> None:
    app, reloader = shadow_gateway, shadow_gateway.reloader
    agent = token_for("order-agent")
    first = app.shadow
    assert first is not None and first.sha256 != app.policy.sha256
    response = await _get(app, "/v1/orders/O-1001", agent)
    assert response.status_code == 200, response.text  # the live policy answers
    event = _events(tmp_path / "audit.jsonl")[response.headers["x-request-id"]]
    assert event["protoPayload"]["metadata"]["shadow"]["reason"] == "no-allow-role"

    # the live policy changes alone: the shadow stays, beside the new live policy
    live = app.policy.sha256
    policy_copy.write_text(with_new_route(policy_copy.read_text()))
    assert await reloader.reload() is True
    assert app.policy.sha256 != live and app.shadow is first

    # the shadow changes alone: swapped in beside the same live policy
    live = app.policy.sha256
    only_shadow = with_new_route(shadow_copy.read_text()).replace(
        "- path: /v1/tenant\n", "- path: /v1/shadow-tenant\n"
    )
    assert "/v1/shadow-tenant" in only_shadow
    shadow_copy.write_text(only_shadow)
    assert await reloader.reload() is True
    assert app.policy.sha256 == live and app.shadow is not None and app.shadow is not first
    second = app.shadow
    ready = await _get(app, "/readyz", agent)
    assert ready.json()["shadow_policy_sha256"] == second.sha256
    # a path only the shadow routes: the live policy answers 404, the shadow's decision is kept
    unrouted = await _get(app, "/v1/shadow-tenant", token_for("support-console"))
    assert unrouted.status_code == 404
    shadow = _events(tmp_path / "audit.jsonl")[unrouted.headers["x-request-id"]]
    assert shadow["protoPayload"]["metadata"]["decision"]["reason"] == "no-route"
    assert shadow["protoPayload"]["metadata"]["shadow"] == {
        "allow": True,
        "reason": "allowed",
        "rule": "support",
        "query": "tenant_name",
        "params": None,  # the live policy bound nothing: no parameters compared
        "masked": [],
        "approval": False,
        "policySha256": second.sha256,
    }
    metrics = (await _get(app, "/metrics", agent)).text
    assert (
        'spangate_shadow_disagreements_total{live="no-route",route="/v1/shadow-tenant",'
        'shadow="allowed"} 1.0'
    ) in metrics

    # a bad shadow: refused and logged, the shadow deciding keeps deciding, the live one reloads
    shadow_copy.write_text(shadow_copy.read_text().replace("allow: [support]", "allow: [suport]"))
    policy_copy.write_text(policy_copy.read_text().replace("max_rows: 500", "max_rows: 400"))
    assert await reloader.reload() is True
    assert app.policy.sha256 != live and app.shadow is second
    assert reloader.shadow_failures == 1 and reloader.failures == 0
    assert "unknown role 'suport'" in (reloader.shadow_last_error or "")
    metrics = (await _get(app, "/metrics", agent)).text
    assert 'spangate_policy_reloads_total{result="shadow-refused"} 1.0' in metrics
    ready = await _get(app, "/readyz", agent)
    assert ready.status_code == 200 and ready.json()["policy_reload_error"] is None
    assert ready.json()["shadow_policy_reload_error"] == reloader.shadow_last_error
    # the shadow fixed: its error is cleared
    shadow_copy.write_text(shadow_copy.read_text().replace("allow: [suport]", "allow: [support]"))
    assert await reloader.reload() is True
    assert (await _get(app, "/readyz", agent)).json()["shadow_policy_reload_error"] is None


async def test_a_refused_live_policy_does_not_hold_back_a_new_shadow(
    shadow_gateway: Gateway,
    policy_copy: Path,
    shadow_copy: Path,
    token_for: Callable[..., str],
) -> None:
    app, reloader = shadow_gateway, shadow_gateway.reloader
    live, first = app.policy.sha256, app.shadow
    assert first is not None
    # a bad live policy and a good new shadow: the live refusal is counted, the shadow swapped in
    good_live = policy_copy.read_text()
    policy_copy.write_text(good_live.replace("allow: [support]", "allow: [suport]", 1))
    shadow_copy.write_text(with_new_route(shadow_copy.read_text()))
    assert await reloader.reload() is False
    assert reloader.failures == 1 and reloader.shadow_failures == 0
    assert "unknown role 'suport'" in (reloader.last_error or "")
    assert app.policy.sha256 == live
    second = app.shadow
    assert second is not None and second is not first and second.sha256 != first.sha256
    ready = (await _get(app, "/readyz", token_for("order-agent"))).json()
    assert ready["shadow_policy_sha256"] == second.sha256
    assert ready["policy_reload_error"] is not None
    assert ready["shadow_policy_reload_error"] is None
    # a bad live policy and a bad shadow: both refused, both counted, both kept
    shadow_copy.write_text(shadow_copy.read_text().replace("allow: [support]", "allow: [suport]"))
    assert await reloader.reload() is False
    assert reloader.failures == 2 and reloader.shadow_failures == 1
    assert app.policy.sha256 == live and app.shadow is second
    # the live policy fixed, the shadow still bad: the live one reloads, the shadow stays
    policy_copy.write_text(with_new_route(good_live))
    assert await reloader.reload() is True
    assert app.policy.sha256 != live and app.shadow is second and reloader.last_error is None


async def test_a_failing_shadow_decision_is_counted_never_a_500(
    shadow_gateway: Gateway, token_for: Callable[..., str]
) -> None:
    """A bug in the candidate's evaluation (here a router that raises, injected through the
    gateway's own seam, ``swap``): logged and counted; the call is the live policy's."""
    import dataclasses

    class BrokenRouter:
        def match(self, method: str, path: str) -> Any:
            raise RuntimeError("a bug in the shadow's router")

    app = shadow_gateway
    assert app.shadow is not None
    broken = dataclasses.replace(app.shadow, router=BrokenRouter())
    app.swap(app.policy, app.verifier, broken)
    response = await _get(app, "/v1/orders/O-1001", token_for("support-console"))
    assert response.status_code == 200, response.text
    metrics = (await _get(app, "/metrics", token_for("support-console"))).text
    assert "spangate_shadow_errors_total 1.0" in metrics


def test_a_shadow_with_problems_stops_the_start(
    policy_copy: Path, shadow_copy: Path, demo_database: str, tmp_path: Path, audit_key: str
) -> None:
    from gateway.errors import PolicyError

    shadow_copy.write_text(shadow_copy.read_text().replace("allow: [support]", "allow: [suport]"))
    settings = Settings(
        policy=policy_copy,
        shadow_policy=shadow_copy,
        spanner_emulator_host=demo_database,
        audit_path=tmp_path / "audit.jsonl",
        audit_key=audit_key,
    )
    with pytest.raises(PolicyError, match="suport"):
        build_gateway(settings, env={})


@pytest.mark.parametrize("trigger", ["sighup", "watch"])
def test_a_running_server_reloads_its_shadow(
    trigger: str,
    policy_copy: Path,
    shadow_copy: Path,
    demo_database: str,
    idp: Any,
    tmp_path: Path,
    audit_key: str,
) -> None:
    env = {
        "SPANGATE_WATCH_POLICY": "true" if trigger == "watch" else "false",
        "SPANGATE_SHADOW_POLICY": str(shadow_copy),
    }
    with serving(
        tmp_path,
        database=demo_database,
        issuer=idp.issuer,
        audit_key=audit_key,
        policy=policy_copy,
        env=env,
    ) as server:
        readyz = f"{server.base}/readyz"
        ready = _poll(readyz, lambda r: r.status_code == 200).json()
        first = ready["shadow_policy_sha256"]
        assert first is not None and first != ready["policy_sha256"]
        shadow_copy.write_text(with_new_route(shadow_copy.read_text()))
        if trigger == "sighup":
            server.process.send_signal(signal.SIGHUP)
        second = _poll(readyz, lambda r: r.json()["shadow_policy_sha256"] != first).json()
        assert second["policy_sha256"] == ready["policy_sha256"] and server.process.poll() is None


async def test_a_shadow_that_redacts_needs_the_audit_key_at_start_and_on_reload(
    policy_copy: Path, shadow_copy: Path, demo_database: str, idp: Any, tmp_path: Path
) -> None:
    from gateway.errors import ConfigError

    redacting = shadow_copy.read_text()
    unredacted = "  redact: [total_cents]"
    assert unredacted in redacting
    policy_copy.write_text(policy_copy.read_text().replace(unredacted, "  redact: []"))
    settings = Settings(
        policy=policy_copy,
        shadow_policy=shadow_copy,
        spanner_emulator_host=demo_database,
        audit_path=tmp_path / "audit.jsonl",
    )
    with pytest.raises(ConfigError, match="SPANGATE_AUDIT_KEY"):
        build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})

    shadow_copy.write_text(redacting.replace(unredacted, "  redact: []"))
    app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    try:
        first = app.shadow
        assert first is not None and app.reloader is not None
        shadow_copy.write_text(redacting)
        await app.reloader.reload()
        assert app.shadow is first and app.reloader.shadow_failures == 1
        assert "SPANGATE_AUDIT_KEY" in (app.reloader.shadow_last_error or "")
    finally:
        await app.shutdown()


async def test_audit_claims_off_records_no_claims_even_with_a_shadow(
    policy_copy: Path,
    shadow_copy: Path,
    demo_database: str,
    idp: Any,
    tmp_path: Path,
    audit_key: str,
    token_for: Callable[..., str],
) -> None:
    settings = Settings(
        policy=policy_copy,
        shadow_policy=shadow_copy,
        spanner_emulator_host=demo_database,
        audit_path=tmp_path / "audit.jsonl",
        audit_key=audit_key,
        audit_claims="off",
    )
    app = build_gateway(settings, env={"OKTA_ISSUER": idp.issuer})
    await app.startup()
    try:
        response = await _get(app, "/v1/orders/O-1001", token_for("order-agent"))
        assert response.status_code == 200, response.text
    finally:
        await app.shutdown()
    metadata = _events(tmp_path / "audit.jsonl")[response.headers["x-request-id"]]["protoPayload"][
        "metadata"
    ]
    assert "claimsRead" not in metadata and metadata["shadow"]["reason"] == "no-allow-role"
