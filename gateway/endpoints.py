"""The gateway's fixed endpoints, served by FastAPI: health, readiness, OpenAPI, docs.

Policy routes never come here: the compiled router dispatches them (``gateway.app``).
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.budgets.core import UNKEYED_WARNING as UNKEYED_BUDGETS
from gateway.errors import MisdirectedRequest
from gateway.http import PROBLEM_TYPE
from gateway.http import problem as problem_body
from gateway.mcp.hosts import public_base
from gateway.mcp.metadata import WELL_KNOWN, metadata_paths, resource_metadata, resource_url
from gateway.metrics import CONTENT_TYPE, serving_ready
from gateway.openapi import openapi_document

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = [
    "ADMIN_PATHS",
    "DOCS_ASSETS",
    "FIXED_PATHS",
    "MOVED_PATHS",
    "fixed_endpoints",
    "not_ready_reason",
]

# Swagger UI's assets come from the installed package (fastapi-offline ships a current Swagger UI
# build): /docs works offline and loads nothing from a CDN. Only these names are served.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
# The page's own inline script starts Swagger UI; everything else must come from this origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
# SPANGATE_ADMIN_PORT's paths; the API port then answers 404 for the moved ones (/healthz stays:
# a load balancer's health check of the serving port may use it).
ADMIN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MOVED_PATHS = frozenset({"/readyz", "/metrics"})
FIXED_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"}
    | {f"/docs/{name}" for name in DOCS_ASSETS}
    | metadata_paths()  # RFC 9728, for /mcp (which gateway.app routes to gateway.mcp)
)


def fixed_endpoints(gateway: Gateway) -> FastAPI:
    api = FastAPI(
        title="spangate",
        version=__version__,
        openapi_url=None,  # served below, built from the policy, and rebuilt on reload
        docs_url=None,
        redoc_url=None,
    )

    @api.exception_handler(StarletteHTTPException)
    async def problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The fixed endpoints answer errors as problem+json too (e.g. POST /healthz is 405)."""
        code = {404: "no-route", 405: "method-not-allowed"}.get(exc.status_code, "bad-request")
        body = {
            "type": PROBLEM_TYPE + code,
            "title": HTTPStatus(exc.status_code).phrase,
            "status": exc.status_code,
            "detail": str(exc.detail),
            "code": code,
            "request_id": getattr(request.state, "request_id", None),
        }
        return JSONResponse(
            body,
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
            media_type="application/problem+json",
        )

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        issuers: dict[str, dict[str, Any]] = {}
        for name, cache in gateway.verifier.caches.items():
            state = cache.state()
            issuers[name] = {
                "ready": state.ready,
                "keys": state.keys,
                "age_seconds": None if state.age_seconds is None else round(state.age_seconds, 1),
                "last_error": state.last_error,
                "stale": state.stale,
                "fetches": state.fetches,
                "jwks_uri": state.jwks_uri,
                "local_keys": state.enabled,
            }
            if (introspector := gateway.verifier.introspectors.get(name)) is not None:
                seen = introspector.state()
                issuers[name]["introspection"] = {
                    "endpoint": seen.endpoint,
                    "calls": seen.calls,
                    "cached": seen.cached,
                    "last_error": seen.last_error,
                    "cached_active": seen.cached_active,
                    "cached_inactive": seen.cached_inactive,
                    "cache_hits": seen.cache_hits,
                    "calls_by_result": dict(seen.calls_by_result),
                    "refused": dict(seen.refused),
                    "in_flight": seen.in_flight,
                    "backoff_seconds": round(seen.backoff_seconds, 1),
                }
        store = gateway.budgets.store
        await store.probe()  # Redis: asked at most once a second, reported, not part of readiness
        budget = store.state()
        unkeyed = budget.kind == "redis" and not gateway.budgets.keyed
        ready = serving_ready(gateway)
        body = {
            "status": "ready" if ready else "not-ready",
            "reason": None if ready else not_ready_reason(gateway),
            "worker": gateway.worker,
            "databases_warmed": gateway.ready,
            "issuers": issuers,
            "policy_sha256": gateway.policy.sha256,
            "policy_reload_error": getattr(gateway.reloader, "last_error", None),
            "shadow_policy_sha256": shadow.sha256 if (shadow := gateway.shadow) else None,
            "shadow_policy_reload_error": getattr(gateway.reloader, "shadow_last_error", None),
            "opaque_tokens_refused": gateway.verifier.refusals["format"],
            "writes_settling": gateway.executor.settling,
            "audit": {
                "keyed": gateway.audit_warning is None,
                "warning": gateway.audit_warning,
                "sinks": {
                    stats.sink: {
                        "reads": stats.reads,
                        "writes": stats.writes,
                        "healthy": stats.healthy,
                        "queue_depth": stats.queue_depth,
                        "unsynced_bytes": stats.unsynced_bytes,
                        "unsynced_seconds": round(stats.unsynced_seconds, 3),
                        "waiting_for_sync": stats.waiting_for_sync,
                        "last_sync_seconds": round(stats.sync_seconds_last, 6),
                        "sync_stalled": stats.sync_stalled,
                        "last_error": stats.last_error,
                    }
                    for stats in gateway.audit.metrics().sinks
                },
            },
            "budgets": {
                "store": budget.kind,
                "reachable": budget.reachable,
                "last_error": budget.last_error,
                "keyed": gateway.budgets.keyed,
                "warning": UNKEYED_BUDGETS if unkeyed else None,
            },
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(gateway.metrics.render(gateway), headers={"Content-Type": CONTENT_TYPE})

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        policy = gateway.policy
        return JSONResponse(
            openapi_document(
                policy, version=__version__, analysis=await gateway.executor.analysis_of(policy)
            )
        )

    async def protected_resource(request: Request) -> JSONResponse:
        """RFC 9728 metadata of /mcp, from the policy being served (it follows reloads). The
        Host is checked as /mcp checks it (421 ``host-not-allowed``): never echoed unchecked."""
        try:
            base = public_base(gateway.settings, request.scope)
        except MisdirectedRequest as exc:
            rid = getattr(request.state, "request_id", None) or ""
            return JSONResponse(
                problem_body(exc, rid),
                status_code=exc.status,
                media_type="application/problem+json",
            )
        # RFC 9728 §3.3: the resource the well-known URL was formed from (the bare path: <base>)
        resource = base if request.url.path == WELL_KNOWN else resource_url(base)
        return JSONResponse(resource_metadata(gateway.policy, resource))

    for path in sorted(metadata_paths()):
        api.add_api_route(path, protected_resource, methods=["GET"], include_in_schema=False)

    @api.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        from fastapi.openapi.docs import get_swagger_ui_html

        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="spangate",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon.png",
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @api.get("/docs/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        media_type = DOCS_ASSETS.get(name)
        if media_type is None:  # unreachable through the gateway (FIXED_PATHS), kept for safety
            raise StarletteHTTPException(404, f"no asset {name!r}")
        return Response(
            _docs_asset(name),
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )

    return api


def not_ready_reason(gateway: Gateway) -> str:
    """Why ``/readyz`` says 503, as a stable code: ``draining`` (SIGTERM or SIGINT received: the
    server still answers until it stops listening), ``starting`` (identities not warmed or
    statements not analysed yet, or shutting down), ``audit-sync-stalled`` (an audit file's
    fdatasync has run past its deadline), ``issuer-keys`` (an issuer cannot verify)."""
    if gateway.draining:
        return "draining"
    if not gateway.ready:
        return "starting"
    if any(w.sync_stalled for w in gateway.audit.writers):
        return "audit-sync-stalled"
    return "issuer-keys"


@functools.cache
def _docs_asset(name: str) -> bytes:
    """One of Swagger UI's files from the installed ``fastapi_offline`` package, read once."""
    return (files("fastapi_offline") / "static" / name).read_bytes()
