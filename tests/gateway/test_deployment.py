"""A deployment in miniature: three gateway processes behind a real haproxy (health checks
on /healthz/ready, retries and redispatch), sharing Redis and PostgreSQL. Under a bounded
load one replica is rolled (SIGTERM, then started again) and another is SIGKILLed and
restarted. Clients see no failed request except those in flight on the killed replica;
every answered request has exactly one ledger row; a rate limit and a budget hold across
the three."""

from __future__ import annotations

import shutil
import signal
from collections import Counter
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from margin.metering.db import connect
from tests.conftest import GatewayProcess, IN_CI, fake_model, free_port
from tests.load import Load

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

HAPROXY_CFG = """
global
    maxconn 1000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # A loaded CI machine can take longer than the check interval to answer one.
    timeout check 2s
    retries 3
    option redispatch
    # A new connection per request to the replicas: a replica that closes its idle
    # connections while draining can never be handed a request on one of them.
    option http-server-close
frontend gateway
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /healthz/ready
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
"""


class Haproxy:
    def __init__(self, workdir: Path, backends: list[int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p} check"
                            for i, p in enumerate(backends))
        self.cfg = workdir / "haproxy.cfg"
        self.cfg.write_text(HAPROXY_CFG.format(port=self.port, servers=servers))
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.cfg)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _wait_for(predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _ledger(pg: str, sql: str) -> list[tuple]:
    db = connect(pg)
    try:
        return db.query(sql)
    finally:
        db.close()


@pytest.fixture
def haproxy_bin():
    if not Path(HAPROXY).exists():
        if IN_CI:
            pytest.fail("haproxy is required in CI (.ci/run installs it)")
        pytest.skip("haproxy not installed")
    return HAPROXY


def test_three_replicas_behind_haproxy_roll_and_crash_without_losing_a_row(
        haproxy_bin, fake_upstream_factory, tmp_path, redis_url, pg_url):
    upstream = fake_upstream_factory(delay_ms=20)
    budget_usd = 0.0003
    run = uuid.uuid4().hex[:8]
    config = {
        "models": [fake_model("small", upstream.url)],
        "ledger": {"url": pg_url, "flush_interval_ms": 200},
        "redis_url": redis_url,
        # The delay outlasts haproxy noticing (2 failed checks 200 ms apart, each up to 2 s).
        "server": {"drain_delay_s": 3.0, "drain_grace_s": 20},
        "limits": {"redis_prefix": f"t-{uuid.uuid4().hex[:8]}:",
                   "users": {"limited": {"rpm": 30}},
                   "budgets": [{"scope": "user", "name": "thrifty", "usd": budget_usd,
                                "period": "day"}]},
    }
    replicas: list[GatewayProcess] = []
    for i in range(3):
        workdir = tmp_path / f"r{i}"  # each its own journal directory, as pods would have
        workdir.mkdir()
        # One at a time: the first creates the ledger's tables in the fresh schema.
        replicas.append(GatewayProcess(workdir, config).start())
    lb = Haproxy(tmp_path, [r.port for r in replicas])
    try:
        _wait_for(lambda: _ready(lb.url), what="haproxy to see a ready replica")
        time.sleep(1.0)  # rise 2 at 200 ms: every replica in rotation

        load = Load(lb.url, clients=8, requests_per_client=10_000, stream_every=6,
                    stop_on_error=False, pause_s=0.005).start()
        _wait_for(lambda: len(load.answered()) >= 150, what="150 answers")

        # Rollout of replica 0: drained, gone, started again with the same config.
        rolled = replicas[0]
        rolled.proc.send_signal(signal.SIGTERM)
        assert rolled.proc.wait(60) == 0
        rolled.proc = None
        rolled.start()
        _wait_for(lambda: _ready(rolled.url), what="the rolled replica")
        time.sleep(0.6)
        failed_before_kill = len(load.failed())

        # Replica 1 is OOM-killed and restarted (its journal is replayed at start).
        killed = replicas[1]
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait(10)
        answered_at_kill = len(load.answered())
        killed.proc = None
        killed.start()
        _wait_for(lambda: len(load.answered()) >= answered_at_kill + 200, what="200 more")
        load.stop.set()
        load.join(60)

        answered = load.answered()
        failed = load.failed()
        errors = [o for o in failed if o.status is None or o.error]
        print(f"\nminiature deployment: {len(load.outcomes)} requests, {len(answered)} "
              f"answered ({answered_at_kill} before the kill), {len(errors)} failed (in "
              f"flight on the killed replica: {[o.status or o.error for o in errors]})")
        assert failed_before_kill == 0, ("the rollout failed requests", Counter(
            (o.status, o.error) for o in failed[:failed_before_kill]))
        assert all(o.status == 200 for o in answered), {o.status for o in answered}
        assert len(errors) <= load.clients, "more failures than requests in flight"

        # Rate limit and budget across the three replicas.
        limited = Load(lb.url, clients=3, requests_per_client=30,
                       headers={"x-margin-user": "limited"}).start().join()
        statuses = [o.status for o in limited.outcomes]
        assert statuses.count(200) == 30 and statuses.count(429) == 60, statuses
        thrifty = Load(lb.url, clients=3, requests_per_client=20,
                       headers={"x-margin-user": "thrifty"},
                       # Unique per run: the exact cache's Redis tier outlives a test.
                       body=lambda c, i: {"model": "small", "max_tokens": 12, "messages": [
                           {"role": "user", "content": f"budget {run} {c} {i}"}]}
                       ).start().join()
        t_statuses = [o.status for o in thrifty.outcomes]
        assert 429 in t_statuses and t_statuses.count(200) >= 1

        for r in replicas:
            out = r.stop()
            assert "Traceback" not in out, out[-3000:]
        rows = _ledger(pg_url, "SELECT id, user_id, cost_usd, status FROM requests")
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids))
        answered_ids = [o.request_id for o in answered + limited.outcomes + thrifty.outcomes]
        assert len(answered_ids) == len(set(answered_ids))
        missing = set(answered_ids) - set(ids)
        assert not missing, f"{len(missing)} answered requests have no ledger row"
        # Extra rows: only requests the killed replica finished but could not answer.
        assert len(ids) - len(answered_ids) <= len(errors)
        spent = sum(r[2] for r in rows if r[1] == "thrifty" and r[3] == 200)
        served = t_statuses.count(200)
        # One budget for the three: at most one request's worth over it (a budget per
        # replica would have let up to three times as much through), and mostly used.
        assert budget_usd / 2 <= spent <= budget_usd + spent / served
    finally:
        lb.stop()
        for r in replicas:
            r.stop()
