"""Running whitelisted statements on Spanner under the query's workload identity."""
