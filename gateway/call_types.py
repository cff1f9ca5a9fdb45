"""What every transport's call is made of: what a request runs on (``Active``), what a transport
resolved a call to (``Target``, through its ``Resolve``), and what the call came to (``Outcome``).

HTTP (``gateway.app``), ``/mcp`` (``gateway.mcp``) and ``/approvals``
(``gateway.approvals.endpoints``) hand these to the one path of every call
(``gateway.call_path``, ``Gateway.perform``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.event import CallRecord
from gateway.auth.verify import TokenVerifier
from gateway.errors import GatewayError
from gateway.policy.compiled import CompiledPolicy, CompiledRoute
from gateway.policy.decide import RoleVerdict
from gateway.policy.reads import ClaimReads
from gateway.policy.shadow import ShadowIssuers

__all__ = ["Active", "Outcome", "Resolve", "Target"]

Resolve = Callable[[CallRecord, "Active"], Awaitable["Target"]]


@dataclass(frozen=True)
class Target:
    """What a transport resolved a call to: the route, the caller's values as the route's
    parameters bind them, and the headers that may carry its ``Idempotency-Key`` and its
    ``Approval-Id`` (``idempotency``: an MCP call's arguments turned into those headers)."""

    route: CompiledRoute
    path_params: Mapping[str, str]
    query: Sequence[tuple[str, str]] = ()
    body: Mapping[str, Any] | None = None
    idempotency: Sequence[tuple[bytes, bytes]] = ()
    method: str | None = None  # as the caller said it (HEAD for GET's route); else the route's
    # the roles part of the decision when the transport judged it already (HTTP: before the
    # body, so a refused caller gets its 403 whatever the body holds); None: the decision's
    verdict: RoleVerdict | None = None


@dataclass(frozen=True)
class Outcome:
    """A call's answer: ``body`` (the JSON the route answers) when ``error`` is None;
    ``headers``: the budget's RateLimit header fields (also on ``error.headers`` for errors)."""

    status: int
    body: dict[str, Any] | None
    error: GatewayError | None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Active:
    """What a request runs on, swapped as one: a reload never mixes two policies' parts.
    ``shadow``: the candidate decided beside ``policy`` (never answering), or None; ``reads``:
    the claims the audit events record (both policies', when there is a shadow);
    ``shadow_issuers``: how the candidate reads the live policy's tokens, worked out once per
    swap (None without a shadow)."""

    policy: CompiledPolicy
    verifier: TokenVerifier
    shadow: CompiledPolicy | None = None
    reads: ClaimReads = field(init=False)
    shadow_issuers: ShadowIssuers | None = field(init=False)

    def __post_init__(self) -> None:
        reads = self.policy.reads
        issuers = None
        if self.shadow is not None:
            reads = reads.union(self.shadow.reads)
            issuers = ShadowIssuers(self.policy.model, self.shadow.model)
        object.__setattr__(self, "reads", reads)
        object.__setattr__(self, "shadow_issuers", issuers)
