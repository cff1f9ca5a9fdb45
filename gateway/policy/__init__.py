"""The policy: load, validate, compile, decide. Pure: no network, no Spanner."""
