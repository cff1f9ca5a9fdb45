"""The MCP transport: ``/mcp`` speaks MCP's Streamable HTTP (the official ``mcp`` SDK), stateless,
with one tool per policy route the caller's token may call; ``tools/call`` runs through the same
``Gateway.perform`` as an HTTP request (``gateway.app``)."""
