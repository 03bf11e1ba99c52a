from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from margin.config import LedgerConfig
from margin.metering.ledger import LedgerWriter


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "margin.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True)


def _fill(path: str) -> None:
    w = LedgerWriter(LedgerConfig(url=path))
    w.start()
    now = time.time()
    for i in range(10):
        w.submit({"id": uuid.uuid4().hex, "ts": now - i * 60, "endpoint": "chat",
                  "status": 200 if i else 500, "model": "small" if i % 2 else "large",
                  "user_id": "alice" if i < 7 else "bob", "feature": "search",
                  "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.01 * (i + 1),
                  "cache": "miss", "latency_ms": 10.0 + i, "upstream_ms": 8.0,
                  "overhead_ms": 2.0 + i / 10, "stage_ms": json.dumps({"parse": 0.05})})
    # one old row, outside --since 1h
    w.submit({"id": uuid.uuid4().hex, "ts": now - 7200, "endpoint": "chat", "status": 200,
              "cost_usd": 5.0, "cache": "miss"})
    w.close()


def test_stats_json_by_stage_and_by_user(tmp_path):
    db = str(tmp_path / "l.db")
    _fill(db)
    out = _run("ledger", "stats", "--db", db, "--json", "--since", "1h")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["requests"] == 10 and r["errors"] == 1
    stages = {g["stage"]: g for g in r["groups"]}
    assert stages["parse"]["p50_ms"] == 0.05 and stages["total"]["p50_ms"] == 14.5
    assert r["cost_usd"] == round(sum(0.01 * (i + 1) for i in range(10)), 8)
    by_user = {g["user"]: g for g in r["cost_by"]["user"]}
    assert by_user["alice"]["cost_usd"] == round(0.01 * (1 + 2 + 3 + 4 + 5 + 6 + 7), 8)
    out = _run("ledger", "stats", "--db", db, "--by", "model")
    assert out.returncode == 0 and "large" in out.stdout and "small" in out.stdout
    all_rows = json.loads(_run("ledger", "stats", "--db", db, "--json").stdout)
    assert all_rows["requests"] == 11


def test_bad_input_exits_2_with_one_line(tmp_path):
    db = str(tmp_path / "l.db")
    _fill(db)
    bad = _run("ledger", "stats", "--db", db, "--since", "yesterday-ish")
    assert bad.returncode == 2 and "yesterday-ish" in bad.stderr
    missing = _run("ledger", "stats", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no ledger" in missing.stderr
    assert _run("ledger", "stats", "--by", "color").returncode == 2
    assert _run("nonsense").returncode == 2
    assert _run("--help").returncode == 0
