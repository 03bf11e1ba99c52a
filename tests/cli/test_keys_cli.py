"""``margin keys``: create prints the key once, list never shows it, update and revoke
change what the gateway enforces; bad input exits 2. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from click.testing import CliRunner

from margin.auth.keys import KeyStore, check_secret, parse_token
from margin.cli.keys import keys
from margin.metering.db import connect


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_url")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(keys, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_create_list_update_revoke(db_url):
    code, out, err = run("create", "--db", db_url, "--user", "alice", "--team", "research",
                         "--models", "small,large", "--rpm", "60", "--budget-usd", "20",
                         "--expires", "30d")
    assert code == 0, err
    token = out.strip()
    key_id, secret = parse_token(token)
    assert "not shown again" in err
    (stored,) = connect(db_url).query("SELECT secret_hash FROM api_keys WHERE id = ?",
                                      (key_id,))[0]
    assert check_secret(secret, stored) and secret not in stored

    code, out, _ = run("list", "--db", db_url, "--json")
    (listed,) = json.loads(out)
    assert listed["id"] == key_id and listed["models"] == ["small", "large"]
    assert listed["budget_period"] == "month" and "key" not in listed
    assert secret not in out

    code, out, _ = run("update", key_id, "--db", db_url, "--tpm", "1000", "--clear", "models",
                       "--json")
    assert code == 0 and json.loads(out)["tpm"] == 1000 and json.loads(out)["models"] is None

    code, out, _ = run("revoke", token, "--db", db_url)  # the whole key works as an id too
    assert code == 0 and key_id in out
    assert json.loads(run("list", "--db", db_url, "--json")[1]) == []
    (row,) = json.loads(run("list", "--db", db_url, "--all", "--json")[1])
    assert row["status"] == "revoked"


def test_bad_input_exits_2(tmp_path):
    db = str(tmp_path / "l.db")
    assert run("create", "--db", db, "--user", "a", "--expires", "someday")[0] == 2
    assert run("create", "--db", db, "--user", "a", "--rpm", "0")[0] == 2
    assert run("create", "--db", db)[0] == 2  # --user is required
    assert run("revoke", "0123456789abcdef", "--db", db)[0] == 2
    assert run("list", "--db", str(tmp_path / "missing.db"))[0] == 2
    _, out, _ = run("create", "--db", db, "--user", "a", "--json")
    key_id = json.loads(out)["id"]
    assert run("update", key_id, "--db", db)[0] == 2  # nothing to change
    assert run("update", key_id, "--db", db, "--rpm", "5", "--clear", "rpm")[0] == 2


def test_revoke_tells_gateways_through_redis(tmp_path, redis_url):
    db = str(tmp_path / "l.db")
    prefix = f"margin-test-{uuid.uuid4().hex[:8]}:"
    record, _ = KeyStore(connect(db)).create(user="bob")
    client = redis.Redis.from_url(redis_url)
    assert client.get(prefix + "keys:epoch") is None
    assert run("revoke", record.id, "--db", db, "--redis-url", redis_url,
               "--redis-prefix", prefix)[0] == 0
    assert client.get(prefix + "keys:epoch") == b"1"
    client.delete(prefix + "keys:epoch")
