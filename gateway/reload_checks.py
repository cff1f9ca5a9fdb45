"""What a policy reload may not change: the changes that take effect on restart only
(``PolicyReloader`` refuses such a reload, with a message saying so, rather than half-apply it).

Changing an identity that is in use, or ``spanner:`` or ``audit:``, needs a restart. So does a
policy with budgets under ``--workers`` without Redis (each worker would count them on its
own), a policy that masks a column with ``hash`` when the gateway started without
``SPANGATE_MASK_KEY``, and one that paginates a query when it started without
``SPANGATE_CURSOR_KEYS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.policy.compiled import CompiledPolicy
from gateway.policy.masking import hash_masks
from gateway.policy.pagination import paginated_queries

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["NeedsRestart", "refuse_restart_only_changes"]


class NeedsRestart(Exception):
    """The reload changes what takes effect on restart only; its message says what."""


def refuse_restart_only_changes(gateway: Gateway, policy: CompiledPolicy) -> None:
    """``NeedsRestart`` when ``policy`` would change, against what ``gateway`` serves and has
    open, what takes effect on restart only (see the module docstring)."""
    old = gateway.policy.model
    new = policy.model
    hashed = hash_masks(new)
    if hashed and gateway.mask_key is None:
        raise NeedsRestart(
            f"the new policy masks {', '.join(hashed)} with hash, which needs "
            "SPANGATE_MASK_KEY: this gateway started without one; set it and restart. "
            "The reload was refused and the old policy keeps serving"
        )
    paginated = paginated_queries(new)
    if paginated and gateway.cursor_keys is None:
        raise NeedsRestart(
            f"the new policy paginates {', '.join(paginated)}, whose cursors need "
            "SPANGATE_CURSOR_KEYS: this gateway started without them; set them and restart. "
            "The reload was refused and the old policy keeps serving"
        )
    # Against what is open, not only the policy being served: an identity dropped by an
    # earlier reload keeps its Database (and role) for the requests that were using it.
    opened = gateway.executor.databases.identities
    changed = [
        section
        for section, a, b in (
            ("spanner", old.spanner, new.spanner),
            (
                "identities already in use",
                {n: i for n, i in opened.items() if n in new.identities},
                {n: i for n, i in new.identities.items() if n in opened},
            ),
            ("audit", old.audit, new.audit),
        )
        if a != b
    ]
    if new.budgets and gateway.worker is not None and gateway.settings.redis_url is None:
        raise NeedsRestart(
            "the new policy has budgets: with --workers, each worker would count them on its "
            "own (N times the limit); set SPANGATE_REDIS_URL and restart. The reload was "
            "refused and the old policy keeps serving"
        )
    if changed:
        raise NeedsRestart(
            f"changes to {', '.join(changed)} take effect on restart only; "
            "the reload was refused and the old policy keeps serving"
        )
