"""The DDL of the gateway's own tables, applied by ``spangate init-db``.

``SOURCES`` lists one function per feature that owns a table: each takes the policy and returns its
statements (``CREATE TABLE ...``, no trailing ``;``) in the policy's ``spanner.dialect``.
``init-db`` skips a CREATE TABLE whose table exists, so it can run again after an upgrade; a
column added to an existing table comes as ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` after
its CREATE TABLE (run every time, a no-op once there). A feature adds its table by appending
its function.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.audit.spanner_sink import policy_ddl as audit_policy_ddl
from gateway.policy.compiled import CompiledPolicy
from gateway.spanner import approvals, idempotency

__all__ = ["SOURCES", "shipped_ddl"]


def _idempotency(policy: CompiledPolicy) -> list[str]:
    """The Idempotency-Key table, when the policy has a write."""
    if not any(q.is_dml for q in policy.queries.values()):
        return []
    return list(idempotency.ddl(policy.model.spanner.dialect))


def _approvals(policy: CompiledPolicy) -> list[str]:
    """The approvals table, when a route waits for approval."""
    if not any(r.model.approval for r in policy.routes):
        return []
    return list(approvals.ddl(policy.model.spanner.dialect))


SOURCES: list[Callable[[CompiledPolicy], list[str]]] = [
    _idempotency,
    _approvals,
    audit_policy_ddl,
]


def shipped_ddl(policy: CompiledPolicy) -> list[str]:
    return [statement for source in SOURCES for statement in source(policy)]
