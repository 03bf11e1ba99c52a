"""``margin alerts`` on a real ledger: its --json checked against the shipped JSON Schema,
the exhaustion it names equal to the one the spend implies; and ``margin ledger rollup
--rebuild`` bringing rows put in by SQL into the rollups ``margin spend`` reads."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from importlib import resources

import jsonschema
import yaml

from margin.metering.db import connect
from margin.metering.migrations import migrate
from tests.limits.test_forecasts import _write, steady_spend_rows

DAY = 86_400.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "margin.cli.main", *args], capture_output=True,
                          text=True, timeout=300)


def test_alerts_json_names_the_exhaustion_and_matches_its_schema(tmp_path):
    url = str(tmp_path / "a.db")
    now = time.time()
    _write(url, steady_spend_rows(now - 30 * DAY, now - 60, 10.0))
    # ann spends $10 a day; her monthly budget runs out a few days from now, this month.
    start = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1).timestamp()
    ahead_days = min(3.5, (end - now) / DAY / 2)
    usd = 10.0 * ((now - start.timestamp()) / DAY + ahead_days)
    config = tmp_path / "margin.yaml"
    config.write_text(yaml.safe_dump({
        "ledger": {"url": url},
        "limits": {"budgets": [{"scope": "team", "name": "core", "usd": 1e6, "period": "month"},
                               {"scope": "user", "name": "*", "usd": usd, "period": "month"}]},
        "capacity": {"idle-model": {"replica_rps": 1}}}))
    out = _cli("alerts", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    schema = json.loads((resources.files("margin.metering") / "schemas" /
                         "alerts.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(payload)
    expected = now + ahead_days * DAY
    [alert] = payload["alerts"]
    assert alert["kind"] == "budget_exhaustion" and alert["scope"] == "user:ann"
    assert abs(alert["predicted_at"] - expected) < min(DAY, ahead_days * DAY / 2)
    assert alert["fired_at"] is None
    text = _cli("alerts", "--config", str(config))
    assert text.returncode == 0 and "user:ann" in text.stdout


def test_rollup_rebuild_brings_rows_put_in_by_sql_into_the_reports(tmp_path):
    url = str(tmp_path / "r.db")
    db = connect(url)
    migrate(db)
    db.executemany("INSERT INTO requests (id, ts, endpoint, status, team, cost_usd) "
                   "VALUES (?, ?, 'chat', 200, ?, ?)",
                   [(uuid.uuid4().hex, time.time() - 3600 * i, "imported", 0.25)
                    for i in range(10)])
    db.commit()
    db.close()

    def imported_cost() -> float:
        out = _cli("spend", "--db", url, "--by", "team", "--json")
        assert out.returncode == 0, out.stderr
        return sum(g["cost_usd"] for g in json.loads(out.stdout)["groups"]
                   if g["team"] == "imported")
    assert imported_cost() == 0.0       # the writer did not see them: not in the rollups
    out = _cli("ledger", "rollup", "--db", url, "--rebuild")
    assert out.returncode == 0 and "10 rows" in out.stdout, out.stderr
    assert imported_cost() == 2.5
