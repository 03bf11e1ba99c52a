"""``margin spend``: cost per group from a real ledger, the Pareto view and bot flags."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from click.testing import CliRunner

from margin.cli.spend import spend
from margin.limits.spend import bot_signals, pareto_share
from margin.metering import rollups
from margin.metering.db import connect
from margin.metering.migrations import migrate


def _ledger(url: str, now: float) -> None:
    rows = []

    def add(ts, user, team, feature, model, cost, saved=0.0, cache="miss", prompt=None,
            status=200):
        rows.append((uuid.uuid4().hex, ts, "chat", status, user, team, feature, model, cost,
                     saved, cache, 10, 5, prompt or uuid.uuid4().hex))

    # A bot: every 30 s for 2 hours, always the same prompt.
    for i in range(240):
        add(now - 7200 + i * 30, "bot", "ops", "monitor", "small", 0.01, prompt="ping")
    # A human power user: irregular, varied, expensive.
    t = now - 20000
    for i in range(40):
        t += 60 * (1 + (i * 7919) % 13) ** 1.5
        add(t, "whale", "research", "chat", "large", 0.2)
    # Eight ordinary users; one cache hit that saved money; one error.
    for u in range(8):
        for i in range(3):
            add(now - 3000 - u * 100 - i * 7, f"user{u}", "support", "chat", "small", 0.005)
    add(now - 50, "user0", "support", "chat", "small", 0.0, saved=0.005, cache="exact")
    add(now - 40, "user1", "support", "chat", "small", 0.0, status=502)
    add(now - 40 * 86400, "ancient", "old", "chat", "small", 99.0)  # outside --since 30d
    db = connect(url)
    migrate(db)
    db.executemany("INSERT INTO requests (id, ts, endpoint, status, user_id, team, feature, "
                   "model, cost_usd, saved_usd, cache, prompt_tokens, completion_tokens, "
                   "prompt_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    rollups.rebuild(db)  # rows put in by SQL, not by the writer: rebuilt as an import would
    db.commit()
    db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    url = (str(tmp_path / "ledger.db") if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    _ledger(url, time.time())
    return url


def run(*args: str):
    result = CliRunner().invoke(spend, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_spend_by_team(ledger_url):
    out = json.loads(run("--db", ledger_url, "--by", "team", "--json"))
    teams = {g["team"]: g for g in out["groups"]}
    assert set(teams) == {"ops", "research", "support"}  # "old" is outside 30 days
    assert teams["research"]["cost_usd"] == pytest.approx(8.0)
    assert teams["ops"]["requests"] == 240 and teams["ops"]["cost_usd"] == pytest.approx(2.4)
    assert teams["support"]["saved_usd"] == pytest.approx(0.005)
    assert teams["support"]["cache_hits"] == 1 and teams["support"]["errors"] == 1
    assert out["groups"][0]["team"] == "research"  # most expensive first
    assert out["total"]["prompt_tokens"] == 10 * (240 + 40 + 26)
    text = run("--db", ledger_url, "--by", "model")
    assert "large" in text and "8.00" in text


def test_spend_by_day_in_a_time_zone(ledger_url):
    out = json.loads(run("--db", ledger_url, "--by", "day", "--since", "60d", "--tz",
                         "Asia/Tokyo", "--json"))
    assert sum(g["cost_usd"] for g in out["groups"]) == pytest.approx(99.0 + 8.0 + 2.4 + 0.12)
    assert [g["day"] for g in out["groups"]] == sorted(g["day"] for g in out["groups"])


def test_top_users_pareto_and_bots(ledger_url):
    out = json.loads(run("--db", ledger_url, "--top-users", "--json"))
    assert out["users"] == 10
    # The top 20 % (2 of 10 users) spend (8.0 + 2.4) of 10.52 USD.
    assert out["pareto"]["top_users"] == 2
    assert out["pareto"]["cost_share"] == pytest.approx(10.4 / 10.52, abs=1e-3)
    top = {u["user"]: u for u in out["top"]}
    assert out["bot_like"] == ["bot"]
    assert set(top["bot"]["flags"]) == {"regular", "repeated_prompts"}
    assert top["bot"]["interarrival_cv"] == pytest.approx(0.0, abs=1e-6)
    assert top["whale"]["flags"] == [] and not top["whale"]["bot_like"]
    assert "bot-like: bot" in run("--db", ledger_url, "--top-users")


def test_pure_helpers():
    assert pareto_share([10, 1, 1, 1, 1]) == (1, pytest.approx(10 / 14))
    assert pareto_share([]) == (0, 0.0)
    fast = bot_signals([i * 1.0 for i in range(100)], [str(i) for i in range(100)])
    assert fast["rate_per_min"] == pytest.approx(60.0)
    assert set(fast["flags"]) == {"high_rate", "regular"} and fast["bot_like"]


def test_bad_input_exits_2(tmp_path):
    result = CliRunner().invoke(spend, ["--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2
    result = CliRunner().invoke(spend, ["--db", str(tmp_path / "none.db"), "--tz", "Mars/Base"])
    assert result.exit_code == 2


def test_overrun_above_reservations_is_shown(ledger_url):
    db = connect(ledger_url)
    # Reserved 0.01, billed 0.013: 0.003 over; one under its reservation; one with none.
    db.executemany("INSERT INTO requests (id, ts, endpoint, status, team, cost_usd, "
                   "reserved_usd) VALUES (?, ?, 'chat', 200, 'agents', ?, ?)",
                   [(uuid.uuid4().hex, time.time() - 60, 0.013, 0.01),
                    (uuid.uuid4().hex, time.time() - 60, 0.004, 0.01),
                    (uuid.uuid4().hex, time.time() - 60, 0.02, None)])
    rollups.rebuild(db)
    db.commit()
    db.close()
    out = run("--db", ledger_url, "--by", "team", "--json")
    agents = next(g for g in json.loads(out)["groups"] if g["team"] == "agents")
    assert agents["overrun_usd"] == pytest.approx(0.003)
    text = run("--db", ledger_url, "--by", "team")
    assert "overrun: 0.003000 USD" in text and "overrun_usd" in text
