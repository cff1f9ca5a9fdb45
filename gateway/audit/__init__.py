"""The audit trail: one hash-chained event per request, written to every configured sink."""
