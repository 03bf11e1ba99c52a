"""``margin anomalies`` on a synthetic four-week seasonal ledger ending now."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

from click.testing import CliRunner

from margin.cli.anomalies import anomalies
from tests.limits.synthetic import add_spike, build_ledger


def _recent_weekday_afternoon(now: float) -> int:
    """The latest complete 14:00 UTC hour of a weekday: support-chat's usual peak, so the
    test does not depend on the hour it runs at (10x of an hour that usually sees one or
    two requests is, by design, too few to call)."""
    hour = int(now // 3600) - 2
    while True:
        when = dt.datetime.fromtimestamp(hour * 3600, dt.timezone.utc)
        if when.hour == 14 and when.weekday() < 5:
            return hour * 3600
        hour -= 1


def test_finds_the_spike_and_only_the_spike(tmp_path):
    now = time.time()
    normal, spiked = str(tmp_path / "normal.db"), str(tmp_path / "spiked.db")
    build_ledger(normal, now)
    shutil.copy(normal, spiked)
    spike_hour = _recent_weekday_afternoon(now)
    add_spike(spiked, "support-chat", spike_hour, 10.0)

    quiet = CliRunner().invoke(anomalies, ["--db", normal, "--since", "7d", "--json"])
    assert quiet.exit_code == 0, quiet.output
    assert json.loads(quiet.stdout)["anomalies"] == []

    result = CliRunner().invoke(anomalies, ["--db", spiked, "--since", "7d", "--json"])
    found = json.loads(result.stdout)["anomalies"]
    hit = [a for a in found if (a["dimension"], a["value"]) == ("feature", "support-chat")]
    assert [a["hour_start_s"] for a in hit] == [spike_hour]
    assert hit[0]["ratio"] > 5
    assert {a["hour_start_s"] for a in found} == {spike_hour}

    text = CliRunner().invoke(anomalies, ["--db", spiked, "--dimension", "feature"]).stdout
    assert "support-chat" in text and "1 cost anomalies" in text


def test_bad_input_exits_2(tmp_path):
    assert CliRunner().invoke(anomalies, ["--db", str(tmp_path / "x.db")]).exit_code == 2
    assert CliRunner().invoke(anomalies, ["--since", "soon"]).exit_code == 2
