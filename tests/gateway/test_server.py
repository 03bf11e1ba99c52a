"""The server's lifecycle as a real process: a SIGKILL under load loses no ledger row,
SIGTERM drains (not ready at once, listener open for the delay, everything in flight
finished, exit 0), liveness and readiness, and several workers on one port."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from margin.metering.db import connect
from tests.conftest import GatewayProcess, fake_model, free_port
from tests.load import Load


def _ledger_ids(url: str) -> list[str]:
    db = connect(url)
    try:
        return [r[0] for r in db.query("SELECT id FROM requests")]
    finally:
        db.close()


def _wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def upstream(fake_upstream_factory):
    return fake_upstream_factory(delay_ms=20)


def test_sigkill_under_load_loses_no_ledger_row(upstream, tmp_path):
    db = str(tmp_path / "ledger.db")
    # A long flush interval: when the kill comes, most answered rows are still waiting in
    # memory for the writer, which is what the journal is for.
    config = {"models": [fake_model("small", upstream.url)],
              "ledger": {"url": db, "flush_interval_ms": 60_000, "batch_size": 100_000}}
    gw = GatewayProcess(tmp_path, config).start()
    load = Load(gw.url, clients=16, requests_per_client=400, stream_every=5).start()
    _wait_for(lambda: len(load.answered()) >= 300, what="300 answers")
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    load.join()
    answered = load.answered()
    cut = [o for o in load.outcomes if o.error is not None]
    assert len(answered) >= 300 and cut, "the kill should land mid-load"

    restarted = GatewayProcess(tmp_path, config, port=gw.port).start()
    restarted.stop()
    ids = _ledger_ids(db)
    assert len(ids) == len(set(ids))
    answered_ids = {o.request_id for o in answered}
    assert answered_ids <= set(ids), f"{len(answered_ids - set(ids))} answered rows lost"
    # Rows beyond the answered ones can only be requests that finished on the gateway as
    # the kill came, whose answer the client never read: at most one per client.
    assert len(ids) - len(answered_ids) <= len(cut)
    print(f"answered {len(answered_ids)}, cut by the kill {len(cut)}, ledger rows {len(ids)}")


def test_sigterm_finishes_requests_and_streams_in_flight(upstream, tmp_path):
    db = str(tmp_path / "ledger.db")
    config = {"models": [fake_model("small", upstream.url)], "ledger": {"url": db},
              "server": {"drain_delay_s": 1.0, "drain_grace_s": 30}}
    gw = GatewayProcess(tmp_path, config).start()
    assert httpx.get(gw.url + "/healthz/ready").status_code == 200
    assert httpx.get(gw.url + "/healthz/live").status_code == 200

    # Five streams of 12 chunks 150 ms apart (about 2 s each), five slow plain requests.
    slow = [Load(gw.url, clients=1, requests_per_client=1, stream_every=1,
                 body=lambda c, i, n=n: {"model": "small", "messages": [
                     {"role": "user", "content": f"!chunk_ms=150 tell me {n}"}]})
             for n in range(5)]
    slow += [Load(gw.url, clients=1, requests_per_client=1,
                  body=lambda c, i, n=n: {"model": "small", "messages": [
                      {"role": "user", "content": f"!sleep=1500 hi {n}"}]})
              for n in range(5)]
    for load in slow:
        load.start()
    _wait_for(lambda: b"margin_requests_in_flight 10.0" in httpx.get(gw.url + "/metrics").content,
              what="ten requests in flight")
    gw.proc.send_signal(signal.SIGTERM)
    # Not ready at once, alive still, and new requests still served until the listener
    # closes after the delay.
    ready = httpx.get(gw.url + "/healthz/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert httpx.get(gw.url + "/healthz/live").status_code == 200
    late = httpx.post(gw.url + "/v1/chat/completions", json={
        "model": "small", "messages": [{"role": "user", "content": "during the delay"}]})
    assert late.status_code == 200

    assert gw.proc.wait(60) == 0
    for load in slow:
        load.join()
    outcomes = [o for load in slow for o in load.outcomes]
    assert len(outcomes) == 10
    assert all(o.status == 200 and o.error is None for o in outcomes), outcomes
    assert sum(o.stream_done for o in outcomes) == 5
    assert upstream.app.calls["/chat/completions"] == 11  # none of them a cache hit
    ids = set(_ledger_ids(db))
    assert {o.request_id for o in outcomes} | {late.headers["x-margin-request-id"]} <= ids
    with pytest.raises(httpx.ConnectError):
        httpx.get(gw.url + "/healthz/live")
    gw.proc = None


def test_readiness_says_what_is_wrong(upstream, tmp_path):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    config = {"models": [fake_model("small", upstream.url)],
              "ledger": {"url": str(tmp_path / "l.db")}, "redis_url": dead_redis,
              "limits": {"models": {"small": {"rpm": 1000}}}}
    gw = GatewayProcess(tmp_path, config)
    try:
        gw.proc = subprocess.Popen(
            [sys.executable, "-m", "margin.cli.main", "serve", "--config",
             str(gw.config_path), "--port", str(gw.port)], cwd=tmp_path, env=gw.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_for(lambda: _get(gw.url + "/healthz/live") == 200, 60, "liveness")
        r = httpx.get(gw.url + "/healthz/ready")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["started"] is True and checks["ledger"] == "database"
        assert list(checks["redis"].values())[0].startswith("down")
    finally:
        gw.stop()


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_workers_without_redis_are_refused_naming_the_choices(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("models: []\n")
    r = subprocess.run([sys.executable, "-m", "margin.cli.main", "serve", "--config", str(cfg),
                        "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "redis_url" in r.stderr and "--workers 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _worker_pids(journal_dir) -> set[int]:
    return {int(p.name.split("-")[0]) for p in journal_dir.glob("*.jsonl")}


def _metric_sum(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_workers_share_one_port_one_rate_limit_one_metrics_and_one_ledger(
        upstream, tmp_path, redis_url):
    import os
    import uuid

    db = tmp_path / "ledger.db"
    config = {"models": [fake_model("small", upstream.url)], "ledger": {"url": str(db)},
              "redis_url": redis_url, "server": {"workers": 2, "drain_delay_s": 0.2},
              "limits": {"redis_prefix": f"t-{uuid.uuid4().hex[:8]}:",
                         "models": {"small": {"rpm": 150}}}}
    gw = GatewayProcess(tmp_path, config).start()
    journal = tmp_path / "ledger.db.journal"
    _wait_for(lambda: len(_worker_pids(journal)) == 2, 60, "two workers")
    first = min(_worker_pids(journal))

    load = Load(gw.url, clients=8, requests_per_client=15, stream_every=4).start()
    _wait_for(lambda: len(load.answered()) >= 30, what="30 answers")
    os.kill(first, signal.SIGKILL)  # one worker dies mid-load; the parent starts another
    load.join()
    _wait_for(lambda: len(_worker_pids(journal) - {first}) == 2, 60, "a replacement worker")
    more = Load(gw.url, clients=4, requests_per_client=45).start().join()

    outcomes = load.outcomes + more.outcomes
    served = [o for o in outcomes if o.status == 200 and o.error is None]
    limited = [o for o in outcomes if o.status == 429]
    cut = [o for o in outcomes if o.status is None or o.error]
    assert len(cut) <= 8  # at most what the killed worker had in flight
    assert len(served) + len(limited) + len(cut) == len(outcomes)
    # One limit for both workers: 150 a minute in all, not 150 each (requests the kill
    # cut may have been admitted too).
    assert 150 - len(cut) <= len(served) <= 150 and limited
    # One /metrics for the whole server: every worker's answers counted (the killed
    # worker's samples stay in its files, so the sum covers everything answered).
    assert _metric_sum(gw.url, "margin_requests_total") >= len(served) + len(limited)
    # The killed worker's requests are not counted as in flight for ever.
    assert _metric_sum(gw.url, "margin_requests_in_flight") == 0

    assert gw.proc.send_signal(signal.SIGTERM) is None and gw.proc.wait(60) == 0
    gw.proc = None
    ids = _ledger_ids(str(db))
    assert len(ids) == len(set(ids)), "duplicated ledger rows"
    answered = {o.request_id for o in outcomes if o.status is not None and o.error is None}
    assert answered <= set(ids), f"{len(answered - set(ids))} rows lost"
    assert len(ids) - len(answered) <= len(cut)
    # The killed worker's segment was replayed by its replacement; the rest retired.
    assert list(journal.glob("*.jsonl")) == []


def test_auto_workers_follow_the_cgroup_cpu_quota(tmp_path):
    import os

    from margin.gateway.server import cores_available

    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: two workers, not the node's cores
    assert cores_available(str(cpu_max)) == min(2, affinity)
    cpu_max.write_text("max 100000\n")
    assert cores_available(str(cpu_max)) == affinity
    assert cores_available(str(tmp_path / "absent")) == affinity
