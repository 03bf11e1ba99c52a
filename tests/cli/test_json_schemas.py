"""``margin spend --json`` and ``margin ledger stats --json`` as written down in the JSON
Schema files shipped with the package: the real CLI, on a real ledger, checked against them."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import uuid
from importlib import resources

import jsonschema
import pytest

from margin.config import LedgerConfig
from margin.metering.ledger import LedgerWriter


def _schema(name: str) -> dict:
    text = (resources.files("margin.metering") / "schemas" / name).read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


SPEND = _schema("spend.schema.json")
STATS = _schema("ledger-stats.schema.json")


def _validate(data: object, schema: dict) -> None:
    jsonschema.Draft202012Validator(schema).validate(data)


def _cli(*args: str) -> object:
    out = subprocess.run([sys.executable, "-m", "margin.cli.main", *args], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("ledger") / "margin.db")
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    now = time.time()
    for i in range(120):
        compressed = i % 5 == 0
        w.submit({
            "id": uuid.uuid4().hex, "ts": now - 3 * 86400 + i * 1800, "endpoint": "chat",
            "status": 502 if i % 17 == 0 else 200,
            "user_id": None if i % 11 == 0 else ("bot" if i % 2 else f"user{i % 7}"),
            "team": ["core", "ops", None][i % 3], "feature": ["chat", None][i % 2],
            "key_id": f"k{i % 4}", "requested_model": "small",
            "model": None if i % 17 == 0 else ["small", "large"][i % 2],
            "cost_usd": 0.001 * (i % 9), "saved_usd": 0.002 if i % 6 == 0 else 0.0,
            "cache": "exact" if i % 6 == 0 else ("semantic" if i % 10 == 3 else "miss"),
            "prompt_tokens": 30 + i, "completion_tokens": i % 13, "latency_ms": 10.0 + i % 23,
            "upstream_ms": 0.0 if i % 6 == 0 else 8.0, "overhead_ms": 0.4,
            "ttft_ms": 3.0 if i % 4 == 0 else None,
            "prompt_hash": "same" if i % 2 else uuid.uuid4().hex,
            "stage_ms": json.dumps({"auth": 0.01, "exact_cache": 0.02}),
            "tokens_before_compression": 100 if compressed else None,
            "tokens_after_compression": 60 if compressed else None,
            "notes": json.dumps({"compression_saved_usd": 0.0001}) if compressed else None})
    w.close()
    return url


@pytest.mark.parametrize("by", ["user", "team", "feature", "model", "key", "day"])
def test_spend_by_matches_its_schema(ledger, by):
    out = _cli("spend", "--db", ledger, "--by", by, "--since", "30d", "--json")
    assert out["groups"], "an empty report would prove little"
    _validate(out, SPEND)


def test_spend_top_users_and_a_window_and_a_zone_match(ledger):
    _validate(_cli("spend", "--db", ledger, "--top-users", "--json"), SPEND)
    _validate(_cli("spend", "--db", ledger, "--by", "day", "--tz", "Asia/Kolkata", "--since",
                   "2d", "--until", "1d", "--json"), SPEND)


@pytest.mark.parametrize("by", ["stage", "model", "user", "feature", "team", "key", "day",
                                "endpoint"])
def test_ledger_stats_match_its_schema(ledger, by):
    out = _cli("ledger", "stats", "--db", ledger, "--by", by, "--json")
    assert out["groups"] and out["compression"]["requests"] > 0
    _validate(out, STATS)


def test_an_empty_ledger_matches_too(tmp_path):
    url = str(tmp_path / "empty.db")
    w = LedgerWriter(LedgerConfig(url=url))
    w.start()
    w.close()
    _validate(_cli("ledger", "stats", "--db", url, "--json"), STATS)
    _validate(_cli("spend", "--db", url, "--json"), SPEND)
    _validate(_cli("spend", "--db", url, "--top-users", "--json"), SPEND)


def test_the_schemas_refuse_a_changed_shape(ledger):
    spend = _cli("spend", "--db", ledger, "--by", "team", "--json")
    for change in (lambda d: d.pop("total"), lambda d: d["groups"][0].pop("team"),
                   lambda d: d["groups"][0].update(colour="red"),
                   lambda d: d["total"].update(requests="3")):
        broken = copy.deepcopy(spend)
        change(broken)
        with pytest.raises(jsonschema.ValidationError):
            _validate(broken, SPEND)
    stats = _cli("ledger", "stats", "--db", ledger, "--by", "user", "--json")
    for change in (lambda d: d["groups"][0].pop("user"), lambda d: d.update(by="colour"),
                   lambda d: d["latency"].pop("p99_ms"),
                   # whole-request percentiles are not measured: a number there is a lie
                   lambda d: d["latency"].update(p95_ms=12.5),
                   lambda d: d["groups"][0].update(p50_ms=3.0),
                   lambda d: d["cache"].update(hit_rate=1.5)):
        broken = copy.deepcopy(stats)
        change(broken)
        with pytest.raises(jsonschema.ValidationError):
            _validate(broken, STATS)
