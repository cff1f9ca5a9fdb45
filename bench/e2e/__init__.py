"""``python -m bench e2e``: the published end-to-end benchmark (docs/performance.md).

One run measures, side by side, the same point read (the example policy's ``get_order``) through
five targets at each concurrency, with a fresh Cloud Spanner emulator for every phase:

- ``raw-sync``: google-cloud-spanner's blocking client, one thread per caller (``driver``);
- ``raw-async``: its ``AsyncClient``, one asyncio task per caller (``driver``);
- ``raw-unary``: the RPC the gateway sends for this read, one unary ``ExecuteSql``, from the
  ``AsyncClient`` Database's GAPIC client, one asyncio task per caller (``driver``): the
  like-for-like baseline (the two above stream, as the client's ``execute_sql`` always does);
- ``gateway``: a real ``spangate serve`` process, loaded by ``wrk`` (``stack``, ``wrk``);
- ``fastapi``: a hand-written FastAPI + pyjwt + Spanner service doing the same read
  (``handwritten``), loaded by ``wrk`` the same way.

CPU per request of every process comes from /proc (``cpu``), and a phase during which the
machine was busy with something else is refused (``cpu.foreign_share``). ``suite`` runs the
phases, ``report`` writes the Markdown table, the JSON and the chart under ``bench/results/``.
"""
