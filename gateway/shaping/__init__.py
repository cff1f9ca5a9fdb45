"""Result shaping: what happens to a statement's rows between execution and the answer, the same
for every transport (``Gateway._run`` applies it, so HTTP and MCP answers both pass through it).

- ``masks``: column masks by role (``redact``, ``null``, ``hash``, ``last4``); the policy's side
  (which columns a caller sees masked) is ``gateway.policy.masking``.
"""
