"""The ledger's columns, defined once: the migrated table matches them on both dialects, a
table that lacks one is refused when opened, and a column added the documented way lands."""

from __future__ import annotations

import sqlite3

import pytest

from margin.errors import ConfigError
from margin.metering import schema
from margin.metering.db import connect
from margin.metering.migrations import MIGRATIONS, check, migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    return str(tmp_path / "l.db") if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")


def test_migrated_table_is_the_schema(url):
    db = connect(url)
    try:
        migrate(db)
        found = db.columns(schema.TABLE)
        assert list(found) == list(schema.NAMES)
        assert schema.mismatches(found, db.dialect) == []
        assert found["cost_usd"].lower() == "double precision"
        assert found["prompt_tokens"].lower() == "integer"
    finally:
        db.close()


def test_ledger_written_before_the_schema_module_still_opens(tmp_path):
    # The table exactly as migration 1 shipped it, created by hand.
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("INSERT INTO requests (id, ts, endpoint, status) VALUES ('a', 1.0, 'chat', 200)")
    conn.commit()
    conn.close()
    db = connect(str(path))
    assert migrate(db) == sorted(MIGRATIONS)  # recorded nowhere yet: all run, idempotently
    assert db.query("SELECT id, cost_usd, cache FROM requests") == [("a", 0.0, "miss")]
    db.close()


def test_table_without_a_column_is_refused_with_its_name(tmp_path):
    # Someone else's table of that name, two columns short.
    path = tmp_path / "bad.db"
    create = MIGRATIONS[1][0].replace("notes TEXT,", "").replace("stage_ms TEXT,", "")
    conn = sqlite3.connect(path)
    conn.execute(create)
    conn.commit()
    conn.close()
    db = connect(str(path))
    with pytest.raises(ConfigError, match=r"bad.db: .*column stage_ms is missing \(and 1 more\)"):
        migrate(db)
    db.close()


def test_column_of_the_wrong_type_is_named():
    found = {c.name: c.sql_type("postgresql") for c in schema.COLUMNS}
    found["ts"] = "text"
    assert schema.mismatches(found, "postgresql") == [
        "column ts is text, expected double precision"]
    found["extra"] = "text"  # columns margin does not know are someone else's business
    del found["notes"]
    assert schema.mismatches(found, "postgresql")[1] == "column notes is missing"


def test_a_new_column_is_added_by_its_ddl(url):
    db = connect(url)
    try:
        migrate(db)
        col = schema.Column("tokens_total", int, nullable=False, default=0, since=99)
        db.execute(f"ALTER TABLE requests ADD COLUMN {col.ddl()}")
        db.execute("INSERT INTO requests (id, ts, endpoint, status) VALUES (?, ?, ?, ?)",
                   ("x", 1.0, "chat", 200))
        db.commit()
        assert db.query("SELECT tokens_total FROM requests") == [(0,)]
        assert db.columns("requests")["tokens_total"].lower() == col.sql_type(db.dialect).lower()
        check(db)  # an extra column is fine
    finally:
        db.close()


def test_added_in_names_only_that_migrations_columns(monkeypatch):
    assert schema.added_in(max(MIGRATIONS) + 1) == []
    extra = schema.Column("region", str, since=max(MIGRATIONS) + 1)
    monkeypatch.setattr(schema, "COLUMNS", (*schema.COLUMNS, extra))
    assert schema.added_in(max(MIGRATIONS) + 1) == ["ALTER TABLE requests ADD COLUMN region TEXT"]


def test_values_fill_not_null_defaults_in_insert_order():
    row = {"id": "r", "ts": 2.0, "model": "small", "cost_usd": None}
    values = dict(zip(schema.NAMES, schema.values(row)))
    assert values["id"] == "r" and values["model"] == "small"
    assert values["cost_usd"] == 0.0 and values["cache"] == "miss"
    assert values["endpoint"] == "unknown" and values["status"] == 0
    assert values["user_id"] is None and values["prompt"] is None
    assert schema.insert_sql().count("?") == len(schema.NAMES)
