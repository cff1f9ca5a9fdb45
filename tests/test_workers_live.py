"""``spangate serve --workers 2`` end to end: one port, two real worker processes, each with its
own audit chain and file; /metrics sums them whichever answers; SIGHUP reloads both; a worker
that dies is replaced and continues its own trail. The emulator, the OpenID provider and a
redis-server (the example policy has budgets, which workers must share) are the session's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from served import EXAMPLE_POLICY, SPANGATE, Served, served
from served_workers import fresh, readyz_of_both, until, worker_options, workers_of

from gateway.audit.schema import AuditEvent
from gateway.cli import main
from gateway.dev.idp import IdpProcess
from gateway.dev.redis import RedisProcess

ORDER = "/v1/orders/O-1001"
SERIES = 'spangate_requests_total{code="ok",route="/v1/orders/{order_id}",status="200"}'


@pytest.fixture
def workers(
    tmp_path: Path, demo_database: str, idp: IdpProcess, audit_key: str, redis_server: RedisProcess
) -> Iterator[Served]:
    options = worker_options(tmp_path, demo_database, idp, audit_key, redis_server)
    with served(tmp_path, **options) as server:
        yield server


def value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_workers_share_one_port_each_with_its_own_chain_and_file(
    workers: Served, token_for: Callable[..., str], audit_key: str, tmp_path: Path
) -> None:
    token = token_for("support-console")
    ids: list[str] = []

    def both_served() -> bool:
        answer = fresh(workers, ORDER, token)
        assert answer.status_code == 200, answer.text
        ids.append(answer.headers["x-request-id"])
        return {e.get("worker") for e in workers.events()} == {1, 2}

    until(both_served, "each worker served a request")
    files = workers.trail_files()
    names = sorted(p.name for p in files)
    assert names == [f"audit-{workers.port}.w1.jsonl", f"audit-{workers.port}.w2.jsonl"]
    events = workers.events()
    chains = {e["worker"]: e["chain"] for e in events}
    assert len(set(chains.values())) == 2  # a chain per worker, named in each event
    for number, path in enumerate(files, start=1):  # audit-PORT.w1.jsonl, then .w2
        lines = path.read_text().splitlines()
        assert {AuditEvent.model_validate_json(line).worker for line in lines} == {number}
    mine = [e for e in events if e["protoPayload"]["requestMetadata"]["requestAttributes"]["id"]
            in ids]  # fmt: skip
    assert len(mine) == len(ids)  # exactly one event per request, in one of the two trails

    key_file = tmp_path / "audit.key"
    key_file.write_text(audit_key)
    assert main(["audit", "verify", "--key-file", str(key_file), *map(str, files)]) == 0


def test_metrics_are_the_sum_of_both_workers_whichever_answers(
    workers: Served, token_for: Callable[..., str]
) -> None:
    token = token_for("support-console")
    sent = 0

    def both_served() -> bool:
        nonlocal sent
        assert fresh(workers, ORDER, token).status_code == 200
        sent += 1
        return {e.get("worker") for e in workers.events()} == {1, 2}

    until(both_served, "each worker served a request")
    scrapes = [fresh(workers, "/metrics") for _ in range(6)]
    for scrape in scrapes:
        assert scrape.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert value(scrape.text, SERIES) == sent  # counted where it happened: no lag
        histogram = 'spangate_statement_duration_seconds_count{query="get_order"}'
        assert value(scrape.text, histogram) == sent
        assert value(scrape.text, "spangate_request_duration_seconds_count") == sent
    # Component counters are published by each worker (every second): both sinks appear.
    written = re.compile(r'^spangate_audit_events_written_total\{sink="([^"]+)"\} [1-9]', re.M)
    sinks = until(
        lambda: (found := set(written.findall(fresh(workers, "/metrics").text)))
        and len(found) == 2
        and found,
        "both workers' audit sinks in /metrics",
    )
    assert {Path(s.removeprefix("file:")).name for s in sinks} == {
        f"audit-{workers.port}.w1.jsonl",
        f"audit-{workers.port}.w2.jsonl",
    }
    text = fresh(workers, "/metrics").text
    assert value(text, "spangate_ready") == 1  # livemin: every live worker is ready
    assert len(re.findall(r"^spangate_policy_info\{", text, re.M)) == 1
    assert len(re.findall(r"^spangate_build_info\{", text, re.M)) == 1
    assert value(text, 'spangate_jwks_keys_ready{issuer="okta"}') == 1


def test_sighup_reloads_every_worker(workers: Served) -> None:
    before = readyz_of_both(workers)
    old = {body["policy_sha256"] for body in before.values()}
    assert len(old) == 1
    policy = workers.audit.parent / "policy.yaml"
    policy.write_text(policy.read_text() + "\n# reloaded\n")
    workers.process.send_signal(signal.SIGHUP)

    def both_reloaded() -> bool:
        body = fresh(workers, "/readyz").json()
        reloaded[body["worker"]] = body["policy_sha256"] not in old
        return reloaded == {1: True, 2: True}

    reloaded: dict[int, bool] = {}
    until(both_reloaded, "both workers serve the new policy")
    # Each worker publishes its reload within a second: once in each, the old policy gone.
    text = until(
        lambda: (text := fresh(workers, "/metrics").text)
        and value(text, 'spangate_policy_reloads_total{result="ok"}') == 2
        and text,
        "both reloads in /metrics",
    )
    assert len(re.findall(r"^spangate_policy_info\{", text, re.M)) == 1
    assert value(text, 'spangate_policy_reloads_total{result="refused"}') == 0


def test_a_worker_that_dies_is_replaced_and_continues_its_trail(
    workers: Served, token_for: Callable[..., str], audit_key: str, tmp_path: Path
) -> None:
    token = token_for("support-console")
    until(
        lambda: fresh(workers, ORDER, token).status_code == 200
        and {e.get("worker") for e in workers.events()} == {1, 2},
        "each worker served a request",
    )
    victim = _worker_pid(workers, 1)
    os.kill(victim, signal.SIGKILL)
    first_chain = {e["chain"] for e in workers.events() if e["worker"] == 1}

    def replaced() -> bool:
        answer = fresh(workers, ORDER, token)
        return answer.status_code == 200 and any(
            e["worker"] == 1 and e["chain"] not in first_chain for e in workers.events()
        )

    until(replaced, "worker 1 replaced and serving")
    w1 = [p for p in workers.trail_files() if ".w1." in p.name]
    key_file = tmp_path / "audit.key"
    key_file.write_text(audit_key)
    assert main(["audit", "verify", "--key-file", str(key_file), *map(str, w1)]) == 0
    chains = [e["chain"] for e in workers.events() if e["worker"] == 1]
    assert len(set(chains)) == 2  # the replacement's chain follows the dead worker's


def _worker_pid(server: Served, number: int) -> int:
    """The pid of worker ``number``: the supervisor's child started with ``--worker number``."""
    pid = workers_of(server).get(number)
    assert pid is not None, f"no worker {number} under pid {server.process.pid}"
    return pid


def test_workers_refuse_budgets_counted_per_process(tmp_path: Path, audit_key: str) -> None:
    # The example policy has budgets: N workers would each count them (N times the limit).
    env = {k: v for k, v in os.environ.items() if k != "SPANGATE_REDIS_URL"}
    env |= {"SPANGATE_AUDIT_KEY": audit_key, "OKTA_ISSUER": "https://idp.invalid/oauth2/default"}
    done = subprocess.run(
        [*SPANGATE, "serve", "--policy", str(EXAMPLE_POLICY), "--port", "0", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "SPANGATE_REDIS_URL" in done.stderr and "budgets" in done.stderr
