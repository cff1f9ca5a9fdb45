"""Budgets: how many calls, rows and writes a principal may spend per window (policy ``budgets:``).

The check sits between the decision and the statement (``Gateway._run``): ``core`` is pure (which
limits apply, counter keys, windows, headers), ``memo`` remembers a call's limits and counters
per policy, roles and principal, ``store`` holds the ``BudgetStore`` protocol and the in-process
store, ``redis_store`` the one shared by every replica (``SPANGATE_REDIS_URL``).
"""
