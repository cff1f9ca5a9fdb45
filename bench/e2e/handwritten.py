"""The hand-written service: what a careful developer writes instead of the gateway, for one route.

``GET /v1/orders/{order_id}`` checks the bearer token and runs the same statement as the gateway
(the example policy's ``get_order``), the usual way with FastAPI, pyjwt and google-cloud-spanner:

- the token: pyjwt, with the issuer's JWKS fetched once at start-up and cached (an unknown
  ``kid`` refetches it, at most every 30 s), the algorithm pinned to the key's and to RS256/ES256,
  issuer, audience and expiry checked, ``exp``/``iat``/``iss``/``aud``/``sub`` required; then
  the route's rule (group ``support`` or scope ``orders.read``, never group ``suspended``) and the
  tenant from the ``tenant`` claim. Every request verifies its token's signature: a service
  this small keeps no cache of verified tokens (the gateway does, until ``exp``);
- the statement: the blocking client (its documented API) in a ``def`` route, which FastAPI runs
  in its thread pool, one ``Database`` with the same database role as the gateway's identity,
  the query's 2 s timeout, parameters bound with their types;
- the answer: the gateway's shape, ``{"rows": [...], "row_count": 1, "truncated": false}``,
  through FastAPI's encoder; uvicorn as ``uvicorn app`` runs it: uvloop, httptools, its access
  log (the gateway writes one line per request too).

Not there (the gateway's work it does not do): an audit trail, problem+json errors, request ids,
metrics, masking, budgets, limits on headers and bodies, reload. It is the floor a hand-written
service starts from, not a replacement. Configured by the environment:
``HANDWRITTEN_ISSUER``, ``HANDWRITTEN_AUDIENCE`` (default ``api://shop``) and
``SPANNER_EMULATOR_HOST``; ``python -m bench.e2e.handwritten --port N`` serves it on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import jwt
from fastapi import FastAPI, Header, HTTPException

from bench.e2e.workload import (
    COLUMNS,
    DATABASE,
    INSTANCE,
    ORDER_ID,
    PROJECT,
    spanner_param_types,
    statement,
)

__all__ = ["app", "main"]

ALGORITHMS = ("RS256", "ES256")
REFETCH_SECONDS = 30.0


class Keys:
    """The issuer's signing keys by ``kid``, fetched once and again for an unknown ``kid``."""

    def __init__(self, jwks_uri: str) -> None:
        self._uri = jwks_uri
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._lock = threading.Lock()

    def fetch(self) -> None:
        answer = httpx.get(self._uri, timeout=5.0)
        answer.raise_for_status()
        keys = jwt.PyJWKSet.from_dict(answer.json()).keys
        self._keys = {key.key_id: key for key in keys if key.key_id}
        self._fetched = time.monotonic()

    def get(self, kid: object) -> jwt.PyJWK | None:
        if not isinstance(kid, str):
            return None
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._fetched > REFETCH_SECONDS:
            with self._lock:
                if time.monotonic() - self._fetched > REFETCH_SECONDS:
                    self.fetch()
            key = self._keys.get(kid)
        return key


class Service:
    def __init__(self) -> None:
        self.issuer = os.environ["HANDWRITTEN_ISSUER"]
        self.audience = os.environ.get("HANDWRITTEN_AUDIENCE", "api://shop")
        self.keys: Keys | None = None
        self.database: Any = None
        self.statement = statement()
        self.types = spanner_param_types(self.statement.param_types)

    def start(self) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import spanner

        discovery = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=5.0)
        discovery.raise_for_status()
        self.keys = Keys(discovery.json()["jwks_uri"])
        self.keys.fetch()
        client = spanner.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": os.environ["SPANNER_EMULATOR_HOST"]},
            disable_builtin_metrics=True,
        )
        self.database = client.instance(INSTANCE).database(  # type: ignore[no-untyped-call]
            DATABASE, database_role=self.statement.database_role
        )
        self.read("t1", ORDER_ID)  # the session, before the first caller

    def claims(self, authorization: str | None) -> dict[str, Any]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "a bearer token is required")
        assert self.keys is not None
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(header.get("kid"))
            if key is None or key.algorithm_name not in ALGORITHMS:
                raise HTTPException(401, "unknown signing key")
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            raise HTTPException(401, "invalid token") from None
        return claims

    def read(self, tenant: str, order_id: str) -> list[list[Any]]:
        with self.database.snapshot() as snapshot:
            return list(
                snapshot.execute_sql(
                    self.statement.sql,
                    params={"tenant": tenant, "order_id": order_id},
                    param_types=self.types,
                    timeout=2.0,
                )
            )


service = Service()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    service.start()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/orders/{order_id}")
def get_order(
    order_id: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    claims = service.claims(authorization)
    groups = claims.get("groups") or []
    scopes = claims.get("scp") or []
    if "suspended" in groups or not ("support" in groups or "orders.read" in scopes):
        raise HTTPException(403, "not allowed")
    tenant = claims.get("tenant")
    if not isinstance(tenant, str):
        raise HTTPException(403, "no tenant")
    if len(order_id) > 36:
        raise HTTPException(400, "order_id is too long")
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in service.read(tenant, order_id)]
    return {"rows": rows, "row_count": len(rows), "truncated": False}


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.e2e.handwritten")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(app, host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
