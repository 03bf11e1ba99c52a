"""The commands that read the ledger or the keys find it through ``--config`` /
``MARGIN_CONFIG`` (its ``ledger.url``); ``--db`` wins when given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from margin.config import LedgerConfig
from margin.metering.ledger import LedgerWriter


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("MARGIN_CONFIG", "MARGIN_DATABASE_URL", "MARGIN_DB")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "margin.cli.main", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)


def _fill(url: str, team: str, cost_usd: float, n: int = 3) -> None:
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    now = time.time()
    for i in range(n):
        w.submit({"id": uuid.uuid4().hex, "ts": now - 60 * (i + 1), "endpoint": "chat",
                  "status": 200, "user_id": f"{team}-user", "team": team, "model": "small",
                  "cost_usd": cost_usd, "prompt_tokens": 10, "completion_tokens": 2,
                  "latency_ms": 12.0})
    w.close()


def _config(path: Path, url: str) -> Path:
    path.write_text(f"ledger:\n  url: {json.dumps(url)}\n  log_content: false\n")
    return path


def test_spend_reads_the_postgresql_ledger_configured_in_margin_yaml(pg_url, tmp_path):
    _fill(pg_url, "research", 0.5)
    _fill(str(tmp_path / "margin.db"), "local", 9.0)  # the default ledger here: not read
    _config(tmp_path / "margin.yaml", pg_url)
    out = _run("spend", "--config", "margin.yaml", "--by", "team", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert [(g["team"], g["requests"]) for g in r["groups"]] == [("research", 3)]
    assert r["total"]["cost_usd"] == pytest.approx(1.5)
    # the same through MARGIN_CONFIG
    out = _run("spend", "--by", "team", "--json", cwd=tmp_path,
               env={"MARGIN_CONFIG": str(tmp_path / "margin.yaml")})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["groups"][0]["team"] == "research"
    # --db wins over the file
    out = _run("spend", "--config", "margin.yaml", "--db", "margin.db", "--by", "team",
               "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["groups"][0]["team"] == "local"


def test_every_ledger_command_takes_config(tmp_path):
    ledger = tmp_path / "elsewhere" / "ledger.db"
    ledger.parent.mkdir()
    _fill(str(ledger), "ops", 0.25)
    cfg = _config(tmp_path / "m.yaml", str(ledger))
    stats = _run("ledger", "stats", "--config", str(cfg), "--by", "team", "--json", cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["requests"] == 3
    listed = _run("ledger", "list", "--config", str(cfg), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [r["user_id"] for r in json.loads(listed.stdout)] == ["ops-user"] * 3
    anomalies = _run("anomalies", "--config", str(cfg), "--json", cwd=tmp_path)
    assert anomalies.returncode == 0, anomalies.stderr
    assert json.loads(anomalies.stdout)["anomalies"] == []
    created = _run("keys", "create", "--config", str(cfg), "--user", "alice", "--json",
                   cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    keys = _run("keys", "list", "--config", str(cfg), "--json", cwd=tmp_path)
    assert [k["user"] for k in json.loads(keys.stdout)] == ["alice"]
    assert not (tmp_path / "margin.db").exists()  # nothing went to the default ledger


def test_a_broken_config_is_one_line_with_its_place_and_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("ledger:\n  url: margin.db\n  batch_size: -3\n")
    out = _run("spend", "--config", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("margin: error: bad.yaml:3: ledger.batch_size")
    assert len(out.stderr.splitlines()) == 1 and out.stdout == ""
    missing = _run("ledger", "stats", "--config", "nope.yaml", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr == "margin: error: config file not found: nope.yaml\n"


def test_without_config_or_db_the_ledger_here_is_read(tmp_path):
    _fill(str(tmp_path / "margin.db"), "here", 0.1)
    out = _run("spend", "--by", "team", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["groups"][0]["team"] == "here"
