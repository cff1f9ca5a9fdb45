"""Approvals (``docs/approvals.md``): a route's calls wait for a person's decision.

- ``record``: an approval request and the rules of its life (pure);
- ``service``: the request path's part (make a request, check and claim an approval) and the
  approvers' part (list, decide), over the table ``gateway.spanner.approvals``;
- ``endpoints``: ``/approvals`` over HTTP (pure ASGI, the gateway's own token verification and
  audit trail).
"""
